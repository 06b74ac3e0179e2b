"""``imagesync serve``: mirror on push.

Registries POST their push events to ``/events`` (the CNCF distribution registry's
notifications, Harbor's webhooks: see :mod:`imagesync.webhooks`). Each pushed
``repository:tag`` (or digest) becomes the plan items of the rules that take it -- with
every rule feature: filters, regexes, templates, renames, platforms, overwrite, several
destinations, ``/*`` namespace rules -- copied at once through one long-lived
:class:`~imagesync.session.Session` (its connections, tokens and per-registry queues are
shared by every copy). A full sync runs at start-up and every ``--interval``, as a safety
net for events that never came.

* **Senders** present ``serve.token`` as ``Authorization: Bearer <token>``,
  ``Authorization: <token>`` (Harbor's "auth header") or ``X-Imagesync-Token: <token>``
  (``serve.header``); anything else gets 401, logged without what was presented.
* **Queue**: at most ``--queue`` accepted pushes are waiting or being copied. A delivery
  that does not fit is answered 503 and nothing of it is taken: the registry delivers it
  again later (distribution retries until it succeeds, Harbor retries its jobs). An
  accepted push is never dropped: it is copied, or folded into a newer push of the same
  destination tag, and on SIGTERM it is finished within ``--grace``.
* **Coalescing**: copies to one destination tag never overlap. A push waits
  ``serve.coalesce`` seconds (default 0.25) before it is copied; pushes to the same
  destination tag that arrive meanwhile, or while a copy to it runs, are folded into one
  copy that reads the tag as it is then, so only the newest image is copied.
* **Signals**: SIGTERM / SIGINT stop taking events (503, ``/healthz`` 503), finish the
  accepted pushes and the copies in flight within ``--grace`` seconds, then exit 0;
  SIGHUP reloads the config (a bad one is logged and the old one kept; new ``auth``
  entries get a new session once the old one's copies are done).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from aiohttp import web

from .config import Config, expand_env, load_document, load_schema, read_document
from .config import validate as validate_schema
from .errors import ConfigError
from .log import Redactor
from .metrics import CONTENT_TYPE, ClientStats, Metrics
from .names import canonical_registry
from .output import Output, add_output_arguments
from .plan import Plan, PlanItem, Planner
from .rules import Rule
from .session import Session, Settings
from .webhooks import PayloadError, PushedImage, parse

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_HEADER = "X-Imagesync-Token"
DEFAULT_COALESCE = 0.25
MAX_BODY = 4 << 20  # a distribution envelope holds a few events; Harbor's is small
TAG_WAIT = 5.0      # seconds a copy waits for an announced tag to appear at the source
RETRY_AFTER = "5"   # seconds, on 503s (distribution ignores it, Harbor's job service too)


# -- configuration --------------------------------------------------------------------------

@dataclass(frozen=True)
class ServeConfig:
    """The config's ``serve`` block."""

    token: str
    header: str = DEFAULT_HEADER
    #: One name for every sender, or event host -> the registry name the rules use.
    registry: str | Mapping[str, str] | None = None
    coalesce: float = DEFAULT_COALESCE

    def registry_of(self, host: str | None) -> str | None:
        """The source registry, as the rules name it, of an event from ``host``."""
        if isinstance(self.registry, str):
            return canonical_registry(self.registry)
        if host is None:
            return None
        if self.registry is not None:
            host = self.registry.get(host, host)
        return canonical_registry(host)


def load_serve_config(path: str, environ: Mapping[str, str] | None = None
                      ) -> tuple[Config, ServeConfig]:
    """The rules and auth (as ``imagesync --config``) plus the ``serve`` block."""
    return load_serve_document(read_document(path, "config"), path, environ)


