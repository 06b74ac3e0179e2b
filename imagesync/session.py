"""The composition root: a session owns the HTTP client, the keychains and the stores,
for as long as the process wants them (one run, or a server running many syncs that
share connections and tokens), and runs syncs: config -> plan -> scheduler -> results.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cloud import cloud_providers
from .config import Config
from .copier import BlobLedger, Copier, CopyOptions
from .dockerconfig import DockerConfig, DockerConfigKeychain
from .events import Observer, Observers
from .keychain import AuthEntry, EntryIndex, EntryKeychain, Keychain, Keychains, SecretSink
from .log import LogObserver
from .names import scheme_of
from .plan import Plan, PlanItem, Planner, Shard
from .ratelimit import RateLimiter
from .registry import Registry
from .report import Result, ResultCollector, Summary, Tally, error_result
from .retry import RetryPolicy
from .rules import Rule
from .scheduler import Scheduler
from .store import Store
from .transport import Client
from .upload import MONOLITHIC_MAX


@dataclass
class Settings:
    proc: int = 64            # upper bound of requests in flight per registry (each
                              # registry's queue adapts below it; see hostqueue)
    retries: int = 3
    force: bool = False
    dry_run: bool = False
    chunk_size: int = MONOLITHIC_MAX
    per_registry: int = 0     # a fixed cap per registry (0: --proc)
    backoff_initial: float = 0.5  # tests shrink this
    timeout: float = 60.0     # seconds without a byte before a request counts as stalled


@dataclass
class Outcome:
    results: list[Result]
    summary: Summary
    plan: Plan
    ledger: BlobLedger = field(repr=False)


def default_keychain(entries: Sequence[AuthEntry] = (), *,
                     docker_config: DockerConfig | None = None,
                     on_secret: SecretSink | None = None,
                     environ: Mapping[str, str] | None = None,
                     clock: Callable[[], float] = time.monotonic,
                     http: Callable[[], Client | None] = lambda: None) -> Keychains:
    """The documented order: config entries (static, ECR, Google ADC), then Docker's
    config.json, then anonymous. ``http``: the client cloud APIs are called through."""
    index = EntryIndex(entries)
    register = on_secret or (lambda s: None)
    keychains: list[Keychain] = [EntryKeychain(
        index, cloud_providers(environ, register, http, clock), clock=clock)]
    places = "the config auth entries"
    if docker_config is not None:
        keychains.append(DockerConfigKeychain(docker_config, clock))
        places += f" or {docker_config.path or 'Docker config.json'}"
    chain = Keychains(keychains, entries=index, on_secret=on_secret, places=places)
    for kc in keychains:
        secrets = getattr(kc, "secrets", None)
        for s in secrets() if secrets else ():
            chain.register(s)
    if docker_config is not None:
        try:
            for s in docker_config.secrets():
                chain.register(s)
        except Exception:  # a malformed auths entry is reported when it is used
            pass
    return chain


def keychain_from_environment(entries: Sequence[AuthEntry] = (), *,
                              on_secret: SecretSink | None = None,
                              environ: Mapping[str, str] | None = None,
                              http: Callable[[], Client | None] = lambda: None) -> Keychains:
    """Config entries plus Docker's config.json (``$DOCKER_CONFIG`` or ``~/.docker``)."""
    return default_keychain(entries, docker_config=DockerConfig.load(environ),
                            on_secret=on_secret, environ=environ, http=http)


