"""Logs that never carry a secret: short readable lines for people, JSON for pipelines.

Each run builds its own logger (no global structlog configuration), with a processor
that masks every credential the config holds and any Authorization header value, in
every format.

Console lines put the image and the action first::

    synced   src.io/app:v1 -> dst.io/app:v1  12.3 MiB 1.2s
    retrying GET http://src.io/v2/app/blobs/sha256:…  attempt=1 wait=0.5  error: reset

``--log-format json``: one object per line with ``time``, ``level``, ``action``, and for
images ``source``, ``destination``, ``digest``, ``bytes``, ``seconds``, ``error``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from .events import Observer
from .report import human_bytes

if TYPE_CHECKING:
    from .plan import PlanError
    from .report import Result

_AUTH_RE = re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+")
MASK = "***"
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
#: What a dry run's results mean: nothing was copied or skipped, it would be.
DRY_RUN_ACTIONS = {"synced": "would-copy", "skipped": "would-skip"}
IMAGE_FIELDS = ("source", "destination", "digest", "bytes", "seconds", "error")


class Redactor:
    """Replaces known secrets and Authorization values inside any text."""

    def __init__(self, secrets: Iterable[str] = ()):
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def add(self, *secrets: str) -> None:
        """Mask these too from now on: credentials obtained during the run (Docker config,
        credential helpers, cloud tokens) are added as soon as they are known."""
        new = {s for s in secrets if s and len(s) >= 3} - set(self._secrets)
        if new:
            self._secrets = sorted({*self._secrets, *new}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, MASK)
        return _AUTH_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)

    def processor(self, _logger: Any, _name: str, event: dict) -> dict:
        return {k: self(v) if isinstance(v, str) else v for k, v in event.items()}


def _value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return json.dumps(s) if (not s or any(c.isspace() for c in s)) else s


_REQUEST_ERROR = re.compile(r"([A-Z]+) (?:https?://)?(\S+?): (.+)", re.S)


def _after_request(subject: str, error: str) -> str:
    m = _REQUEST_ERROR.match(error)
    if m and subject.startswith(m.group(1) + " ") and subject.endswith(m.group(2)):
        return m.group(3)
    return error


class ConsoleRenderer:
    """``action  subject  details  key=value...  error: ...``, one short line per event.

    ``timestamps``: prefix the time and the level (log files); a terminal gets neither.
    """

    def __init__(self, timestamps: bool = False):
        self.timestamps = timestamps

    def __call__(self, _logger: Any, _name: str, ev: dict[str, Any]) -> str:
        ev = dict(ev)
        action = str(ev.pop("event", ""))
        level = ev.pop("level", "info")
        stamp = ev.pop("timestamp", None)
        parts: list[str] = []
        source, dest = ev.pop("source", None), ev.pop("destination", None)
        if source and dest:
            parts.append(f"{source} -> {dest}")
        elif source or dest:
            parts.append(str(source or dest))
        if "method" in ev and "url" in ev:  # a request: method, path, status, time
            request = f"{ev.pop('method')} {ev.pop('url')}"
            if "status" in ev:
                request += f" {ev.pop('status')}"
            parts.append(request)
        for key in ("what", "registry", "rule"):
            if ev.get(key):
                parts.append(str(ev.pop(key)))
        size = ev.pop("bytes", None)
        seconds = ev.pop("seconds", None)
        details = []
        if size:
            details.append(human_bytes(size))
        if seconds is not None:
            details.append(f"{seconds:.1f}s" if seconds >= 0.1 else f"{seconds * 1000:.0f}ms")
        ev.pop("digest", None)  # in the report and the JSON logs: too long for a line
        error, note = ev.pop("error", None), ev.pop("note", None)
        if error and parts:  # "GET url: 503" after "GET url": say "503" once
            error = _after_request(parts[-1], str(error))
        line = f"{action:<8} " + "  ".join(parts)
        if details:
            line += "  " + " ".join(details)
        rest = " ".join(f"{k}={_value(v)}" for k, v in ev.items() if v is not None)
        if rest:
            line += "  " + rest
        if note:
            line += f"  ({note})"
        if error:
            line += f"  error: {error}"
        if self.timestamps:
            line = f"{stamp} {level:<7} {line}"
        return line.rstrip()


def _json_renderer(_logger: Any, _name: str, ev: dict[str, Any]) -> str:
    doc: dict[str, Any] = {"time": ev.pop("timestamp", None), "level": ev.pop("level", None),
                           "action": ev.pop("event", None)}
    if "source" in ev or "destination" in ev:  # an image: every field, null when unknown
        doc.update({k: ev.pop(k, None) for k in IMAGE_FIELDS})
    doc.update(ev)
    return json.dumps(doc, default=str)


def _dry_run(_logger: Any, _name: str, ev: dict[str, Any]) -> dict[str, Any]:
    """A dry run copies nothing: its results say what a run would do."""
    if "destination" in ev and ev.get("event") in DRY_RUN_ACTIONS:
        ev["event"] = DRY_RUN_ACTIONS[ev["event"]]
    return ev


def make_logger(redact: Redactor, stream: TextIO | None = None, verbose: bool = False, *,
                fmt: str = "console", level: str | None = None, timestamps: bool = False,
                dry_run: bool = False) -> Any:
    """A logger writing to ``stream``: ``fmt`` ``console`` or ``json``; ``level`` the
    least that is written (default ``debug`` with ``verbose``, else ``info``)."""
    threshold = LEVELS[level] if level else (10 if verbose else 20)
    renderer = _json_renderer if fmt == "json" else ConsoleRenderer(timestamps)
    processors: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if dry_run:
        processors.append(_dry_run)
    processors += [redact.processor, renderer]
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=True,
    )


class LogObserver(Observer):
    """Logs what a run does: one line per finished image, plan errors, failures."""

    def __init__(self, log: Any):
        self.log = log

    def plan_error(self, error: PlanError) -> None:
        self.log.error("failed", source=error.source, destination=error.destination,
                       digest=None, bytes=0, seconds=0.0, error=error.error)

    def image_finished(self, result: Result) -> None:
        level = {"failed": "error", "conflict": "error", "skipped": "debug",
                 "interrupted": "warning"}.get(result.status, "info")
        extra = {"note": result.note} if result.note else {}
        getattr(self.log, level)(result.status, source=result.source,
                                 destination=result.destination, digest=result.digest,
                                 bytes=result.bytes, seconds=result.seconds,
                                 error=result.error, **extra)
