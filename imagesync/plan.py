"""The plan: config rules + listings -> image tasks, as plain data.

A :class:`PlanItem` is one source image (tag or digest) and every destination it feeds,
with the platform selection and overwrite rule it is copied under. It holds strings,
not regexes or closures, so a plan can be written to JSON, split across processes and
read back (``Plan.to_json`` / ``Plan.from_json``), or built from a single pushed tag.

:class:`Planner` lists what it must (repositories for ``/*`` rules, tags for rules
without explicit tags) and yields items in rule order while later listings run ahead,
so copying starts before a big registry is fully listed. It resolves destination
claims (two sources never write one destination tag) and reads the clock once, so
every ``{timestamp}`` of one run is the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import AuthError, ConfigError, NotFoundError, RegistryError
from .manifest import PlatformSelector
from .names import Reference
from .rules import Rule, Target, render_tag, source_reference
from .store import Store


@dataclass(frozen=True)
class PlanItem:
    """One source image and the destinations it is copied to."""

    seq: int                        # position in the plan: lower runs first (depth-first)
    rule: str                       # the config key it came from
    source: str                     # a reference with a tag or a digest
    destinations: tuple[str, ...]   # with a tag, or a bare repository: push by digest only
    platforms: tuple[str, ...] = ()  # os/arch[/variant]
    oses: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()     # arch[:variant]
    overwrite: bool = True
    referrers: bool = False         # copy signatures, SBOMs, attestations along

    @property
    def source_ref(self) -> Reference:
        return Reference.parse(self.source)

    @property
    def destination_refs(self) -> tuple[Reference, ...]:
        return tuple(Reference.parse(d) for d in self.destinations)

    @property
    def platform_selector(self) -> PlatformSelector:
        return PlatformSelector.parse(self.platforms, self.oses, self.archs)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PlanItem:
        return cls(seq=int(doc["seq"]), rule=str(doc["rule"]), source=str(doc["source"]),
                   destinations=tuple(doc["destinations"]),
                   platforms=tuple(doc.get("platforms") or ()),
                   oses=tuple(doc.get("oses") or ()), archs=tuple(doc.get("archs") or ()),
                   overwrite=bool(doc.get("overwrite", True)),
                   referrers=bool(doc.get("referrers", False)))


@dataclass(frozen=True)
class PlanError:
    """A part of the config that could not become items (a listing failed, a tag
    template gave an invalid tag, two sources claim one destination)."""

    rule: str
    source: str
    destination: str
    error: str


@dataclass
class Plan:
    items: list[PlanItem] = field(default_factory=list)  # empty when not kept (big runs)
    errors: list[PlanError] = field(default_factory=list)
    #: Rules whose regex, filter or wildcard matched nothing.
    empty: list[str] = field(default_factory=list)
    now: float = 0.0
    count: int = 0  # items planned (this shard's), kept or not

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now, "items": [i.to_json() for i in self.items],
                "errors": [asdict(e) for e in self.errors], "empty": list(self.empty)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Plan:
        items = [PlanItem.from_json(i) for i in doc.get("items") or ()]
        return cls(items, [PlanError(**e) for e in doc.get("errors") or ()],
                   list(doc.get("empty") or ()), float(doc.get("now") or 0.0), len(items))


@dataclass(frozen=True)
class Shard:
    """This process's share of a plan: ``index`` of ``count`` (``--shard I/N``).

    Every shard computes the same plan (same listings, same claims, same sequence
    numbers) and keeps the items whose first destination *repository* hashes to its
    index, so N processes with no coordinator copy the plan exactly once between them,
    and each destination repository is written by one process (blob de-duplication and
    mounts inside a repository keep working)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, where: str = "--shard") -> Shard:
        i, sep, n = text.partition("/")
        try:
            index, count = int(i), int(n)
        except ValueError:
            raise ConfigError(None, where, f"{text!r} is not I/N (e.g. 0/4)") from None
        if not sep or count < 1 or not 0 <= index < count:
            raise ConfigError(None, where, f"{text!r}: give I/N with 0 <= I < N, e.g. 0/4")
        return cls(index, count)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Shard | None:
        """A Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX`` and the completion count in
        ``IMAGESYNC_SHARDS``."""
        env = os.environ if environ is None else environ
        index, count = env.get("JOB_COMPLETION_INDEX"), env.get("IMAGESYNC_SHARDS")
        if index is None or count is None:
            return None
        return cls.parse(f"{index}/{count}", "JOB_COMPLETION_INDEX/IMAGESYNC_SHARDS")

    def owns(self, destinations: Sequence[str]) -> bool:
        if self.count == 1 or not destinations:
            return True
        repo = Reference.parse(destinations[0]).name
        h = int.from_bytes(hashlib.sha256(repo.encode()).digest()[:8], "big")
        return h % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _selector_strings(sel: PlatformSelector) -> tuple[tuple[str, ...], tuple[str, ...],
                                                         tuple[str, ...]]:
    return (tuple(str(p) for p in sel.platforms), tuple(sel.oses),
            tuple(f"{a}:{v}" if v else a for a, v in sel.archs))


