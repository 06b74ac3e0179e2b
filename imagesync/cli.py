"""The command line: arguments -> config -> session -> report; exit 0, 1 or 2.

``imagesync [sync] --config FILE ...`` is the default command; ``copy``, ``tags``,
``digest`` and ``verify`` (:mod:`imagesync.commands`) and ``serve`` are the others.

image-syncer's flags are accepted as its users type them (cobra/pflag syntax): ``-p 6``,
``-r 3``, ``--force=true``, ``--output-success-images FILE``, ``--records FILE``
(ignored, with a warning).

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
import tempfile
import time
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, plugin
from .config import Config, load, load_document
from .copier import BlobLedger
from .dockerconfig import DockerConfig
from .errors import ConfigError
from .events import Observers
from .log import Redactor
from .output import Output, add_output_arguments
from .plan import Plan, Shard
from .report import SKIPPED, SYNCED, ReportWriter, merge, read_json, render, write_json
from .rules import Defaults
from .session import Outcome, Session, Settings
from .upload import MONOLITHIC_MAX
from .workers import exit_code as worker_exit_code
from .workers import run_workers

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: ``imagesync`` with no arguments and PLUGIN_SOURCE / PLUGIN_DESTINATION set copies that
#: image (Drone, Woodpecker, Harness plugin steps); see plugin.py.
PLUGIN_MODE = True
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}

#: pflag's boolean values (``strconv.ParseBool``), for ``--force=false`` and friends.
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return n


def usage_error(prog: str, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_USAGE


def bool_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """pflag's ``--flag=true|false`` for every boolean flag of ``parser``: ``--force=true``
    becomes ``--force``, ``--force=false`` ``--no-force`` (or, for a flag without a
    negative form, drops the ``--force`` given before it). Any other value: ConfigError."""
    flags: dict[str, str | None] = {}
    for action in parser._actions:
        if isinstance(action, argparse.BooleanOptionalAction):
            for opt in action.option_strings:
                if opt.startswith("--") and not opt.startswith("--no-"):
                    flags[opt] = f"--no-{opt[2:]}"
        elif isinstance(action, argparse._StoreTrueAction):
            for opt in action.option_strings:
                if opt.startswith("--"):
                    flags[opt] = None
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        name, eq, value = arg.partition("=")
        if eq and name in flags:
            if value in _TRUE:
                out.append(name)
            elif value in _FALSE:
                negative = flags[name]
                if negative:
                    out.append(negative)
                else:  # the last one wins, as in pflag
                    out = [a for a in out if a != name]
            else:
                raise ConfigError(None, name, f"{value!r} is not a boolean: give "
                                  f"{name}=true or {name}=false")
        else:
            out.append(arg)
    return out


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Where the rules come from: ``--config``, or image-syncer's ``--auth`` + ``--images``."""
    p.add_argument("--config", metavar="FILE", help="one file with 'auth' and 'images' "
                   "(.json, .yaml or .yml; '-': standard input)")
    p.add_argument("--auth", metavar="FILE", help="image-syncer style auth file")
    p.add_argument("--images", metavar="FILE", help="image-syncer style images file")
    p.add_argument("--registry", default=os.environ.get("DEFAULT_REGISTRY"),
                   help="default registry for empty destinations (env DEFAULT_REGISTRY); "
                   "alone: the registry plus the source's path (image-syncer v1.5.0)")
    p.add_argument("--namespace", default=os.environ.get("DEFAULT_NAMESPACE"),
                   help="with --registry: default namespace for empty destinations "
                   "(env DEFAULT_NAMESPACE; image-syncer v1.0-v1.4)")


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--proc", type=_positive, default=64, metavar="N",
                   help="at most N requests in flight per registry; below that each "
                   "registry's queue finds its own concurrency (default 64)")
    p.add_argument("-r", "--retries", type=_positive, default=3, metavar="N",
                   help="retries per request after transient failures (default 3)")
    p.add_argument("--timeout", type=_positive, default=60, metavar="SECONDS",
                   help="a request that gets no byte for this long has stalled and is "
                   "retried (default 60)")


