"""Results and the end-of-run report: a summary line, every failure, a JSON file."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .events import Observer

if TYPE_CHECKING:
    from .plan import PlanError, PlanItem

from .results import (
    CONFLICT,
    FAILED,
    INTERRUPTED,
    SAME_DIGEST,
    SKIPPED,
    SYNCED,
    Result,
)


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
    """The end of a run, read in two seconds: counts, bytes, time and rate on one line,
    then failures grouped by cause, then notes about images this run touched."""
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
        groups = group_by_cause(failed)
        causes = f", {len(groups)} causes" if 1 < len(groups) < len(failed) else ""
        out.write(f"failed ({len(failed)}{causes}):\n")
        for cause, members in groups:
            _render_group(cause, members, out, "  ")
    # Notes only for images this run touched (an index pushed with a new digest...): a
    # re-run that changes nothing says nothing more than its counts.
    for r in results:
        if r.status == SYNCED and r.note and r.note != SAME_DIGEST:
            out.write(f"note: {r.destination}: {r.note}\n")
    # Skips that are not "already there" (platform selection): one line per reason.
    unusual = [r for r in results if r.status == SKIPPED and r.note and r.note != SAME_DIGEST
               and not r.note.startswith("index digest changed")]
    for cause, members in group_by_cause(unusual):
        if len(members) == 1:
            out.write(f"skipped: {members[0].destination}: {members[0].note}\n")
        else:
            _render_group(cause, members, out, "skipped ")


_EXAMPLES = 3
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{6,64}")


def _render_group(cause: str, members: Sequence[Result], out: TextIO, indent: str) -> None:
    if len(members) == 1:
        r = members[0]
        out.write(f"{indent}{r.source} -> {r.destination}: {r.error or r.note}\n")
        return
    out.write(f"{indent}{len(members)} images: {cause}\n")
    pad = " " * (len(indent) + 4)
    for r in members[:_EXAMPLES]:
        out.write(f"{pad}{r.source} -> {r.destination}\n")
    if len(members) > _EXAMPLES:
        out.write(f"{pad}... and {len(members) - _EXAMPLES} more (--report lists all)\n")


def _names(ref: str) -> list[tuple[str, str]]:
    """Ways an image name shows up in an error, longest first, with their placeholder."""
    base = ref.split("@", 1)[0]
    repo, tag = base, ""
    if ":" in base.rsplit("/", 1)[-1]:
        repo, _, tag = base.rpartition(":")
    out = [(ref, "<image>"), (base, "<image>"), (repo, "<repository>")]
    if "/" in repo:
        out.append((repo.split("/", 1)[1], "<repository>"))
    if tag:
        out.append((tag, "<tag>"))
    return out


def cause_of(r: Result) -> str:
    """The error (or note) with the image's own names and digests taken out: results
    that failed for the same reason have the same cause."""
    text = r.error or r.note or ""
    for name, placeholder in sorted({*_names(r.source), *_names(r.destination)},
                                    key=lambda p: len(p[0]), reverse=True):
        if name:
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", placeholder, text)
    return _DIGEST_RE.sub("<digest>", text)


def group_by_cause(results: Sequence[Result]) -> list[tuple[str, list[Result]]]:
    """Results grouped by :func:`cause_of`, the largest group first."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(cause_of(r), []).append(r)
    return sorted(groups.items(), key=lambda g: -len(g[1]))


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


#: A dry run's report is a plan: these images would be copied or skipped, not were.
DRY_RUN_STATUS = {SYNCED: "would-copy", SKIPPED: "would-skip"}


def write_json(path: str, results: Sequence[Result], summary: Summary) -> None:
    images = [asdict(r) for r in results]
    head = asdict(summary)
    if summary.dry_run:  # a plan: "would-copy", never "synced", for images not copied
        for doc_ in images:
            doc_["status"] = DRY_RUN_STATUS.get(doc_["status"], doc_["status"])
        head.update(would_copy=summary.synced, would_skip=summary.skipped)
    doc = {"summary": head, "images": images}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


class ResultCollector(Observer):
    """Keeps every result of a run, in plan order, for the summary and the report."""

    def __init__(self) -> None:
        self.results: list[Result] = []

    def image_finished(self, result: Result) -> None:
        self.results.append(result)


def error_result(error: PlanError) -> Result:
    """A part of the config that could not be planned, as a failed image."""
    return Result(error.source, error.destination, FAILED, error=error.error)


