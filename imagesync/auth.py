"""Credentials and the registry token flow.

Where credentials come from, in order of precedence:

1. the config's ``auth`` entry with the longest matching prefix
   (``registry[:port][/namespace...]``): static user/password/token, a password file,
   an identity token, or a cloud provider (ECR, Google ADC) that mints short-lived
   passwords and refreshes them before they expire;
2. Docker's ``config.json`` (``auths``, ``credHelpers``, ``credsStore``);
3. anonymous.

Also: how a ``WWW-Authenticate`` challenge is read, and the bearer-token cache that all
concurrent tasks share: one token per (registry, credential, scopes), fetched once,
refreshed before it expires or once after a 401.

Every secret a provider obtains is handed to ``on_secret`` (the CLI's log
:class:`~imagesync.log.Redactor`) before it is used, so it can never reach a log line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AuthError
from .reference import canonical_registry

if TYPE_CHECKING:
    from .dockerconfig import DockerConfig

SecretSink = Callable[[str], None]


@dataclass(frozen=True)
class AuthEntry:
    """One ``auth`` entry of the config. ``prefix`` is ``registry[:port][/namespace...]``."""

    prefix: str
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    token: str | None = None
    identity_token: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    endpoint: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    aws_region: str | None = None
    aws_profile: str | None = None
    aws_endpoint_url: str | None = None
    gcp_adc: bool = False
    source: str = "config"

    def __repr__(self) -> str:  # never show secrets, even in a debugger or a traceback
        return (f"AuthEntry(prefix={self.prefix!r}, username={self.username!r}, "
                f"source={self.source!r})")

    @property
    def registry(self) -> str:
        return canonical_registry(self.prefix.split("/", 1)[0])

    def matches(self, registry: str, repository: str | None) -> int:
        """Length of the match against ``registry/repository`` (0: no match)."""
        host, _, namespace = self.prefix.partition("/")
        if canonical_registry(host) != registry:
            return 0
        if not namespace:
            return 1
        repo = repository or ""
        if repo == namespace or repo.startswith(namespace.rstrip("/") + "/"):
            return 1 + len(namespace)
        return 0

    @property
    def uses_ecr(self) -> bool:
        return any((self.aws_access_key_id, self.aws_secret_access_key, self.aws_region,
                    self.aws_profile, self.aws_endpoint_url, self.aws_session_token))

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password or self.password_file or self.token
                    or self.identity_token or self.uses_ecr or self.gcp_adc)

    @property
    def where(self) -> str:
        return f"the config auth entry {self.prefix!r}"

    def describe(self) -> str:
        if self.username:
            who = f"user {self.username!r}"
        elif self.identity_token:
            who = "an identity token"
        else:
            who = "a token"
        return f"{who} from {self.where}"

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.token, self.identity_token,
                            self.aws_secret_access_key, self.aws_session_token) if s]


@dataclass(frozen=True, eq=False)
class Credential:
    """What to present to one registry. Safe to print: ``repr`` and ``describe`` hide secrets.

    ``token``: a ready bearer token, sent as it is. ``identity_token``: an OAuth2 refresh
    token, exchanged at the registry's token realm (Docker ``identitytoken``, ACR).
    ``expires_at`` (``time.monotonic``): when a dynamic credential must be fetched anew.
    """

    username: str | None = None
    password: str | None = None
    token: str | None = None
    identity_token: str | None = None
    source: str = "?"
    expires_at: float = math.inf

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, source={self.source!r})"

    @property
    def refreshable(self) -> bool:
        return self.expires_at != math.inf

    @property
    def key(self) -> str:
        """Identity for the token cache: tokens fetched as one user are not another's."""
        return f"{self.source}\0{self.username or ''}"

    def describe(self) -> str:
        if self.username and self.username != "<token>":
            who = f"user {self.username!r}"
        elif self.identity_token:
            who = "an identity token"
        else:
            who = "a token"
        return f"{who} from {self.source}"

    def secrets(self) -> list[str]:
        out = [s for s in (self.password, self.token, self.identity_token) if s]
        if self.username is not None and self.password:
            out.append(base64.b64encode(f"{self.username}:{self.password}".encode()).decode())
        out += [base64.b64encode(s.encode()).decode() for s in list(out)]
        return out


