"""What happens during a run, told to whoever listens.

The copier and the scheduler never format output: they call an :class:`Observer`.
Logging, the report, and later the progress display and metrics subscribe here.
Every method has a default that does nothing, so an observer implements only what it
cares about.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manifest import Descriptor
    from .plan import PlanError, PlanItem
    from .results import Result


class Observer:
    def item_planned(self, item: PlanItem) -> None:
        """The planner produced an item (the plan grows while listings run)."""

    def plan_error(self, error: PlanError) -> None:
        """Part of the config could not be planned (reported as failed images)."""

    def planning_done(self, items: int) -> None:
        """Every rule is listed: ``items`` is the size of the plan."""

    def image_started(self, item: PlanItem) -> None: ...

    def image_finished(self, result: Result) -> None:
        """One destination image is done: synced, skipped, failed, conflict or
        interrupted."""

    def blob_started(self, destination: str, blob: Descriptor) -> None: ...

    def bytes_moved(self, destination: str, blob: Descriptor, n: int) -> None:
        """``n`` more bytes of ``blob`` reached ``destination``."""

    def blob_finished(self, destination: str, blob: Descriptor, how: str) -> None:
        """``how``: ``uploaded``, ``mounted``, ``present`` or ``failed``."""


class Observers(Observer):
    """Fans every event out to several observers, in order."""

    def __init__(self, observers: Sequence[Observer] = ()):
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def item_planned(self, item: PlanItem) -> None:
        for o in self.observers:
            o.item_planned(item)

    def plan_error(self, error: PlanError) -> None:
        for o in self.observers:
            o.plan_error(error)

    def planning_done(self, items: int) -> None:
        for o in self.observers:
            o.planning_done(items)

    def image_started(self, item: PlanItem) -> None:
        for o in self.observers:
            o.image_started(item)

    def image_finished(self, result: Result) -> None:
        for o in self.observers:
            o.image_finished(result)

    def blob_started(self, destination: str, blob: Descriptor) -> None:
        for o in self.observers:
            o.blob_started(destination, blob)

    def bytes_moved(self, destination: str, blob: Descriptor, n: int) -> None:
        for o in self.observers:
            o.bytes_moved(destination, blob, n)

    def blob_finished(self, destination: str, blob: Descriptor, how: str) -> None:
        for o in self.observers:
            o.blob_finished(destination, blob, how)
