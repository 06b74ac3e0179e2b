"""Credentials and the registry token flow.

Where credentials come from (the config's ``auth`` entries, matched by the longest
prefix), how a ``WWW-Authenticate`` challenge is read, and the bearer-token cache that
all concurrent tasks share: one token per (registry, scopes), fetched once, refreshed
before it expires or once after a 401.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .errors import AuthError
from .reference import canonical_registry


@dataclass(frozen=True)
class AuthEntry:
    """One ``auth`` entry of the config. ``prefix`` is ``registry[:port][/namespace...]``."""

    prefix: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
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
    def has_credentials(self) -> bool:
        return bool(self.username or self.password or self.token)

    def describe(self) -> str:
        who = f"user {self.username!r}" if self.username else "a token"
        return f"{who} from the {self.source} auth entry {self.prefix!r}"


class CredentialStore:
    """Looks up the auth entry for an image by the longest matching prefix."""

    def __init__(self, entries: Sequence[AuthEntry] = ()):
        self._entries = list(entries)

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
        return [s for e in self._entries for s in (e.password, e.token) if s]


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


# fetch(realm, params, authorization header or None) -> JSON answer of the token server
TokenFetcher = Callable[[str, list[tuple[str, str]], "str | None"], Awaitable[dict]]


@dataclass
class _Token:
    value: str
    expires_at: float


class BearerTokens:
    """Token cache for one registry. Concurrent callers of the same scopes share one fetch."""

    # Refresh this long before the token server says the token expires.
    MARGIN = 30.0

    def __init__(self, registry: str, entry: AuthEntry | None, fetch: TokenFetcher):
        self._registry = registry
        self._entry = entry
        self._fetch = fetch
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self.fetches = 0  # for tests and the report: how many token requests were made

    async def get(self, challenge: Challenge, scopes: Sequence[str]) -> str:
        key = tuple(sorted(set(scopes)))
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            tok = self._tokens.get(key)
            if tok and tok.expires_at > time.monotonic():
                return tok.value
            tok = await self._request(challenge, key)
            self._tokens[key] = tok
            return tok.value

    def invalidate(self, scopes: Sequence[str], stale: str) -> None:
        """Drop the token after a 401, unless another task already replaced it."""
        key = tuple(sorted(set(scopes)))
        tok = self._tokens.get(key)
        if tok and tok.value == stale:
            del self._tokens[key]

    async def _request(self, challenge: Challenge, scopes: tuple[str, ...]) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{self._registry}: bearer challenge without a realm")
        entry = self._entry
        if entry and entry.token and not entry.username:
            # A ready bearer token: use it as it is, there is nothing to exchange.
            return _Token(entry.token, float("inf"))
        params = [("service", challenge.params["service"])] if "service" in challenge.params else []
        params += [("scope", s) for s in scopes]
        authz = None
        if entry and entry.username is not None and entry.password is not None:
            authz = basic_header(entry.username, entry.password)
        self.fetches += 1
        answer = await self._fetch(realm, params, authz)
        value = answer.get("token") or answer.get("access_token")
        if not value:
            raise AuthError(f"{self._registry}: token server answered without a token")
        ttl = float(answer.get("expires_in") or 60)
        margin = min(self.MARGIN, ttl / 5)
        return _Token(value, time.monotonic() + ttl - margin)