class Session:
    """``async with Session(settings, entries, log) as s: await s.sync(rules)``."""

    def __init__(self, settings: Settings, log: Any, *,
                 entries: Sequence[AuthEntry] = (), keychain: Keychains | None = None,
                 on_secret: SecretSink | None = None,
                 environ: Mapping[str, str] | None = None,
                 ratelimits: RateLimiter | None = None):
        self.settings = settings
        self.log = log
        self.keychain = keychain or keychain_from_environment(
            entries, on_secret=on_secret, environ=environ, http=lambda: self._client)
        self.policy = RetryPolicy(retries=settings.retries, initial=settings.backoff_initial,
                                  timeout=settings.timeout)
        self._client: Client | None = None
        self._ratelimits = ratelimits or RateLimiter()
        self._stores: dict[str, Store] = {}
        self._schedulers: set[Scheduler] = set()  # runs in flight (a server has many)
        self.stopping = False

    async def __aenter__(self) -> Session:
        self._client = Client(self.keychain, self.policy, concurrency=self.settings.proc,
                              per_registry=self.settings.per_registry, log=self.log,
                              ratelimits=self._ratelimits)
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for store in self._stores.values():
            aclose = getattr(store, "aclose", None)  # archives are written at the end
            if aclose is not None:
                await aclose()
        if self._client is not None:
            await self._client.__aexit__(*exc)

    @property
    def client(self) -> Client:
        assert self._client is not None, "use Session as an async context manager"
        return self._client

    def store(self, name: str) -> Store:
        """The store called ``name`` (a registry host, ``oci:/dir``): one per name."""
        store = self._stores.get(name)
        if store is None:
            scheme = scheme_of(name)
            if scheme == "registry":
                store = Registry(name, self.client, self.settings.chunk_size)
            else:
                from . import layout  # only runs that use layouts load it

                root = name.partition(":")[2]
                store = (layout.LayoutStore(root) if scheme == "oci"
                         else layout.ArchiveStore(root))
            self._stores[name] = store
        return store

    def stop(self) -> None:
        """Ctrl-C / SIGTERM: start nothing new, interrupt what is in flight."""
        self.stopping = True
        for scheduler in list(self._schedulers):
            scheduler.stop()

    async def sync(self, rules: Sequence[Rule], observer: Observer | None = None,
                   now: float | None = None, shard: Shard | None = None,
                   keep_results: bool = True, keep: Sequence[str] = ()) -> Outcome:
        """Plan ``rules`` and copy the plan (this shard's share of it), while planning
        goes on. ``keep_results=False``: a run of any size in flat memory: the outcome
        keeps only what a person must see (failures, notes) and results of the statuses
        in ``keep``; stream the rest to a :class:`~imagesync.report.ReportWriter`."""
        started = time.monotonic()
        planner = Planner(self.store, now=time.time() if now is None else now, shard=shard,
                          keep_items=keep_results)
        items = planner.items(rules)
        return await self.run_items(items, planner.plan, observer, started, keep_results,
                                    keep)

    async def run_plan(self, plan: Plan, observer: Observer | None = None) -> Outcome:
        """Copy a plan made elsewhere (a file, a shard, a webhook's single item)."""
        async def items() -> Any:
            for item in plan.items:
                yield item
        return await self.run_items(items(), plan, observer, time.monotonic())

    async def run_items(self, items: Any, plan: Plan, observer: Observer | None,
                        started: float, keep_results: bool = True,
                        keep: Sequence[str] = ()) -> Outcome:
        collector = ResultCollector()
        tally = Tally(keep=keep)
        watchers = Observers([LogObserver(self.log), tally])
        if keep_results:
            watchers.add(collector)
        if observer is not None:
            watchers.add(observer)
        ledger = BlobLedger()
        copier = Copier(self.store, watchers,
                        CopyOptions(force=self.settings.force, dry_run=self.settings.dry_run),
                        ledger)
        scheduler = Scheduler(copier.copy, watchers, per_route=max(16, self.settings.proc * 2))
        self._schedulers.add(scheduler)
        if self.stopping:
            scheduler.stop()
        told = 0

        async def planned() -> AsyncGenerator[PlanItem, None]:
            """Tell the observers the plan as it grows, and when it is complete."""
            nonlocal told
            async for item in items:
                watchers.item_planned(item)
                yield item
            for err in plan.errors:
                watchers.plan_error(err)
            told = len(plan.errors)
            watchers.planning_done(plan.count)

        stream = planned()
        try:
            await scheduler.run(stream)
        finally:
            self._schedulers.discard(scheduler)
            await stream.aclose()
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        for err in plan.errors[told:]:  # planning was stopped before it ended
            watchers.plan_error(err)
        for key in plan.empty:
            self.log.warning("rule matched nothing", rule=key)
        summary = tally.summary(time.monotonic() - started, self.settings.dry_run, plan.empty)
        if keep_results:
            order = {item.seq: i for i, item in enumerate(plan.items)}
            seq_of = {(item.source, d): item.seq
                      for item in plan.items for d in item.destinations}
            results = [error_result(e) for e in plan.errors] + sorted(
                collector.results,
                key=lambda r: order.get(seq_of.get((r.source, r.destination), 0), 0))
        else:
            results = tally.notable + tally.kept
            plan.items = list(tally.failed_items.values())  # what a re-run would need
            if tally.dropped:
                self.log.warning("more results than the summary lists", listed=len(results),
                                 more=tally.dropped)
        return Outcome(results, summary, plan, ledger)


async def sync(rules: Sequence[Rule] | Config, settings: Settings, log: Any,
               keychain: Keychains | None = None, *, entries: Sequence[AuthEntry] = (),
               on_secret: SecretSink | None = None) -> Outcome:
    """One run in its own session. ``rules``: a list of rules, or a Config."""
    if isinstance(rules, Config):
        entries = entries or rules.auth
        rules = rules.rules
    async with Session(settings, log, entries=entries, keychain=keychain,
                       on_secret=on_secret) as session:
        return await session.sync(rules)


__all__ = ["Outcome", "PlanItem", "Session", "Settings", "default_keychain", "sync"]