class Tally(Observer):
    """Counts a run's results without keeping them all: memory stays flat however many
    images a run has. Keeps the results a person must see (failures, conflicts,
    interrupted images, notes) and, when asked, every result of one status (the
    success file), up to ``cap`` of each kind."""

    def __init__(self, cap: int = 10_000, keep: Sequence[str] = ()):
        self.counts: Counter[str] = Counter()
        self.bytes = 0
        self.notable: list[Result] = []
        self.kept: list[Result] = []
        self.dropped = 0  # notable results beyond the cap (still counted, still reported)
        self._cap = cap
        self._keep = set(keep)
        # (source, destination) -> its item while it runs; the items of failures stay,
        # so a failed-images file can repeat their options
        self._running: dict[tuple[str, str], PlanItem] = {}
        self.failed_items: dict[int, PlanItem] = {}

    def image_started(self, item: PlanItem) -> None:
        for d in item.destinations:
            self._running[(item.source, d)] = item

    def image_finished(self, result: Result) -> None:
        item = self._running.pop((result.source, result.destination), None)
        if item is not None and result.status in (FAILED, CONFLICT, INTERRUPTED):
            self.failed_items[item.seq] = item
        self.counts[result.status] += 1
        self.bytes += result.bytes
        if result.status in self._keep:
            if len(self.kept) < self._cap:
                self.kept.append(result)
            else:
                self.dropped += 1
        elif result.status in (FAILED, CONFLICT, INTERRUPTED) or (
                result.note and result.note != SAME_DIGEST):
            if len(self.notable) < self._cap:
                self.notable.append(result)
            else:
                self.dropped += 1

    def plan_error(self, error: PlanError) -> None:
        self.image_finished(error_result(error))

    def summary(self, seconds: float, dry_run: bool, empty_rules: Sequence[str]) -> Summary:
        n = self.counts
        return Summary(n[SYNCED], n[SKIPPED], n[FAILED], n[CONFLICT], self.bytes,
                       round(seconds, 3), dry_run, n[INTERRUPTED], list(empty_rules))


class ReportWriter(Observer):
    """Streams the JSON report: each result is written as it finishes (to a file beside
    the report), and :meth:`finish` puts the summary in front and renames it into
    place, so a report of a million images never lives in memory."""

    def __init__(self, path: str, dry_run: bool = False):
        self.path = Path(path)
        self.dry_run = dry_run
        self._part = self.path.with_name(f".{self.path.name}.part")
        self._out: TextIO | None = self._part.open("w", encoding="utf-8")
        self._first = True

    def image_finished(self, result: Result) -> None:
        if self._out is None:
            return
        doc = asdict(result)
        if self.dry_run:
            doc["status"] = DRY_RUN_STATUS.get(doc["status"], doc["status"])
        self._out.write(("    " if self._first else ",\n    ") + json.dumps(doc))
        self._first = False

    def plan_error(self, error: PlanError) -> None:
        self.image_finished(error_result(error))

    def finish(self, summary: Summary) -> None:
        """Write the report: ``{"summary": ..., "images": [...]}`` (as write_json)."""
        assert self._out is not None, "finish() once"
        self._out.close()
        self._out = None
        head = asdict(summary)
        if summary.dry_run:
            head.update(would_copy=summary.synced, would_skip=summary.skipped)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as out, self._part.open(encoding="utf-8") as part:
            out.write('{\n  "summary": ' + json.dumps(head) + ',\n  "images": [\n')
            while chunk := part.read(1 << 20):
                out.write(chunk)
            out.write("\n  ]\n}\n")
        tmp.replace(self.path)
        self._part.unlink(missing_ok=True)

    def abandon(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        self._part.unlink(missing_ok=True)


def read_json(path: str) -> tuple[list[Result], Summary]:
    """A report written by :func:`write_json` (dry-run statuses read back as they were)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    undo = {v: k for k, v in DRY_RUN_STATUS.items()}
    results = []
    for image in doc.get("images") or ():
        fields = {k: image.get(k) for k in Result.__dataclass_fields__}
        fields["status"] = undo.get(image["status"], image["status"])
        fields["bytes"] = fields["bytes"] or 0
        fields["seconds"] = fields["seconds"] or 0.0
        results.append(Result(**fields))
    head = doc.get("summary") or {}
    summary = Summary.of(results, float(head.get("seconds") or 0.0),
                         bool(head.get("dry_run")), head.get("empty_rules") or ())
    return results, summary


def merge(reports: Sequence[tuple[list[Result], Summary]]) -> tuple[list[Result], Summary]:
    """One report from the reports of the shards of one plan: every image once, counts
    recomputed, the wall time of the slowest shard."""
    results = [r for rs, _ in reports for r in rs]
    empty = sorted({k for _, s in reports for k in s.empty_rules})
    seconds = max((s.seconds for _, s in reports), default=0.0)
    return results, Summary.of(results, seconds, any(s.dry_run for _, s in reports), empty)


# -- image-syncer's image lists (--output-success-images) ---------------------------------

def pushed_images(results: Sequence[Result]) -> dict[str, list[str]]:
    """``{source: [destination, ...]}`` of every image this run pushed (not the skipped
    ones), as image-syncer's ``--output-success-images`` wrote it (destinations sorted);
    a destination pushed by digest only is written ``repository@digest``. The map is
    itself a valid images file (a digest destination equal to its source's digest is
    pushed by digest)."""
    out: dict[str, list[str]] = {}
    for r in results:
        if r.status != SYNCED:
            continue
        dest = r.destination
        last = dest.rsplit("/", 1)[-1]
        if "@" not in dest and ":" not in last and r.digest:
            dest = f"{dest}@{r.digest}"
        targets = out.setdefault(r.source, [])
        if dest not in targets:
            targets.append(dest)
    return {k: sorted(v) for k, v in out.items()}  # the same run, the same file


def images_text(doc: dict, fmt: str) -> str:
    """An images map as image-syncer wrote it: YAML (``src:\\n- dst``) or one JSON line;
    keys sorted, as Go's encoders sort map keys."""
    if fmt == "json":
        return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
    import yaml

    if not doc:
        return "{}\n"
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, width=1 << 16,
                          allow_unicode=True)
