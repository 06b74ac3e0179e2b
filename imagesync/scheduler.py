"""The scheduler: runs plan items concurrently, depth-first, and stops cleanly.

Items are read in plan order. Each *route* (source store -> destination stores) has
its own line and its own limit of items in flight, so images waiting on a throttled or
unreachable registry never keep another registry's images from starting; within a
registry the queue's priorities (the item's position in the plan) make in-flight
images finish first.

:meth:`Scheduler.stop` (Ctrl-C, SIGTERM) starts nothing new and cancels the items in
flight: their transfers stop, their manifests are not pushed, and they are reported
``interrupted``, as are the items that had not started.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .events import Observer
from .names import Reference
from .plan import PlanItem
from .report import INTERRUPTED, Result


def route(item: PlanItem) -> tuple[str, ...]:
    """Which stores an item touches: its admission queue."""
    stores = [Reference.parse(item.source).registry]
    stores += sorted({Reference.parse(d).registry for d in item.destinations})
    return tuple(stores)


@dataclass(eq=False)  # compared (and kept in sets) by identity
class Scheduler:
    copy: Callable[[PlanItem], Awaitable[list[Result]]]
    observer: Observer = field(default_factory=Observer)
    #: Items in flight per route (each holds little memory: manifests, not blobs).
    per_route: int = 16
    #: Items read ahead of their route's capacity, in all: bounds memory on huge plans.
    max_waiting: int = 10_000
    stopped: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Start nothing new; interrupt what is in flight."""
        self.stopped = True
        self._stop.set()

    async def run(self, items: AsyncIterable[PlanItem]) -> None:
        """Copy every item; returns when all are done (or interrupted).

        Items are read from the plan as they come; each goes to its route's line and
        starts when the route has room, so a full route never holds up another."""
        iterator = aiter(items)
        waiting: dict[tuple[str, ...], collections.deque[PlanItem]] = {}
        running: dict[asyncio.Future[None], tuple[str, ...]] = {}
        per_route: collections.Counter[tuple[str, ...]] = collections.Counter()
        queued = 0
        pulling: asyncio.Future[PlanItem] | None = None
        exhausted = False
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self.stopped:
                for r, line in waiting.items():
                    while line and per_route[r] < self.per_route:
                        item = line.popleft()
                        queued -= 1
                        per_route[r] += 1
                        running[asyncio.ensure_future(self._one(item))] = r
                if pulling is None and not exhausted and queued < self.max_waiting:
                    pulling = asyncio.ensure_future(anext(iterator))
                if pulling is None and not running:
                    break  # the plan is read, nothing waits, nothing runs
                watch: set[asyncio.Future[Any]] = {stop, *running}
                if pulling is not None:
                    watch.add(pulling)
                done, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    r_done = running.pop(task, None)
                    if r_done is not None:
                        per_route[r_done] -= 1
                if pulling is not None and pulling in done:
                    try:
                        item = pulling.result()
                    except StopAsyncIteration:
                        exhausted = True
                    else:
                        waiting.setdefault(route(item), collections.deque()).append(item)
                        queued += 1
                    pulling = None
        finally:
            stop.cancel()
            if pulling is not None:
                pulling.cancel()  # the planner stops listing
                await asyncio.gather(pulling, return_exceptions=True)
            for line in waiting.values():  # read from the plan, never started
                for item in line:
                    self._interrupted(item)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _one(self, item: PlanItem) -> None:
        try:
            await self.copy(item)
        except asyncio.CancelledError:
            pass  # the copier has reported the item interrupted

    def _interrupted(self, item: PlanItem) -> None:
        for d in item.destinations:
            self.observer.image_finished(Result(item.source, d, INTERRUPTED,
                                                note="not started: the run was stopped"))
