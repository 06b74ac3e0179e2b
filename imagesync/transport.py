"""The HTTP client: every request imagesync makes goes through :class:`Client`.

It is built from small layers, each with one concern, outermost first:

1. **retry** (:meth:`Client.retrying`, policy in :mod:`imagesync.retry`): the only place
   a request is tried again. Transient failures wait with backoff and jitter; when a
   registry does not answer at all, that registry's queue counts one failure cycle for
   every request in flight, and marks it down after the policy's retries;
2. **endpoint** (:meth:`Client.endpoint`): where a registry is (HTTPS, or plain HTTP for
   ``insecure`` and loopback registries) and how it wants to be authorised, found once
   per registry, shared by concurrent callers;
3. **authorizer** (:meth:`Client._authorization`): the ``Authorization`` header the
   registry's challenge asks for, from the keychain and the shared token cache; a 401
   renews the token once;
4. **queue** (:class:`~imagesync.hostqueue.HostQueue`): per registry, backoff before a
   slot, then at most ``concurrency`` requests at once, depth-first;
5. **classify** (:meth:`Client._raise_for`, :func:`_classified`): answers and network
   errors become typed errors with a sentence naming the request.

Cloud APIs (ECR's GetAuthorizationToken) and token servers go through the same client
(:meth:`Client.send`), so they share its session, timeouts and classification.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog

from .auth import BearerTokens, Challenge, TokenFetcher, basic_header, scope_repository
from .errors import AuthError, NotFoundError, RegistryDown, RegistryError, TransientError
from .hostqueue import HostQueue
from .keychain import AuthEntry, Credential, Keychains
from .names import DOCKER_HUB, DOCKER_HUB_ENDPOINT
from .ratelimit import RateLimiter
from .retry import (
    RETRYABLE_STATUS,
    RetryPolicy,
    describe,
    is_connection_failure,
    is_transient,
    parse_retry_after,
)

T = TypeVar("T")
USER_AGENT = "imagesync"

#: Set while a destination's upload reads its source: the upload's slot covers the
#: read, so it takes no second slot (two slots held at once could deadlock two
#: registries copying into each other).
unslotted: contextvars.ContextVar[bool] = contextvars.ContextVar("unslotted", default=False)


@dataclass
class Endpoint:
    """What we learnt about one registry: where it is and how it wants to be authorised."""

    registry: str
    base: str
    ssl: ssl.SSLContext | bool
    entry: AuthEntry | None  # the entry that set TLS options / endpoint, if any
    tokens: BearerTokens
    challenge: Challenge | None = None


@dataclass
class Response:
    """A fully read answer (manifests, tags, catalogs: all small)."""

    status: int
    headers: Any
    body: bytes
    url: str


@dataclass
class Client:
    """Owns the HTTP session and everything that is per registry."""

    keychain: Keychains
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 8    # upper bound of requests in flight per registry (adaptive)
    per_registry: int = 0   # a fixed cap, no adaptation; wins over ``concurrency`` (0: none)
    log: Any = field(default_factory=structlog.get_logger)
    ratelimits: RateLimiter = field(default_factory=RateLimiter)
    auth_retries: int = 0   # requests repeated after a 401 (tests: no storms)
    retries: int = 0        # requests tried again (the report, metrics)
    _session: aiohttp.ClientSession | None = None
    _endpoints: dict[str, Endpoint] = field(default_factory=dict)
    _discovering: dict[str, asyncio.Future[Endpoint]] = field(default_factory=dict)
    _queues: dict[str, HostQueue] = field(default_factory=dict)
    _connections: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def __post_init__(self) -> None:
        if self.ratelimits.log is None:
            self.ratelimits.log = self.log

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, connect=None,
                                        sock_connect=self.policy.connect_timeout,
                                        sock_read=self.policy.timeout)
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
        assert self._session is not None, "use Client as an async context manager"
        return self._session

    def queue(self, host: str) -> HostQueue:
        q = self._queues.get(host)
        if q is None:
            limit = self.per_registry or self.concurrency
            q = self._queues[host] = HostQueue(host, limit, self.log,
                                               adaptive=not self.per_registry)
        return q

    @property
    def queues(self) -> dict[str, HostQueue]:
        return dict(self._queues)

    def _reused(self, resp: aiohttp.ClientResponse) -> bool:
        """Did ``resp`` come over a connection that had served a request before?"""
        conn = getattr(resp, "_protocol", None)
        if conn is None or conn in self._connections:
            return True
        self._connections.add(conn)
        return False

    # -- 1. retry ------------------------------------------------------------------
    async def retrying(self, fn: Callable[[], Awaitable[T]], what: str,
                       registry: str | None = None,
                       progress: Callable[[], int] | None = None) -> T:
        """Run ``fn`` (one attempt of a request to ``registry``) until it succeeds, fails
        for good, or runs out of retries; re-raise the last error. ``progress``: for a
        resumable operation, how far it got; any progress restores the full budget."""
        queue = self.queue(registry) if registry else None
        attempt = 0
        done = progress() if progress else 0
        while True:
            if queue is not None and queue.down:
                raise RegistryDown(f"{registry} is unreachable ({queue.down})")
            epoch = queue.epoch if queue is not None else 0
            try:
                result = await fn()
            except Exception as e:
                if not is_transient(e):
                    raise
                if progress is not None and progress() > done:
                    done, attempt = progress(), 0
                attempt += 1
                reason = e.args[0] if isinstance(e, TransientError) else describe(e)
                if queue is not None and is_connection_failure(e):
                    # One failure cycle of the registry, however many requests saw it.
                    queue.unreachable(epoch, self.policy.delay(queue.failures + 1, e),
                                      self.policy.retries, reason)
                    if queue.down:
                        raise RegistryDown(f"{registry} is unreachable ({queue.down})"
                                           ) from None
                    if attempt > self.policy.retries + 1:
                        raise
                    self.retries += 1
                    continue  # the queue's gate holds the next attempt
                if attempt > self.policy.retries:
                    raise
                wait = self.policy.delay(attempt, e)
                self.retries += 1
                self.log.warning("retrying", what=what, attempt=attempt, error=reason,
                                 wait=round(wait, 2))
                await asyncio.sleep(wait)
                continue
            if queue is not None:
                queue.reachable()
            return result

    # -- 2. endpoint ---------------------------------------------------------------
    def endpoint_base(self, registry: str) -> str:
        """Base URL of a registry already reached (relative Locations resolve against it)."""
        return self._endpoints[registry].base

    async def endpoint(self, registry: str) -> Endpoint:
        """One attempt at finding the registry, shared by concurrent callers; a failure
        is not remembered here (the retry layer and the queue's health do that)."""
        ep = self._endpoints.get(registry)
        if ep is not None:
            return ep
        fut = self._discovering.get(registry)
        if fut is None:
            fut = asyncio.ensure_future(self._discover(registry))
            self._discovering[registry] = fut

            def done(f: asyncio.Future[Endpoint]) -> None:
                self._discovering.pop(registry, None)
                if not f.cancelled() and f.exception() is None:
                    self._endpoints[registry] = f.result()
            fut.add_done_callback(done)
        return await asyncio.shield(fut)

    async def _discover(self, registry: str) -> Endpoint:
        entry = self.keychain.entries.registry_entry(registry)
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
                async with self.queue(registry).slot():
                    async with self.session.get(f"{base}/v2/", ssl=ctx,
                                                allow_redirects=False) as resp:
                        await resp.read()
            except aiohttp.ClientConnectorCertificateError as e:
                last = untrusted = e
                continue
            except aiohttp.ClientSSLError as e:
                if _client_cert_refused(e):
                    raise _tls_error(registry, e, entry) from None
                last = e  # e.g. HTTPS to a plain-HTTP registry: try the next candidate
                continue
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError, aiohttp.ServerTimeoutError,
                    asyncio.TimeoutError) as e:
                if _client_cert_refused(e):
                    raise _tls_error(registry, e, entry) from None
                if (isinstance(e, aiohttp.ServerDisconnectedError) and base.startswith("https:")
                        and not (entry and entry.cert_file)):
                    # TLS was set up, then the registry hung up without a word: what
                    # servers that want a client certificate do (Python's, Go's on TLS 1.3).
                    where = entry.where if entry else f"an auth entry {registry!r}"
                    raise TransientError(
                        f"{registry}: the registry closed the TLS connection without "
                        "answering; if it requires a client certificate, set cert_file and "
                        f"key_file in {where}", unreachable=True) from None
                last = e
                continue
            if resp.status in RETRYABLE_STATUS:
                raise TransientError(f"{registry}: /v2/ answered {resp.status}",
                                     parse_retry_after(resp.headers.get("Retry-After")))
            if base.startswith("http:") and not scheme and not _speaks_registry(resp):
                # e.g. Go's "400 Client sent an HTTP request to an HTTPS server"
                continue
            challenge = (Challenge.parse(resp.headers.get("WWW-Authenticate"))
                         if resp.status == 401 else None)
            tokens = BearerTokens(registry, self._token_fetcher(ctx))
            self.log.debug("endpoint", registry=registry, base=base,
                           auth=challenge.scheme if challenge else "none")
            return Endpoint(registry, base, ctx, entry, tokens, challenge)
        if untrusted is not None:
            where = entry.where if entry else f"an auth entry {registry!r}"
            raise RegistryError(
                f"{registry}: TLS certificate not trusted ({_cert_reason(untrusted)}): set "
                f"ca_file in {where} to the CA that signed it, or insecure: true")
        if isinstance(last, aiohttp.ClientSSLError):
            raise _tls_error(registry, last, entry)
        raise TransientError(f"{registry}: {describe(last) if last else 'no answer'}",
                             unreachable=True)

    # -- 3. authorizer -------------------------------------------------------------
    def _token_fetcher(self, ctx: ssl.SSLContext | bool) -> TokenFetcher:
        async def fetch(method: str, realm: str, params: list[tuple[str, str]],
                        authz: str | None) -> dict:
            headers = {"Authorization": authz} if authz else {}
            if method == "POST":  # OAuth2: the form carries the (refresh) token
                status, hdrs, body = await self.send_once(method, realm, data=params,
                                                      headers=headers, ssl=ctx)
            else:
                status, hdrs, body = await self.send_once(method, realm, params=params,
                                                      headers=headers, ssl=ctx)
            if status in (401, 403):
                raise AuthError(f"token server refused the credentials ({status})",
                                status=status)
            if status in RETRYABLE_STATUS:
                raise TransientError(f"token server answered {status}",
                                     parse_retry_after(hdrs.get("Retry-After")))
            if status != 200:
                code = _oauth_error(body)
                raise AuthError(f"token server answered {status}"
                                + (f" ({code})" if code else ""),
                                status=401 if code == "invalid_grant" else status)
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
            return await self.keychain.resolve(ep.registry, scope_repository(scopes))
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
                            and self.keychain.invalidate(ep.registry,
                                                         scope_repository(scopes), cred)):
                        cred = await self._credential(ep, scopes)
                        continue
                    raise AuthError(f"{ep.registry}: {e} using "
                                    f"{self.keychain.describe(ep.registry, cred)}",
                                    status=e.status) from None
        if ch.scheme == "basic" and cred is not None and cred.username is not None:
            return basic_header(cred.username, cred.password or ""), cred
        return None, cred

    # -- 4 + 5. one attempt: queue, send, classify ---------------------------------
    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, registry: str, path: str, *, scopes: Sequence[str] = (),
        headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
        data: Any = None, ok: Sequence[int] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One attempt of one request, authorised, answered with one of ``ok`` (else a
        typed error). The registry's slot is held until the response is released.

        ``scopes``: what the bearer token must grant, e.g. ``repository:a/b:pull``; the
        first repository scope also picks the credential (longest-prefix auth entry).
        """
        queue = self.queue(registry)
        if queue.down:
            raise RegistryDown(f"{registry} is unreachable ({queue.down})")
        ep = await self.endpoint(registry)
        url = (path if path.startswith(("http://", "https://"))
               else _origin(ep.base) + path if path.startswith("/")  # urljoin, cheaply
               else urljoin(ep.base, path))
        what = f"{method} {_short(url)}"
        replayable = data is None or isinstance(data, bytes | str)
        async with contextlib.AsyncExitStack() as stack:
            for attempt in (1, 2):
                authz, cred = await self._authorization(ep, scopes)
                hdrs = dict(headers or {})
                if authz:
                    hdrs["Authorization"] = authz
                await self.ratelimits.before(registry, method, _short(url))
                if unslotted.get():
                    await queue.wait_gate()  # no slot of its own, but the backoff holds
                else:
                    await stack.enter_async_context(queue.slot())
                started = time.monotonic()
                try:
                    resp = await _classified(
                        self.session.request(method, url, headers=hdrs, params=params,
                                             data=data, ssl=ep.ssl), what, self.policy, ep)
                except TransientError:
                    queue.congested("timeout or reset", 0.75)
                    raise
                seconds = time.monotonic() - started
                # A streamed body's time is the body's, and a new connection's includes
                # its handshakes: neither says how busy the registry is.
                if replayable and self._reused(resp):
                    queue.observe(seconds)
                self.log.debug("request", method=method, url=_short(url), status=resp.status,
                               seconds=round(seconds, 3))
                stack.callback(resp.release)
                self.ratelimits.observe(registry, resp.headers)
                if resp.status == 401 and attempt == 1:
                    challenge = Challenge.parse(resp.headers.get("WWW-Authenticate"))
                    if challenge is None:
                        break  # nothing to renew: a plain refusal
                    resp.release()
                    self.auth_retries += 1
                    if authz and authz.startswith("Bearer "):
                        ep.tokens.invalidate(scopes, authz[7:], cred)
                    elif cred is not None:
                        self.keychain.invalidate(registry, scope_repository(scopes), cred)
                    ep.challenge = challenge
                    wanted = (challenge.params.get("scope") if challenge.scheme == "bearer"
                              else None)
                    if wanted:  # the registry says what it needs (pull on a mount's source)
                        scopes = list(dict.fromkeys([*scopes, *wanted.split()]))
                    if not replayable:
                        raise TransientError(f"{what}: token expired mid-request")
                    await stack.aclose()  # give the slot back before asking again
                    continue
                break
            if resp.status not in ok:
                await self._raise_for(resp, ep, method, url, scopes, cred)
            yield resp

    async def request(self, method: str, registry: str, path: str, **kw: Any) -> Response:
        """A small request, read whole, retried by the retry layer."""
        async def once() -> Response:
            async with self.stream(method, registry, path, **kw) as resp:
                try:
                    body = await resp.read()
                except Exception as e:
                    self.queue(registry).congested("reset", 0.75)
                    raise _translate(e, f"{method} {_short(str(resp.url))}",
                                     self.policy) from None
                return Response(resp.status, resp.headers, body, str(resp.url))
        return await self.retrying(once, f"{method} {registry}{_short(path)}", registry)

    async def send_once(self, method: str, url: str, *, data: Any = None,
                    params: Any = None, headers: dict[str, str] | None = None,
                    ssl: ssl.SSLContext | bool = True) -> tuple[int, Any, bytes]:
        """One attempt, through the queue of the URL's host (token servers, cloud APIs)."""
        what = f"{method} {_short(url)}"
        async with self.queue(urlsplit(url).netloc).slot():
            started = time.monotonic()
            resp = await _classified(
                self.session.request(method, url, data=data, params=params,
                                     headers=headers, ssl=ssl), what, self.policy, None)
            try:
                body = await resp.read()
            except Exception as e:
                raise _translate(e, what, self.policy) from None
            finally:
                resp.release()
        self.log.debug("request", method=method, url=_short(url), status=resp.status,
                       seconds=round(time.monotonic() - started, 3))
        return resp.status, resp.headers, body

    async def _raise_for(self, resp: aiohttp.ClientResponse, ep: Endpoint, method: str,
                         url: str, scopes: Sequence[str],
                         cred: Credential | None = None) -> None:
        status = resp.status
        body = b""
        if method != "HEAD":
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                body = await resp.read()
        code, detail = _error_detail(body)
        what = f"{method} {_short(url)}"
        if status in RETRYABLE_STATUS:
            after = parse_retry_after(resp.headers.get("Retry-After"))
            if status in (429, 503):
                # The registry is throttling or overloaded: hold every request to it.
                self.queue(ep.registry).hold(min(
                    after if after is not None else self.policy.initial,
                    self.policy.max_retry_after))
            if status in (429, 503, 504):  # and send fewer at once from now on
                self.queue(ep.registry).congested(str(status))
            raise TransientError(f"{what}: {status} {detail}".strip(), after)
        if status in (401, 403):
            verb = "authentication failed" if status == 401 else "access denied"
            need = ", ".join(scopes) or "access"
            raise AuthError(f"{ep.registry}: {verb} ({status}) for {need} using "
                            f"{self.keychain.describe(ep.registry, cred)}",
                            status=status, code=code)
        if status == 404:
            raise NotFoundError(f"{what}: not found ({code or 404})", status=status, code=code)
        raise RegistryError(f"{what}: {status} {code or ''} {detail}".strip(),
                            status=status, code=code)


