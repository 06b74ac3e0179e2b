"""Run a tool as a child process and measure it: wall time, CPU (user+sys), peak RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measurement:
    tool: str
    wall: float        # seconds
    user: float        # CPU seconds in user mode (all threads of the child)
    sys: float         # CPU seconds in the kernel
    rss_mb: float      # peak resident set size, 10^6 bytes (ru_maxrss)
    returncode: int
    log: Path
    timed_out: bool = False
    steal_pct: float = 0.0  # share of the machine's CPU time the hypervisor took meanwhile

    @property
    def cpu(self) -> float:
        return self.user + self.sys


LAUNCHER = Path(__file__).with_name("_launch.py")


def cpu_counters() -> tuple[int, int]:
    """(all jiffies, steal jiffies) of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), steal


def run_measured(tool: str, cmd: Sequence[str], log: Path, *, timeout: float = 900,
                 env: dict[str, str] | None = None) -> Measurement:
    """``cmd`` with stdout+stderr to ``log``; wall, CPU and peak RSS of exactly that
    process, from ``wait4`` in a small launcher (see ``_launch.py`` for why)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    usage_file = log.with_suffix(".rusage")
    usage_file.unlink(missing_ok=True)
    timed_out = threading.Event()
    total0, steal0 = cpu_counters()
    with log.open("wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(LAUNCHER), str(usage_file),
                                 *cmd], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            returncode = proc.wait()
        except BaseException:  # interrupted: take the tool down with us
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.monotonic() - start
    total1, steal1 = cpu_counters()
    steal_pct = 100 * (steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0
    try:
        w, user, system, maxrss = usage_file.read_text().split()
        wall, utime, stime, rss_kib = float(w), float(user), float(system), int(maxrss)
    except (OSError, ValueError):  # killed: no numbers from the launcher
        utime = stime = 0.0
        rss_kib = 0
    return Measurement(
        tool=tool, wall=wall, user=utime, sys=stime,
        rss_mb=rss_kib * 1024 / 1e6,  # Linux reports KiB
        returncode=returncode, log=log, timed_out=timed_out.is_set(), steal_pct=steal_pct,
    )


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])