def add_platform_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--os", action="append", default=[], metavar="OS",
                   help="copy only these OSes from multi-platform images (repeatable)")
    p.add_argument("--arch", action="append", default=[], metavar="ARCH[:VARIANT]",
                   help="copy only these architectures (repeatable), e.g. arm64 or arm:v7")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What a copying run takes, for ``sync`` and ``copy`` alike."""
    add_network_arguments(p)
    p.add_argument("--force", action="store_true",
                   help="re-push manifests even when the destination has the same digest "
                   "(also --force=true / --force=false)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (copy / skip / conflict, bytes) and write nothing")
    add_platform_arguments(p)
    p.add_argument("--per-registry", type=_positive, default=0, metavar="N",
                   help="exactly N requests in flight per registry: a fixed limit, no "
                   "adaptation (default: adaptive up to --proc)")
    p.add_argument("--chunk-size", type=_positive, default=MONOLITHIC_MAX, metavar="BYTES",
                   help="blobs above this size are uploaded in resumable chunks of this "
                   f"size (default {MONOLITHIC_MAX >> 20} MiB)")
    p.add_argument("--report", metavar="FILE", help="write a JSON report here")
    p.add_argument("--referrers", action="store_true",
                   help="copy the signatures, SBOMs and attestations attached to each image "
                   "(every rule; per rule: referrers: true)")
    p.add_argument("--strict", action="store_true",
                   help="a rule whose regex, filter or wildcard matched nothing is an "
                   "error (exit 1)")
    g = p.add_argument_group("image lists (image-syncer's --output-success-images)")
    g.add_argument("--output-success-images", metavar="FILE",
                   help="write {source: [destinations]} of every image pushed by this run "
                   "(not the skipped ones)")
    g.add_argument("--output-failed-images", metavar="FILE",
                   help="write the images that failed, as an images file: "
                   "'imagesync --images FILE' retries exactly those")
    g.add_argument("--output-images-format", choices=("yaml", "json"), default="yaml",
                   help="format of those files (default yaml)")
    g.add_argument("--records", metavar="FILE", help=argparse.SUPPRESS)


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("beyond one process")
    g.add_argument("--shard", metavar="I/N", default=None,
                   help="copy this process's share of the plan, by destination repository "
                   "(default from JOB_COMPLETION_INDEX and IMAGESYNC_SHARDS)")
    g.add_argument("--workers", type=_positive, default=0, metavar="N",
                   help="split the plan across N local processes; one summary and report")
    g.add_argument("--timestamp", type=float, default=None, metavar="EPOCH",
                   help="the time {timestamp} and {date} stand for (default: now); give "
                   "every shard of one plan the same")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="imagesync",
        description="Copy container images between registries, driven by one config file.",
        epilog="Commands: sync (the default), copy SRC DST, tags REPO, digest REF, "
               "verify, serve; 'imagesync COMMAND --help' for each. "
               "Exit codes: 0 all synced or skipped, 1 some images failed, 2 bad config "
               "or arguments.",
    )
    add_config_arguments(p)
    add_run_arguments(p)
    add_split_arguments(p)
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


def check_run_arguments(args: argparse.Namespace, prog: str = "imagesync") -> str | None:
    """The one-line reason a run's arguments are unusable, or None."""
    if args.proc == 0:
        return "--proc must be at least 1"
    for flag in ("report", "output_success_images", "output_failed_images"):
        path = getattr(args, flag, None)
        if path and (why := _check_writable(path)):
            return f"--{flag.replace('_', '-')} {path}: {why}"
    return None


def platform_defaults(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...],
                                                         list[str]]:
    """``--os``/``--arch`` values, and warnings: image-syncer's ``os:osversion`` items
    keep the OS only (imagesync does not filter on os.version)."""
    oses, warnings = [], []
    for o in args.os:
        name, sep, version = o.partition(":")
        if sep:
            warnings.append(f"--os {o}: the OS version ({version}) is not filtered on; "
                            f"copying every {name} image")
        oses.append(name)
    return tuple(oses), tuple(args.arch), warnings


