"""The one HTTP layer: endpoints, auth, retries with backoff, error classification.

Every request to a registry goes through :class:`Transport`. It finds the registry's
endpoint once (HTTPS, or plain HTTP for ``insecure`` registries that speak it), adds the
``Authorization`` header the registry's challenge asks for, refreshes a bearer token once
on a 401, turns answers into typed errors, and retries transient failures with
exponential backoff and jitter, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from .auth import AuthEntry, BearerTokens, Challenge, CredentialStore, basic_header
from .errors import AuthError, NotFoundError, RegistryError, TransientError
from .reference import DOCKER_HUB, DOCKER_HUB_ENDPOINT

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
USER_AGENT = "imagesync"


def is_transient(exc: BaseException) -> bool:
    return isinstance(
        exc, TransientError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
        | asyncio.TimeoutError | ConnectionError
    )


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` is seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RetryPolicy:
    """How often and how patiently to retry. Tests shrink the waits."""

    retries: int = 3
    initial: float = 0.5
    maximum: float = 30.0
    max_retry_after: float = 120.0

    def wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(initial=self.initial, max=self.maximum)(state)
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return min(max(after, backoff), self.max_retry_after)
        return backoff


@dataclass
class Endpoint:
    """What we learnt about one registry: where it is and how it wants to be authorised."""

    registry: str
    base: str
    ssl: ssl.SSLContext | bool
    entry: AuthEntry | None
    tokens: BearerTokens
    challenge: Challenge | None = None

    def credential_source(self) -> str:
        if self.entry and self.entry.has_credentials:
            return self.entry.describe()
        return "anonymous access (no auth entry matches)"


@dataclass
class Response:
    """A fully read answer (manifests, tags, catalogs: all small)."""

    status: int
    headers: Any
    body: bytes
    url: str


@dataclass
class Transport:
    """Owns the HTTP session and everything that is per registry host."""

    credentials: CredentialStore
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    connections: int = 64
    log: Any = field(default_factory=structlog.get_logger)
    _session: aiohttp.ClientSession | None = None
    _endpoints: dict[str, asyncio.Future[Endpoint]] = field(default_factory=dict)

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(limit=self.connections, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=30, sock_read=120)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Transport as an async context manager"
        return self._session

    # -- retries -------------------------------------------------------------------
    async def retrying(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``fn`` again after transient failures, with backoff; re-raise the last error."""
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning("retrying", what=what, attempt=state.attempt_number,
                             error=str(exc) or type(exc).__name__,
                             wait=round(state.upcoming_sleep, 2))

        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.policy.retries + 1), wait=self.policy.wait,
            retry=retry_if_exception(is_transient), reraise=True, before_sleep=before_sleep,
        ):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")

    # -- endpoints -----------------------------------------------------------------
    async def endpoint(self, registry: str) -> Endpoint:
        fut = self._endpoints.get(registry)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._endpoints[registry] = fut
            try:
                fut.set_result(await self.retrying(lambda: self._discover(registry),
                                                   f"ping {registry}"))
            except BaseException as e:
                fut.set_exception(e)
                del self._endpoints[registry]
                fut.exception()  # mark retrieved: waiters re-raise it themselves
                raise
        return await asyncio.shield(fut)

    async def _discover(self, registry: str) -> Endpoint:
        entry = self.credentials.registry_entry(registry)
        host = DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry
        insecure = bool(entry and entry.insecure) or _is_loopback(host)
        ctx: ssl.SSLContext | bool = False if insecure else True
        if entry and (entry.ca_file or entry.cert_file) and not (entry.insecure):
            ctx = await asyncio.to_thread(_ssl_context, entry)
        candidates = [f"https://{host}"] + ([f"http://{host}"] if insecure else [])
        last: BaseException | None = None
        for base in candidates:
            try:
                async with self.session.get(f"{base}/v2/", ssl=ctx,
                                            allow_redirects=False) as resp:
                    await resp.read()
                    challenge = (Challenge.parse(resp.headers.get("WWW-Authenticate"))
                                 if resp.status == 401 else None)
                    if resp.status in RETRYABLE_STATUS:
                        raise TransientError(f"{registry}: /v2/ answered {resp.status}",
                                             parse_retry_after(resp.headers.get("Retry-After")))
            except (aiohttp.ClientSSLError, aiohttp.ClientConnectorError,
                    aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                last = e
                continue
            tokens = BearerTokens(registry, entry, self._fetch_token_for(ctx))
            self.log.debug("endpoint", registry=registry, base=base,
                           auth=challenge.scheme if challenge else "none")
            return Endpoint(registry, base, ctx, entry, tokens, challenge)
        raise TransientError(f"{registry}: cannot connect ({_describe(last)})")

    def _fetch_token_for(self, ctx: ssl.SSLContext | bool):
        async def fetch(realm: str, params: list[tuple[str, str]], authz: str | None) -> dict:
            headers = {"Authorization": authz} if authz else {}
            async with self.session.get(realm, params=params, headers=headers,
                                        ssl=ctx) as resp:
                body = await resp.read()
                if resp.status in (401, 403):
                    raise AuthError(f"token server refused the credentials ({resp.status})",
                                    status=resp.status)
                if resp.status in RETRYABLE_STATUS:
                    raise TransientError(f"token server answered {resp.status}",
                                         parse_retry_after(resp.headers.get("Retry-After")))
                if resp.status != 200:
                    raise AuthError(f"token server answered {resp.status}", status=resp.status)
                try:
                    return json.loads(body)
                except ValueError as e:
                    raise AuthError("token server answered with invalid JSON") from e
        return fetch

    async def _authorization(self, ep: Endpoint, scopes: Sequence[str]) -> str | None:
        ch = ep.challenge
        if ch is None:
            return None
        if ch.scheme == "bearer":
            try:
                return "Bearer " + await ep.tokens.get(ch, scopes)
            except AuthError as e:
                raise AuthError(f"{ep.registry}: {e} using {ep.credential_source()}",
                                status=e.status) from None
        if ch.scheme == "basic" and ep.entry and ep.entry.username is not None:
            return basic_header(ep.entry.username, ep.entry.password or "")
        return None

    # -- requests ------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, registry: str, path: str, *, scopes: Sequence[str] = (),
        headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
        data: Any = None, ok: Sequence[int] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request, authorised, answered with one of ``ok`` (else a typed error)."""
        ep = await self.endpoint(registry)
        url = path if path.startswith(("http://", "https://")) else urljoin(ep.base, path)
        replayable = data is None or isinstance(data, bytes | str)
        for attempt in (1, 2):
            authz = await self._authorization(ep, scopes)
            hdrs = dict(headers or {})
            if authz:
                hdrs["Authorization"] = authz
            resp = await self.session.request(method, url, headers=hdrs, params=params,
                                              data=data, ssl=ep.ssl)
            if resp.status == 401 and attempt == 1:
                challenge = Challenge.parse(resp.headers.get("WWW-Authenticate"))
                resp.release()
                if challenge is None:
                    break
                if authz and authz.startswith("Bearer "):
                    ep.tokens.invalidate(scopes, authz[7:])
                ep.challenge = challenge
                if not replayable:
                    raise TransientError(f"{method} {_short(url)}: token expired mid-request")
                continue
            break
        try:
            if resp.status not in ok:
                await self._raise_for(resp, ep, method, url, scopes)
            yield resp
        finally:
            resp.release()

    async def request(self, method: str, registry: str, path: str, **kw: Any) -> Response:
        """A small request, read whole and retried on transient failures."""
        async def once() -> Response:
            async with self.stream(method, registry, path, **kw) as resp:
                return Response(resp.status, resp.headers, await resp.read(), str(resp.url))
        return await self.retrying(once, f"{method} {registry}{path}")

    async def _raise_for(self, resp: aiohttp.ClientResponse, ep: Endpoint, method: str,
                         url: str, scopes: Sequence[str]) -> None:
        status = resp.status
        body = await resp.read() if method != "HEAD" else b""
        code, detail = _error_detail(body)
        what = f"{method} {_short(url)}"
        if status in RETRYABLE_STATUS:
            raise TransientError(f"{what}: {status} {detail}".strip(),
                                 parse_retry_after(resp.headers.get("Retry-After")))
        if status in (401, 403):
            verb = "authentication failed" if status == 401 else "access denied"
            need = ", ".join(scopes) or "access"
            raise AuthError(f"{ep.registry}: {verb} ({status}) for {need} using "
                            f"{ep.credential_source()}", status=status, code=code)
        if status == 404:
            raise NotFoundError(f"{what}: not found ({code or 404})", status=status, code=code)
        raise RegistryError(f"{what}: {status} {code or ''} {detail}".strip(),
                            status=status, code=code)

    def resolve(self, ep_base: str, location: str) -> str:
        return urljoin(ep_base, location)


def _error_detail(body: bytes) -> tuple[str | None, str]:
    """Registry errors come as ``{"errors": [{"code", "message"}]}``."""
    try:
        errs = json.loads(body).get("errors") or []
        first = errs[0]
        return first.get("code"), str(first.get("message") or "")
    except (ValueError, AttributeError, IndexError, TypeError):
        return None, ""


def _short(url: str) -> str:
    """URL without the query string: upload locations carry opaque state."""
    return url.split("?", 1)[0]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    return str(exc) or type(exc).__name__


def _is_loopback(host: str) -> bool:
    # Like Docker: registries on the loopback interface may speak plain HTTP.
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0][1:]
    return name in ("localhost", "::1") or name.startswith("127.")


def _ssl_context(entry: AuthEntry) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=entry.ca_file)
    if entry.cert_file:
        ctx.load_cert_chain(entry.cert_file, entry.key_file)
    return ctx
