"""The bounded worker pool: one limit on concurrent network operations, depth-first.

A plain semaphore wakes waiters in arrival order, so a large plan starts every image
before finishing any. This pool hands a free slot to the waiter with the lowest
priority number instead; the engine uses each image's position in the plan, so images
already in flight finish first and a killed run leaves complete images behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator


class Pool:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.size = size
        self._free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.peak = 0  # most slots ever in use at once, for tests and the benchmark

    @property
    def in_use(self) -> int:
        return self.size - self._free

    async def acquire(self, priority: int = 0) -> None:
        if self._free > 0 and not self._waiters:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            raise

    def _take(self) -> None:
        self._free -= 1
        self.peak = max(self.peak, self.in_use)

    def release(self) -> None:
        self._free += 1
        while self._waiters and self._free > 0:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self._take()
                fut.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