async def _run(cfg: Config, settings: Settings, out: Output, *, shard: Shard | None = None,
               now: float | None = None, report: ReportWriter | None = None,
               keep: Sequence[str] = ()) -> tuple[Outcome, int | None]:
    """One sync in a session; returns the outcome and the signal that stopped it. The
    results stream to ``report``; the outcome keeps what the summary shows, and the
    results of the statuses in ``keep``."""
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
        observer = Observers([out.observer, report]) if report else out.observer
        outcome = await session.sync(cfg.rules, observer=observer, shard=shard, now=now,
                                     keep_results=False, keep=keep)
    return outcome, caught[0] if caught else None


#: Subcommands: name -> "module:function" taking the remaining arguments.
COMMANDS: dict[str, str] = {
    "sync": "imagesync.cli:sync_main",
    "copy": "imagesync.commands:copy_main",
    "cp": "imagesync.commands:copy_main",
    "tags": "imagesync.commands:tags_main",
    "ls": "imagesync.commands:tags_main",
    "digest": "imagesync.commands:digest_main",
    "verify": "imagesync.commands:verify_main",
    "serve": "imagesync.serve:main",
    "report": "imagesync.cli:report_main",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module, _, func = COMMANDS[argv[0]].partition(":")
        return int(getattr(importlib.import_module(module), func)(argv[1:]))
    return sync_main(argv)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args`` with pflag's ``--flag=BOOL``; exits 2 on bad input."""
    try:
        argv = bool_flags(argv, parser)
    except ConfigError as e:
        parser.error(str(e))
    return parser.parse_args(argv)


def sync_main(argv: Sequence[str]) -> int:
    """``imagesync [sync] --config FILE ...``: the default command."""
    args = parse(build_parser(), argv)
    if why := check_run_arguments(args):
        return usage_error("imagesync", why)
    if args.config and (args.auth or args.images):
        return usage_error("imagesync", "give --config, or --auth/--images, not both")
    oses, archs, warnings = platform_defaults(args)
    defaults = Defaults(args.registry, args.namespace, oses, archs, args.referrers)
    try:
        doc = (None if args.config or args.auth or args.images
               else plugin.plugin_document(os.environ))
        if doc is not None:  # a CI plugin step: PLUGIN_SOURCE, PLUGIN_DESTINATION, ...
            warnings += plugin.unknown_settings(os.environ)
            cfg = load_document(doc, plugin.WHERE, defaults, expand=False)
        else:
            cfg = load(args.config, args.auth, args.images, defaults)
        DockerConfig.load()  # a broken Docker config.json is exit 2, up front
        shard = Shard.parse(args.shard) if args.shard else Shard.from_environment()
    except ConfigError as e:
        return usage_error("imagesync", str(e))
    if args.workers > 1:
        if shard is not None or args.config == "-" or args.images == "-" or doc is not None:
            return usage_error("imagesync", "--workers reads the config from a file and "
                               "splits it itself: drop --shard and stdin")
        return workers_main(argv, args, cfg, warnings)
    if args.records:
        warnings.append(f"--records {args.records} ignored: imagesync asks the destination "
                        "which blobs it has, no record file is needed")
    return run_config(cfg, args, warnings, shard=shard)


def run_config(cfg: Config, args: argparse.Namespace, warnings: Sequence[str] = (),
               prog: str = "imagesync", shard: Shard | None = None) -> int:
    """Run a loaded config with a run's arguments (:func:`add_run_arguments`): logs,
    summary, report, image lists, ``--strict``. Returns the exit status."""
    from .commands import write_image_lists

    # Every credential known now, and every one obtained later (Docker config,
    # credential helpers, cloud tokens), is masked in logs and in the report.
    redact = Redactor()
    try:
        out = Output.from_args(args, redact).__enter__()
    except OSError as e:
        return usage_error(prog, f"--log {args.log}: {e.strerror}")
    with out:
        for warning in cfg.warnings:
            out.log.warning("config", note=warning)
        for warning in warnings:
            out.log.warning("arguments", note=warning)
        settings = Settings(proc=args.proc, retries=args.retries, force=args.force,
                            dry_run=args.dry_run, chunk_size=args.chunk_size or MONOLITHIC_MAX,
                            per_registry=args.per_registry, timeout=args.timeout)
        report = ReportWriter(args.report, args.dry_run) if args.report else None
        keep: tuple[str, ...] = ()
        if args.dry_run:  # the plan lists every image (the first 10,000; all in --report)
            keep = (SYNCED, SKIPPED)
        elif getattr(args, "output_success_images", None):
            keep = (SYNCED,)
        try:
            outcome, stopped_by = asyncio.run(_run(
                cfg, settings, out, shard=shard, now=getattr(args, "timestamp", None),
                report=report, keep=keep))
        except (KeyboardInterrupt, asyncio.CancelledError):
            if report is not None:
                report.abandon()
            out.notice("stopped at once; the report was not written")
            return 130
        out.summary(outcome)
    if report is not None:
        try:
            report.finish(outcome.summary)
        except OSError as e:
            return usage_error(prog, f"--report {args.report}: {e.strerror}")
    try:
        write_image_lists(args, cfg, outcome)
    except OSError as e:
        return usage_error(prog, f"{e.filename}: {e.strerror}")
    if stopped_by is not None:
        return EXIT_SIGNAL.get(signal.Signals(stopped_by), 130)
    code = outcome.summary.exit_code
    if args.strict and outcome.summary.empty_rules:
        for key in outcome.summary.empty_rules:
            print(f"{prog}: --strict: rule {key!r} matched nothing", file=sys.stderr)
        code = max(code, EXIT_FAILED)
    return code


def run() -> NoReturn:
    sys.exit(main())


def workers_main(argv: Sequence[str], args: argparse.Namespace, cfg: Config,
                 warnings: Sequence[str]) -> int:
    """``--workers N``: the plan split across N local processes (``--shard I/N`` each, one
    shared ``--timestamp``); one merged summary, report and image lists."""
    from .commands import write_image_lists

    child = _without(argv, {"--workers", "--report", "--output-success-images",
                            "--output-failed-images", "--timestamp", "--log"})
    if args.output_success_images or args.output_failed_images:
        child += ["--output-images-format", args.output_images_format]
    redact = Redactor()
    with Output.from_args(args, redact) as out:
        for warning in [*cfg.warnings, *warnings]:
            out.log.warning("config", note=warning)
        now = args.timestamp if args.timestamp is not None else time.time()
        results, summary, codes = asyncio.run(
            run_workers(child, args.workers, timestamp=now))
        outcome = Outcome(results, summary, Plan(), BlobLedger())
        out.summary(outcome)
    if args.report:
        write_json(args.report, results, summary)
    write_image_lists(args, cfg, outcome)
    return worker_exit_code(codes, summary)


def _without(argv: Sequence[str], flags: set[str]) -> list[str]:
    """``argv`` without these options and their values (``--flag V`` or ``--flag=V``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def report_main(argv: Sequence[str]) -> int:
    """``imagesync report merge R1.json R2.json ... > all.json``: one report from the
    reports of the shards of one plan, and its summary on stderr."""
    p = _Parser(prog="imagesync report", description="Work with JSON reports.")
    sub = p.add_subparsers(dest="action", required=True)
    m = sub.add_parser("merge", help="merge the reports of the shards of one plan")
    m.add_argument("reports", nargs="+", metavar="REPORT")
    m.add_argument("-o", "--output", metavar="FILE", help="write here, not to stdout")
    args = p.parse_args(argv)
    parts = []
    for path in args.reports:
        try:
            parts.append(read_json(path))
        except OSError as e:
            return usage_error("imagesync report", f"{path}: {e.strerror}")
        except (ValueError, KeyError, TypeError) as e:
            return usage_error("imagesync report", f"{path}: not an imagesync report ({e})")
    results, summary = merge(parts)
    if args.output:
        write_json(args.output, results, summary)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.json")
            write_json(path, results, summary)
            sys.stdout.write(open(path, encoding="utf-8").read())
    render(results, summary, sys.stderr)
    return summary.exit_code
