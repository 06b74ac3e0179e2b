"""Keychains: which credential to present to a registry.

One interface, :class:`Keychain`, and one implementation per place credentials come
from, tried in this order by :class:`Keychains`:

1. :class:`EntryKeychain`: the config's ``auth`` entry with the longest matching prefix
   (``registry[:port][/namespace...]``). What the entry holds picks its provider:
   static user/password/token, a password file, an identity token (Azure ACR, Docker
   ``identitytoken``: exchanged at the registry's token realm by :mod:`imagesync.auth`),
   or a cloud provider plugged in by the composition root (ECR, Google ADC, in
   :mod:`imagesync.cloud`, which depends on this module, never the reverse);
2. :class:`~imagesync.dockerconfig.DockerConfigKeychain`: Docker's ``config.json``;
3. anonymous.

Every secret a keychain obtains is handed to ``on_secret`` (the CLI's log
:class:`~imagesync.log.Redactor`) before it is used, so it can never reach a log line.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import AuthError
from .names import canonical_registry

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


class CachedFetch:
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


def static_credential(entry: AuthEntry,
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



#: Fetches the credential of one auth entry (static, password file, cloud).
CredentialFetch = Callable[[], Awaitable["Credential | None"]]
#: Offers a fetch for an entry it handles (ECR for ``aws_*`` entries, ...), else None.
ProviderFactory = Callable[[AuthEntry, str], "CredentialFetch | None"]


class Keychain(Protocol):
    """Answers "which credential for this registry/repository?"."""

    async def resolve(self, registry: str, repository: str | None = None
                      ) -> Credential | None:
        """The credential, or None when this keychain has none."""

    def invalidate(self, registry: str, repository: str | None, cred: Credential) -> bool:
        """After a refusal: fetch a dynamic credential anew next time. True if it will."""

    def why_none(self, registry: str) -> str | None:
        """Why it had nothing for ``registry``, when that is worth telling."""


class EntryIndex:
    """The config's auth entries, looked up by longest prefix. The HTTP client reads the
    TLS settings of a registry (``insecure``, ``ca_file``, ``endpoint``...) here too."""

    def __init__(self, entries: Sequence[AuthEntry] = ()):
        self.entries = list(entries)

    def lookup(self, registry: str, repository: str | None = None) -> AuthEntry | None:
        best, best_len = None, 0
        for entry in self.entries:
            n = entry.matches(registry, repository)
            if n > best_len:
                best, best_len = entry, n
        return best

    def registry_entry(self, registry: str) -> AuthEntry | None:
        """The entry that sets transport options (TLS) for a whole registry."""
        return self.lookup(registry, None) or next(
            (e for e in self.entries if e.registry == registry), None)


class EntryKeychain:
    """Credentials from the config's auth entries."""

    def __init__(self, entries: EntryIndex, providers: Sequence[ProviderFactory] = (), *,
                 clock: Callable[[], float] = time.monotonic):
        self.entries = entries
        self._providers = list(providers)
        self._clock = clock
        self._cache: dict[int, CachedFetch] = {}

    def _entry(self, registry: str, repository: str | None) -> AuthEntry | None:
        entry = self.entries.lookup(registry, repository)
        return entry if entry is not None and entry.has_credentials else None

    def cached(self, registry: str, repository: str | None) -> CachedFetch | None:
        entry = self._entry(registry, repository)
        if entry is None:
            return None
        cached = self._cache.get(id(entry))
        if cached is None:
            fetch = next((f for f in (p(entry, registry) for p in self._providers) if f),
                         None) or static_credential(entry, self._clock)
            cached = self._cache[id(entry)] = CachedFetch(fetch, self._clock)
        return cached

    async def resolve(self, registry: str, repository: str | None = None
                      ) -> Credential | None:
        cached = self.cached(registry, repository)
        return await cached.get() if cached is not None else None

    def invalidate(self, registry: str, repository: str | None, cred: Credential) -> bool:
        cached = self.cached(registry, repository)
        return cached.invalidate(cred) if cached is not None else False

    def why_none(self, registry: str) -> str | None:
        return None

    def secrets(self) -> list[str]:
        out = []
        for e in self.entries.entries:
            out += e.secrets()
            if e.username is not None and e.password:
                out += Credential(e.username, e.password).secrets()
        return out


class Keychains:
    """Keychains tried in order; the first with a credential wins, else anonymous."""

    def __init__(self, keychains: Sequence[Keychain], *, entries: EntryIndex | None = None,
                 on_secret: SecretSink | None = None, places: str = "the config auth entries"):
        self.keychains = list(keychains)
        self.entries = entries or EntryIndex()
        self._on_secret = on_secret
        self._places = places

    def register(self, secret: str) -> None:
        if self._on_secret is not None and secret:
            self._on_secret(secret)

    async def resolve(self, registry: str, repository: str | None = None
                      ) -> Credential | None:
        for kc in self.keychains:
            cred = await kc.resolve(registry, repository)
            if cred is not None:
                for s in cred.secrets():
                    self.register(s)
                return cred
        return None

    def invalidate(self, registry: str, repository: str | None, cred: Credential) -> bool:
        return any(kc.invalidate(registry, repository, cred) for kc in self.keychains)

    def why_none(self, registry: str) -> str | None:
        return next((w for w in (kc.why_none(registry) for kc in self.keychains) if w), None)

    def anonymous(self, registry: str) -> str:
        why = self.why_none(registry)
        if why:
            return f"anonymous access ({why})"
        return f"anonymous access (no credentials for {registry} in {self._places})"

    def describe(self, registry: str, cred: Credential | None) -> str:
        return cred.describe() if cred is not None else self.anonymous(registry)
