"""Image rules: what to copy where, parsed from the config's ``images`` map.

image-syncer's forms, key -> value::

    src/repo                 -> dst/repo            all tags, names kept
    src/repo:v1              -> dst/repo            one tag
    src/repo:v1,v2           -> dst/repo            several tags
    src/repo:v1              -> dst/repo:stable     rename (as many destination tags as source tags)
    src/repo@sha256:...      -> dst/repo[:tag]      by digest
    src/repo:/^v1\\.[0-9]+$/  -> dst/repo            tags in which the regex is found
                                                    (searched, like Go's MatchString: anchor it)
    src/repo                 -> [dst-a/repo, dst-b/repo]   several destinations (duplicates once)
    src/repo                 -> ""                  --registry[/--namespace] defaults
    src/repo@sha256:...      -> dst/repo@sha256:... the same digest: pushed by digest

See docs/imagesyncer-compat.md for how each image-syncer version read these.

imagesync's own forms::

    src/team/*               -> dst/mirror          every repository below team/, any depth
    src/*                    -> dst/backup          every repository of the registry
    src/repo                 -> {to: ..., tags: {...}, platforms: [...], overwrite: false,
                                 tag_template: '{tag}-mirrored', exclude_repos: [...]}
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

from .errors import ConfigError
from .manifest import PlatformSelector
from .names import (
    DIGEST_RE,
    TAG_RE,
    InvalidReference,
    Reference,
    canonical_registry,
    split_name,
    split_tag_part,
)
from .tagfilter import TagFilter


@dataclass(frozen=True)
class TagSelector:
    """Which source tags a rule takes. No field set: every tag."""

    tags: tuple[str, ...] = ()
    digest: str | None = None
    pattern: re.Pattern[str] | None = None
    filter: TagFilter | None = None

    @property
    def needs_listing(self) -> bool:
        return not self.tags and self.digest is None

    @property
    def narrows(self) -> bool:
        """True when the selector keeps only some of the tags it is given (a regex or a
        filter): then selecting nothing is worth reporting ("matched no tag")."""
        return self.pattern is not None or self.filter is not None

    def select(self, available: list[str]) -> list[str]:
        """The tags to copy, from the repository's tag list. A key regex is *searched*
        (as image-syncer's Go ``MatchString`` did: ``/a+/`` keeps every tag with an 'a');
        anchor it (``/^v1$/``) for a full match."""
        tags = list(self.tags) if self.tags else list(available)
        if self.pattern is not None:
            tags = [t for t in tags if self.pattern.search(t)]
        if self.filter is not None:
            tags = self.filter.apply(tags)
        return tags

    def describe(self) -> str:
        """What the rule selects, for logs and "matched nothing" reports."""
        if self.digest:
            return self.digest
        if self.tags and self.filter is None:
            return ",".join(self.tags)
        parts = []
        if self.tags:
            parts.append(",".join(self.tags))
        if self.pattern is not None:
            parts.append(f"/{self.pattern.pattern}/")
        if self.filter is not None:
            parts.append(f"tags {self.filter.describe()}")
        return " and ".join(parts) if parts else "all tags"


@dataclass(frozen=True)
class Target:
    """A destination repository, with tags when the rule renames."""

    registry: str
    repository: str
    tags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"


@dataclass(frozen=True)
class Rule:
    key: str                 # the config key, as written: used in errors and the report
    registry: str
    repository: str          # for a namespace rule: the namespace ('' = whole registry)
    selector: TagSelector
    targets: tuple[Target, ...]
    overwrite: bool = True   # replace a destination tag that points at another digest
    platforms: PlatformSelector = field(default_factory=PlatformSelector)
    tag_template: str | None = None
    namespace: bool = False  # key ends in '/*': expand to every repository below
    exclude_repos: tuple[re.Pattern[str], ...] = ()
    referrers: bool = False  # copy signatures, SBOMs, attestations with each image

    @property
    def source_name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def destination_tag(self, target: Target, source_tag: str | None, index: int) -> str | None:
        """The destination tag for the ``index``-th selected source tag."""
        if target.tags:
            return target.tags[index]
        if self.tag_template and source_tag is not None:
            return render_tag(self.tag_template, source_tag, self.repository)
        return source_tag

    def for_repository(self, path: str) -> Rule:
        """A namespace rule narrowed to one repository found below its namespace."""
        below = path[len(self.repository):].lstrip("/") if self.repository else path
        targets = tuple(replace(t, repository=f"{t.repository}/{below}") for t in self.targets)
        return replace(self, repository=path, targets=targets, namespace=False)

    def wants_repository(self, path: str) -> bool:
        if self.repository and not path.startswith(self.repository + "/"):
            return False
        return not any(p.search(path) for p in self.exclude_repos)


def render_tag(template: str, tag: str, repository: str, now: float | None = None) -> str:
    """``{tag}``, ``{repo}`` (last path part), ``{timestamp}`` (UTC, YYYYmmddHHMMSS),
    ``{date}`` (YYYYmmdd)."""
    t = time.gmtime(now if now is not None else time.time())
    try:
        out = template.format(tag=tag, repo=repository.rsplit("/", 1)[-1],
                              timestamp=time.strftime("%Y%m%d%H%M%S", t),
                              date=time.strftime("%Y%m%d", t))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"tag_template {template!r}: unknown or malformed placeholder "
                         f"({e}); use {{tag}}, {{repo}}, {{timestamp}}, {{date}}") from None
    if not TAG_RE.match(out):
        raise ValueError(f"tag_template {template!r} gives {out!r}, which is not a valid tag")
    return out


@dataclass(frozen=True)
class Defaults:
    """Command-line settings that apply to every rule: image-syncer's --registry and
    --namespace (for empty destinations) and --os / --arch (platform selection)."""

    registry: str | None = None
    namespace: str | None = None
    oses: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()
    referrers: bool = False  # --referrers: every rule copies what is attached to images


NO_DEFAULTS = Defaults()


def _split_source(key: str) -> tuple[str, TagSelector]:
    # A regex may contain ':' '/' and ','; it is the part after the first ':/' when the key
    # ends with '/' (a registry port is ':<digits>', never ':/'), as in image-syncer.
    at = key.find(":/")
    if at > 0 and key.endswith("/") and len(key) >= at + 3:
        expr = key[at + 2 : -1]
        try:
            return key[:at], TagSelector(pattern=re.compile(expr))
        except re.error as e:
            raise ValueError(f"invalid tag regex /{expr}/: {e}") from None
    name, _, digest = key.partition("@")
    if digest:
        if not DIGEST_RE.match(digest):
            raise ValueError(f"invalid digest {digest!r}")
        # 'repo:tag@sha256:...': the digest wins and the tag is ignored, as in Docker.
        name, tag = split_tag_part(name)
        if tag is not None and not TAG_RE.match(tag):
            raise ValueError(f"invalid tag {tag!r}")
        return name, TagSelector(digest=digest)
    name, tagspec = split_tag_part(name)
    if tagspec is None:
        return name, TagSelector()
    tags = tuple(t.strip() for t in tagspec.split(",") if t.strip())
    if not tags:
        raise ValueError(f"empty tag list after ':' in {key!r}")
    for t in tags:
        if not TAG_RE.match(t):
            raise ValueError(f"invalid tag {t!r}")
    return name, TagSelector(tags=tags)


def default_destination(defaults: Defaults, source_repo: str) -> str:
    """Where an empty destination ("") goes, as image-syncer put it.

    With --registry and --namespace (image-syncer v1.0-v1.4): the source path without its
    first component below ``registry/namespace``, so ``src.io/team/sub/app`` ->
    ``REG/NS/sub/app`` and ``nginx`` (``library/nginx``) -> ``REG/NS/nginx``. With
    --registry alone (v1.5.0): the whole source path below ``registry``."""
    if defaults.registry and defaults.namespace:
        first, _, rest = source_repo.partition("/")
        return f"{defaults.registry}/{defaults.namespace}/{rest or first}"
    if defaults.registry:
        return f"{defaults.registry}/{source_repo}"
    raise ValueError(
        "an empty destination needs --registry (and --namespace), or DEFAULT_REGISTRY "
        "(and DEFAULT_NAMESPACE), to say where it goes")


def _parse_target(value: str, defaults: Defaults, source_repo: str,
                  source: TagSelector | None = None) -> Target:
    if value == "":
        return Target(*split_name(default_destination(defaults, source_repo)))
    name, _, digest = value.partition("@")
    if digest:
        # image-syncer accepts a destination digest only equal to the source's: the
        # image is pushed by digest, which is what a digest source without a tag does.
        if source is None or source.digest != digest:
            raise ValueError(f"destination {value!r} has a digest: give a repository[:tag] "
                             "(a digest is only allowed when it is the source's digest)")
        name, tag = split_tag_part(name)
        if tag is not None:
            raise ValueError(f"destination {value!r}: give a tag or the digest, not both")
        return Target(*split_name(name))
    name, tagspec = split_tag_part(value)
    registry, repository = split_name(name)
    tags: tuple[str, ...] = ()
    if tagspec is not None:
        tags = tuple(t.strip() for t in tagspec.split(",") if t.strip())
        for t in tags:
            if not TAG_RE.match(t):
                raise ValueError(f"invalid destination tag {t!r}")
    return Target(registry, repository, tags)


def _split_namespace(key: str) -> tuple[str, str] | None:
    """``reg/team/*`` -> (reg, team); ``reg/*`` -> (reg, ''); else None."""
    if not key.endswith("/*"):
        return None
    head = key[:-2]
    if "*" in head:
        raise ValueError(f"{key!r}: '*' may only stand alone as the last path part")
    host, _, ns = head.partition("/")
    if not ns:
        # 'host/*': the host must look like one, or this is a Docker Hub namespace.
        if "." in host or ":" in host or host == "localhost":
            return canonical_registry(host), ""
    registry, repository = split_name(f"{head}/x")
    return registry, repository[: -len("/x")]


def _parse_options(rule: Rule, doc: dict, oses: tuple[str, ...],
                   archs: tuple[str, ...]) -> Rule:
    tags = doc.get("tags")
    selector = rule.selector
    if isinstance(tags, list):
        if rule.selector.tags or rule.selector.digest:
            raise ValueError("tags are given both in the key and in 'tags'")
        selector = replace(selector, tags=tuple(tags))
    elif isinstance(tags, dict):
        selector = replace(selector, filter=TagFilter.from_config(tags))
    platforms = PlatformSelector.parse(tuple(doc.get("platforms") or ()), oses, archs)
    template = doc.get("tag_template")
    if template is not None:
        render_tag(template, "1.0", "repo", 0)  # fail at load time, not mid-run
    excludes = []
    for p in doc.get("exclude_repos") or ():
        try:
            excludes.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"exclude_repos: invalid regex {p!r}: {e}") from None
    return replace(rule, selector=selector, overwrite=doc.get("overwrite", True),
                   platforms=platforms, tag_template=template, exclude_repos=tuple(excludes),
                   referrers=doc.get("referrers", rule.referrers))


def parse_rule(key: str, value: object, defaults: Defaults = NO_DEFAULTS,
               *, file: str | None = None, path: str | None = None) -> Rule:
    """One ``images`` entry -> a :class:`Rule`, or a :class:`ConfigError` saying why not."""
    path = path or f"images[{key!r}]"
    options = value if isinstance(value, dict) else {}
    destinations = options.get("to") if isinstance(value, dict) else value
    try:
        if not key:
            raise ValueError("the source is empty: give registry/namespace/repository[:tag]")
        ns = _split_namespace(key)
        if ns:
            registry, repository = ns
            selector = TagSelector()
        else:
            name, selector = _split_source(key)
            registry, repository = split_name(name)
        values = destinations if isinstance(destinations, list) else [destinations]
        if not values or values == [None]:
            raise ValueError("no destination given: add 'to: registry/repository'")
        # A destination listed twice is copied once (image-syncer v1.5.3+ did the same).
        values = list(dict.fromkeys(values))
        targets = tuple(dict.fromkeys(_parse_target(str(v), defaults, repository, selector)
                                      for v in values))
        if ns and any(t.tags for t in targets):
            raise ValueError("a namespace rule ('/*') copies whole repositories: give "
                             "destination prefixes without tags")
        rule = Rule(key, registry, repository, selector, targets, namespace=bool(ns),
                    referrers=defaults.referrers,
                    platforms=PlatformSelector.parse((), defaults.oses, defaults.archs))
        rule = _parse_options(rule, options, defaults.oses, defaults.archs)
    except (ValueError, InvalidReference, re.error) as e:
        raise ConfigError(file, path, str(e)) from None
    if rule.tag_template and any(t.tags for t in rule.targets):
        raise ConfigError(file, path, "give destination tags or a tag_template, not both")
    targets = rule.targets
    selector = rule.selector
    for t in targets:
        if not t.tags:
            continue
        if selector.digest:
            if len(t.tags) != 1:
                raise ConfigError(file, path, f"a digest source takes one destination tag, "
                                  f"{t.name} has {len(t.tags)}")
        elif len(t.tags) != len(selector.tags):
            need = len(selector.tags) or "explicit"
            raise ConfigError(
                file, path,
                f"destination {t.name} renames to {len(t.tags)} tag(s) but the source names "
                f"{need} tag(s): list the same number of tags on both sides, or drop the "
                "destination tag to keep the source tag names")
    return rule


def source_reference(rule: Rule, tag: str | None) -> Reference:
    if rule.selector.digest:
        return Reference(rule.registry, rule.repository, None, rule.selector.digest)
    return Reference(rule.registry, rule.repository, tag)
