"""Results and the end-of-run report: a summary line, every failure, a JSON file."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

SYNCED, SKIPPED, FAILED = "synced", "skipped", "failed"


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
    bytes: int
    seconds: float

    @classmethod
    def of(cls, results: Sequence[Result], seconds: float) -> Summary:
        n = Counter(r.status for r in results)
        return cls(n[SYNCED], n[SKIPPED], n[FAILED], sum(r.bytes for r in results), seconds)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(results: Sequence[Result], summary: Summary, out: TextIO) -> None:
    rate = summary.bytes / summary.seconds if summary.seconds > 0 else 0
    out.write(
        f"imagesync: {summary.synced} synced, {summary.skipped} skipped, "
        f"{summary.failed} failed; {human_bytes(summary.bytes)} moved in "
        f"{summary.seconds:.1f}s ({human_bytes(rate)}/s)\n"
    )
    failed = [r for r in results if r.status == FAILED]
    if failed:
        out.write(f"failed ({len(failed)}):\n")
        for r in failed:
            out.write(f"  {r.source} -> {r.destination}: {r.error}\n")


def write_json(path: str, results: Sequence[Result], summary: Summary) -> None:
    doc = {"summary": asdict(summary), "images": [asdict(r) for r in results]}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
