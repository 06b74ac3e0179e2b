"""Docker's ``config.json``: ``auths``, ``credHelpers``, ``credsStore`` and credential helpers.

The file is ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``. For a registry,
like the Docker CLI: the helper named in ``credHelpers`` for its host, else the
``credsStore`` helper, else the ``auths`` entry (``auth`` = base64 ``user:password``,
``identitytoken`` = OAuth2 refresh token, ``registrytoken`` = bearer token).

Helpers speak the docker-credential-helpers protocol: ``docker-credential-<name> get``
reads the server URL on stdin and prints ``{"ServerURL", "Username", "Secret"}``; a
``Username`` of ``<token>`` means the secret is an identity token. They run as asyncio
subprocesses, at most once per registry per :data:`HELPER_TTL` (helpers such as
``ecr-login`` and ``gcloud`` hand out short-lived secrets, and a run lasts for hours).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AuthError, ConfigError
from .keychain import CachedFetch, Credential
from .names import DOCKER_HUB, canonical_registry

#: The server URL Docker uses for Docker Hub in ``auths`` and with helpers.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
#: Seconds a helper's answer is reused before the helper is asked again.
HELPER_TTL = 300.0
HELPER_TIMEOUT = 30.0
_NOT_FOUND = "credentials not found"


def registry_of_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://h:5000/x`` -> ``h:5000``."""
    k = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", key.strip())
    return canonical_registry(k.split("/", 1)[0])


class HelperMissing(Exception):
    pass


async def run_helper(name: str, server_url: str, environ: Mapping[str, str] | None = None,
                     timeout: float = HELPER_TIMEOUT) -> dict[str, Any] | None:
    """``docker-credential-<name> get`` -> its JSON answer, or None when it has nothing."""
    env = os.environ if environ is None else environ
    program = f"docker-credential-{name}"
    exe = shutil.which(program, path=env.get("PATH"))
    if exe is None:
        raise HelperMissing(program)
    proc = await asyncio.create_subprocess_exec(
        exe, "get", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(env))
    try:
        out, err = await asyncio.wait_for(proc.communicate(server_url.encode()), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise AuthError(f"{program} get did not answer within {timeout:.0f}s") from None
    if proc.returncode != 0:
        text = (out or err).decode(errors="replace").strip()
        if _NOT_FOUND in text.lower():
            return None
        first = text.splitlines()[0][:200] if text else f"exit status {proc.returncode}"
        raise AuthError(f"{program} get failed: {first}")
    try:
        answer = json.loads(out)
    except ValueError:
        raise AuthError(f"{program} get answered with invalid JSON") from None
    if not isinstance(answer, dict):
        raise AuthError(f"{program} get answered with invalid JSON")
    return answer


@dataclass
class DockerConfig:
    """The parts of Docker's config.json that hold credentials."""

    path: Path | None = None
    auths: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    cred_helpers: dict[str, str] = field(default_factory=dict)
    creds_store: str | None = None
    environ: Mapping[str, str] | None = None
    clock: Any = time.monotonic

    @staticmethod
    def default_path(environ: Mapping[str, str] | None = None) -> Path:
        env = os.environ if environ is None else environ
        if env.get("DOCKER_CONFIG"):
            return Path(env["DOCKER_CONFIG"]).expanduser() / "config.json"
        home = env.get("HOME")
        return (Path(home) if home else Path.home()) / ".docker" / "config.json"

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None,
             path: str | Path | None = None) -> DockerConfig | None:
        """Read the file; None when there is none. A broken file is a ConfigError."""
        p = Path(path) if path else cls.default_path(environ)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(str(p), None, f"cannot read Docker config: {e.strerror}") from None
        try:
            doc = json.loads(text) if text.strip() else {}
        except ValueError as e:
            raise ConfigError(str(p), None, f"invalid JSON in Docker config: {e}") from None
        return cls.from_dict(doc, p, environ)

    @classmethod
    def from_dict(cls, doc: Any, path: Path | None = None,
                  environ: Mapping[str, str] | None = None) -> DockerConfig:
        where = str(path) if path else "Docker config"
        if not isinstance(doc, dict):
            raise ConfigError(where, None, "Docker config must be a JSON object")
        auths: dict[str, tuple[str, dict[str, Any]]] = {}
        raw_auths = doc.get("auths") or {}
        if not isinstance(raw_auths, dict):
            raise ConfigError(where, "auths", "must be an object")
        for key, entry in raw_auths.items():
            if isinstance(entry, dict):
                auths.setdefault(registry_of_key(key), (key, entry))
        helpers = doc.get("credHelpers") or {}
        if not isinstance(helpers, dict):
            raise ConfigError(where, "credHelpers", "must be an object")
        store = doc.get("credsStore") or None
        if store is not None and not isinstance(store, str):
            raise ConfigError(where, "credsStore", "must be a string")
        return cls(path, auths,
                   {registry_of_key(k): v for k, v in helpers.items() if isinstance(v, str)},
                   store, environ)

    def secrets(self) -> list[str]:
        out: list[str] = []
        for _key, entry in self.auths.values():
            cred = _from_auths_entry(entry, "")
            if cred is not None:
                out += cred.secrets()
            if isinstance(entry.get("auth"), str):
                out.append(entry["auth"])
        return out

    async def credential(self, registry: str,
                         note: Callable[[str, str], None] | None = None) -> Credential | None:
        """The credential Docker would use for ``registry`` (None: anonymous)."""
        helper = self.cred_helpers.get(registry) or self.creds_store
        if helper:
            server = DOCKER_HUB_SERVER if registry == DOCKER_HUB else registry
            try:
                answer = await run_helper(helper, server, self.environ)
            except HelperMissing as e:
                if note is not None:
                    note(registry, f"credential helper {e} named in {self._where} "
                                   "is not on PATH")
                answer = None
            except AuthError as e:
                raise AuthError(f"{e} (credential helper from {self._where})") from None
            if answer:
                user, secret = answer.get("Username"), answer.get("Secret")
                if isinstance(secret, str) and secret:
                    source = f"credential helper docker-credential-{helper}"
                    expires = self.clock() + HELPER_TTL
                    if user == "<token>":
                        return Credential(identity_token=secret, source=source,
                                          expires_at=expires)
                    return Credential(user if isinstance(user, str) else "", secret,
                                      source=source, expires_at=expires)
        found = self.auths.get(registry)
        if found is None:
            return None
        key, entry = found
        return _from_auths_entry(entry, f"{self._where} (auths[{key!r}])")

    @property
    def _where(self) -> str:
        return f"Docker config {self.path}" if self.path else "Docker config"


