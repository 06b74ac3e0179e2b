"""The token flow of the registry auth spec: challenges, scopes and the bearer-token cache.

How a ``WWW-Authenticate`` challenge is read, which scopes a request needs, and the
token cache that all concurrent requests share: one token per (registry, credential,
scopes), fetched once, refreshed before it expires or once after a 401. Identity tokens
(Docker ``identitytoken``, Azure ACR refresh tokens) are exchanged here with the OAuth2
refresh-token grant. Which credential to present comes from :mod:`imagesync.keychain`.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .errors import AuthError
from .keychain import Credential

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
