"""Image rules: what to copy where, parsed from the config's ``images`` map.

image-syncer's forms, key -> value::

    src/repo                 -> dst/repo            all tags, names kept
    src/repo:v1              -> dst/repo            one tag
    src/repo:v1,v2           -> dst/repo            several tags
    src/repo:v1              -> dst/repo:stable     rename (as many destination tags as source tags)
    src/repo@sha256:...      -> dst/repo[:tag]      by digest
    src/repo:/^v1\\.[0-9]+$/  -> dst/repo            tags matching a regex
    src/repo                 -> [dst-a/repo, dst-b/repo]   several destinations
    src/repo                 -> ""                  --registry/--namespace defaults
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConfigError
from .reference import DIGEST_RE, TAG_RE, Reference, ReferenceError, split_name, split_tag_part


@dataclass(frozen=True)
class TagSelector:
    """Which source tags a rule takes. No field set: every tag."""

    tags: tuple[str, ...] = ()
    digest: str | None = None
    pattern: re.Pattern[str] | None = None

    @property
    def needs_listing(self) -> bool:
        return not self.tags and self.digest is None

    def select(self, available: list[str]) -> list[str]:
        if self.pattern is not None:
            return [t for t in available if self.pattern.fullmatch(t)]
        return list(available)

    def describe(self) -> str:
        if self.digest:
            return self.digest
        if self.tags:
            return ",".join(self.tags)
        return f"/{self.pattern.pattern}/" if self.pattern else "all tags"


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
    repository: str
    selector: TagSelector
    targets: tuple[Target, ...]
    options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def source_name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def destination_tag(self, target: Target, source_tag: str | None, index: int) -> str | None:
        """The destination tag for the ``index``-th selected source tag."""
        if target.tags:
            return target.tags[index]
        return source_tag


@dataclass(frozen=True)
class Defaults:
    """image-syncer's --registry / --namespace, for empty destinations."""

    registry: str | None = None
    namespace: str | None = None


NO_DEFAULTS = Defaults()


def _split_source(key: str) -> tuple[str, TagSelector]:
    # A regex may contain ':' '/' and ','; it is the part after the first ':/' when the key
    # ends with '/' (a registry port is ':<digits>', never ':/').
    at = key.find(":/")
    if at > 0 and key.endswith("/") and len(key) > at + 3:
        expr = key[at + 2 : -1]
        try:
            return key[:at], TagSelector(pattern=re.compile(expr))
        except re.error as e:
            raise ValueError(f"invalid tag regex /{expr}/: {e}") from None
    name, _, digest = key.partition("@")
    if digest:
        if not DIGEST_RE.match(digest):
            raise ValueError(f"invalid digest {digest!r}")
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


def _parse_target(value: str, defaults: Defaults, source_repo: str) -> Target:
    if value == "":
        if not defaults.registry or not defaults.namespace:
            raise ValueError(
                "an empty destination needs --registry and --namespace (or DEFAULT_REGISTRY "
                "and DEFAULT_NAMESPACE) to say where the default namespace is")
        base = source_repo.rsplit("/", 1)[-1]
        return Target(*split_name(f"{defaults.registry}/{defaults.namespace}/{base}"))
    if "@" in value:
        raise ValueError(f"destination {value!r} has a digest: give a repository[:tag]")
    name, tagspec = split_tag_part(value)
    registry, repository = split_name(name)
    tags: tuple[str, ...] = ()
    if tagspec is not None:
        tags = tuple(t.strip() for t in tagspec.split(",") if t.strip())
        for t in tags:
            if not TAG_RE.match(t):
                raise ValueError(f"invalid destination tag {t!r}")
    return Target(registry, repository, tags)


def parse_rule(key: str, value: object, defaults: Defaults = NO_DEFAULTS,
               *, file: str | None = None, path: str | None = None) -> Rule:
    """One ``images`` entry -> a :class:`Rule`, or a :class:`ConfigError` saying why not."""
    path = path or f"images[{key!r}]"
    try:
        if not key:
            raise ValueError("the source is empty: give registry/namespace/repository[:tag]")
        name, selector = _split_source(key)
        registry, repository = split_name(name)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("no destination given")
        targets = tuple(_parse_target(v, defaults, repository) for v in values)
    except (ValueError, ReferenceError) as e:
        raise ConfigError(file, path, str(e)) from None
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
    return Rule(key, registry, repository, selector, targets)


def source_reference(rule: Rule, tag: str | None) -> Reference:
    if rule.selector.digest:
        return Reference(rule.registry, rule.repository, None, rule.selector.digest)
    return Reference(rule.registry, rule.repository, tag)