async def _classified(call: Awaitable[aiohttp.ClientResponse], what: str,
                      policy: RetryPolicy, ep: Endpoint | None) -> aiohttp.ClientResponse:
    """Send; turn a network failure into an error that names the request."""
    try:
        return await call
    except Exception as e:
        tls = (isinstance(e, aiohttp.ClientSSLError)
               and not isinstance(e, aiohttp.ClientConnectorCertificateError))
        if ep is not None and (tls or _client_cert_refused(e)):
            raise _tls_error(ep.registry, e, ep.entry) from None
        raise _translate(e, what, policy) from None


def _translate(e: BaseException, what: str, policy: RetryPolicy) -> BaseException:
    if isinstance(e, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return TransientError(f"{what}: no answer within {policy.timeout:g}s", unreachable=True)
    if isinstance(e, aiohttp.ClientConnectorError):
        return TransientError(f"{what}: {describe(e)}", unreachable=True)
    if isinstance(e, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
                  | ConnectionError) and not isinstance(e, aiohttp.ClientSSLError):
        return TransientError(f"{what}: {describe(e)}", unreachable=False)
    return e


def _client_cert_refused(e: BaseException) -> bool:
    """TLS 1.3 reports a refused client certificate only when the first bytes are read."""
    seen: BaseException | None = e
    while seen is not None:
        text = str(seen).lower()
        if "alert" in text and ("certificate" in text or "handshake" in text):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tls_error(registry: str, e: BaseException, entry: AuthEntry | None) -> RegistryError:
    where = entry.where if entry else f"an auth entry {registry!r}"
    if _client_cert_refused(e):
        return RegistryError(f"{registry}: the registry refused the TLS client certificate "
                             f"({_ssl_reason(e)}): check cert_file and key_file in {where}")
    return RegistryError(f"{registry}: TLS handshake failed ({_ssl_reason(e)}): check the "
                         f"TLS settings in {where}")


def _ssl_reason(e: BaseException) -> str:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and seen.reason:
            return seen.reason.lower().replace("_", " ")
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "os_error", None)
    return describe(e)


def _error_detail(body: bytes) -> tuple[str | None, str]:
    """Registry errors come as ``{"errors": [{"code", "message"}]}``."""
    try:
        errs = json.loads(body).get("errors") or []
        first = errs[0]
        return first.get("code"), str(first.get("message") or "")
    except (ValueError, AttributeError, IndexError, TypeError):
        return None, ""


@functools.lru_cache(maxsize=256)
def _origin(base: str) -> str:
    """``scheme://host[:port]`` of a base URL: what an absolute path is joined to."""
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


def _short(url: str) -> str:
    """URL without the query string: upload locations carry opaque state."""
    return url.split("?", 1)[0]


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
