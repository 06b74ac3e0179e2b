"""Cloud registries: ECR against moto's server, Google ADC against a fake token endpoint.

The registry side is a real htpasswd docker-registry that accepts exactly the basic
credentials the cloud would (``AWS`` + the token's password, ``oauth2accesstoken`` + the
access token); the auth entry's ``endpoint`` points the ECR/GCP registry name at it.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from imagesync.auth import repository_scope
from imagesync.cloud.ecr import (
    MIN_REUSE,
    TARGET,
    ECRProvider,
    parse_ecr_host,
    refresh_deadline,
    sigv4_headers,
)
from imagesync.errors import AuthError
from imagesync.keychain import AuthEntry, Credential
from imagesync.retry import RetryPolicy
from imagesync.session import default_keychain
from imagesync.transport import Client
from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_random_image

ACCOUNT = "123456789012"  # moto's default account
ECR_HOST = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
ECR_PASSWORD = f"{ACCOUNT}-auth-token"  # what moto's GetAuthorizationToken hands out


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-creds-none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


# -- ECR ---------------------------------------------------------------------------------


def test_ecr_end_to_end_with_static_keys(tmp_path, moto_url, registry_factory, src_registry):
    ecr = registry_factory(htpasswd=("AWS", ECR_PASSWORD), name="ecr")
    img = push_random_image(RegistryAPI(src_registry), "app", "v1", (2048,))
    cfg = {"auth": {ECR_HOST: {"aws_access_key_id": "AKIDEXAMPLE",
                               "aws_secret_access_key": "ecr-secret-key-42",
                               "aws_endpoint_url": moto_url, "endpoint": ecr.host}},
           "images": {f"{src_registry.host}/app:v1": f"{ECR_HOST}/team/app"}}
    run = run_cli(tmp_path, cfg, "-v")
    assert run.code == 0, run.stdout + run.stderr
    assert RegistryAPI(ecr).head_manifest("team/app", "v1") == img.digest
    output = run.stdout + run.stderr + json.dumps(run.report)
    assert "ecr-secret-key-42" not in output and ECR_PASSWORD not in output


async def test_ecr_token_refreshed_when_due_and_after_a_refusal(moto_url, registry_factory):
    ecr = registry_factory(htpasswd=("AWS", ECR_PASSWORD), name="ecr")
    push_random_image(RegistryAPI(ecr), "app", "v1", (128,))
    clock = FakeClock()
    entry = AuthEntry(ECR_HOST, aws_access_key_id="AKID", aws_secret_access_key="sk",
                      aws_endpoint_url=moto_url, endpoint=ecr.host)
    client: list[Client] = []
    store = default_keychain([entry], clock=clock, http=lambda: client[0] if client else None)
    outer = Client(store, RetryPolicy(retries=0))
    await outer.__aenter__()
    client.append(outer)
    first = await store.resolve(ECR_HOST, "app")
    assert (first.username, first.password) == ("AWS", ECR_PASSWORD)
    assert first.source == ("ECR GetAuthorizationToken (access key from the auth entry, region "
                            f"us-east-1) for the config auth entry '{ECR_HOST}'")
    (entries, *_) = store.keychains
    cached = entries.cached(ECR_HOST, "app")
    assert await store.resolve(ECR_HOST, "app") is first and cached.fetches == 1
    # moto's expiresAt is in 2015: reused for MIN_REUSE seconds, not fetched per request.
    clock.now += MIN_REUSE + 1
    assert await store.resolve(ECR_HOST, "app") is not first and cached.fetches == 2

    # A password the registry no longer takes is fetched anew, once, and the request retried.
    cached._value = Credential("AWS", "expired-token", source="x", expires_at=clock.now + 999)
    async with outer as t:
        answer = await t.request("GET", ECR_HOST, "/v2/app/tags/list",
                                 scopes=[repository_scope("app", False)])
    assert json.loads(answer.body)["tags"] == ["v1"]
    assert t.auth_retries == 1 and cached.fetches == 3


async def test_ecr_profile_uses_boto3(tmp_path, moto_url, monkeypatch):
    creds = tmp_path / "aws-credentials"
    creds.write_text("[migration]\naws_access_key_id = AKIDPROFILE\n"
                     "aws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    seen: list[str] = []
    entry = AuthEntry("111122223333.dkr.ecr.eu-west-1.amazonaws.com", aws_profile="migration",
                      aws_endpoint_url=moto_url)
    provider = ECRProvider(entry, entry.registry, os.environ, seen.append, http=lambda: None)
    cred = await provider.fetch()
    assert cred.username == "AWS" and cred.password.endswith("-auth-token")
    assert "AWS profile 'migration', region eu-west-1" in cred.source
    assert cred.password in seen


async def test_ecr_keys_from_the_environment_and_clear_errors(moto_url, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    entry = AuthEntry("registry.example.com", aws_region="ap-south-1",
                      aws_endpoint_url=moto_url)
    async with Client(default_keychain()) as client:
        cred = await ECRProvider(entry, entry.registry, os.environ, lambda s: None,
                                 http=lambda: client).fetch()
    assert "access key from AWS_ACCESS_KEY_ID, region ap-south-1" in cred.source

    no_region = AuthEntry("registry.example.com", aws_endpoint_url=moto_url)
    with pytest.raises(AuthError, match="set aws_region"):
        await ECRProvider(no_region, no_region.registry, {}, lambda s: None,
                          http=lambda: None).fetch()


def test_ecr_host_parsing_and_refresh_schedule():
    assert parse_ecr_host(ECR_HOST) == (ACCOUNT, "us-east-1")
    assert parse_ecr_host("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com") == (
        ACCOUNT, "us-gov-west-1")
    assert parse_ecr_host("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn:443") == (
        ACCOUNT, "cn-north-1")
    assert parse_ecr_host("quay.io") is None
    twelve_hours = 12 * 3600
    assert refresh_deadline(1000 + twelve_hours, 1000, 50) == 50 + twelve_hours - 1800
    assert refresh_deadline(1100, 1000, 50) == 50 + 75  # short-lived: a quarter early
    assert refresh_deadline(900, 1000, 50) == 50 + MIN_REUSE  # already past: no storm


def test_sigv4_matches_botocore():
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = "https://api.ecr.eu-west-1.amazonaws.com/"
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": TARGET}
    for session in (None, "session-token-1"):
        req = AWSRequest(method="POST", url=url, data=b"{}", headers=dict(headers))
        SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", session), "ecr",
                  "eu-west-1").add_auth(req)
        when = dt.datetime.strptime(req.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=dt.timezone.utc)
        mine = sigv4_headers("POST", url, headers, b"{}", region="eu-west-1", service="ecr",
                             access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG",
                             session_token=session, now=when)
        assert mine["authorization"] == req.headers["Authorization"]


async def test_ecr_refusal_is_an_auth_error(tmp_path, monkeypatch):
    """A 4xx from the API names the AWS error and is not retried."""
    from aiohttp import web

    async def refuse(request: web.Request) -> web.Response:
        assert request.headers["X-Amz-Target"] == TARGET
        assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")
        return web.json_response({"__type": "UnrecognizedClientException",
                                  "message": "The security token is invalid."}, status=400)

    app = web.Application()
    app.router.add_post("/", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        entry = AuthEntry(ECR_HOST, aws_access_key_id="AKID", aws_secret_access_key="sk",
                          aws_endpoint_url=f"http://127.0.0.1:{port}")
        with pytest.raises(AuthError) as info:
            async with Client(default_keychain()) as client:
                await ECRProvider(entry, ECR_HOST, {}, lambda s: None,
                                  http=lambda: client).fetch()
        assert str(info.value) == ("ECR GetAuthorizationToken failed: "
                                   "UnrecognizedClientException The security token is invalid.")
    finally:
        await runner.cleanup()


# -- Google Application Default Credentials ----------------------------------------------


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    seen: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(body)
        answer = json.dumps({"access_token": "ya29.fake-adc-token", "expires_in": 3600,
                             "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def google_token_uri() -> Iterator[str]:
    _TokenHandler.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def test_gcp_adc_end_to_end(tmp_path, monkeypatch, google_token_uri, registry_factory,
                            src_registry):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps({
        "type": "service_account", "project_id": "proj", "private_key_id": "k1",
        "private_key": pem, "client_email": "sync@proj.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": google_token_uri}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa))
    gar = registry_factory(htpasswd=("oauth2accesstoken", "ya29.fake-adc-token"), name="gar")
    img = push_random_image(RegistryAPI(src_registry), "app", "v1", (512,))
    name = "europe-docker.pkg.dev"
    cfg = {"auth": {name: {"gcp_adc": True, "endpoint": gar.host}},
           "images": {f"{src_registry.host}/app:v1": f"{name}/proj/repo/app"}}
    run = run_cli(tmp_path, cfg, "-v")
    assert run.code == 0, run.stdout + run.stderr
    assert RegistryAPI(gar).head_manifest("proj/repo/app", "v1") == img.digest
    assert len(_TokenHandler.seen) == 1  # one access token for the whole run
    # ... asked for through imagesync's own HTTP client (logged like every request)
    assert f"POST {google_token_uri}" in run.stderr, run.stderr
    assert b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in (
        _TokenHandler.seen[0])
    assert "ya29.fake-adc-token" not in run.stdout + run.stderr + json.dumps(run.report)
