"""Structured logs that never carry a secret.

Each run builds its own logger (no global structlog configuration), with a processor
that masks every credential the config holds and any Authorization header value.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from .events import Observer

if TYPE_CHECKING:
    from .plan import PlanError
    from .report import Result

_AUTH_RE = re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+")
MASK = "***"


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


def make_logger(redact: Redactor, stream: TextIO | None = None, verbose: bool = False) -> Any:
    level = 10 if verbose else 20
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact.processor,
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )


class LogObserver(Observer):
    """Logs what a run does: one line per finished image, plan errors, failures."""

    def __init__(self, log: Any):
        self.log = log

    def plan_error(self, error: PlanError) -> None:
        self.log.error("failed", source=error.source, destination=error.destination,
                       error=error.error)

    def image_finished(self, result: Result) -> None:
        level = {"failed": "error", "conflict": "error", "skipped": "debug",
                 "interrupted": "warning"}.get(result.status, "info")
        extra = {k: v for k, v in (("error", result.error), ("note", result.note)) if v}
        getattr(self.log, level)(result.status, source=result.source,
                                 destination=result.destination, digest=result.digest,
                                 bytes=result.bytes, **extra)
