"""Registries that cannot run here, mocked with aiohttp test servers: Docker Hub (its
realm and rate-limit headers), Azure ACR (refresh-token exchange) and mutual TLS."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from imagesync import transport as transport_mod
from imagesync.auth import repository_scope
from imagesync.dockerconfig import DockerConfig
from imagesync.errors import AuthError, RegistryDown
from imagesync.keychain import AuthEntry
from imagesync.ratelimit import RateLimiter, parse_ratelimit
from imagesync.retry import RetryPolicy
from imagesync.session import default_keychain
from imagesync.transport import Client
from tests.support.certs import CertAuthority, write_cert, write_key

MANIFEST = b'{"schemaVersion": 2}'
PULL = [repository_scope("library/ubuntu", False)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def _rec(self, level: str):
        return lambda event, **kw: self.events.append((level, event, kw))

    def __getattr__(self, level: str):
        return self._rec(level)


# -- Docker Hub --------------------------------------------------------------------------


def hub_app(state: dict) -> web.Application:
    """Docker Hub in miniature: registry + token realm, pulls counted like Hub counts them."""

    async def v2(request: web.Request) -> web.Response:
        realm = f"http://{request.host}/token"
        return web.json_response({}, status=401, headers={
            "WWW-Authenticate": f'Bearer realm="{realm}",service="registry.docker.io"'})

    async def token(request: web.Request) -> web.Response:
        state["token_requests"].append((dict(request.query), request.headers.get("Authorization")))
        return web.json_response({"token": "hub-token", "expires_in": 300})

    async def manifest(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer hub-token":
            return web.json_response({}, status=401, headers={
                "WWW-Authenticate": f'Bearer realm="http://{request.host}/token"'})
        if request.method == "GET":
            state["pulls"] += 1
        left = max(0, state["limit"] - state["pulls"])
        return web.Response(body=MANIFEST, headers={
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            "Docker-Content-Digest": "sha256:" + "0" * 64,
            "ratelimit-limit": f"{state['limit']};w=21600",
            "ratelimit-remaining": f"{left};w=21600"})

    app = web.Application()
    app.router.add_get("/v2/", v2)
    app.router.add_get("/token", token)
    app.router.add_route("*", "/v2/library/ubuntu/manifests/{ref}", manifest)
    return app


async def test_docker_hub_name_realm_and_rate_limit(aiohttp_server, monkeypatch):
    state = {"pulls": 88, "limit": 100, "token_requests": []}
    server = await aiohttp_server(hub_app(state))
    # docker.io goes to registry-1.docker.io: here, the mock.
    monkeypatch.setattr(transport_mod, "DOCKER_HUB_ENDPOINT", f"127.0.0.1:{server.port}")
    clock, delays = FakeClock(), []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        clock.now += seconds

    log = Log()
    limiter = RateLimiter(sleep=sleep, clock=clock, max_delay=600)
    store = default_keychain([AuthEntry("index.docker.io", "hubuser", "hub-pw")])
    async with Client(store, RetryPolicy(retries=0), log=log, ratelimits=limiter) as t:
        for _ in range(3):  # HEAD is no pull: never slowed down
            await t.request("HEAD", "docker.io", "/v2/library/ubuntu/manifests/latest",
                            scopes=PULL)
        for _ in range(6):
            await t.request("GET", "docker.io", "/v2/library/ubuntu/manifests/latest",
                            scopes=PULL)
    # Remaining after each pull: 11, 10 (reserve reached), 9, 8, 7, 6. From the pull after
    # the one that saw 10, pulls are spaced min(600, 21600 / (remaining + 1)) apart.
    assert delays == [600, 600, 600]
    assert limiter.delay_for("docker.io") == 600
    warnings = [e for e in log.events if e[1].startswith("rate limit")]
    assert len(warnings) == 1 and warnings[0][2]["registry"] == "docker.io"
    query, authz = state["token_requests"][0]
    assert len(state["token_requests"]) == 1
    assert query == {"service": "registry.docker.io", "scope": "repository:library/ubuntu:pull",
                     "account": "hubuser"}
    assert authz == "Basic aHVidXNlcjpodWItcHc="


def test_rate_limit_policy_edges():
    assert parse_ratelimit("95;w=21600") == (95, 21600.0)
    assert parse_ratelimit("7") == (7, None)
    assert parse_ratelimit("junk") is None and parse_ratelimit(None) is None
    limiter = RateLimiter(max_delay=60)
    limiter.observe("docker.io", {"ratelimit-limit": "200;w=21600",
                                  "ratelimit-remaining": "21;w=21600"})
    assert limiter.delay_for("docker.io") == 0  # above the 10 % reserve
    limiter.observe("docker.io", {"ratelimit-remaining": "20;w=21600"})
    assert limiter.delay_for("docker.io") == 60  # capped
    limiter.observe("docker.io", {"ratelimit-remaining": "0;w=21600"})
    assert limiter.delay_for("docker.io") == 60
    limiter.observe("quay.io", {"ratelimit-remaining": "5;w=60"})
    assert limiter.delay_for("quay.io") == 10  # 60 s / (5 + 1)
    assert limiter.delay_for("never-seen.io") == 0


# -- Azure ACR ---------------------------------------------------------------------------


def acr_app(seen: list[dict]) -> web.Application:
    async def v2(request: web.Request) -> web.Response:
        return web.json_response({}, status=401, headers={"WWW-Authenticate": (
            f'Bearer realm="http://{request.host}/oauth2/token",service="{request.host}"')})

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        seen.append(form)
        if form.get("grant_type") != "refresh_token" or (
                form.get("refresh_token") != "acr-refresh-token"):
            return web.json_response({"error": "invalid_grant"}, status=401)
        return web.json_response({"access_token": "acr-access-1"})

    async def tags(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer acr-access-1":
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                     headers={"WWW-Authenticate": (
                                         f'Bearer realm="http://{request.host}/oauth2/token",'
                                         f'service="{request.host}"')})
        return web.json_response({"name": "team/app", "tags": ["v1"]})

    app = web.Application()
    app.router.add_get("/v2/", v2)
    app.router.add_post("/oauth2/token", token)
    app.router.add_get("/v2/team/app/tags/list", tags)
    return app


@pytest.mark.parametrize("where", ["config", "docker"])
async def test_acr_identity_token_exchange(aiohttp_server, where):
    seen: list[dict] = []
    server = await aiohttp_server(acr_app(seen))
    host = f"127.0.0.1:{server.port}"
    if where == "config":
        store = default_keychain([AuthEntry(host, identity_token="acr-refresh-token")])
    else:
        store = default_keychain([], docker_config=DockerConfig.from_dict({"auths": {host: {
            "auth": "MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwOg==",
            "identitytoken": "acr-refresh-token"}}}))
    async with Client(store, RetryPolicy(retries=0)) as t:
        answer = await t.request("GET", host, "/v2/team/app/tags/list",
                                 scopes=[repository_scope("team/app", False)])
    assert answer.body == b'{"name": "team/app", "tags": ["v1"]}'
    assert seen == [{"grant_type": "refresh_token", "client_id": "imagesync",
                     "refresh_token": "acr-refresh-token", "service": host,
                     "scope": "repository:team/app:pull"}]


async def test_acr_bad_identity_token_is_one_line(aiohttp_server):
    server = await aiohttp_server(acr_app([]))
    host = f"127.0.0.1:{server.port}"
    store = default_keychain([AuthEntry(host, identity_token="revoked")])
    async with Client(store, RetryPolicy(retries=0)) as t:
        with pytest.raises(AuthError) as info:
            await t.request("GET", host, "/v2/team/app/tags/list",
                            scopes=[repository_scope("team/app", False)])
    assert str(info.value) == (f"{host}: token server refused the credentials (401) using "
                               f"an identity token from the config auth entry '{host}'")
    assert "revoked" not in str(info.value)


# -- mutual TLS --------------------------------------------------------------------------


def client_cert(ca: CertAuthority, directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "imagesync client")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(ca.key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    return write_cert(cert, directory / "client.crt"), write_key(key, directory / "client.key")


async def test_mutual_tls(tmp_path: Path):
    ca = CertAuthority.create(tmp_path / "ca")
    server_crt, server_key = ca.issue_server_cert(tmp_path / "server")
    crt, key = client_cert(ca, tmp_path / "client")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server_crt, server_key)
    ctx.load_verify_locations(cafile=str(ca.cert_file))
    ctx.verify_mode = ssl.CERT_REQUIRED

    async def v2(request: web.Request) -> web.Response:
        return web.json_response({})

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"tags": ["t"]})

    app = web.Application()
    app.router.add_get("/v2/", v2)
    app.router.add_get("/v2/x/tags/list", tags)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    host = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        entry = AuthEntry(host, ca_file=str(ca.cert_file), cert_file=str(crt), key_file=str(key))
        async with Client(default_keychain([entry]), RetryPolicy(retries=0)) as t:
            answer = await t.request("GET", host, "/v2/x/tags/list")
            assert answer.body == b'{"tags": ["t"]}'
            assert (await t.endpoint(host)).base == f"https://{host}"
        no_cert = AuthEntry(host, ca_file=str(ca.cert_file))
        async with Client(default_keychain([no_cert]), RetryPolicy(retries=0)) as t:
            with pytest.raises(RegistryDown, match=(
                    f"{host}: the registry closed the TLS connection without answering; if it "
                    "requires a client certificate, set cert_file and key_file in the config "
                    "auth entry")):
                await t.request("GET", host, "/v2/x/tags/list")
    finally:
        await runner.cleanup()
