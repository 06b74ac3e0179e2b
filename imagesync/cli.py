"""The command line: arguments -> config -> session -> report; exit 0, 1 or 2.

Ctrl-C or SIGTERM stops a run cleanly: nothing new starts, images in flight stop
without their manifests, the summary and the report say what was done and what was
interrupted, and the exit status is 130 (SIGINT) or 143 (SIGTERM). A second signal
stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .config import Config, load
from .dockerconfig import DockerConfig
from .errors import ConfigError
from .log import Redactor
from .output import Output, add_output_arguments
from .report import write_json
from .rules import Defaults
from .session import Outcome, Session, Settings
from .upload import MONOLITHIC_MAX

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        self.exit(EXIT_USAGE, f"imagesync: {message} (see imagesync --help)\n")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="imagesync",
        description="Copy container images between registries, driven by one config file.",
        epilog="Exit codes: 0 all synced or skipped, 1 some images failed, 2 bad config "
               "or arguments.",
    )
    p.add_argument("--config", metavar="FILE", help="one file with 'auth' and 'images' "
                   "(.json, .yaml or .yml)")
    p.add_argument("--auth", metavar="FILE", help="image-syncer style auth file")
    p.add_argument("--images", metavar="FILE", help="image-syncer style images file")
    p.add_argument("--proc", type=_positive, default=8, metavar="N",
                   help="concurrent network operations (default 8)")
    p.add_argument("--retries", type=_positive, default=3, metavar="N",
                   help="retries per request after transient failures (default 3)")
    p.add_argument("--force", action="store_true",
                   help="re-push manifests even when the destination has the same digest")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (copy / skip / conflict, bytes) and write nothing")
    p.add_argument("--os", action="append", default=[], metavar="OS",
                   help="copy only these OSes from multi-platform images (repeatable)")
    p.add_argument("--arch", action="append", default=[], metavar="ARCH[:VARIANT]",
                   help="copy only these architectures (repeatable), e.g. arm64 or arm:v7")
    p.add_argument("--per-registry", type=_positive, default=0, metavar="N",
                   help="at most N connections to any one registry (default: no cap "
                   "beyond --proc)")
    p.add_argument("--chunk-size", type=_positive, default=MONOLITHIC_MAX, metavar="BYTES",
                   help="blobs above this size are uploaded in resumable chunks of this "
                   f"size (default {MONOLITHIC_MAX >> 20} MiB)")
    p.add_argument("--timeout", type=_positive, default=60, metavar="SECONDS",
                   help="a request that gets no byte for this long has stalled and is "
                   "retried (default 60)")
    p.add_argument("--report", metavar="FILE", help="write a JSON report here")
    p.add_argument("--registry", default=os.environ.get("DEFAULT_REGISTRY"),
                   help="default registry for empty destinations (env DEFAULT_REGISTRY)")
    p.add_argument("--namespace", default=os.environ.get("DEFAULT_NAMESPACE"),
                   help="default namespace for empty destinations (env DEFAULT_NAMESPACE)")
    add_output_arguments(p)
    p.add_argument("--version", action="version", version=f"imagesync {__version__}")
    return p


def _check_writable(path: str) -> str | None:
    """Why ``path`` cannot be written (checked before a long run, not after), or None."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        return "is a directory"
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        return f"directory {parent} does not exist"
    if os.path.exists(target) and not os.access(target, os.W_OK):
        return "permission denied"
    if not os.path.exists(target) and not os.access(parent, os.W_OK):
        return f"cannot create files in {parent}: permission denied"
    return None


async def _run(cfg: Config, settings: Settings, out: Output
               ) -> tuple[Outcome, int | None]:
    """One sync in a session; returns the outcome and the signal that stopped it."""
    caught: list[int] = []

    async with contextlib.AsyncExitStack() as stack:
        session = Session(settings, out.log, entries=cfg.auth, on_secret=out.redact.add)
        await stack.enter_async_context(session)
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()

        def on_signal(signum: int) -> None:
            if caught and main_task is not None:  # a second signal: stop at once
                main_task.cancel()
                return
            caught.append(signum)
            out.notice(f"{signal.Signals(signum).name} received: stopping; images in "
                       "flight are not pushed (send it again to stop at once)")
            session.stop()

        for signum in EXIT_SIGNAL:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, on_signal, signum)
                stack.callback(loop.remove_signal_handler, signum)
        outcome = await session.sync(cfg.rules, observer=out.observer)
    return outcome, caught[0] if caught else None


#: Subcommands: name -> "module:function" taking the remaining arguments.
COMMANDS: dict[str, str] = {
    "serve": "imagesync.serve:main",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module, _, func = COMMANDS[argv[0]].partition(":")
        return int(getattr(importlib.import_module(module), func)(argv[1:]))
    return sync_main(argv)


def sync_main(argv: Sequence[str]) -> int:
    """``imagesync [sync] --config FILE ...``: the default command."""
    args = build_parser().parse_args(argv)
    if args.proc == 0:
        print("imagesync: --proc must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.config and (args.auth or args.images):
        print("imagesync: give --config, or --auth/--images, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.report and (why := _check_writable(args.report)):
        print(f"imagesync: --report {args.report}: {why}", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = load(args.config, args.auth, args.images,
                   Defaults(args.registry, args.namespace, tuple(args.os), tuple(args.arch)))
        DockerConfig.load()  # a broken Docker config.json is exit 2, up front
    except ConfigError as e:
        print(f"imagesync: {e}", file=sys.stderr)
        return EXIT_USAGE
    # Every credential known now, and every one obtained later (Docker config,
    # credential helpers, cloud tokens), is masked in logs and in the report.
    redact = Redactor()
    try:
        out = Output.from_args(args, redact).__enter__()
    except OSError as e:
        print(f"imagesync: --log {args.log}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    with out:
        for warning in cfg.warnings:
            out.log.warning("config", note=warning)
        settings = Settings(proc=args.proc, retries=args.retries, force=args.force,
                            dry_run=args.dry_run, chunk_size=args.chunk_size or MONOLITHIC_MAX,
                            per_registry=args.per_registry, timeout=args.timeout)
        try:
            outcome, stopped_by = asyncio.run(_run(cfg, settings, out))
        except (KeyboardInterrupt, asyncio.CancelledError):
            out.notice("stopped at once; the report was not written")
            return 130
        out.summary(outcome)
    if args.report:
        try:
            write_json(args.report, outcome.results, outcome.summary)
        except OSError as e:
            print(f"imagesync: --report {args.report}: {e.strerror}", file=sys.stderr)
            return EXIT_USAGE
    if stopped_by is not None:
        return EXIT_SIGNAL.get(signal.Signals(stopped_by), 130)
    return outcome.summary.exit_code


def run() -> NoReturn:
    sys.exit(main())
