"""A queue per registry: its own concurrency, its own backoff, its own health.

Every request to a registry waits here before it is sent:

* **backoff first, slot second**: after a 429/503 (``Retry-After``) or a connection
  failure, requests wait for the registry's gate *before* taking one of its slots, so a
  throttled or unreachable registry holds nothing that another registry's requests need;
* **depth-first slots**: at most ``limit`` requests at once; a free slot goes to the
  waiter with the lowest priority number (the image's position in the plan, read from
  :data:`priority`), so images in flight finish before new ones start;
* **one failure cycle for all**: when many requests fail to connect at once, that is
  one failed attempt of the registry, not one per request. After the policy's retries
  the registry is marked down for the run and every later request fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

#: The priority of the requests a task makes (lower first): the scheduler sets it to the
#: image's position in the plan; requests outside any image (listings) go first.
priority: contextvars.ContextVar[int] = contextvars.ContextVar("priority", default=-1)


class HostQueue:
    def __init__(self, name: str, limit: int, log: Any = None):
        if limit < 1:
            raise ValueError("a registry needs at least one slot")
        self.name = name
        self.limit = limit
        self._in_use = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._log = log
        self.not_before = 0.0       # monotonic time the gate opens
        self.holds = 0              # times the registry asked us to back off (429/503)
        self.epoch = 0              # bumped once per failure cycle
        self.failures = 0           # consecutive failure cycles
        self.down: str | None = None  # why the registry was given up on
        self.peak = 0               # most requests in flight at once (tests, bench)

    @property
    def in_use(self) -> int:
        return self._in_use

    # -- backoff -------------------------------------------------------------------
    def hold(self, seconds: float) -> None:
        """The registry asked us to wait (429/503 ``Retry-After``): hold every request."""
        self.holds += 1
        self.not_before = max(self.not_before, time.monotonic() + seconds)

    async def wait_gate(self) -> None:
        while True:
            delay = self.not_before - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    def unreachable(self, epoch: int, delay: float, retries: int, reason: str) -> None:
        """A request sent during cycle ``epoch`` got no answer. The first such report of a
        cycle starts the next one after ``delay``; after ``retries`` cycles the registry
        is down."""
        if epoch != self.epoch or self.down:
            return
        self.epoch += 1
        self.failures += 1
        if self.failures > retries:
            self.down = f"{reason}; gave up after {self.failures} attempts"
            if self._log is not None:
                self._log.error("registry down", registry=self.name, error=self.down)
            return
        self.not_before = max(self.not_before, time.monotonic() + delay)
        if self._log is not None:
            self._log.warning("registry unreachable, retrying", registry=self.name,
                              error=reason, attempt=self.failures, wait=round(delay, 2))

    def reachable(self) -> None:
        self.failures = 0

    # -- slots ---------------------------------------------------------------------
    async def _acquire(self, prio: int) -> None:
        if self._in_use < self.limit and not self._waiters:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (prio, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed to us as we were cancelled
            raise

    def _take(self) -> None:
        self._in_use += 1
        self.peak = max(self.peak, self._in_use)

    def _release(self) -> None:
        self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self.limit:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self._take()
                fut.set_result(None)

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait out the gate (holding nothing), then take a slot by priority."""
        prio = priority.get()
        while True:
            await self.wait_gate()
            await self._acquire(prio)
            if self.not_before <= time.monotonic():
                break
            self._release()  # the gate closed while we queued: wait again, slot-free
        try:
            yield
        finally:
            self._release()
