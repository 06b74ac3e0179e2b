"""Results and the end-of-run report: a summary line, every failure, a JSON file."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from .events import Observer

SYNCED, SKIPPED, FAILED, CONFLICT = "synced", "skipped", "failed", "conflict"
#: The run was stopped (Ctrl-C, SIGTERM) before this image finished; nothing of it that
#: could leave a half-pushed image was written.
INTERRUPTED = "interrupted"
SAME_DIGEST = "destination has the same digest"


@dataclass
class Result:
    """The outcome for one destination image."""

    source: str
    destination: str
    status: str
    digest: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None


@dataclass
class Summary:
    synced: int
    skipped: int
    failed: int
    conflicts: int
    bytes: int
    seconds: float
    dry_run: bool = False
    interrupted: int = 0
    empty_rules: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, results: Sequence[Result], seconds: float, dry_run: bool = False,
           empty_rules: Sequence[str] = ()) -> Summary:
        n = Counter(r.status for r in results)
        return cls(n[SYNCED], n[SKIPPED], n[FAILED], n[CONFLICT],
                   sum(r.bytes for r in results), round(seconds, 3), dry_run,
                   n[INTERRUPTED], list(empty_rules))

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.conflicts or self.interrupted else 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_PLAN_WORDS = {SYNCED: "copy", SKIPPED: "skip", CONFLICT: "conflict", FAILED: "error"}


def render(results: Sequence[Result], summary: Summary, out: TextIO) -> None:
    if summary.dry_run:
        _render_plan(results, summary, out)
        return
    rate = summary.bytes / summary.seconds if summary.seconds > 0 else 0
    conflicts = f", {summary.conflicts} conflicts" if summary.conflicts else ""
    if summary.interrupted:
        conflicts += f", {summary.interrupted} interrupted"
    out.write(
        f"imagesync: {summary.synced} synced, {summary.skipped} skipped, "
        f"{summary.failed} failed{conflicts}; {human_bytes(summary.bytes)} moved in "
        f"{summary.seconds:.1f}s ({human_bytes(rate)}/s)\n"
    )
    for key in summary.empty_rules:
        out.write(f"warning: rule {key!r} matched nothing\n")
    failed = [r for r in results if r.status in (FAILED, CONFLICT)]
    if failed:
        out.write(f"failed ({len(failed)}):\n")
        for r in failed:
            out.write(f"  {r.source} -> {r.destination}: {r.error}\n")
    # Say why an image was skipped when it is not the usual "already there", and when an
    # index was pushed with a new digest: both surprise people reading only the summary.
    for r in results:
        if r.note and r.note != SAME_DIGEST:
            out.write(f"note: {r.destination}: {r.note}\n")


def _render_plan(results: Sequence[Result], summary: Summary, out: TextIO) -> None:
    for r in results:
        word = _PLAN_WORDS.get(r.status, r.status)
        extra = human_bytes(r.bytes) if r.status == SYNCED else (r.error or r.note or "")
        if r.status == SYNCED and r.note:
            extra += f"; {r.note}"
        out.write(f"{word:<8} {r.source} -> {r.destination}  {extra}\n".rstrip() + "\n")
    out.write(
        f"dry run: {summary.synced} to copy, {summary.skipped} to skip, "
        f"{summary.conflicts} conflicts, {summary.failed} errors; "
        f"{human_bytes(summary.bytes)} would move; nothing was written\n"
    )


def write_json(path: str, results: Sequence[Result], summary: Summary) -> None:
    doc = {"summary": asdict(summary), "images": [asdict(r) for r in results]}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


class ResultCollector(Observer):
    """Keeps every result of a run, in plan order, for the summary and the report."""

    def __init__(self) -> None:
        self.results: list[Result] = []

    def image_finished(self, result: Result) -> None:
        self.results.append(result)
