"""What a person (or a log pipeline) sees of a run: logs, progress, the final summary.

The CLI and ``imagesync serve`` build one :class:`Output` from their arguments; it owns
the log stream, the observer that shows progress, and the end-of-run summary. Nothing
else in imagesync writes to the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any, TextIO

from .events import Observer
from .log import Redactor, make_logger
from .report import render

if TYPE_CHECKING:
    from .session import Outcome


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", metavar="FILE", help="write logs here instead of stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs")


class Output(contextlib.AbstractContextManager["Output"]):
    """Logs, progress and summary for one command. ``with Output.from_args(...) as out``."""

    def __init__(self, redact: Redactor, *, log_file: str | None = None,
                 verbose: bool = False, stdout: TextIO | None = None,
                 stderr: TextIO | None = None):
        self.redact = redact
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._log_file = log_file
        self._verbose = verbose
        self._stack = contextlib.ExitStack()
        self.log: Any = None
        self.observer: Observer = Observer()

    @classmethod
    def from_args(cls, args: argparse.Namespace, redact: Redactor) -> Output:
        return cls(redact, log_file=getattr(args, "log", None),
                   verbose=getattr(args, "verbose", False))

    def __enter__(self) -> Output:
        stream = self.stderr
        if self._log_file:
            # OSError propagates: the caller turns it into one line and exit 2.
            stream = self._stack.enter_context(open(self._log_file, "a", encoding="utf-8"))
        self.log = make_logger(self.redact, stream, self._verbose)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def notice(self, message: str) -> None:
        """A line for the person running imagesync (a signal received, ...)."""
        print(f"imagesync: {message}", file=self.stderr, flush=True)

    def summary(self, outcome: Outcome) -> None:
        """The end of a run: counts, bytes, time, failures; a plan for dry runs."""
        for r in outcome.results:  # errors may quote a registry's or a helper's words
            r.error = self.redact(r.error) if r.error else r.error
            r.note = self.redact(r.note) if r.note else r.note
        render(outcome.results, outcome.summary, self.stdout)
