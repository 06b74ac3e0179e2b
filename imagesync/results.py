"""What happened to one destination image: plain data shared by the copier, the
scheduler, the observers and the report."""

from __future__ import annotations

from dataclasses import dataclass

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
