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
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from .auth import (
    AuthEntry,
    BearerTokens,
    Challenge,
    Credential,
    CredentialStore,
    basic_header,
    scope_repository,
)
from .errors import AuthError, NotFoundError, RegistryError, TransientError
from .ratelimit import RateLimiter
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
        exc = state.outcome.exception() if state.outcome else None
        return self.delay(state.attempt_number, exc)

    def delay(self, attempt: int, exc: BaseException | None) -> float:
        """Before retry number ``attempt`` (1, 2, ...): initial * 2^(attempt-1) plus up to
        ``initial`` of jitter, capped; never less than the server's ``Retry-After``."""
        backoff = min(self.initial * 2 ** (attempt - 1) + random.uniform(0, self.initial),
                      self.maximum)
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
    entry: AuthEntry | None  # the entry that set TLS options / endpoint, if any
    tokens: BearerTokens
    challenge: Challenge | None = None
    gate: HostGate = field(default_factory=lambda: HostGate())


@dataclass
class HostGate:
    """Shared backoff for one registry: after a 429 or 503, every request to it waits
    until the registry's ``Retry-After`` has passed, not just the one that was refused.
    Requests to other registries are not affected."""

    not_before: float = 0.0
    holds: int = 0  # how often the registry asked us to back off (tests, logs)

    def hold(self, seconds: float) -> None:
        self.holds += 1
        self.not_before = max(self.not_before, time.monotonic() + seconds)

    async def wait(self) -> None:
        delay = self.not_before - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


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
    per_registry: int = 0  # cap on connections to one registry host (0: only the total)
    log: Any = field(default_factory=structlog.get_logger)
    ratelimits: RateLimiter = field(default_factory=RateLimiter)
    auth_retries: int = 0  # requests repeated after a 401 (tests: no storms)
    _session: aiohttp.ClientSession | None = None
    _endpoints: dict[str, asyncio.Future[Endpoint]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratelimits.log is None:
            self.ratelimits.log = self.log

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(limit=self.connections,
                                         limit_per_host=self.per_registry, ttl_dns_cache=300)
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
    def endpoint_base(self, registry: str) -> str:
        """Base URL of a registry already reached (relative Locations resolve against it)."""
        return self._endpoints[registry].result().base

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
        scheme = None
        if entry and entry.endpoint:
            host, scheme = _split_endpoint(entry.endpoint)
        insecure = bool(entry and entry.insecure)
        ctx: ssl.SSLContext | bool = False if insecure else True
        if entry and (entry.ca_file or entry.cert_file) and not insecure:
            try:
                ctx = await asyncio.to_thread(_ssl_context, entry)
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"{registry}: cannot load the TLS files of "
                                    f"{entry.where}: {e}") from None
        if scheme:
            candidates = [f"{scheme}://{host}"]
        else:
            # Like Docker: HTTPS first; plain HTTP only for insecure and loopback registries.
            # Loopback does not skip certificate checks: a TLS registry there still needs
            # ca_file (or insecure: true).
            plain = insecure or _is_loopback(host)
            candidates = [f"https://{host}"] + ([f"http://{host}"] if plain else [])
        last: BaseException | None = None
        untrusted: aiohttp.ClientConnectorCertificateError | None = None
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
                    if base.startswith("http:") and not scheme and not _speaks_registry(resp):
                        # e.g. Go's "400 Client sent an HTTP request to an HTTPS server"
                        continue
            except aiohttp.ClientConnectorCertificateError as e:
                last = untrusted = e
                continue
            except (aiohttp.ClientSSLError, aiohttp.ClientConnectorError,
                    aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                last = e
                continue
            tokens = BearerTokens(registry, self._fetch_token_for(ctx))
            self.log.debug("endpoint", registry=registry, base=base,
                           auth=challenge.scheme if challenge else "none")
            return Endpoint(registry, base, ctx, entry, tokens, challenge)
        if untrusted is not None:
            where = entry.where if entry else f"an auth entry {registry!r}"
            raise RegistryError(
                f"{registry}: TLS certificate not trusted ({_cert_reason(untrusted)}): set "
                f"ca_file in {where} to the CA that signed it, or insecure: true")
        raise TransientError(f"{registry}: cannot connect ({_describe(last)})")

    def _fetch_token_for(self, ctx: ssl.SSLContext | bool):
        async def fetch(method: str, realm: str, params: list[tuple[str, str]],
                        authz: str | None) -> dict:
            headers = {"Authorization": authz} if authz else {}
            if method == "POST":  # OAuth2: the form carries the (refresh) token
                call = self.session.post(realm, data=params, headers=headers, ssl=ctx)
            else:
                call = self.session.get(realm, params=params, headers=headers, ssl=ctx)
            async with call as resp:
                body = await resp.read()
                if resp.status in (401, 403):
                    raise AuthError(f"token server refused the credentials ({resp.status})",
                                    status=resp.status)
                if resp.status in RETRYABLE_STATUS:
                    raise TransientError(f"token server answered {resp.status}",
                                         parse_retry_after(resp.headers.get("Retry-After")))
                if resp.status != 200:
                    code = _oauth_error(body)
                    status = 401 if code == "invalid_grant" else resp.status
                    raise AuthError(f"token server answered {resp.status}"
                                    + (f" ({code})" if code else ""), status=status)
                try:
                    answer = json.loads(body)
                except ValueError as e:
                    raise AuthError("token server answered with invalid JSON") from e
                if not isinstance(answer, dict):
                    raise AuthError("token server answered with invalid JSON")
                return answer
        return fetch

    async def _credential(self, ep: Endpoint, scopes: Sequence[str]) -> Credential | None:
        try:
            return await self.credentials.resolve(ep.registry, scope_repository(scopes))
        except AuthError as e:
            raise AuthError(f"{ep.registry}: {e}", status=e.status) from None

    async def _authorization(self, ep: Endpoint, scopes: Sequence[str]
                             ) -> tuple[str | None, Credential | None]:
        """The ``Authorization`` value for a request (None: none) and the credential used."""
        ch = ep.challenge
        if ch is None:
            return None, None
        cred = await self._credential(ep, scopes)
        if ch.scheme == "bearer":
            for attempt in (1, 2):
                try:
                    return "Bearer " + await ep.tokens.get(ch, scopes, cred), cred
                except AuthError as e:
                    # A short-lived credential (helper, cloud) the token server refuses may
                    # just have expired early: fetch it anew, once.
                    if (attempt == 1 and e.status == 401 and cred is not None
                            and self.credentials.invalidate(ep.registry,
                                                            scope_repository(scopes), cred)):
                        cred = await self._credential(ep, scopes)
                        continue
                    raise AuthError(f"{ep.registry}: {e} using "
                                    f"{self.credentials.describe(ep.registry, cred)}",
                                    status=e.status) from None
        if ch.scheme == "basic" and cred is not None and cred.username is not None:
            return basic_header(cred.username, cred.password or ""), cred
        return None, cred

    # -- requests ------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, registry: str, path: str, *, scopes: Sequence[str] = (),
        headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
        data: Any = None, ok: Sequence[int] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request, authorised, answered with one of ``ok`` (else a typed error).

        ``scopes``: what the bearer token must grant, e.g. ``repository:a/b:pull``; the
        first repository scope also picks the credential (longest-prefix auth entry).
        A cross-repository mount passes :func:`imagesync.auth.mount_scopes`.
        """
        ep = await self.endpoint(registry)
        url = path if path.startswith(("http://", "https://")) else urljoin(ep.base, path)
        replayable = data is None or isinstance(data, bytes | str)
        for attempt in (1, 2):
            authz, cred = await self._authorization(ep, scopes)
            hdrs = dict(headers or {})
            if authz:
                hdrs["Authorization"] = authz
            await self.ratelimits.before(registry, method, _short(url))
            await ep.gate.wait()
            resp = await self.session.request(method, url, headers=hdrs, params=params,
                                              data=data, ssl=ep.ssl)
            self.ratelimits.observe(registry, resp.headers)
            if resp.status == 401 and attempt == 1:
                challenge = Challenge.parse(resp.headers.get("WWW-Authenticate"))
                resp.release()
                if challenge is None:
                    break
                self.auth_retries += 1
                if authz and authz.startswith("Bearer "):
                    ep.tokens.invalidate(scopes, authz[7:], cred)
                elif cred is not None:
                    self.credentials.invalidate(registry, scope_repository(scopes), cred)
                ep.challenge = challenge
                wanted = challenge.params.get("scope") if challenge.scheme == "bearer" else None
                if wanted:  # the registry says what it needs (e.g. pull on a mount's source)
                    scopes = list(dict.fromkeys([*scopes, *wanted.split()]))
                if not replayable:
                    raise TransientError(f"{method} {_short(url)}: token expired mid-request")
                continue
            break
        try:
            if resp.status not in ok:
                await self._raise_for(resp, ep, method, url, scopes, cred)
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
                         url: str, scopes: Sequence[str],
                         cred: Credential | None = None) -> None:
        status = resp.status
        body = await resp.read() if method != "HEAD" else b""
        code, detail = _error_detail(body)
        what = f"{method} {_short(url)}"
        if status in RETRYABLE_STATUS:
            after = parse_retry_after(resp.headers.get("Retry-After"))
            if status in (429, 503):
                # The registry is throttling or overloaded: hold every request to it.
                ep.gate.hold(min(after if after is not None else self.policy.initial,
                                 self.policy.max_retry_after))
            raise TransientError(f"{what}: {status} {detail}".strip(), after)
        if status in (401, 403):
            verb = "authentication failed" if status == 401 else "access denied"
            need = ", ".join(scopes) or "access"
            raise AuthError(f"{ep.registry}: {verb} ({status}) for {need} using "
                            f"{self.credentials.describe(ep.registry, cred)}",
                            status=status, code=code)
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
    """System trust plus the entry's private CA (token realms are often on public hosts),
    and the client certificate for mutual TLS."""
    ctx = ssl.create_default_context()
    if entry.ca_file:
        ctx.load_verify_locations(cafile=entry.ca_file)
    if entry.cert_file:
        ctx.load_cert_chain(entry.cert_file, entry.key_file)
    return ctx


def _split_endpoint(endpoint: str) -> tuple[str, str | None]:
    """``https://h:1/`` -> (h:1, https); ``h:1`` -> (h:1, None: try https, then http)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return endpoint.rstrip("/"), None
    return rest.split("/", 1)[0], scheme.lower()


def _speaks_registry(resp: aiohttp.ClientResponse) -> bool:
    return (resp.status in (200, 401, 403)
            or "Docker-Distribution-API-Version" in resp.headers)


def _cert_reason(exc: aiohttp.ClientConnectorCertificateError) -> str:
    err = getattr(exc, "certificate_error", None)
    return str(getattr(err, "verify_message", None) or err or "certificate verify failed")


def _oauth_error(body: bytes) -> str | None:
    try:
        code = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) and len(code) < 64 else None
