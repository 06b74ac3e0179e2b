"""A Docker token-auth issuer (distribution's ``auth.token``) for tests and demos.

Implements https://distribution.github.io/distribution/spec/auth/token/ (GET with Basic
auth) and the OAuth2 variant (POST, ``password`` / ``refresh_token`` grants). The aiohttp
server runs in its own thread and event loop, so it serves sync callers and pytest-aiohttp
tests alike.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import math
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from .certs import self_signed_rsa

#: distribution 2.x accepts a token until ``exp + 60 s`` (and from ``nbf - 60 s``), see
#: registry/auth/token/token.go ``Leeway``. We subtract it from ``exp`` so ``ttl`` is the
#: real lifetime at the registry.
DISTRIBUTION_LEEWAY = 60

#: policy(account or None, type, name, requested actions) -> granted actions
Policy = Callable[[str | None, str, str, Sequence[str]], Sequence[str]]

#: The account the pytest ``token_issuer`` fixtures accept (user, password).
TEST_USER = ("imagesync", "s3cret-token-pw")

#: What the pytest ``token_issuer_factory`` fixture returns: ``**kwargs -> started issuer``.
TokenIssuerFactory = Callable[..., "TokenIssuer"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """``repository:foo/bar:pull,push`` -> (type, name, actions); type may carry ``(class)``."""
    typ, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not typ or not name:
        raise ValueError(f"bad scope {scope!r}")
    typ = typ.split("(", 1)[0]
    return typ, name, [a for a in actions.split(",") if a]


class TokenIssuer:
    """Issues RS256 JWTs that a registry configured with ``auth.token`` accepts.

    ``users``: accepted Basic/password credentials; None accepts any credentials.
    Anonymous callers get only ``anonymous_actions`` (pull) on repositories.
    ``requests`` records every token request (method, account, scopes, scope, service,
    status, grant_type, time) so tests can assert on refresh behaviour.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        ttl: int = 300,
        service: str = "imagesync-test",
        issuer: str = "imagesync-test-issuer",
        anonymous_actions: Sequence[str] = ("pull",),
        policy: Policy | None = None,
        leeway: int = DISTRIBUTION_LEEWAY,
    ) -> None:
        self.workdir = Path(workdir)
        self.users = users
        self.ttl = ttl
        self.service = service
        self.issuer = issuer
        self.anonymous_actions = tuple(anonymous_actions)
        self.policy = policy
        self.leeway = leeway
        self.requests: list[dict[str, Any]] = []
        self._key, cert, self.cert_file = self_signed_rsa(self.workdir, issuer)
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> account
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("TokenIssuer not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def start(self) -> None:
        """Serve on a pre-bound loopback socket (no port race) from a daemon thread."""
        if self._thread is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(sock))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name="token-issuer", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            self._thread = None
            cause = failure[0] if failure else TimeoutError("no answer within 10 s")
            raise RuntimeError("token issuer failed to start") from cause

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_get("/token", self._handle_get)
        app.router.add_post("/token", self._handle_post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> TokenIssuer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- tokens ------------------------------------------------------------------------

    def grant(self, account: str | None, scopes: Sequence[str]) -> list[dict[str, Any]]:
        """Access claims for ``scopes`` after applying the anonymous rule or ``policy``."""
        access: list[dict[str, Any]] = []
        for scope in scopes:
            try:
                typ, name, actions = parse_scope(scope)
            except ValueError:
                continue
            if self.policy is not None:
                allowed = list(self.policy(account, typ, name, actions))
            elif account is None:
                allowed = [a for a in actions if typ == "repository" and a in
                           self.anonymous_actions]
            else:
                allowed = list(actions)
            if allowed:
                access.append({"type": typ, "name": name, "actions": allowed})
        return access

    def issue_token(
        self,
        account: str | None,
        access: list[dict[str, Any]],
        *,
        ttl: int | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """Sign a JWT; overrides let tests forge wrong-audience/issuer tokens."""
        ttl = self.ttl if ttl is None else ttl
        now = time.time()
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": issuer or self.issuer,
            "sub": account or "",
            "aud": audience or self.service,  # a string: distribution 2.8 rejects a list
            "exp": math.ceil(now + ttl) - self.leeway,
            "nbf": int(now),
            "iat": int(now),
            "jti": secrets.token_hex(12),
            "access": access,
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, claims)
        ).encode()
        sig = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{_b64url(sig)}"

    def _check(self, user: str, password: str) -> bool:
        if self.users is None:
            return True
        expected = self.users.get(user)
        return expected is not None and secrets.compare_digest(expected, password)

    def _record(self, **entry: Any) -> None:
        entry["time"] = time.time()
        entry["scope"] = " ".join(entry["scopes"])
        self.requests.append(entry)

    def _response(self, account: str | None, scopes: list[str], *, refresh: bool) -> web.Response:
        access = self.grant(account, scopes)
        token = self.issue_token(account, access)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.ttl,
            "issued_at": dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
            "scope": " ".join(scopes),
        }
        if refresh and account is not None:
            rt = secrets.token_urlsafe(24)
            self._refresh_tokens[rt] = account
            body["refresh_token"] = rt
        return web.json_response(body)

    @staticmethod
    def _error(status: int, code: str, detail: str) -> web.Response:
        return web.json_response({"error": code, "error_description": detail}, status=status)

    async def _handle_get(self, request: web.Request) -> web.Response:
        scopes = request.query.getall("scope", [])
        service = request.query.get("service")
        account: str | None = None
        status = 200
        auth = request.headers.get("Authorization", "")
        if auth:
            try:
                scheme, _, value = auth.partition(" ")
                if scheme.lower() != "basic":
                    raise ValueError(scheme)
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if user and self._check(user, password):
                account = user
            else:
                status = 401
        if service and service != self.service:
            status = 400
        self._record(method="GET", account=account, scopes=scopes, service=service,
                     status=status, grant_type=None)
        if status == 401:
            return web.json_response(
                {"details": "incorrect username or password"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="imagesync-test-token"'},
            )
        if status == 400:
            return self._error(400, "invalid_request", f"unknown service {service!r}")
        offline = request.query.get("offline_token", "").lower() == "true"
        return self._response(account, scopes, refresh=offline)

    async def _handle_post(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        scopes = [s for s in str(form.get("scope", "")).split(" ") if s]
        service = str(form.get("service", "")) or None
        account: str | None = None
        status = 200
        if grant_type == "password":
            user, password = str(form.get("username", "")), str(form.get("password", ""))
            if self._check(user, password):
                account = user
            else:
                status = 401
        elif grant_type == "refresh_token":
            account = self._refresh_tokens.get(str(form.get("refresh_token", "")))
            if account is None:
                status = 401
        else:
            status = 400
        if service and service != self.service:
            status = 400
        self._record(method="POST", account=account, scopes=scopes, service=service,
                     status=status, grant_type=grant_type)
        if status == 401:
            return self._error(401, "invalid_grant", "bad credentials or refresh token")
        if status == 400:
            return self._error(400, "invalid_request", "bad grant_type or service")
        # OAuth2 flow: always hand out a refresh token for password grants ("offline").
        refresh = grant_type == "password" and form.get("access_type", "offline") == "offline"
        return self._response(account, scopes, refresh=refresh)