def load_serve_document(doc: Any, path: str, environ: Mapping[str, str] | None = None
                        ) -> tuple[Config, ServeConfig]:
    """:func:`load_serve_config` of an already-parsed document (``path``: its label)."""
    if not isinstance(doc, dict):
        raise ConfigError(path, None, "must be a mapping with 'serve', 'auth' and 'images'")
    rest = {k: v for k, v in doc.items() if k != "serve"}
    block = doc.get("serve")
    if block is None:
        raise ConfigError(path, "serve", "is required by imagesync serve: add "
                          "'serve: {token: ${WEBHOOK_TOKEN}}' (the secret senders present)")
    whole: dict = {}
    block = expand_env(block, path, ("serve",), environ, kind="config", whole=whole)
    schema = load_schema()
    validate_schema(block, {"$ref": "#/$defs/serve", "$defs": schema["$defs"]}, path,
                    ("serve",), whole)
    serve = ServeConfig(token=block["token"], header=block.get("header", DEFAULT_HEADER),
                        registry=block.get("registry"),
                        coalesce=float(block.get("coalesce", DEFAULT_COALESCE)))
    return load_document(rest, path, environ=environ), serve


@dataclass
class ServeOptions:
    listen: str = DEFAULT_LISTEN
    interval: float = 3600.0   # seconds between full syncs; 0: none after start-up
    queue: int = 256           # accepted pushes waiting or being copied
    grace: float = 30.0        # seconds to finish accepted work on SIGTERM
    settings: Settings = field(default_factory=Settings)


