"""Progress while a run goes on: a live display on a terminal, a plain line elsewhere.

:class:`Progress` is an observer that counts what the copier tells it (images planned,
started and finished, bytes moved, the blobs in flight) and works out a current rate
and an ETA. Two views read it:

* :class:`LiveDisplay`: rich's ``Live`` on a terminal, redrawn in place a few times a
  second: the plan, images done / total, failures, bytes, rate, ETA, and one bar per
  transfer in flight. Log lines printed through its console appear above it.
* :class:`PeriodicLine`: one plain line every N seconds (CI logs, cron mail), from a
  thread, so it keeps coming while one long blob moves.

Events arrive on the event loop's thread; the views read from their own threads, so
every access to the counters holds one lock.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .events import Observer
from .report import CONFLICT, FAILED, INTERRUPTED, SKIPPED, SYNCED, human_bytes

if TYPE_CHECKING:
    from .manifest import Descriptor
    from .plan import PlanError, PlanItem
    from .report import Result

RATE_WINDOW = 5.0  # seconds of history behind the "current" rate
MAX_TRANSFERS_SHOWN = 6


@dataclass
class Transfer:
    destination: str
    digest: str
    size: int
    done: int = 0
    started: float = 0.0


@dataclass
class Snapshot:
    """A consistent copy of the counters, for one redraw or one line."""

    elapsed: float
    planned: int          # destination images known so far
    planning: bool        # the plan may still grow
    listing: bool         # the planner says it is still listing
    done: int
    synced: int
    skipped: int
    failed: int
    interrupted: int
    started: int
    bytes: int
    rate: float           # bytes/s over the last few seconds
    eta: float | None     # seconds, when it can be guessed
    transfers: list[Transfer]
    dry_run: bool

    @property
    def total(self) -> int:
        return max(self.planned, self.done)


def clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


class Progress(Observer):
    """The counters behind every progress view (see the module docstring)."""

    def __init__(self, dry_run: bool = False, now: Callable[[], float] = time.monotonic):
        self._now = now
        self._lock = threading.Lock()
        self.dry_run = dry_run
        self.start = now()
        self.planned = 0          # from item_planned: destination images
        self.started_images = 0   # destination images of started items
        self.planning = True
        self.plan_told = False    # item_planned events come: "listing..." means something
        self.status: collections.Counter[str] = collections.Counter()
        self.bytes = 0            # bytes that reached a destination (retries included)
        self.transfers: dict[tuple[str, str], Transfer] = {}
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    # -- events (the event loop's thread) ----------------------------------------------

    def item_planned(self, item: PlanItem) -> None:
        with self._lock:
            self.plan_told = True
            self.planned += len(item.destinations)

    def plan_error(self, error: PlanError) -> None:
        with self._lock:
            self.planned += 1
            self.status[FAILED] += 1

    def planning_done(self, items: int) -> None:
        with self._lock:
            self.planning = False

    def image_started(self, item: PlanItem) -> None:
        with self._lock:
            self.started_images += len(item.destinations)

    def image_finished(self, result: Result) -> None:
        with self._lock:
            self.status[result.status] += 1

    def blob_started(self, destination: str, blob: Descriptor) -> None:
        with self._lock:
            key = (destination, blob.digest)
            t = self.transfers.get(key)
            if t is None:
                self.transfers[key] = Transfer(destination, blob.digest, blob.size,
                                               started=self._now())
            else:  # a retry starts over (or resumes: bytes_moved says how far)
                t.done = 0

    def bytes_moved(self, destination: str, blob: Descriptor, n: int) -> None:
        with self._lock:
            self.bytes += n
            t = self.transfers.get((destination, blob.digest))
            if t is not None:
                t.done = min(t.size, t.done + n) if t.size else t.done + n
            now = self._now()
            if not self._samples or now - self._samples[-1][0] >= 0.1:
                self._samples.append((now, self.bytes))
                while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW:
                    self._samples.popleft()
            else:
                self._samples[-1] = (self._samples[-1][0], self.bytes)

    def blob_finished(self, destination: str, blob: Descriptor, how: str) -> None:
        with self._lock:
            self.transfers.pop((destination, blob.digest), None)

    # -- reading (any thread) ----------------------------------------------------------

    def _rate(self, now: float) -> float:
        samples = [s for s in self._samples if now - s[0] <= RATE_WINDOW]
        if not samples:
            return 0.0
        t0, b0 = samples[0]
        if len(samples) == 1 or now - t0 < 0.5:
            # Too little history: the run's average since the first byte.
            t0, b0 = self._samples[0][0], 0
        span = now - t0
        return (self.bytes - b0) / span if span > 0 else 0.0

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._now()
            done = sum(self.status.values())
            rate = self._rate(now)
            transfers = sorted(self.transfers.values(), key=lambda t: t.started)
            planned = max(self.planned, self.started_images, done)
            eta = self._eta(now, done, planned, rate, transfers)
            return Snapshot(
                elapsed=now - self.start, planned=planned, planning=self.planning,
                listing=self.planning and self.plan_told,
                done=done, synced=self.status[SYNCED], skipped=self.status[SKIPPED],
                failed=self.status[FAILED] + self.status[CONFLICT],
                interrupted=self.status[INTERRUPTED], started=self.started_images,
                bytes=self.bytes, rate=rate, eta=eta,
                transfers=[Transfer(t.destination, t.digest, t.size, t.done, t.started)
                           for t in transfers],
                dry_run=self.dry_run)

    def _eta(self, now: float, done: int, planned: int, rate: float,
             transfers: list[Transfer]) -> float | None:
        """What is left of the images known so far, at the current pace: the bytes of
        the blobs in flight at the current rate, or the images left at the pace images
        have been finishing, whichever is longer. While the plan still grows this is
        a lower bound (the views say so)."""
        left_images = planned - done
        if self.planning and planned == 0:
            return None  # nothing known yet
        if left_images <= 0:
            return 0.0
        guesses = []
        in_flight = sum(max(0, t.size - t.done) for t in transfers)
        if rate > 0 and in_flight:
            guesses.append(in_flight / rate)
        if done:
            guesses.append((now - self.start) / done * left_images)
        return max(guesses) if guesses else None


def eta_text(s: Snapshot) -> str:
    if s.eta is None:
        return "--:--"
    # While the plan still grows, the ETA covers the images known so far: at least.
    return f">{clock(s.eta)}" if s.planning and s.eta > 0 else clock(s.eta)


def summary_line(s: Snapshot) -> str:
    """One plain progress line (no escape codes)."""
    total = f"{s.total}+" if s.planning else str(s.total)
    parts = [f"{s.done}/{total} images done"]
    if s.failed:
        parts.append(f"{s.failed} failed")
    parts.append(f"{human_bytes(s.bytes)} moved")
    parts.append(f"{human_bytes(s.rate)}/s")
    if s.eta is not None:
        parts.append(f"ETA {eta_text(s)}")
    if s.transfers:
        parts.append(f"{len(s.transfers)} blob{'s' if len(s.transfers) > 1 else ''} "
                     "in flight")
    return f"progress {clock(s.elapsed)}  " + ", ".join(parts)


class PeriodicLine:
    """Calls ``emit(snapshot)`` every ``interval`` seconds from a daemon thread."""

    def __init__(self, progress: Progress, interval: float,
                 emit: Callable[[Snapshot], None]):
        self.progress = progress
        self.interval = interval
        self.emit = emit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imagesync-progress",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.emit(self.progress.snapshot())
            except Exception:  # a closed stream at exit: progress is not worth a crash
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)


class LiveDisplay:
    """rich's Live on a terminal: redraws in place, log lines go above it."""

    def __init__(self, progress: Progress, console: Console, refresh_per_second: float = 4):
        self.progress = progress
        self.console = console
        self.live = Live(console=console, get_renderable=self.render, transient=True,
                         refresh_per_second=refresh_per_second, redirect_stdout=True,
                         redirect_stderr=True)
        self.running = False

    def start(self) -> None:
        self.live.start(refresh=True)
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.live.stop()

    def print(self, line: str) -> None:
        """A log line: above the display while it is live."""
        self.console.print(Text(line), soft_wrap=True, highlight=False, markup=False)

    def render(self) -> Any:
        s = self.progress.snapshot()
        width = self.console.width
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")

        # The plan
        if s.planned == 0 and s.planning:
            plan = Text("listing the sources...", style="dim")
        else:
            verb = "in the plan" if s.dry_run else "to sync"
            plan = Text(f"{s.total} images {verb}")
            if s.listing:
                plan.append(" so far, listing...", style="dim")
            elif s.planning:
                plan.append(" so far", style="dim")
        grid.add_row("plan", Text(""), plan)

        # Images done / total
        bar_width = max(10, min(40, width // 5))
        total = s.total or 1
        tally = [f"{s.done}/{s.total} done"]
        if s.synced:
            tally.append(f"{s.synced} {'to copy' if s.dry_run else 'synced'}")
        if s.skipped:
            tally.append(f"{s.skipped} {'to skip' if s.dry_run else 'skipped'}")
        failed = Text(f"{s.failed} failed", style="bold red" if s.failed else "dim")
        line = Text(", ".join(tally) + ", ")
        line.append_text(failed)
        if s.interrupted:
            line.append(f", {s.interrupted} interrupted", style="yellow")
        grid.add_row("images", ProgressBar(total=total, completed=s.done, width=bar_width),
                     line)

        # Bytes, rate, ETA
        grid.add_row("bytes", Text(f"{human_bytes(s.bytes)} moved".rjust(bar_width)),
                     Text(f"{human_bytes(s.rate)}/s  ETA {eta_text(s)}  "
                          f"elapsed {clock(s.elapsed)}"))

        # Transfers in flight, each with its bar
        shown = s.transfers[:MAX_TRANSFERS_SHOWN]
        if shown:
            grid.add_row("in flight", Text(""), Text(f"{len(s.transfers)} blob"
                                                 f"{'s' if len(s.transfers) > 1 else ''}"))
        now = time.monotonic()
        for t in shown:
            short = t.digest.split(":", 1)[-1][:12]
            size = f"{human_bytes(t.done)} / {human_bytes(t.size)}" if t.size else \
                human_bytes(t.done)
            if now - t.started > 1:
                size += f"  {human_bytes(t.done / (now - t.started))}/s"
            repo = t.destination.split("/", 1)[-1]  # the registry: in the summary
            grid.add_row("", ProgressBar(total=t.size or None, completed=t.done,
                                         width=bar_width),
                         Text(f"{size}  {repo} {short}"))
        if len(s.transfers) > len(shown):
            grid.add_row("", Text(""), Text(f"... and {len(s.transfers) - len(shown)} more",
                                            style="dim"))
        return Group(grid)
