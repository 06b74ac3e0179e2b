"""The one-liners: ``copy``, ``tags``, ``digest``, ``verify``; and the image lists a run
writes (``--output-success-images``, ``--output-failed-images``).

``copy SRC DST`` builds a one-rule config document and loads it with
:func:`imagesync.config.load_document`, so a one-liner is validated, planned and copied
exactly as the same rule in a file would be. ``verify`` plans the rules like a sync and
compares each destination's digest with its source's (the platform-filtered index's,
where a rule selects platforms) without writing anything.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli import (
    EXIT_FAILED,
    EXIT_OK,
    _Parser,
    _positive,
    add_config_arguments,
    add_network_arguments,
    add_platform_arguments,
    add_run_arguments,
    check_run_arguments,
    parse,
    platform_defaults,
    run_config,
    usage_error,
)
from .config import Config, expand_env, load, load_document
from .copier import describe_error
from .dockerconfig import DockerConfig
from .errors import ConfigError
from .keychain import AuthEntry
from .log import Redactor
from .manifest import PlatformSelector, filter_index, image_platform
from .names import InvalidReference, Reference, scheme_of, split_tag_part
from .output import Output, add_output_arguments
from .plan import PlanItem, Planner
from .report import CONFLICT, FAILED, INTERRUPTED, images_text, pushed_images
from .rules import Defaults, Rule
from .session import Outcome, Session, Settings
from .tagfilter import TagFilter

# -- image lists ------------------------------------------------------------------------------


def _filter_doc(f: TagFilter) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "include": [p.pattern for p in f.include], "exclude": [p.pattern for p in f.exclude],
        "equals": f.equals, "starts_with": list(f.starts_with),
        "ends_with": list(f.ends_with), "contains": list(f.contains),
        "one_of": list(f.one_of), "not_one_of": list(f.not_one_of),
        "semver": f.semver_expr, "latest": f.latest}
    return {k: v for k, v in doc.items() if v not in (None, [])}


def _rule_options(rule: Rule | None, whole_rule: bool) -> dict[str, Any]:
    """The extended-form options that make a retried rule select what the original did."""
    if rule is None:
        return {}
    opts: dict[str, Any] = {}
    if whole_rule:
        if rule.selector.filter is not None:
            opts["tags"] = _filter_doc(rule.selector.filter)
        elif rule.namespace and rule.selector.tags:
            opts["tags"] = list(rule.selector.tags)
        if rule.tag_template:
            opts["tag_template"] = rule.tag_template
        if rule.exclude_repos and rule.namespace:
            opts["exclude_repos"] = [p.pattern for p in rule.exclude_repos]
    if rule.platforms.platforms:
        opts["platforms"] = [str(p) for p in rule.platforms.platforms]
    if not rule.overwrite:
        opts["overwrite"] = False
    if rule.referrers:
        opts["referrers"] = True
    return opts


def _item_options(item: PlanItem) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if item.platforms:
        opts["platforms"] = list(item.platforms)
    if not item.overwrite:
        opts["overwrite"] = False
    if item.referrers:
        opts["referrers"] = True
    return opts


def failed_images(cfg: Config, outcome: Outcome) -> tuple[dict[str, Any], set[str]]:
    """The images that failed, conflicted or were interrupted, as an images map whose
    re-run retries exactly those (each source with only its failed destinations, with the
    options its rule had), and the ``--os``/``--arch`` values a re-run must repeat."""
    items = {(i.source, d): i for i in outcome.plan.items for d in i.destinations}
    errors = {(e.source, e.destination): e for e in outcome.plan.errors}
    rules = {r.key: r for r in cfg.rules}
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    flags: set[str] = set()
    for r in outcome.results:
        if r.status not in (FAILED, CONFLICT, INTERRUPTED):
            continue
        key, dest, opts = r.source, r.destination, {}
        item = items.get((r.source, r.destination))
        if item is not None:
            opts = _item_options(item)
            flags.update(f"--os {o}" for o in item.oses)
            flags.update(f"--arch {a}" for a in item.archs)
        elif (err := errors.get((r.source, r.destination))) is not None:
            rule = rules.get(err.rule)
            whole = rule is not None and r.source in (rule.key, rule.source_name)
            if rule is not None and whole and not rule.namespace:
                key = rule.key  # a listing failed: the rule as written (a /regex/ key)
            opts = _rule_options(rule, whole)
            if rule is not None:
                flags.update(f"--os {o}" for o in rule.platforms.oses)
                flags.update(f"--arch {a}{':' + v if v else ''}" for a, v in rule.platforms.archs)
        got = groups.setdefault(key, (opts, []))
        if dest not in got[1]:
            got[1].append(dest)
    doc: dict[str, Any] = {}
    for key, (opts, dests) in groups.items():
        dests.sort()
        doc[key] = {"to": dests[0] if len(dests) == 1 else dests, **opts} if opts else dests
    return doc, flags


def write_image_lists(args: argparse.Namespace, cfg: Config, outcome: Outcome) -> None:
    """``--output-success-images`` / ``--output-failed-images``, in
    ``--output-images-format``. A dry run pushed nothing: its success list is empty."""
    fmt = getattr(args, "output_images_format", "yaml")
    success = getattr(args, "output_success_images", None)
    if success:
        pushed = {} if outcome.summary.dry_run else pushed_images(outcome.results)
        Path(success).write_text(images_text(pushed, fmt), encoding="utf-8")
    failed = getattr(args, "output_failed_images", None)
    if failed:
        doc, flags = failed_images(cfg, outcome)
        text = images_text(doc, fmt)
        if fmt == "yaml":
            again = " ".join(sorted(flags))
            text = ("# Images that failed; retry exactly these with\n"
                    f"#   imagesync --images {Path(failed).name}"
                    f"{' ' + again if again else ''} (and --auth FILE for credentials)\n"
                    + text)
        Path(failed).write_text(text, encoding="utf-8")


# -- credentials and TLS from the command line ------------------------------------------------


def _creds(value: str | None, flag: str) -> tuple[str | None, str | None]:
    """``USER:PASSWORD`` (skopeo's ``--creds``); ``${VAR}`` is read from the environment,
    so single-quoted ``'robot:${TOKEN}'`` keeps the secret off the command line."""
    if value is None:
        return None, None
    user, sep, password = expand_env(value, flag).partition(":")
    if not sep or not user:
        raise ConfigError(None, flag, "give USER:PASSWORD (a password may come from the "
                          "environment: 'robot:${TOKEN}')")
    return user, password


def _entries(prefix: str, creds: str | None, insecure: bool, flag: str) -> list[AuthEntry]:
    """An auth entry for ``prefix`` (``registry[/repository]``) from the flags, and one
    for its registry when TLS verification is off (the transport reads it there)."""
    if scheme_of(prefix) != "registry":
        return []
    user, password = _creds(creds, flag)
    out = []
    if user is not None:
        out.append(AuthEntry(prefix=prefix, username=user, password=password,
                             insecure=insecure, source=flag))
    registry = prefix.split("/", 1)[0]
    if insecure and (user is None or registry != prefix):
        out.append(AuthEntry(prefix=registry, insecure=True, source=flag))
    return out


def add_creds_arguments(p: argparse.ArgumentParser, *sides: str) -> None:
    """skopeo's ``--src-creds``/``--dest-creds`` and ``--src-tls-verify=false``; crane's
    ``--insecure``. ``sides``: ``src``, ``dest`` (or ``""`` for ``--creds``)."""
    for side in sides:
        dash = f"{side}-" if side else ""
        what = {"src": "the source", "dest": "the destination", "": "the registry"}[side]
        p.add_argument(f"--{dash}creds", metavar="USER:PASSWORD",
                       help=f"credentials for {what} (${{VAR}} read from the environment); "
                       "default: Docker's config.json")
        p.add_argument(f"--{dash}tls-verify", action=argparse.BooleanOptionalAction,
                       default=True, help=f"verify {what}'s TLS certificate; "
                       f"--{dash}tls-verify=false also allows plain HTTP")
    p.add_argument("--insecure", action="store_true",
                   help="every registry: plain HTTP or TLS without verification (crane)")


# -- copy ------------------------------------------------------------------------------------------

COPY_LABEL = "imagesync copy"


def _is_namespace(src: str) -> bool:
    return src.endswith("/*")


def _has_tag(src: str) -> bool:
    """A tag, a tag list, a digest or a ``/regex/`` is given."""
    if "@" in src or _is_namespace(src):
        return True
    at = src.find(":/")
    if at > 0 and src.endswith("/"):
        return True
    return split_tag_part(src)[1] is not None


def one_rule(src: str, dst: str, args: argparse.Namespace) -> dict[str, Any]:
    """The config document of ``copy SRC DST``: a source without a tag means ``latest``
    (as in crane, skopeo and docker) unless ``--all-tags``."""
    key = src
    if args.all_tags and _has_tag(src) and not _is_namespace(src):
        raise ConfigError(None, "--all-tags", f"{src} names its tags already: drop the tag, "
                          "or drop --all-tags")
    if not args.all_tags and not _has_tag(src):
        key = f"{src}:latest"
    opts: dict[str, Any] = {}
    platforms = [p.strip() for value in getattr(args, "platform", []) or []
                 for p in value.split(",") if p.strip()]
    if platforms:
        opts["platforms"] = platforms
    if not getattr(args, "overwrite", True):
        opts["overwrite"] = False
    return {"images": {key: {"to": dst, **opts} if opts else dst}}


def _one_rule_config(args: argparse.Namespace, label: str) -> Config:
    oses, archs, _ = platform_defaults(args)
    doc = one_rule(args.src, args.dst, args)
    cfg = load_document(doc, label, Defaults(oses=oses, archs=archs))
    rule = cfg.rules[0]
    src_prefix = f"{rule.registry}/{rule.repository}".rstrip("/")
    entries = _entries(src_prefix, args.src_creds, args.insecure or not args.src_tls_verify,
                       "--src-creds")
    for t in rule.targets:
        dest = _entries(t.name, args.dest_creds,
                        args.insecure or not args.dest_tls_verify, "--dest-creds")
        if any(e.prefix == src_prefix and e.username for e in dest) and args.src_creds:
            raise ConfigError(None, "--dest-creds", "source and destination are the same "
                              "repository: give one set of credentials")
        entries += dest
    cfg.auth = entries
    DockerConfig.load()  # a broken Docker config.json is exit 2, up front
    return cfg


def _one_line(e: ConfigError, label: str) -> str:
    if e.file == label:  # the document is ours, not the user's: name the arguments
        return e.message
    return str(e)


def build_copy_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=COPY_LABEL, allow_abbrev=False,
                description="Copy one image, a tag list (repo:a,b), every tag (-a) or every "
                "repository below a namespace (registry/team/*) to DST. A source without a "
                "tag means :latest; a destination without a tag keeps the source tags.",
                epilog="Exit codes: 0 copied or already there, 1 some images failed, "
                "2 bad arguments.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="every tag of the source repository (crane copy -a)")
    p.add_argument("--all", action="store_true",
                   help="skopeo's --all: accepted; every platform is copied by default")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="copy only these platforms of a multi-platform image (repeatable, "
                   "or comma-separated)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=True,
                   help="move a destination tag that points at another digest (default); "
                   "--no-overwrite reports a conflict instead")
    p.add_argument("-n", "--no-clobber", dest="overwrite", action="store_false",
                   default=argparse.SUPPRESS, help="crane's name for --no-overwrite")
    p.add_argument("-j", "--jobs", type=_positive, dest="proc", metavar="N",
                   default=argparse.SUPPRESS, help="crane's name for --proc")
    add_creds_arguments(p, "src", "dest")
    add_run_arguments(p)
    add_output_arguments(p)
    return p


def copy_main(argv: Sequence[str]) -> int:
    """``imagesync copy SRC DST [options]``"""
    args = parse(build_copy_parser(), argv)
    if why := check_run_arguments(args):
        return usage_error(COPY_LABEL, why)
    try:
        cfg = _one_rule_config(args, COPY_LABEL)
    except ConfigError as e:
        return usage_error(COPY_LABEL, _one_line(e, COPY_LABEL))
    _, _, warnings = platform_defaults(args)
    if args.records:
        warnings.append(f"--records {args.records} ignored")
    return run_config(cfg, args, warnings, prog=COPY_LABEL)


# -- tags, digest -------------------------------------------------------------------------------


def _quiet_output(args: argparse.Namespace, prog: str) -> Output | int:
    try:
        return Output.from_args(args, Redactor(), display=False).__enter__()
    except OSError as e:
        return usage_error(prog, f"--log {args.log}: {e.strerror}")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(proc=max(1, args.proc), retries=args.retries, dry_run=True,
                    timeout=args.timeout)


def _reference(text: str, *, tag: bool) -> Reference:
    ref = Reference.parse(text)
    if not tag and (ref.tag or ref.digest):
        raise ConfigError(None, None, f"{text}: give a repository, without a tag or digest")
    if tag and not (ref.tag or ref.digest):
        ref = ref.with_tag("latest")
    return ref


#: The tags the referrers fallback and cosign give artifacts: sha256-<hex>[.sig|.att|...]
DIGEST_TAG = re.compile(r"^sha256-[0-9a-f]{64}(\.\w+)?$")


def build_tags_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imagesync tags", allow_abbrev=False,
                description="List the tags of REPO, one a line; the filters are those of a "
                "rule's 'tags:' (all must hold; --latest then keeps the newest N by semver, "
                "newest first).",
                epilog="Exit codes: 0 listed, 1 the registry refused or failed, "
                "2 bad arguments.")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--include", action="append", default=[], metavar="REGEX",
                   help="tags matching this regex in full (repeatable: any of them)")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="drop tags in which this regex is found (repeatable)")
    p.add_argument("--semver", metavar="RANGE", help="e.g. '>=1.4 <3', '^2.1'")
    p.add_argument("--latest", type=_positive, metavar="N",
                   help="the newest N by semver, newest first")
    p.add_argument("-O", "--omit-digest-tags", action="store_true",
                   help="leave out the sha256-<hex> tags of signatures and attestations "
                   "(crane ls -O)")
    add_creds_arguments(p, "")
    add_network_arguments(p)
    add_output_arguments(p)
    return p


def tags_main(argv: Sequence[str]) -> int:
    """``imagesync tags REPO [--include RE] [--exclude RE] [--semver R] [--latest N]``"""
    prog = "imagesync tags"
    args = parse(build_tags_parser(), argv)
    try:
        ref = _reference(args.repo, tag=False)
        spec: dict[str, Any] = {"include": args.include, "exclude": args.exclude,
                                "semver": args.semver, "latest": args.latest}
        tag_filter = TagFilter.from_config({k: v for k, v in spec.items() if v})
        entries = _entries(ref.name, args.creds, args.insecure or not args.tls_verify,
                           "--creds")
        DockerConfig.load()
    except (ConfigError, InvalidReference, ValueError) as e:
        return usage_error(prog, str(e))
    out = _quiet_output(args, prog)
    if isinstance(out, int):
        return out

    async def run() -> list[str]:
        async with Session(_settings(args), out.log, entries=entries,
                           on_secret=out.redact.add) as session:
            return await session.store(ref.registry).repository(ref.repository).list_tags()

    with out:
        try:
            tags = asyncio.run(run())
        except Exception as e:
            print(f"{prog}: {ref.name}: {out.redact(describe_error(e))}", file=sys.stderr)
            return EXIT_FAILED
    for tag in tag_filter.apply(tags):
        if not (args.omit_digest_tags and DIGEST_TAG.match(tag)):
            print(tag)
    return EXIT_OK


def build_digest_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imagesync digest", allow_abbrev=False,
                description="Print the digest of REF (a tag: :latest when none is given), "
                "as crane digest does.",
                epilog="Exit codes: 0 printed, 1 not found or the registry failed, "
                "2 bad arguments.")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="of a multi-platform image, the digest of this platform's image")
    add_creds_arguments(p, "")
    add_network_arguments(p)
    add_output_arguments(p)
    return p


def digest_main(argv: Sequence[str]) -> int:
    """``imagesync digest REF [--platform OS/ARCH]``"""
    prog = "imagesync digest"
    args = parse(build_digest_parser(), argv)
    try:
        ref = _reference(args.ref, tag=True)
        wanted = PlatformSelector.parse((args.platform,)) if args.platform else None
        entries = _entries(ref.name, args.creds, args.insecure or not args.tls_verify,
                           "--creds")
        DockerConfig.load()
    except (ConfigError, InvalidReference, ValueError) as e:
        return usage_error(prog, str(e))
    out = _quiet_output(args, prog)
    if isinstance(out, int):
        return out

    async def run() -> str | None:
        async with Session(_settings(args), out.log, entries=entries,
                           on_secret=out.redact.add) as session:
            repo = session.store(ref.registry).repository(ref.repository)
            desc = await repo.head_manifest(ref.ref)
            if desc is None or wanted is None:
                return None if desc is None else desc.digest
            manifest = await repo.get_manifest(desc.digest)
            if not manifest.is_index:
                return desc.digest
            child = next((c for c in manifest.children if wanted.matches(c.platform)), None)
            if child is None:
                has = ", ".join(str(c.platform) for c in manifest.children)
                raise LookupError(f"no platform of the index matches {args.platform} "
                                  f"(it has {has})")
            return child.digest

    with out:
        try:
            digest = asyncio.run(run())
        except Exception as e:
            print(f"{prog}: {ref}: {out.redact(describe_error(e))}", file=sys.stderr)
            return EXIT_FAILED
    if digest is None:
        print(f"{prog}: {ref}: not found", file=sys.stderr)
        return EXIT_FAILED
    print(digest)
    return EXIT_OK


# -- verify ------------------------------------------------------------------------------------

OK, MISSING, DIFFERS, ERROR, NOT_SELECTED = "ok", "missing", "differs", "error", "not-selected"


@dataclass
class Check:
    """One destination image compared with its source."""

    source: str
    destination: str
    status: str
    expected: str | None = None  # the digest the destination should have
    actual: str | None = None
    error: str | None = None

    def line(self) -> str:
        head = f"{self.status:<8} {self.source} -> {self.destination}"
        if self.status == MISSING:
            return f"{head}: not in the destination (source {self.expected})"
        if self.status == DIFFERS:
            return f"{head}: destination {self.actual}, source {self.expected}"
        return f"{head}: {self.error}"


async def _expected_digest(session: Session, item: PlanItem) -> tuple[str, str | None]:
    """The digest every destination of ``item`` should have (the filtered index's when
    the item selects platforms), and why nothing is expected (a platform not selected)."""
    ref = item.source_ref
    src = session.store(ref.registry).repository(ref.repository)
    desc = await src.head_manifest(ref.ref)
    if desc is None:
        raise LookupError(f"{ref} not found in the source")
    wanted = item.platform_selector
    if not wanted:
        return desc.digest, None
    manifest = await src.get_manifest(desc.digest)
    if manifest.is_index:
        subset = filter_index(manifest, wanted)
        if not subset.children:
            return desc.digest, f"no platform of the index matches {wanted}"
        return subset.digest, None
    async with src.open_blob(manifest.blobs[0]) as chunks:
        platform = image_platform(b"".join([c async for c in chunks]))
    if platform is not None and not wanted.matches(platform):
        return desc.digest, f"platform {platform} not selected ({wanted})"
    return desc.digest, None


async def _verify_item(session: Session, item: PlanItem) -> list[Check]:
    try:
        expected, skip = await _expected_digest(session, item)
    except Exception as e:
        return [Check(item.source, d, ERROR, error=describe_error(e))
                for d in item.destinations]
    if skip is not None:
        return [Check(item.source, d, NOT_SELECTED, expected, error=skip)
                for d in item.destinations]
    out = []
    for dest in item.destination_refs:
        repo = session.store(dest.registry).repository(dest.repository)
        try:
            have = await repo.head_manifest(dest.tag or expected)
        except Exception as e:
            out.append(Check(item.source, str(dest), ERROR, expected,
                             error=describe_error(e)))
            continue
        status = MISSING if have is None else OK if have.digest == expected else DIFFERS
        out.append(Check(item.source, str(dest), status, expected,
                         None if have is None else have.digest))
    return out


async def verify(cfg: Config, settings: Settings, log: Any,
                 on_secret: Any = None) -> tuple[list[Check], list[str]]:
    """Every destination of the plan of ``cfg`` compared with its source, by digest,
    read-only. Returns the checks (plan order) and the rules that matched nothing."""
    async with Session(settings, log, entries=cfg.auth, on_secret=on_secret) as session:
        planner = Planner(session.store, now=time.time())
        sem = asyncio.Semaphore(max(1, settings.proc))

        async def one(item: PlanItem) -> list[Check]:
            async with sem:
                return await _verify_item(session, item)

        tasks = [asyncio.ensure_future(one(item)) async for item in planner.items(cfg.rules)]
        checks = [c for t in tasks for c in await t]
        plan = planner.plan
    errors = [Check(e.source, e.destination, ERROR, error=e.error) for e in plan.errors]
    return errors + checks, list(plan.empty)


def build_verify_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imagesync verify", allow_abbrev=False,
                description="Compare every destination of a config (or of SRC DST, read as "
                "'copy' reads them) with its source by digest, without copying. Lists each "
                "drift: missing, or a different digest.",
                epilog="Exit codes: 0 every destination matches, 1 drift or errors, "
                "2 bad arguments.")
    p.add_argument("src", metavar="SRC", nargs="?")
    p.add_argument("dst", metavar="DST", nargs="?")
    add_config_arguments(p)
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="SRC DST form: every tag of the source repository")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="SRC DST form: the platforms that were copied")
    add_platform_arguments(p)
    add_creds_arguments(p, "src", "dest")
    add_network_arguments(p)
    add_output_arguments(p)
    return p


def verify_main(argv: Sequence[str]) -> int:
    """``imagesync verify --config FILE`` or ``imagesync verify SRC DST``"""
    prog = "imagesync verify"
    args = parse(build_verify_parser(), argv)
    files = args.config or args.auth or args.images
    if args.src is not None and files:
        return usage_error(prog, "give SRC DST, or --config FILE (--auth/--images), not both")
    if args.src is not None and args.dst is None:
        return usage_error(prog, "give SRC and DST")
    if args.config and (args.auth or args.images):
        return usage_error(prog, "give --config, or --auth/--images, not both")
    if files and (args.src_creds or args.dest_creds):
        return usage_error(prog, "with a config, credentials come from its auth entries")
    if args.proc == 0:
        return usage_error(prog, "--proc must be at least 1")
    oses, archs, _ = platform_defaults(args)
    try:
        if args.src is not None:
            args.overwrite = True
            cfg = _one_rule_config(args, prog)
        else:
            cfg = load(args.config, args.auth, args.images,
                       Defaults(args.registry, args.namespace, oses, archs))
            DockerConfig.load()
    except ConfigError as e:
        return usage_error(prog, _one_line(e, prog))
    out = _quiet_output(args, prog)
    if isinstance(out, int):
        return out
    with out:
        for warning in cfg.warnings:
            out.log.warning("config", note=warning)
        try:
            checks, empty = asyncio.run(verify(cfg, _settings(args), out.log,
                                               out.redact.add))
        except KeyboardInterrupt:
            out.notice("stopped")
            return 130
    counts = {s: sum(c.status == s for c in checks)
              for s in (OK, MISSING, DIFFERS, ERROR, NOT_SELECTED)}
    for c in checks:
        if c.status not in (OK, NOT_SELECTED):
            print(out.redact(c.line()))
    for key in empty:
        print(f"warning: rule {key!r} matched nothing")
    drift = counts[MISSING] + counts[DIFFERS]
    extra = f", {counts[NOT_SELECTED]} not selected" if counts[NOT_SELECTED] else ""
    print(f"imagesync: verify: {counts[OK]} match, {drift} drift ({counts[MISSING]} missing, "
          f"{counts[DIFFERS]} different), {counts[ERROR]} errors{extra}")
    return EXIT_FAILED if drift or counts[ERROR] else EXIT_OK


__all__ = ["Check", "copy_main", "digest_main", "failed_images", "one_rule", "tags_main",
           "verify", "verify_main", "write_image_lists"]
