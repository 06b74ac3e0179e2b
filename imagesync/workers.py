"""``--workers N``: one plan split across N local processes, to use every core.

Each worker is ``imagesync`` itself with ``--shard I/N`` (the same split a Kubernetes
Indexed Job makes across machines) and one shared ``--timestamp``, so every worker
computes the same plan and copies its share; this process waits for them, forwards
Ctrl-C / SIGTERM, and merges their reports into one summary and one report.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .report import Result, Summary, merge, read_json


async def run_workers(argv: Sequence[str], count: int, *, timestamp: float
                      ) -> tuple[list[Result], Summary, list[int]]:
    """Run ``imagesync argv --shard I/count`` for every I; returns the merged report and
    the workers' exit codes. ``argv`` must not hold --report, --shard or --workers."""
    with tempfile.TemporaryDirectory(prefix="imagesync-workers-") as tmp:
        reports = [Path(tmp) / f"shard-{i}.json" for i in range(count)]
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "imagesync", *argv, "--shard", f"{i}/{count}",
            "--timestamp", repr(timestamp), "--report", str(reports[i]), "--quiet",
            "--no-progress", stdout=asyncio.subprocess.DEVNULL)
            for i in range(count)]
        loop = asyncio.get_running_loop()

        def forward(signum: int) -> None:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, forward, signum)
        try:
            codes = [await p.wait() for p in procs]
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signum)
        parts = [read_json(str(r)) for r in reports if r.exists()]
    results, summary = merge(parts)
    return results, summary, codes


def exit_code(codes: Sequence[int], summary: Summary) -> int:
    """2 if a worker refused its arguments, a signal's code if one was stopped, else the
    merged summary's."""
    if 2 in codes:
        return 2
    stopped = [c for c in codes if c in (130, 143)]
    if stopped:
        return stopped[0]
    return max(summary.exit_code, max(codes, default=0) if any(codes) else 0)