def parse_duration(text: str) -> float:
    """``1h``, ``30m``, ``90s``, ``1h30m``, ``500ms``, ``0``, or plain seconds."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 1h, 30m, "
                                         "90s or 0")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``:PORT`` (every interface) or ``[v6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: give ADDR:PORT, e.g. 0.0.0.0:8080")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


# -- the server ---------------------------------------------------------------------------

class _Push:
    """One accepted pushed image: its jobs still to finish, when it arrived."""

    __slots__ = ("image", "received", "registry", "remaining")

    def __init__(self, image: PushedImage, registry: str):
        self.image = image
        self.registry = registry
        self.received = time.monotonic()
        self.remaining = 0

    def __str__(self) -> str:
        ref = f":{self.image.tag}" if self.image.tag else f"@{self.image.digest}"
        return f"{self.registry}/{self.image.repository}{ref}"


@dataclass
class _Job:
    item: PlanItem
    pushes: list[_Push]


@dataclass
class _Lane:
    """Copies to one set of destination tags: one at a time, the newest waiting."""

    waiting: _Job | None = None
    running: bool = False


@dataclass
class _Live:
    session: Session
    users: int = 0
    retired: bool = False


class Server:
    """``await server.start()`` ... ``await server.shutdown()``; or :func:`main`."""

    def __init__(self, config_path: str, options: ServeOptions, log: Any,
                 redact: Redactor | None = None, *,
                 environ: Mapping[str, str] | None = None,
                 loaded: tuple[Config, ServeConfig] | None = None):
        self.config_path = config_path
        self.options = options
        self.log = log
        self.redact = redact or Redactor()
        self.environ = environ
        self.config, self.serve = loaded or load_serve_config(config_path, environ)
        self.redact.add(self.serve.token)
        self.metrics = Metrics(self._client_stats)
        self.metrics.queue_depth.set_function(lambda: self.depth)
        self.depth = 0                 # accepted pushes not finished
        self.accepting = False
        self.full_syncs = 0            # finished (tests, logs)
        self._live: _Live | None = None
        self._retiring: list[_Live] = []
        self._carried = ClientStats()  # counts of sessions closed after a reload
        self._lanes: dict[tuple[str, ...], _Lane] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sync_loop: asyncio.Task[None] | None = None
        self._told_time_dependent: set[str] = set()
        self._stopping = asyncio.Event()  # shutdown began: no new full sync
        self._abort = asyncio.Event()     # a second signal: interrupt now
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    # -- lifecycle ------------------------------------------------------------------
    def _new_session(self) -> Session:
        return Session(self.options.settings, self.log, entries=self.config.auth,
                       on_secret=self.redact.add, environ=self.environ)

    async def start(self, sock: socket.socket | None = None) -> None:
        """Open the session, listen (on ``sock`` if given), start the sync loop."""
        session = self._new_session()
        await session.__aenter__()
        self._live = _Live(session)
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/events", self._events)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(self._runner, sock)
        else:
            host, port = parse_listen(self.options.listen)
            site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            await session.__aexit__(None, None, None)
            raise
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.address = sockets[0].getsockname()[:2] if sockets else None
        self.accepting = True
        self._sync_loop = asyncio.create_task(self._sync_forever())
        self.log.info("serving", what=f"http://{self.options.listen}/events",
                      rules=len(self.config.rules),
                      interval=_human_seconds(self.options.interval),
                      queue=self.options.queue)

    @property
    def port(self) -> int:
        assert self.address is not None
        return int(self.address[1])

    async def shutdown(self, grace: float | None = None) -> bool:
        """Stop taking events; finish accepted pushes and copies in flight within
        ``grace`` seconds, then interrupt what is left. True when nothing was left."""
        if self._runner is None:
            return True  # never started, or already stopped
        grace = self.options.grace if grace is None else grace
        self.accepting = False  # a full sync in progress starts nothing new
        self._stopping.set()
        deadline = time.monotonic() + grace
        self.log.info("stopping", what=f"finishing {self.depth} accepted push(es) and "
                      f"copies in flight within {_human_seconds(grace)}")
        clean = await self._drain(deadline)
        if not clean:
            why = "stopping at once" if self._abort.is_set() else "grace period over"
            self.log.warning(f"{why}: interrupting copies in flight",
                             note=f"{self.depth} accepted push(es) not mirrored: the "
                             "start-up sync of the next server copies them")
            for live in self._sessions():
                live.session.stop()
            tasks = list(self._tasks)
            if self._sync_loop is not None:
                tasks.append(self._sync_loop)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._runner.cleanup()
        self._runner = None
        for live in self._sessions():
            await live.session.__aexit__(None, None, None)
        self._live, self._retiring = None, []
        self.log.info("stopped", what="clean" if clean else "interrupted")
        return clean

    def abort(self) -> None:
        """Cut a shutdown's grace period short: interrupt what is in flight now."""
        self._abort.set()

    async def _drain(self, deadline: float) -> bool:
        abort = asyncio.ensure_future(self._abort.wait())
        try:
            while True:
                pending: set[asyncio.Future[Any]] = set(self._tasks)
                if self._sync_loop is not None and not self._sync_loop.done():
                    pending.add(self._sync_loop)
                if not pending:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._abort.is_set():
                    return False
                await asyncio.wait(pending | {abort}, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            abort.cancel()

    def _sessions(self) -> list[_Live]:
        return ([self._live] if self._live else []) + list(self._retiring)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Session]:
        live = self._live
        assert live is not None, "the server is not started"
        live.users += 1
        try:
            yield live.session
        finally:
            live.users -= 1
            if live.retired and live.users == 0:
                self._spawn(self._close(live))

    async def _close(self, live: _Live) -> None:
        if live not in self._retiring:
            return
        self._retiring.remove(live)
        stats = _stats_of(live.session)
        self._carried.retries += stats.retries
        for reg, n in stats.throttled.items():
            self._carried.throttled[reg] = self._carried.throttled.get(reg, 0) + n
        for reg, n in stats.unreachable.items():
            self._carried.unreachable[reg] = self._carried.unreachable.get(reg, 0) + n
        await live.session.__aexit__(None, None, None)

    def _client_stats(self) -> ClientStats:
        out = ClientStats(self._carried.retries, dict(self._carried.throttled),
                          dict(self._carried.unreachable))
        for live in self._sessions():
            s = _stats_of(live.session)
            out.retries += s.retries
            for reg, n in s.throttled.items():
                out.throttled[reg] = out.throttled.get(reg, 0) + n
            for reg, n in s.unreachable.items():
                out.unreachable[reg] = out.unreachable.get(reg, 0) + n
        return out

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- reload ---------------------------------------------------------------------
    async def reload(self) -> bool:
        """Read the config again; on any error keep the old one (and say why)."""
        try:
            config, serve = load_serve_config(self.config_path, self.environ)
        except ConfigError as e:
            self.metrics.reloads.labels("failed").inc()
            self.log.error("config reload failed, keeping the old config", error=str(e))
            return False
        self.redact.add(serve.token)
        auth_changed = config.auth != self.config.auth
        self.config, self.serve = config, serve
        if auth_changed and self._live is not None:
            old = self._live
            session = self._new_session()
            await session.__aenter__()
            self._live = _Live(session)
            old.retired = True
            self._retiring.append(old)
            if old.users == 0:
                await self._close(old)
        self.metrics.reloads.labels("ok").inc()
        for warning in config.warnings:
            self.log.warning("config", note=warning)
        self.log.info("config reloaded", rules=len(config.rules),
                      note="new auth: new session" if auth_changed else None)
        return True

    # -- HTTP -------------------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        if not self.accepting:
            return web.Response(status=503, text="stopping\n")
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def _authorized(self, request: web.Request) -> str | None:
        """None when the sender presented the token, else why not (never the value)."""
        token = self.serve.token.encode()
        presented: list[str] = []
        auth = request.headers.get("Authorization", "").strip()
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer":
                presented.append(value.strip())
            presented.append(auth)
        header = request.headers.get(self.serve.header, "").strip()
        if header:
            presented.append(header)
        if not presented:
            return f"no token: send Authorization: Bearer <token> or {self.serve.header}"
        ok = False
        for p in presented:  # compare every candidate: no early exit on a match
            ok |= hmac.compare_digest(p.encode(), token)
        return None if ok else "wrong token"

    async def _events(self, request: web.Request) -> web.Response:
        if not self.accepting:
            self.metrics.events.labels("unknown", "stopping").inc()
            return web.json_response({"error": "stopping"}, status=503,
                                     headers={"Retry-After": RETRY_AFTER})
        why = self._authorized(request)
        if why is not None:
            self.metrics.events.labels("unknown", "unauthorized").inc()
            self.log.warning("refused event", what=f"from {request.remote}", error=why,
                             agent=request.headers.get("User-Agent"))
            return web.json_response({"error": "unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="imagesync"'})
        try:
            payload = parse(await request.read())
        except PayloadError as e:
            self.metrics.events.labels("unknown", "invalid").inc()
            self.log.warning("invalid event", what=f"from {request.remote}", error=str(e))
            return web.json_response({"error": str(e)}, status=400)
        now = time.time()
        work: list[tuple[_Push, list[PlanItem], list[Rule]]] = []
        planner = Planner(self._store_of_live, now=now)
        for image in payload.pushes:
            registry = self.serve.registry_of(image.host)
            if registry is None:
                self.log.warning("event without a registry host: ignored",
                                 what=f"{image.repository}", note="set serve.registry")
                continue
            push = _Push(image, registry)
            items, ranked = self._plan(planner, push)
            if items or ranked:
                work.append((push, items, ranked))
            else:
                self.log.debug("ignored", what=str(push), note="no rule takes it")
        ignored = payload.ignored + len(payload.pushes) - len(work)
        if not work:
            self._plan_errors(planner)
            self.metrics.events.labels(payload.sender, "ignored").inc()
            return web.json_response({"accepted": 0, "ignored": ignored})
        # All of a delivery or none of it: the sender re-delivers the whole envelope.
        # One delivery bigger than the queue is still taken when the queue is empty.
        if self.depth and self.depth + len(work) > self.options.queue:
            self.metrics.events.labels(payload.sender, "queue_full").inc()
            self.log.info("queue full: asking the sender to re-deliver",
                          what=", ".join(str(p) for p, _, _ in work), queue=self.depth)
            return web.json_response({"error": "queue full"}, status=503,
                                     headers={"Retry-After": RETRY_AFTER})
        self.metrics.events.labels(payload.sender, "accepted").inc()
        self._plan_errors(planner)
        for push, items, ranked in work:
            self.depth += 1
            push.remaining = len(items) + len(ranked)
            self.log.info("pushed", what=str(push), images=len(items) + len(ranked))
            for item in items:
                self._enqueue(item, push)
            for rule in ranked:
                self._spawn(self._plan_ranked(rule, push, now))
        return web.json_response({"accepted": len(work), "ignored": ignored}, status=202)

    # -- planning ---------------------------------------------------------------------
    def _store_of_live(self, name: str) -> Any:
        assert self._live is not None
        return self._live.session.store(name)

    def rules_for(self, registry: str, repository: str) -> list[Rule]:
        """The rules that take ``registry/repository``, namespace rules narrowed to it."""
        out = []
        for rule in self.config.rules:
            if rule.registry != registry:
                continue
            if rule.namespace:
                if rule.wants_repository(repository):
                    out.append(rule.for_repository(repository))
            elif rule.repository == repository:
                out.append(rule)
        return out

    def _plan(self, planner: Planner, push: _Push) -> tuple[list[PlanItem], list[Rule]]:
        """The items of one push, and the rules that need the tag list to decide."""
        items: list[PlanItem] = []
        ranked: list[Rule] = []
        image = push.image
        for rule in self.rules_for(push.registry, image.repository):
            sel = rule.selector
            if (image.tag is not None and not sel.digest and sel.filter is not None
                    and sel.filter.latest is not None):
                ranked.append(rule)  # "newest N": only the tag list can say
                continue
            items += planner.items_for_tag(rule, image.tag, image.digest)
        return items, ranked

    async def _plan_ranked(self, rule: Rule, push: _Push, now: float) -> None:
        items: list[PlanItem] = []
        try:
            async with self._session() as session:
                listing = await session.store(rule.registry).repository(
                    rule.repository).list_tags()
            planner = Planner(session.store, now=now)
            items = planner.items_for_tag(rule, push.image.tag, push.image.digest, listing)
            self._plan_errors(planner)
        except Exception as e:
            self.metrics.images.labels(rule.key, "failed", "event").inc()
            self.log.error("failed", source=str(push), destination=rule.key,
                           error=f"cannot list the tags: {e}")
        if not items:
            self._finished(push, -1)
            return
        self._finished(push, len(items) - 1)
        for item in items:
            self._enqueue(item, push)

    def _plan_errors(self, planner: Planner) -> None:
        for err in planner.plan.errors:  # a template giving a bad tag, two sources...
            self.metrics.images.labels(err.rule, "failed", "event").inc()
            self.log.error("failed", source=err.source, destination=err.destination,
                           error=err.error)

    def _finished(self, push: _Push, delta: int) -> None:
        push.remaining += delta
        if push.remaining <= 0:
            self.depth -= 1

    # -- copying ------------------------------------------------------------------------
    def _enqueue(self, item: PlanItem, push: _Push) -> None:
        key = item.destinations
        lane = self._lanes.setdefault(key, _Lane())
        if lane.waiting is not None:  # fold into the waiting copy: it reads the tag later
            lane.waiting.item = item
            lane.waiting.pushes.append(push)
            self.metrics.coalesced.inc()
            return
        lane.waiting = _Job(item, [push])
        if not lane.running:
            lane.running = True
            self._spawn(self._run_lane(key, lane))

    async def _run_lane(self, key: tuple[str, ...], lane: _Lane) -> None:
        try:
            while lane.waiting is not None:
                if self.accepting and self.serve.coalesce > 0:
                    await asyncio.sleep(self.serve.coalesce)
                job, lane.waiting = lane.waiting, None
                await self._copy(job)
        finally:
            lane.running = False
            if self._lanes.get(key) is lane and lane.waiting is None:
                del self._lanes[key]

    async def _copy(self, job: _Job) -> None:
        self.metrics.in_flight.inc()
        copied = False
        try:
            async with self._session() as session:
                await self._source_ready(session, job)
                plan = Plan(items=[job.item], now=time.time())
                await session.run_plan(plan, self.metrics.observer("event"))
            copied = True
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the copier reports image failures; this is a bug
            self.metrics.images.labels(job.item.rule, "failed", "event").inc()
            self.log.error("failed", source=job.item.source,
                           destination=", ".join(job.item.destinations), error=repr(e))
        finally:
            self.metrics.in_flight.dec()
            done = time.monotonic()
            for push in job.pushes:
                self._finished(push, -1)
                if push.remaining <= 0 and copied:
                    self.metrics.latency.observe(done - push.received)

    async def _source_ready(self, session: Session, job: _Job) -> None:
        """The distribution registry announces a manifest push before it writes the tag:
        wait (briefly, with backoff) until the tag points at a pushed digest. After
        ``TAG_WAIT`` seconds the copy goes ahead and reads the tag as it is."""
        ref = job.item.source_ref
        if ref.tag is None:
            return
        pushed = {p.image.digest for p in job.pushes if p.image.digest}
        repo = session.store(ref.registry).repository(ref.repository)
        deadline = time.monotonic() + TAG_WAIT
        delay = 0.01
        while True:
            try:
                desc = await repo.head_manifest(ref.tag)
            except Exception:
                return  # the copy reports what is wrong
            if desc is not None and (not pushed or desc.digest in pushed):
                return
            if time.monotonic() + delay > deadline:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- full syncs ----------------------------------------------------------------------
    async def _sync_forever(self) -> None:
        trigger = "start-up"
        while not self._stopping.is_set():
            started = time.monotonic()
            await self.full_sync(trigger)
            if self.options.interval <= 0:
                return
            trigger = "interval"
            wait = max(0.0, started + self.options.interval - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def full_sync(self, trigger: str = "manual") -> None:
        """Plan every rule and copy the plan; items in flight finish on shutdown, nothing
        new starts."""
        rules = [r for r in self.config.rules if not time_dependent(r)]
        for r in self.config.rules:
            if time_dependent(r) and r.key not in self._told_time_dependent:
                self._told_time_dependent.add(r.key)
                self.log.info("not in full syncs", rule=r.key,
                              note=f"tag_template {r.tag_template!r} makes new tags on every "
                              "run: only pushes are mirrored")
        self.log.info("full sync", what=trigger, rules=len(rules))
        try:
            async with self._session() as session:
                planner = Planner(session.store, now=time.time())
                items = self._while_accepting(planner.items(rules))
                outcome = await session.run_items(items, planner.plan,
                                                  self.metrics.observer("sync"),
                                                  time.monotonic())
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.metrics.full_syncs.labels(trigger, "error").inc()
            self.log.error("full sync failed", what=trigger, error=repr(e))
            return
        finally:
            self.full_syncs += 1
            self.metrics.last_full_sync.set(time.time())
        s = outcome.summary
        self.metrics.full_syncs.labels(trigger, "ok" if s.exit_code == 0 else "failed").inc()
        self.log.info("full sync done", what=trigger, synced=s.synced, skipped=s.skipped,
                      failed=s.failed + s.conflicts, bytes=s.bytes, seconds=s.seconds)

    async def _while_accepting(self, items: AsyncIterator[PlanItem]
                               ) -> AsyncIterator[PlanItem]:
        async with contextlib.aclosing(items):  # type: ignore[type-var]
            async for item in items:
                if not self.accepting:
                    return
                yield item


def time_dependent(rule: Rule) -> bool:
    """A rule whose destination tags change with the clock (``{timestamp}``, ``{date}``):
    a full sync would promote every matching tag again under a new name."""
    t = rule.tag_template or ""
    return "{timestamp" in t or "{date" in t


def _stats_of(session: Session) -> ClientStats:
    client = getattr(session, "_client", None)  # None until the session is entered
    if client is None:
        return ClientStats()
    queues = client.queues
    return ClientStats(client.retries, {h: q.holds for h, q in queues.items() if q.holds},
                       {h: q.epoch for h, q in queues.items() if q.epoch})


def _human_seconds(s: float) -> str:
    if s <= 0:
        return "0"
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:.0f}h"
    if s >= 60 and s % 60 == 0:
        return f"{s / 60:.0f}m"
    return f"{s:g}s"


# -- command line -----------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"imagesync serve: {message} (see imagesync serve --help)\n")


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be a whole number of at least 1")
    return int(value)


def _seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return n


def _listen(value: str) -> str:
    parse_listen(value)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imagesync serve",
                description="Mirror on push: copy what the config's rules take as soon as "
                "a registry reports a push; a full sync at start-up and every --interval.",
                epilog="Endpoints: POST /events (registry notifications, Harbor webhooks), "
                "GET /healthz, GET /metrics (Prometheus). SIGTERM: finish and exit 0; "
                "SIGHUP: reload the config.")
    p.add_argument("--config", metavar="FILE", required=True,
                   help="auth, images and the serve block (.json, .yaml or .yml)")
    p.add_argument("--listen", type=_listen, default=DEFAULT_LISTEN, metavar="ADDR:PORT",
                   help=f"where to listen (default {DEFAULT_LISTEN})")
    p.add_argument("--interval", type=parse_duration, default=3600.0, metavar="DURATION",
                   help="full sync every DURATION (1h, 30m, 90s; default 1h; 0: only at "
                   "start-up)")
    p.add_argument("--queue", type=_count, default=256, metavar="N",
                   help="accepted pushes waiting or being copied; more get 503 (default 256)")
    p.add_argument("--grace", type=_seconds, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, time to finish accepted pushes (default 30)")
    p.add_argument("--proc", type=_count, default=64, metavar="N",
                   help="at most N requests in flight per registry, adaptive below (default 64)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retries per request after transient failures (default 3)")
    p.add_argument("--per-registry", type=int, default=0, metavar="N",
                   help="at most N connections to any one registry")
    p.add_argument("--timeout", type=_count, default=60, metavar="SECONDS",
                   help="a request that gets no byte for this long is retried (default 60)")
    add_output_arguments(p)
    return p


async def _serve(server: Server, out: Output) -> int:
    try:
        await server.start()
    except OSError as e:
        out.notice(f"cannot listen on {server.options.listen}: {e.strerror or e}")
        return EXIT_FAILED
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_stop(signum: int) -> None:
        signals.append(signum)
        if len(signals) == 1:
            out.notice(f"{signal.Signals(signum).name} received: finishing accepted pushes "
                       f"within {server.options.grace:g}s (send it again to stop at once)")
            stop.set()
        else:
            server.abort()

    def on_hup() -> None:
        server._spawn(server.reload())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
        await server.shutdown()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``imagesync serve --config FILE [--listen ADDR:PORT] [--interval 1h] ...``"""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        loaded = load_serve_config(args.config)
    except ConfigError as e:
        print(f"imagesync serve: {e}", file=sys.stderr)
        return EXIT_USAGE
    redact = Redactor([loaded[1].token])
    try:
        out = Output.from_args(args, redact, display=False).__enter__()
    except OSError as e:
        print(f"imagesync serve: --log {args.log}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    with out:
        for warning in loaded[0].warnings:
            out.log.warning("config", note=warning)
        settings = Settings(proc=args.proc, retries=args.retries,
                            per_registry=args.per_registry, timeout=args.timeout)
        options = ServeOptions(args.listen, args.interval, args.queue, args.grace, settings)
        server = Server(args.config, options, out.log, redact, loaded=loaded)
        return asyncio.run(_serve(server, out))