def _from_auths_entry(entry: dict[str, Any], source: str) -> Credential | None:
    user = entry.get("username") if isinstance(entry.get("username"), str) else None
    password = entry.get("password") if isinstance(entry.get("password"), str) else None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            raw = base64.b64decode(auth + "=" * (-len(auth) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f"{source}: 'auth' is not base64 of user:password") from None
        user, _, password = raw.partition(":")
    identity = entry.get("identitytoken")
    if isinstance(identity, str) and identity:
        return Credential(user or None, None, identity_token=identity, source=source)
    token = entry.get("registrytoken")
    if isinstance(token, str) and token:
        return Credential(token=token, source=source)
    if user or password:
        return Credential(user or "", password or "", source=source)
    return None


class DockerConfigKeychain:
    """Docker's config.json as a keychain: one cached lookup per registry (helpers are
    asked at most once per :data:`HELPER_TTL`)."""

    def __init__(self, config: DockerConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._cache: dict[str, CachedFetch] = {}
        self._notes: dict[str, str] = {}

    def _cached(self, registry: str) -> CachedFetch:
        cached = self._cache.get(registry)
        if cached is None:
            async def fetch() -> Credential | None:
                return await self.config.credential(registry, self._notes.__setitem__)
            cached = self._cache[registry] = CachedFetch(fetch, self._clock)
        return cached

    async def resolve(self, registry: str, repository: str | None = None
                      ) -> Credential | None:
        return await self._cached(registry).get()

    def invalidate(self, registry: str, repository: str | None, cred: Credential) -> bool:
        cached = self._cache.get(registry)
        return cached.invalidate(cred) if cached is not None else False

    def why_none(self, registry: str) -> str | None:
        return self._notes.get(registry)
