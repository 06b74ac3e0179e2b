"""The composition root: config + settings -> transport, stores, pool, engine -> results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .auth import CredentialStore
from .config import Config
from .engine import Engine, Options
from .pool import Pool
from .registry import Registry
from .report import Result, Summary
from .transport import RetryPolicy, Transport
from .upload import MONOLITHIC_MAX


@dataclass
class Settings:
    proc: int = 8
    retries: int = 3
    force: bool = False
    dry_run: bool = False
    chunk_size: int = MONOLITHIC_MAX
    per_registry: int = 0  # connections to one registry at most (0: no cap but --proc)
    backoff_initial: float = 0.5  # tests shrink this


@dataclass
class Outcome:
    results: list[Result]
    summary: Summary
    engine: Engine = field(repr=False)


async def sync(cfg: Config, settings: Settings, log: Any,
               credentials: CredentialStore | None = None) -> Outcome:
    """``credentials``: default, the config's auth entries plus Docker's config.json."""
    started = time.monotonic()
    policy = RetryPolicy(retries=settings.retries, initial=settings.backoff_initial)
    if credentials is None:
        credentials = CredentialStore.from_environment(cfg.auth)
    async with Transport(credentials, policy,
                         connections=max(16, settings.proc * 4),
                         per_registry=settings.per_registry, log=log) as transport:
        registries: dict[str, Registry] = {}

        def store(name: str) -> Registry:
            if name not in registries:
                registries[name] = Registry(name, transport, settings.chunk_size)
            return registries[name]

        engine = Engine(store, Pool(settings.proc), transport.retrying, log,
                        Options(force=settings.force, dry_run=settings.dry_run))
        results = await engine.run(cfg.rules)
    summary = Summary.of(results, time.monotonic() - started, settings.dry_run)
    return Outcome(results, summary, engine)
