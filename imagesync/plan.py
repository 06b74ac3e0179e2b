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
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import AuthError, NotFoundError, RegistryError
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
                   overwrite=bool(doc.get("overwrite", True)))


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
    items: list[PlanItem] = field(default_factory=list)
    errors: list[PlanError] = field(default_factory=list)
    #: Rules whose regex, filter or wildcard matched nothing.
    empty: list[str] = field(default_factory=list)
    now: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now, "items": [i.to_json() for i in self.items],
                "errors": [asdict(e) for e in self.errors], "empty": list(self.empty)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Plan:
        return cls([PlanItem.from_json(i) for i in doc.get("items") or ()],
                   [PlanError(**e) for e in doc.get("errors") or ()],
                   list(doc.get("empty") or ()), float(doc.get("now") or 0.0))


def _selector_strings(sel: PlatformSelector) -> tuple[tuple[str, ...], tuple[str, ...],
                                                         tuple[str, ...]]:
    return (tuple(str(p) for p in sel.platforms), tuple(sel.oses),
            tuple(f"{a}:{v}" if v else a for a, v in sel.archs))


def _destination_tag(rule: Rule, target: Target, tag: str | None, index: int,
                     now: float) -> str | None:
    if rule.tag_template and not target.tags and tag is not None:
        return render_tag(rule.tag_template, tag, rule.repository, now)
    return rule.destination_tag(target, tag, index)


def _ref(registry: str, repository: str, tag: str | None) -> str:
    return str(Reference(registry, repository, tag))


def describe_error(exc: BaseException) -> str:
    from .retry import describe  # network errors as sentences
    return str(exc) if isinstance(exc, RegistryError | ValueError) else describe(exc)


@dataclass
class Planner:
    stores: Callable[[str], Store]
    now: float = field(default_factory=time.time)
    #: Listings allowed to run ahead of the rule being planned.
    lookahead: int = 16
    plan: Plan = field(init=False)
    _seq: int = 0
    _claims: dict[str, str] = field(default_factory=dict)  # destination -> its source

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
                    self.plan.errors.extend(PlanError(rule.key, rule.key, t.name, err)
                                            for t in rule.targets)
                    continue
                produced = 0
                for concrete, tags in expanded:
                    if isinstance(tags, BaseException):
                        err = describe_error(tags)
                        self.plan.errors.extend(
                            PlanError(rule.key, concrete.source_name, t.name, err)
                            for t in concrete.targets)
                        continue
                    for item in self._items_of(concrete, tags):
                        produced += 1
                        self.plan.items.append(item)
                        yield item
                if not produced and not any(e.rule == rule.key for e in self.plan.errors):
                    self.plan.empty.append(rule.key)
        finally:
            for t in listings:
                t.cancel()

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
                            archs, rule.overwrite)

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
                self.plan.errors.extend(PlanError(rule.key, str(source), t.name, str(e))
                                        for t in rule.targets)
                continue
            kept = self._claim(rule, source, dests)
            if kept:
                out.append(item(source, kept))
        return out

    def _claim(self, rule: Rule, source: Reference, dests: list[str]) -> list[str]:
        """One source per destination tag: a second source mapped to the same destination
        (say a tag_template without {tag}) fails instead of silently overwriting."""
        keep = []
        for dest in dests:
            if Reference.parse(dest).tag is None:
                keep.append(dest)
                continue
            first = self._claims.setdefault(dest, str(source))
            if first == str(source):
                keep.append(dest)
                continue
            self.plan.errors.append(PlanError(
                rule.key, str(source), dest,
                f"{first} is also copied to {dest} by this run: two sources for one "
                "destination tag (give tag_template a {tag})"))
        return keep
