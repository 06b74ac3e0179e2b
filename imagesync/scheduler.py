"""The scheduler: runs plan items concurrently, depth-first, and stops cleanly.

Items are admitted in plan order. Each *route* (source store -> destination stores)
has its own admission limit, so images waiting on a throttled or unreachable registry
never keep another registry's images from starting; within a registry the queue's
priorities (the item's position in the plan) make in-flight images finish first.

:meth:`Scheduler.stop` (Ctrl-C, SIGTERM) starts nothing new and cancels the items in
flight: their transfers stop, their manifests are not pushed, and they are reported
``interrupted``, as are the items that had not started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .events import Observer
from .names import Reference
from .plan import PlanItem
from .report import INTERRUPTED, Result

T = TypeVar("T")


def route(item: PlanItem) -> tuple[str, ...]:
    """Which stores an item touches: its admission queue."""
    stores = [Reference.parse(item.source).registry]
    stores += sorted({Reference.parse(d).registry for d in item.destinations})
    return tuple(stores)


@dataclass
class Scheduler:
    copy: Callable[[PlanItem], Awaitable[list[Result]]]
    observer: Observer = field(default_factory=Observer)
    #: Items in flight per route (each holds little memory: manifests, not blobs).
    per_route: int = 16
    stopped: bool = False
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _limits: dict[tuple[str, ...], asyncio.Semaphore] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Start nothing new; interrupt what is in flight."""
        if self.stopped:
            return
        self.stopped = True
        self._stop.set()
        for t in list(self._running):
            t.cancel()

    async def run(self, items: AsyncIterable[PlanItem]) -> None:
        """Copy every item; returns when all are done (or interrupted)."""
        iterator = aiter(items)
        while not self.stopped:
            try:
                item = await self._until_stopped(anext(iterator))
            except StopAsyncIteration:
                break
            if item is None:
                break  # stopped while the planner was listing
            limit = self._limits.setdefault(route(item), asyncio.Semaphore(self.per_route))
            acquired = await self._until_stopped(limit.acquire())
            if not acquired:
                self._interrupted(item)
                break
            task = asyncio.create_task(self._one(item, limit))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _until_stopped(self, aw: Awaitable[T]) -> T | None:
        """Await ``aw`` unless stop() comes first (then None, and ``aw`` is cancelled)."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task in done:
            return task.result()
        task.cancel()
        return None

    async def _one(self, item: PlanItem, limit: asyncio.Semaphore) -> None:
        try:
            await self.copy(item)
        except asyncio.CancelledError:
            pass  # the copier has reported the item interrupted
        finally:
            limit.release()

    def _interrupted(self, item: PlanItem) -> None:
        for d in item.destinations:
            self.observer.image_finished(Result(item.source, d, INTERRUPTED,
                                                note="not started: the run was stopped"))
