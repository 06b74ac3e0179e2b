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
  the registry is marked down for the run and every later request fails at once;
* **adaptive concurrency** (:class:`Concurrency`): unless the limit is fixed
  (``--per-registry``), each registry's queue finds its own limit between 1 and the
  upper bound (``--proc``): it starts at 8, doubles each window while the requests'
  latency stays near the registry's baseline and the limit is what holds requests back,
  grows by an eighth per window once it has backed off, stops growing when latency
  rises (requests are queueing somewhere: in the registry, the network or our own event
  loop) and shrinks when it has tripled; it halves on 429, 503 and 504 and loses a
  quarter on timeouts and resets (once per window, however many requests saw them).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

#: The priority of the requests a task makes (lower first): the scheduler sets it to the
#: image's position in the plan; requests outside any image (listings) go first.
priority: contextvars.ContextVar[int] = contextvars.ContextVar("priority", default=-1)


#: Where an adaptive queue starts (or its upper bound, when lower).
INITIAL = 8


class Concurrency:
    """A latency-gradient (Vegas-like) AIMD controller of one registry's limit.

    Fed one latency sample per answered request (seconds from sending to the answer's
    headers; requests whose body we stream and requests that opened a connection are
    left out: their time is the body's, or the handshakes') and
    one signal per congestion event (429, 503, 504, timeout, reset). Samples are grouped
    in windows of half the limit, at least ``min_window`` (one window is about one
    round trip at full concurrency), closed early after ``max_window`` seconds. At the
    end of a window:

    * the window's latency is its median; the **baseline** is the lowest window latency
      of the last ``memory`` seconds (so it follows a path that got slower for good,
      but not the queueing the controller itself causes: any dip of the limit within
      ``memory`` seconds re-measures it);
    * the window's **queue estimate** is ``limit * (1 - baseline / latency)``: how many
      requests are waiting somewhere rather than being served (TCP Vegas);
    * if the limit held requests back during the window (``saturated``) and the queue
      estimate is below ``alpha`` (at least 3, or a third of the limit: latency within
      half the baseline again), the limit grows: doubling before the first backoff
      (slow start), then by an eighth (at least 1);
    * if the queue estimate is above ``beta`` (at least 6, or two thirds of the limit:
      latency past three times the baseline), the limit shrinks by an eighth. In
      between it holds: a registry that serves more at once while answering somewhat
      slower (a busy proxy, its own CPUs on loopback) keeps the concurrency that pays.

    A congestion signal halves the limit at once (at most once per ``cooldown``
    seconds: a burst of 429s is one event) and ends slow start.
    """

    def __init__(self, maximum: int, *, initial: int = INITIAL, minimum: int = 1,
                 clock: Callable[[], float] = time.monotonic, max_window: float = 1.0,
                 alpha: float = 3.0, beta: float = 6.0, memory: float = 20.0,
                 min_window: int = 8):
        if maximum < 1:
            raise ValueError("a registry needs at least one slot")
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.value = float(max(self.minimum, min(initial, maximum)))
        self.clock = clock
        self.max_window = max_window
        self.alpha = alpha
        self.beta = beta
        self.slow_start = True
        self.baseline: float | None = None
        self.latency: float | None = None   # the last window's median
        self.decreases = 0
        self.increases = 0
        self.lowest = int(self.value)       # after the first change (tests, bench)
        self.highest = int(self.value)
        self.changes: deque[tuple[float, int, str]] = deque(maxlen=256)
        self._window: list[float] = []
        self._window_start = clock()
        self._saturated = False
        self.memory = memory
        self.min_window = min_window
        self._lows: deque[tuple[float, float]] = deque()  # (time, median), increasing
        self._last_decrease = -math.inf

    @property
    def limit(self) -> int:
        return int(self.value)

    def saturated(self) -> None:
        """A request had to wait for a slot: the limit is what holds the registry back."""
        self._saturated = True

    def sample(self, seconds: float) -> bool:
        """One request's latency. True when the limit changed."""
        self._window.append(seconds)
        now = self.clock()
        if (len(self._window) < max(self.min_window, self.limit // 2)
                and now - self._window_start < self.max_window):
            return False
        window, saturated = sorted(self._window), self._saturated
        self._window, self._saturated, self._window_start = [], False, now
        median = window[len(window) // 2]
        lows = self._lows
        while lows and lows[-1][1] >= median:
            lows.pop()
        lows.append((now, median))
        while lows[0][0] < now - self.memory:
            lows.popleft()
        self.baseline = lows[0][1]
        self.latency = median
        queued = self.value * (1.0 - self.baseline / median) if median > 0 else 0.0
        before = self.limit
        if queued > max(self.beta, self.value * 2 / 3):
            self.value = max(self.minimum, self.value - max(1.0, self.value / 8))
            self.slow_start = False
            why = "latency"
        elif saturated and queued < max(self.alpha, self.value / 3):
            step = self.value if self.slow_start else max(1.0, self.value / 8)
            self.value = min(float(self.maximum), self.value + step)
            why = "grow"
        else:
            return False
        return self._changed(before, why, now)

    def congested(self, why: str = "congestion", factor: float = 0.5) -> bool:
        """The registry throttled us or a request broke: back off (once per cooldown)."""
        now = self.clock()
        self.slow_start = False
        if now - self._last_decrease < self.cooldown:
            return False
        self._last_decrease = now
        before = self.limit
        self.value = max(float(self.minimum), self.value * factor)
        # Latency from before the backoff says nothing about the new limit.
        self._window, self._saturated, self._window_start = [], False, now
        return self._changed(before, why, now)

    @property
    def cooldown(self) -> float:
        """A burst of failures is one event: about two round trips, at least 0.1 s."""
        return max(0.1, 2 * (self.latency or 0.0))

    def _changed(self, before: int, why: str, now: float) -> bool:
        after = self.limit
        if after == before:
            return False
        if after > before:
            self.increases += 1
        else:
            self.decreases += 1
        self.lowest = min(self.lowest, after)
        self.highest = max(self.highest, after)
        self.changes.append((now, after, why))
        return True


class HostQueue:
    def __init__(self, name: str, limit: int, log: Any = None, *, adaptive: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        """``limit``: the fixed number of slots, or with ``adaptive`` the upper bound
        of what :class:`Concurrency` may choose."""
        if limit < 1:
            raise ValueError("a registry needs at least one slot")
        self.name = name
        self.maximum = limit
        self.control = Concurrency(limit, clock=clock) if adaptive else None
        self.limit = self.control.limit if self.control else limit
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

    # -- adaptive concurrency ------------------------------------------------------
    def observe(self, seconds: float) -> None:
        """An answer came ``seconds`` after its request was sent (headers, not body)."""
        if self.control is not None and self.control.sample(seconds):
            self._adapted()

    def congested(self, why: str = "congestion", factor: float = 0.5) -> None:
        """429/503/504, a timeout or a reset: fewer requests at once for a while."""
        if self.control is not None and self.control.congested(why, factor):
            self._adapted()

    def _adapted(self) -> None:
        assert self.control is not None
        self.set_limit(self.control.limit)
        if self._log is not None:
            c = self.control
            self._log.debug("concurrency", registry=self.name, limit=self.limit,
                            why=c.changes[-1][2] if c.changes else "",
                            latency_ms=round((c.latency or 0) * 1000, 1),
                            baseline_ms=round((c.baseline or 0) * 1000, 1))

    # -- slots ---------------------------------------------------------------------
    async def _acquire(self, prio: int) -> None:
        if self._in_use < self.limit and not self._waiters:
            self._take()
            return
        if self.control is not None:
            self.control.saturated()
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