def _destination_tag(rule: Rule, target: Target, tag: str | None, index: int,
                     now: float) -> str | None:
    if rule.tag_template and not target.tags and tag is not None:
        return render_tag(rule.tag_template, tag, rule.repository, now)
    return rule.destination_tag(target, tag, index)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _ref(registry: str, repository: str, tag: str | None) -> str:
    return str(Reference(registry, repository, tag))


def describe_error(exc: BaseException) -> str:
    from .retry import describe  # network errors as sentences
    return str(exc) if isinstance(exc, RegistryError | ValueError) else describe(exc)


@dataclass
class Planner:
    stores: Callable[[str], Store]
    now: float = field(default_factory=time.time)
    shard: Shard | None = None
    #: Keep every item in ``plan.items``. A big run does not: items stream to the
    #: scheduler, and memory stays flat however many tags the registry has.
    keep_items: bool = True
    #: Listings allowed to run ahead of the rule being planned.
    lookahead: int = 16
    plan: Plan = field(init=False)
    _seq: int = 0
    # hash(destination tag) -> hash(its source) and its rule's number: a few bytes of
    # state per tag, not strings
    _claims: dict[int, int] = field(default_factory=dict)
    _rule_numbers: dict[str, int] = field(default_factory=dict)
    _failed_rules: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.plan = Plan(now=self.now)

    async def collect(self, rules: Iterable[Rule]) -> Plan:
        async for _ in self.items(rules):
            pass
        return self.plan

    async def items(self, rules: Iterable[Rule]) -> AsyncIterator[PlanItem]:
        """Yield items in rule order; ``self.plan`` gathers items, errors and empties."""
        rules = list(rules)
        sem = asyncio.Semaphore(self.lookahead)

        async def expand(rule: Rule) -> list[tuple[Rule, list[str] | BaseException | None]]:
            async with sem:
                return await self._expand(rule)

        listings = [asyncio.ensure_future(expand(rule)) for rule in rules]
        try:
            for rule, listing in zip(rules, listings, strict=True):
                try:
                    expanded = await listing
                except Exception as e:  # the whole rule fails: say so once per destination
                    err = describe_error(e)
                    for target in rule.targets:
                        self._error(PlanError(rule.key, rule.key, target.name, err))
                    continue
                produced = 0
                for concrete, tags in expanded:
                    if isinstance(tags, BaseException):
                        err = describe_error(tags)
                        for target in concrete.targets:
                            self._error(PlanError(rule.key, concrete.source_name,
                                                  target.name, err))
                        continue
                    for item in self._items_of(concrete, tags):
                        produced += 1
                        if self.shard is None or self.shard.owns(item.destinations):
                            self.plan.count += 1
                            if self.keep_items:
                                self.plan.items.append(item)
                            yield item
                if (not produced and rule.key not in self._failed_rules
                        and (self.shard is None or self.shard.index == 0)):
                    self.plan.empty.append(rule.key)  # with shards, shard 0 tells
        finally:
            for listing in listings:
                listing.cancel()

    async def _expand(self, rule: Rule) -> list[tuple[Rule, list[str] | BaseException | None]]:
        """A rule -> its concrete repositories, each with its tag listing (or the error)."""
        rules = [rule]
        if rule.namespace:
            store = self.stores(rule.registry)
            try:
                paths = await store.list_repositories()
            except AuthError as e:
                raise AuthError(f"rule {rule.key!r}: {rule.registry} refuses to list its "
                                f"repositories ({e}); name the repositories one by one "
                                "instead", status=e.status) from None
            except NotFoundError as e:
                raise NotFoundError(f"rule {rule.key!r}: {rule.registry} has no catalog "
                                    f"({e}); name the repositories one by one instead",
                                    status=e.status) from None
            except Exception as e:
                raise RegistryError(f"rule {rule.key!r}: cannot list the repositories of "
                                    f"{rule.registry}: {describe_error(e)}") from None
            rules = [rule.for_repository(p) for p in sorted(paths) if rule.wants_repository(p)]
        listings = await asyncio.gather(*(self._list(r) for r in rules), return_exceptions=True)
        return list(zip(rules, listings, strict=True))

    async def _list(self, rule: Rule) -> list[str] | None:
        if not rule.selector.needs_listing:
            return None
        return await self.stores(rule.registry).repository(rule.repository).list_tags()

    def _items_of(self, rule: Rule, listing: list[str] | None) -> list[PlanItem]:
        platforms, oses, archs = _selector_strings(rule.platforms)
        sel = rule.selector

        def item(source: Reference, dests: list[str]) -> PlanItem:
            self._seq += 1
            return PlanItem(self._seq, rule.key, str(source), tuple(dests), platforms, oses,
                            archs, rule.overwrite, rule.referrers)

        if sel.digest:
            source = source_reference(rule, None)
            dests = [_ref(t.registry, t.repository, t.tags[0] if t.tags else None)
                     for t in rule.targets]
            kept = self._claim(rule, source, dests)
            return [item(source, kept)] if kept else []
        tags = list(sel.tags) if sel.tags else sel.select(listing or [])
        out = []
        for i, tag in enumerate(tags):
            source = source_reference(rule, tag)
            try:
                dests = [_ref(t.registry, t.repository,
                              _destination_tag(rule, t, tag, i, self.now))
                         for t in rule.targets]
            except ValueError as e:
                for t in rule.targets:
                    self._error(PlanError(rule.key, str(source), t.name, str(e)))
                continue
            kept = self._claim(rule, source, dests)
            if kept:
                out.append(item(source, kept))
        return out

    def items_for_tag(self, rule: Rule, tag: str | None, digest: str | None = None,
                      listing: list[str] | None = None) -> list[PlanItem]:
        """The items one pushed ``tag`` (or untagged ``digest``) of a concrete rule's
        repository gives, as a full plan would make them (filters, templates, renames,
        platforms, destinations). ``listing``: the repository's tags, for filters that
        rank tags (``latest: N``); without it the tag is judged alone. (``imagesync
        serve``; a namespace rule is narrowed with ``Rule.for_repository`` first.)"""
        if rule.selector.digest:
            return self._items_of(rule, None) if digest == rule.selector.digest else []
        if tag is None or (listing is not None and tag not in rule.selector.select(listing)):
            return []
        return [i for i in self._items_of(rule, [tag]) if Reference.parse(i.source).tag == tag]

    def _claim(self, rule: Rule, source: Reference, dests: list[str]) -> list[str]:
        """One source per destination tag: a second source mapped to the same destination
        (say a tag_template without {tag}) fails instead of silently overwriting."""
        keep = []
        for dest in dests:
            if Reference.parse(dest).tag is None:
                keep.append(dest)
                continue
            rule_no = self._rule_numbers.setdefault(rule.key, len(self._rule_numbers))
            mine = _hash(str(source)) << 16 | rule_no & 0xFFFF
            first = self._claims.setdefault(_hash(dest), mine)
            if first >> 16 == mine >> 16:
                keep.append(dest)
                continue
            other = next((k for k, n in self._rule_numbers.items() if n == first & 0xFFFF), "?")
            self._error(PlanError(
                rule.key, str(source), dest,
                f"another source (of rule {other!r}) is also copied to {dest} by this run: "
                "two sources for one destination tag (give tag_template a {tag})"))
        return keep

    def _error(self, error: PlanError) -> None:
        """Record an error; with shards, only the shard owning its destination does, so
        merged reports list it once."""
        self._failed_rules.add(error.rule)
        if self.shard is None or self.shard.owns([error.destination]):
            self.plan.errors.append(error)
