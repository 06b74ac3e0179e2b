"""What a person (or a log pipeline) sees of a run: logs, progress, the final summary.

The CLI and ``imagesync serve`` build one :class:`Output` from their arguments; it owns
the log stream, the observer that shows progress, and the end-of-run summary. Nothing
else in imagesync writes to the terminal.

* On a terminal (stderr is a TTY): a live display (:mod:`imagesync.progress`) redrawn in
  place; log lines print above it, warnings and errors only unless ``-v``; with
  ``--log FILE`` every log line goes to the file instead.
* Elsewhere (CI, cron): log lines on stderr, and one plain progress line every
  ``--progress-interval`` seconds (a JSON object when the logs on stderr are JSON).
* ``--quiet``: errors and the summary only. ``--no-progress``: no progress at all.
* A server (``display=False``): logs and summaries, never a display or progress lines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from .events import Observer
from .log import Redactor, make_logger
from .report import render

if TYPE_CHECKING:
    from .progress import LiveDisplay, PeriodicLine, Progress, Snapshot
    from .session import Outcome

DEFAULT_INTERVAL = 30.0


def _interval(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be more than 0")
    return n


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--log", metavar="FILE",
                   help="write logs to this file (appended) instead of the terminal")
    g.add_argument("--log-format", choices=("console", "json"), default="console",
                   help="console: short readable lines (default); json: one JSON object "
                   "per line (time, level, action, source, destination, digest, bytes, "
                   "seconds, error)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="debug logs: every request (method, URL, status, time), secrets "
                   "masked")
    g.add_argument("--quiet", action="store_true",
                   help="print only errors and the summary: no progress, no info logs")
    g.add_argument("--progress-interval", type=_interval, default=DEFAULT_INTERVAL,
                   metavar="SECONDS", help="when not on a terminal, a progress line every "
                   f"SECONDS (default {DEFAULT_INTERVAL:g})")
    g.add_argument("--no-progress", action="store_true",
                   help="no live display on a terminal, no progress lines elsewhere")


class _Sink:
    """The file the logger prints to: the live display's console while it is up (so
    log lines land above it), the plain stream otherwise."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.display: LiveDisplay | None = None
        self._partial = ""  # print() writes a line and its newline separately

    def write(self, text: str) -> int:
        display = self.display
        if display is not None and display.running:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                display.print(line)
        else:
            if self._partial:
                text, self._partial = self._partial + text, ""
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        if self.display is None or not self.display.running:
            with contextlib.suppress(Exception):
                self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class Output(contextlib.AbstractContextManager["Output"]):
    """Logs, progress and summary for one command. ``with Output.from_args(...) as out``.

    ``display``: False for long-running servers (no live display, no progress lines).
    ``progress``: None decides from the terminal; True / False force it.
    """

    def __init__(self, redact: Redactor, *, log_file: str | None = None,
                 verbose: bool = False, stdout: TextIO | None = None,
                 stderr: TextIO | None = None, log_format: str = "console",
                 quiet: bool = False, progress: bool | None = None,
                 progress_interval: float = DEFAULT_INTERVAL, display: bool = True,
                 dry_run: bool = False):
        self.redact = redact
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._log_file = log_file
        self._verbose = verbose
        self.log_format = log_format
        self.quiet = quiet
        self.progress_interval = progress_interval
        self.dry_run = dry_run
        self._stack = contextlib.ExitStack()
        self.log: Any = None
        self.observer: Observer = Observer()
        self.progress: Progress | None = None
        self.display: LiveDisplay | None = None
        self._periodic: PeriodicLine | None = None
        self._sink = _Sink(self.stderr)
        self.terminal = _is_terminal(self.stderr)
        wants = (not quiet) if progress is None else progress
        #: "live", "lines" or None: how progress is shown.
        self.mode: str | None = None
        if display and wants:
            self.mode = "live" if self.terminal else "lines"

    @classmethod
    def from_args(cls, args: argparse.Namespace, redact: Redactor, **kw: Any) -> Output:
        no_progress = getattr(args, "no_progress", False)
        return cls(redact, log_file=getattr(args, "log", None),
                   verbose=getattr(args, "verbose", False),
                   log_format=getattr(args, "log_format", None) or "console",
                   quiet=getattr(args, "quiet", False),
                   progress=False if no_progress else None,
                   progress_interval=getattr(args, "progress_interval", None)
                   or DEFAULT_INTERVAL,
                   dry_run=getattr(args, "dry_run", False), **kw)

    def _level(self) -> str:
        if self._log_file:
            return "debug" if self._verbose else "info"
        if self._verbose:
            return "debug"
        if self.quiet:
            return "error"
        # Under a live display the display tells what happens: only what needs a look.
        return "warning" if self.mode == "live" else "info"

    def __enter__(self) -> Output:
        if self.log is not None:  # entered already (the CLI enters early to catch OSError)
            return self
        stream: Any = self._sink
        if self._log_file:
            # OSError propagates: the caller turns it into one line and exit 2.
            stream = self._stack.enter_context(open(self._log_file, "a", encoding="utf-8"))
        self.log = make_logger(self.redact, stream, self._verbose, fmt=self.log_format,
                               level=self._level(), timestamps=bool(self._log_file),
                               dry_run=self.dry_run)
        if self.mode is not None:
            self._start_progress()
        return self

    def _start_progress(self) -> None:
        from . import progress  # rich is only loaded when progress is shown

        self.progress = progress.Progress(dry_run=self.dry_run)
        self.observer = self.progress
        if self.mode == "live":
            from rich.console import Console

            console = Console(file=self.stderr, stderr=True, highlight=False)
            self.display = progress.LiveDisplay(self.progress, console)
            self._sink.display = self.display
            self.display.start()
        else:
            self._periodic = progress.PeriodicLine(self.progress, self.progress_interval,
                                                   self._progress_line)
            self._periodic.start()
        self._stack.callback(self._stop_progress)

    def _progress_line(self, s: Snapshot) -> None:
        from .progress import summary_line

        if self.log_format == "json" and not self._log_file:
            # stderr carries JSON logs: every line of it parses.
            self.log.info("progress", images_done=s.done, images_total=s.total,
                          failed=s.failed, bytes=s.bytes, rate=round(s.rate),
                          eta=None if s.eta is None else round(s.eta, 1),
                          in_flight=len(s.transfers), seconds=round(s.elapsed, 1))
            return
        print(summary_line(s), file=self.stderr, flush=True)

    def _stop_progress(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None
        if self.display is not None:
            self.display.stop()

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def notice(self, message: str) -> None:
        """A line for the person running imagesync (a signal received, ...)."""
        line = f"imagesync: {message}"
        if self.display is not None and self.display.running:
            self.display.print(line)
        else:
            print(line, file=self.stderr, flush=True)

    def summary(self, outcome: Outcome) -> None:
        """The end of a run: counts, bytes, time, failures; a plan for dry runs."""
        self._stop_progress()  # the display gives way to the summary
        for r in outcome.results:  # errors may quote a registry's or a helper's words
            r.error = self.redact(r.error) if r.error else r.error
            r.note = self.redact(r.note) if r.note else r.note
        render(outcome.results, outcome.summary, self.stdout)
        self.stdout.flush()


__all__ = ["Output", "add_output_arguments"]