class _Cached:
    """One credential source with single-flight fetches and expiry.

    Concurrent callers share one fetch; a result is reused until its ``expires_at``;
    failures are remembered for ``ERROR_TTL`` seconds so a broken helper or cloud API is
    not hammered by every task of a big run.
    """

    ERROR_TTL = 10.0

    def __init__(self, fetch: Callable[[], Awaitable[Credential | None]],
                 clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self._clock = clock
        self._lock = asyncio.Lock()
        self._value: Credential | None = None
        self._until = -math.inf
        self._error: AuthError | None = None
        self._error_until = -math.inf
        self.fetches = 0

    async def get(self) -> Credential | None:
        async with self._lock:
            now = self._clock()
            if now < self._until:
                return self._value
            if self._error is not None and now < self._error_until:
                raise self._error
            self.fetches += 1
            try:
                value = await self._fetch()
            except AuthError as e:
                self._error, self._error_until = e, self._clock() + self.ERROR_TTL
                raise
            self._error = None
            self._value = value
            self._until = value.expires_at if value is not None else math.inf
            return value

    def invalidate(self, cred: Credential) -> bool:
        """Forget ``cred`` if it is still the cached one and can be fetched anew."""
        if self._value is cred and cred.refreshable:
            self._until = -math.inf
            return True
        return False


def read_secret_file(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise AuthError(f"cannot read {what} {path}: {e.strerror or e}") from None


#: A ``password_file`` is read again after this many seconds (or after a refusal), so a
#: secret rotated on disk (a Kubernetes secret, a key renewed by cron) is picked up.
PASSWORD_FILE_TTL = 300.0


def _static_credential(entry: AuthEntry,
                       clock: Callable[[], float]) -> Callable[[], Awaitable[Credential]]:
    async def fetch() -> Credential:
        password, expires = entry.password, math.inf
        if entry.password_file and password is None:
            password = await asyncio.to_thread(read_secret_file, entry.password_file,
                                               f"password_file of {entry.where}")
            expires = clock() + PASSWORD_FILE_TTL
        return Credential(entry.username, password, entry.token if not entry.username else None,
                          entry.identity_token, source=entry.where, expires_at=expires)
    return fetch


class CredentialStore:
    """Answers "which credential for this registry/repository?" in precedence order."""

    def __init__(self, entries: Sequence[AuthEntry] = (), *,
                 docker_config: DockerConfig | None = None,
                 on_secret: SecretSink | None = None,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._entries = list(entries)
        self.docker_config = docker_config
        self._on_secret = on_secret
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._providers: dict[int, _Cached] = {}
        self._docker: dict[str, _Cached] = {}
        self._notes: dict[str, str] = {}  # registry -> why it is anonymous
        for s in self.secrets():
            self._register(s)
        if docker_config is not None:
            with contextlib.suppress(AuthError):
                for s in docker_config.secrets():
                    self._register(s)

    @classmethod
    def from_environment(cls, entries: Sequence[AuthEntry] = (), *,
                         on_secret: SecretSink | None = None,
                         environ: Mapping[str, str] | None = None) -> CredentialStore:
        """Config entries plus Docker's config.json (``$DOCKER_CONFIG`` or ``~/.docker``)."""
        from .dockerconfig import DockerConfig

        return cls(entries, docker_config=DockerConfig.load(environ), on_secret=on_secret,
                   environ=environ)

    # -- config entries ------------------------------------------------------------------
    def lookup(self, registry: str, repository: str | None = None) -> AuthEntry | None:
        best, best_len = None, 0
        for entry in self._entries:
            n = entry.matches(registry, repository)
            if n > best_len:
                best, best_len = entry, n
        return best

    def registry_entry(self, registry: str) -> AuthEntry | None:
        """The entry that sets transport options (TLS) for a whole registry."""
        return self.lookup(registry, None) or next(
            (e for e in self._entries if e.registry == registry), None
        )

    def secrets(self) -> list[str]:
        out = []
        for e in self._entries:
            out += e.secrets()
            if e.username is not None and e.password:
                out += Credential(e.username, e.password).secrets()
        return out

    def _register(self, secret: str) -> None:
        if self._on_secret is not None and secret:
            self._on_secret(secret)

    def note(self, registry: str, why: str) -> None:
        self._notes[registry] = why

    # -- resolution ----------------------------------------------------------------------
    async def resolve(self, registry: str, repository: str | None = None) -> Credential | None:
        """The credential for ``registry/repository``, or None for anonymous access."""
        entry = self.lookup(registry, repository)
        if entry is None or not entry.has_credentials:
            entry = None
        if entry is not None:
            cached = self._providers.get(id(entry))
            if cached is None:
                cached = self._providers[id(entry)] = _Cached(self._provider(entry, registry),
                                                             self._clock)
        elif self.docker_config is not None:
            cached = self._docker.get(registry)
            if cached is None:
                dc = self.docker_config

                async def from_docker() -> Credential | None:
                    return await dc.credential(registry, self)
                cached = self._docker[registry] = _Cached(from_docker, self._clock)
        else:
            return None
        cred = await cached.get()
        if cred is not None:
            for s in cred.secrets():
                self._register(s)
        return cred

    def invalidate(self, registry: str, repository: str | None, cred: Credential) -> bool:
        """After a refusal: fetch a dynamic credential anew next time (static ones stay)."""
        entry = self.lookup(registry, repository)
        cached = (self._providers.get(id(entry)) if entry is not None and entry.has_credentials
                  else self._docker.get(registry))
        return cached.invalidate(cred) if cached is not None else False

    def anonymous(self, registry: str) -> str:
        why = self._notes.get(registry)
        if why:
            return f"anonymous access ({why})"
        where = "the config auth entries"
        if self.docker_config is not None:
            where += f" or {self.docker_config.path or 'Docker config.json'}"
        return f"anonymous access (no credentials for {registry} in {where})"

    def describe(self, registry: str, cred: Credential | None) -> str:
        return cred.describe() if cred is not None else self.anonymous(registry)

    def _provider(self, entry: AuthEntry,
                  registry: str) -> Callable[[], Awaitable[Credential | None]]:
        if entry.uses_ecr:
            from .cloud.ecr import ECRProvider

            return ECRProvider(entry, registry, self._environ, self._register,
                               clock=self._clock).fetch
        if entry.gcp_adc:
            from .cloud.gcp import GCPProvider

            return GCPProvider(entry, self._register, clock=self._clock).fetch
        return _static_credential(entry, self._clock)


_PARAM_RE = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: scheme plus parameters."""

    scheme: str
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str | None) -> Challenge | None:
        if not header:
            return None
        scheme, _, rest = header.strip().partition(" ")
        params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                  for m in _PARAM_RE.finditer(rest)}
        return cls(scheme.lower(), params)


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def repository_scope(repository: str, push: bool) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


def mount_scopes(dst_repository: str, src_repository: str) -> list[str]:
    """Scopes for a cross-repository blob mount (``POST .../uploads/?mount=&from=``).

    The registry only mounts when the token grants push on the destination *and* pull on
    the source; with pull,push alone it silently starts a normal upload instead. The
    destination comes first: the transport picks the credential by the first scope.
    """
    scopes = [repository_scope(dst_repository, True)]
    if src_repository != dst_repository:
        scopes.append(repository_scope(src_repository, False))
    return scopes


def scope_repository(scopes: Sequence[str]) -> str | None:
    """The repository whose credential a request uses: the first repository scope's."""
    for s in scopes:
        typ, _, rest = s.partition(":")
        if typ.split("(", 1)[0] == "repository":
            name, _, _actions = rest.rpartition(":")
            return name or None
    return None


# fetch(method, realm, params or form, authorization header or None) -> JSON answer
TokenFetcher = Callable[[str, str, list[tuple[str, str]], "str | None"], Awaitable[dict]]


@dataclass
class _Token:
    value: str
    expires_at: float


class BearerTokens:
    """Token cache for one registry. Concurrent callers of the same scopes share one fetch."""

    # Refresh this long before the token server says the token expires.
    MARGIN = 30.0
    CLIENT_ID = "imagesync"

    def __init__(self, registry: str, fetch: TokenFetcher,
                 clock: Callable[[], float] = time.monotonic):
        self._registry = registry
        self._fetch = fetch
        self._clock = clock
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self.fetches = 0  # for tests and the report: how many token requests were made

    @staticmethod
    def _key(scopes: Sequence[str], cred: Credential | None) -> tuple[str, ...]:
        return (cred.key if cred is not None else "", *sorted(set(scopes)))

    async def get(self, challenge: Challenge, scopes: Sequence[str],
                  cred: Credential | None = None) -> str:
        key = self._key(scopes, cred)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            tok = self._tokens.get(key)
            if tok and tok.expires_at > self._clock():
                return tok.value
            tok = await self._request(challenge, tuple(sorted(set(scopes))), cred)
            self._tokens[key] = tok
            return tok.value

    def invalidate(self, scopes: Sequence[str], stale: str,
                   cred: Credential | None = None) -> None:
        """Drop the token after a 401, unless another task already replaced it."""
        key = self._key(scopes, cred)
        tok = self._tokens.get(key)
        if tok and tok.value == stale:
            del self._tokens[key]

    async def _request(self, challenge: Challenge, scopes: tuple[str, ...],
                       cred: Credential | None) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{self._registry}: bearer challenge without a realm")
        if cred is not None and cred.token and not cred.username:
            # A ready bearer token: use it as it is, there is nothing to exchange.
            return _Token(cred.token, math.inf)
        service = challenge.params.get("service")
        self.fetches += 1
        if cred is not None and cred.identity_token:
            # OAuth2 refresh-token grant (token spec "oauth"; Azure ACR's /oauth2/token).
            form = [("grant_type", "refresh_token"), ("client_id", self.CLIENT_ID),
                    ("refresh_token", cred.identity_token)]
            if service:
                form.append(("service", service))
            if scopes:
                form.append(("scope", " ".join(scopes)))
            answer = await self._fetch("POST", realm, form, None)
        else:
            params = [("service", service)] if service else []
            params += [("scope", s) for s in scopes]
            authz = None
            if cred is not None and cred.username is not None and cred.password is not None:
                authz = basic_header(cred.username, cred.password)
                params.append(("account", cred.username))
            answer = await self._fetch("GET", realm, params, authz)
        value = answer.get("token") or answer.get("access_token")
        if not value or not isinstance(value, str):
            raise AuthError("token server answered without a token")
        try:
            ttl = float(answer.get("expires_in") or 60)
        except (TypeError, ValueError):
            ttl = 60.0
        margin = min(self.MARGIN, ttl / 5)
        return _Token(value, self._clock() + ttl - margin)
