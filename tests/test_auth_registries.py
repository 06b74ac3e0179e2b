"""Authentication and TLS against real docker-registry instances.

htpasswd over TLS with a CA made by the test, token auth with the token-issuer fixture
(short-lived tokens refreshed mid-run), Docker's config.json with a fake credential
helper on PATH, and the one-line errors that bad credentials give.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import stat
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from imagesync.auth import repository_scope
from imagesync.errors import AuthError
from imagesync.keychain import AuthEntry
from imagesync.retry import RetryPolicy
from imagesync.session import default_keychain, keychain_from_environment
from imagesync.transport import Client
from tests.support.cli import CliRun, run_cli
from tests.support.images import RegistryAPI, push_random_image
from tests.support.proxy import Proxy
from tests.support.registry import LocalRegistry
from tests.support.tokenserver import TEST_USER as TOKEN_USER
from tests.support.tokenserver import TokenIssuer

HELPER = """#!{python}
import json, os, sys
action = sys.argv[1]
server = sys.stdin.read().strip()
with open(os.environ["FAKE_HELPER_LOG"], "a") as f:
    f.write(action + " " + server + "\\n")
with open(os.environ["FAKE_HELPER_DB"]) as f:
    creds = json.load(f)
if action != "get" or server not in creds:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = creds[server]
json.dump({{"ServerURL": server, "Username": user, "Secret": secret}}, sys.stdout)
"""


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Docker config dir of our own; no AWS/Google settings from the outside."""
    docker = tmp_path / "docker"
    docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_")):
            monkeypatch.delenv(name)
    return docker


def write_docker_config(docker_dir: Path, doc: dict) -> Path:
    path = docker_dir / "config.json"
    path.write_text(json.dumps(doc))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def fake_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``docker-credential-fake`` on PATH; returns (set_creds(server, user, secret), calls())."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker-credential-fake"
    exe.write_text(HELPER.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    db, log = tmp_path / "helper-db.json", tmp_path / "helper.log"
    db.write_text("{}")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_HELPER_DB", str(db))
    monkeypatch.setenv("FAKE_HELPER_LOG", str(log))

    def set_creds(server: str, user: str, secret: str) -> None:
        creds = json.loads(db.read_text())
        creds[server] = [user, secret]
        db.write_text(json.dumps(creds))

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return set_creds, calls


def only_error(run: CliRun) -> str:
    errors = [r["error"] for r in run.report["images"] if r["status"] == "failed"]
    assert errors, run.stdout
    return errors[0]


# -- TLS ---------------------------------------------------------------------------------


def test_htpasswd_over_tls_needs_ca_file_or_insecure(tmp_path, registry_factory, src_registry):
    tls = registry_factory(tls=True, htpasswd=("alice", "tls-pw-4711"), name="tls")
    push_random_image(RegistryAPI(src_registry), "app", "v1", (2048,))
    images = {f"{src_registry.host}/app:v1": f"{tls.host}/mirror/app"}
    creds = {"username": "alice", "password": "tls-pw-4711"}

    run = run_cli(tmp_path, {"auth": {tls.host: creds}, "images": images})
    assert run.code == 1
    err = only_error(run)
    assert err.startswith(f"{tls.host}: TLS certificate not trusted (")
    assert "ca_file" in err and "insecure: true" in err and "\n" not in err

    run = run_cli(tmp_path, {"auth": {tls.host: {**creds, "ca_file": str(tls.ca_file)}},
                             "images": images})
    assert run.code == 0, run.stdout
    api = RegistryAPI(tls)
    assert api.tags("mirror/app") == ["v1"]

    api.delete_manifest("mirror/app", api.head_manifest("mirror/app", "v1"))
    run = run_cli(tmp_path, {"auth": {tls.host: {**creds, "insecure": True}}, "images": images})
    assert run.code == 0, run.stdout
    assert api.head_manifest("mirror/app", "v1") is not None


def test_one_ca_file_for_a_namespace_entry_and_its_registry(tmp_path, registry_factory,
                                                            test_ca, src_registry):
    """TLS settings come from the registry-wide entry; credentials from the longest prefix."""
    tls = registry_factory(ca=test_ca, htpasswd=("team", "team-pw-1"), name="tls-ns")
    push_random_image(RegistryAPI(src_registry), "app", "v1", (512,))
    cfg = {"auth": {tls.host: {"ca_file": str(test_ca.cert_file), "username": "x",
                               "password": "wrong"},
                    f"{tls.host}/team": {"username": "team", "password": "team-pw-1"}},
           "images": {f"{src_registry.host}/app:v1": [f"{tls.host}/team/app",
                                                      f"{tls.host}/other/app"]}}
    run = run_cli(tmp_path, cfg)
    assert run.statuses() == {f"{tls.host}/team/app:v1": "synced",
                              f"{tls.host}/other/app:v1": "failed"}
    err = run.by_destination()[f"{tls.host}/other/app:v1"]["error"]
    assert f"using user 'x' from the config auth entry '{tls.host}'" in err


# -- token auth --------------------------------------------------------------------------


def short_lived(issuer: TokenIssuer, real_ttl: int) -> None:
    """Tokens that claim ``issuer.ttl`` seconds but the registry refuses after ~real_ttl:
    the client cannot see it coming and must recover from a 401 mid-run."""
    issuer.issue_token = functools.partial(issuer.issue_token, ttl=real_ttl)


def token_gets(issuer: TokenIssuer, since: int = 0) -> list[tuple[str, ...]]:
    return [tuple(sorted(r["scopes"])) for r in issuer.requests[since:] if r["status"] == 200]


async def test_concurrent_tasks_share_one_token_and_refresh_it_once_after_401(
        token_issuer, token_registry):
    api = RegistryAPI(token_registry, *TOKEN_USER)
    img = push_random_image(api, "app", "v1", (256,))
    short_lived(token_issuer, real_ttl=1)
    store = default_keychain([AuthEntry(token_registry.host, *TOKEN_USER)])
    pull = [repository_scope("app", False)]
    start = len(token_issuer.requests)
    async with Client(store, RetryPolicy(retries=0)) as t:
        head = functools.partial(t.request, "HEAD", token_registry.host,
                                 "/v2/app/manifests/v1", scopes=pull,
                                 headers={"Accept": img.media_type})
        await asyncio.gather(*(head() for _ in range(20)))
        assert token_gets(token_issuer, start) == [("repository:app:pull",)]
        assert t.auth_retries == 0
        await asyncio.sleep(2.2)  # the registry now refuses the token we think is valid
        mark = len(token_issuer.requests)
        answers = await asyncio.gather(*(head() for _ in range(20)))
    assert {a.headers["Docker-Content-Digest"] for a in answers} == {img.digest}
    assert token_gets(token_issuer, mark) == [("repository:app:pull",)]  # one, not 20
    assert 1 <= t.auth_retries <= 20


async def test_tokens_are_refreshed_before_they_expire(token_issuer_factory, registry_factory):
    issuer = token_issuer_factory(ttl=1)
    reg = registry_factory(token=issuer, name="short")
    push_random_image(RegistryAPI(reg, *TOKEN_USER), "app", "v1", (256,))
    start = len(issuer.requests)
    store = default_keychain([AuthEntry(reg.host, *TOKEN_USER)])
    async with Client(store, RetryPolicy(retries=0)) as t:
        for _ in range(3):
            await t.request("HEAD", reg.host, "/v2/app/manifests/v1",
                            scopes=[repository_scope("app", False)])
            await asyncio.sleep(0.9)  # refreshed at 0.8 s, the registry refuses after 1 s
    assert len(token_gets(issuer, start)) == 3
    assert t.auth_retries == 0  # never refused: refreshed ahead of expiry


def test_sync_through_token_auth_with_short_tokens_and_a_mount(tmp_path, token_issuer,
                                                               token_registry):
    api = RegistryAPI(token_registry, *TOKEN_USER)
    imgs = [push_random_image(api, "app", f"v{i}", (4096, 1024)) for i in range(4)]
    start = len(token_issuer.requests)
    short_lived(token_issuer, real_ttl=3)  # 1 s flaked on a loaded 2-core VM
    with Proxy(token_registry.host, latency=0.03) as proxy:
        cfg = {"auth": {proxy.host: {"username": TOKEN_USER[0], "password": TOKEN_USER[1]}},
               "images": {f"{proxy.host}/app": f"{proxy.host}/copy"}}
        run = run_cli(tmp_path, cfg, "--proc", "2")
    assert run.code == 0, run.stdout + run.stderr
    assert sorted(api.tags("copy")) == ["v0", "v1", "v2", "v3"]
    for img in imgs:
        assert api.head_manifest("copy", img.tag) == img.digest
    scopes = set(token_gets(token_issuer, start))
    # The destination asked for what a cross-repository mount needs.
    assert ("repository:app:pull", "repository:copy:pull,push") in scopes
    # Tokens died every 3 s; the run refreshed them and did not storm the issuer.
    assert 1 < len(token_gets(token_issuer, start)) < 40


async def test_mount_asks_for_pull_on_the_source_up_front(token_issuer, token_registry):
    api = RegistryAPI(token_registry, *TOKEN_USER)
    img = push_random_image(api, "src/app", "v1", (1000, 2000))
    start = len(token_issuer.requests)
    store = default_keychain([AuthEntry(token_registry.host, *TOKEN_USER)])

    def mount(blob: str) -> str:
        return f"/v2/dst/app/blobs/uploads/?mount={blob}&from=src/app"

    async with Client(store, RetryPolicy(retries=0)) as t:
        answer = await t.request("POST", token_registry.host, mount(img.blobs[0]),
                                 ok=(201, 202), scopes=[repository_scope("dst/app", True),
                                         repository_scope("src/app", False)])
        assert answer.status == 201 and t.auth_retries == 0
        assert token_gets(token_issuer, start) == [("repository:dst/app:pull,push",
                                                    "repository:src/app:pull")]
        # Without the source scope the registry refuses (401) and names the scopes it
        # wants in its challenge: that costs a round trip, then the mount works.
        answer = await t.request("POST", token_registry.host, mount(img.blobs[1]),
                                 ok=(201, 202), scopes=[repository_scope("dst/app", True)])
        assert answer.status == 201 and t.auth_retries == 1
    assert api.blob_exists("dst/app", img.blobs[0]) and api.blob_exists("dst/app", img.blobs[1])


def test_bad_password_for_token_registry_names_registry_and_source(tmp_path, isolated_env,
                                                                  token_registry):
    push_random_image(RegistryAPI(token_registry, *TOKEN_USER), "app", "v1", (128,))
    cfg_path = write_docker_config(isolated_env, {"auths": {
        token_registry.host: {"auth": b64(f"{TOKEN_USER[0]}:not-the-password")}}})
    run = run_cli(tmp_path, {"images": {f"{token_registry.host}/app:v1":
                                        f"{token_registry.host}/copy"}})
    assert run.code == 1
    assert only_error(run) == (
        f"{token_registry.host}: token server refused the credentials (401) using user "
        f"'{TOKEN_USER[0]}' from Docker config {cfg_path} (auths['{token_registry.host}'])")


def test_bad_password_for_htpasswd_registry_names_registry_and_source(tmp_path,
                                                                     registry_factory):
    reg = registry_factory(htpasswd=("bob", "right-pw"), name="basic")
    push_random_image(RegistryAPI(reg), "x", "v1", (128,))
    run = run_cli(tmp_path, {"auth": {reg.host: {"username": "bob", "password": "wrong-pw"}},
                             "images": {f"{reg.host}/x:v1": f"{reg.host}/y"}})
    assert run.code == 1
    assert only_error(run) == (f"{reg.host}: authentication failed (401) for repository:x:pull "
                               f"using user 'bob' from the config auth entry '{reg.host}'")


def test_anonymous_refusal_says_where_it_looked(tmp_path, registry_factory):
    reg = registry_factory(htpasswd=("bob", "right-pw"), name="basic")
    run = run_cli(tmp_path, {"images": {f"{reg.host}/x:v1": f"{reg.host}/y"}})
    err = only_error(run)
    assert err.startswith(f"{reg.host}: authentication failed (401) for repository:x:pull "
                          f"using anonymous access (no credentials for {reg.host} in ")


# -- Docker config.json ------------------------------------------------------------------


def test_docker_config_auths_and_config_entry_precedence(tmp_path, isolated_env,
                                                         registry_factory, src_registry):
    reg = registry_factory(htpasswd=("carol", "carol-pw"), name="basic")
    push_random_image(RegistryAPI(src_registry), "app", "v1", (512,))
    write_docker_config(isolated_env, {"auths": {
        f"http://{reg.host}/": {"auth": b64("carol:carol-pw")}}})
    images = {f"{src_registry.host}/app:v1": f"{reg.host}/app"}
    assert run_cli(tmp_path, {"images": images}).code == 0
    assert RegistryAPI(reg).tags("app") == ["v1"]
    # An entry with TLS settings only does not hide Docker's credentials ...
    run = run_cli(tmp_path, {"auth": {reg.host: {"insecure": True}}, "images": images},
                  "--force")
    assert run.code == 0, run.stdout
    # ... but one with credentials wins over them.
    run = run_cli(tmp_path, {"auth": {reg.host: {"username": "carol", "password": "nope"}},
                             "images": images}, "--force")
    assert "from the config auth entry" in only_error(run)


@pytest.mark.parametrize("how", ["credHelpers", "credsStore"])
def test_credential_helper_is_asked_once_per_registry(tmp_path, isolated_env, fake_helper, how,
                                                      registry_factory, src_registry):
    set_creds, calls = fake_helper
    reg = registry_factory(htpasswd=("dave", "helper-pw-99"), name="basic")
    set_creds(reg.host, "dave", "helper-pw-99")
    doc = ({"credHelpers": {reg.host: "fake"}} if how == "credHelpers"
           else {"credsStore": "fake", "auths": {reg.host: {}}})
    write_docker_config(isolated_env, doc)
    src = RegistryAPI(src_registry)
    for i in range(5):
        push_random_image(src, "app", f"v{i}", (256,))
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/app": f"{reg.host}/app"}},
                  "--proc", "8")
    assert run.code == 0, run.stdout
    assert len(RegistryAPI(reg).tags("app")) == 5
    # Asked once for the destination; never for the source, which asks for no auth.
    assert calls() == [f"get {reg.host}"]


def test_helper_credentials_refused_names_the_helper(tmp_path, isolated_env, fake_helper,
                                                     registry_factory):
    set_creds, _calls = fake_helper
    reg = registry_factory(htpasswd=("erin", "real"), name="basic")
    set_creds(reg.host, "erin", "stale-secret")
    write_docker_config(isolated_env, {"credHelpers": {reg.host: "fake"}})
    run = run_cli(tmp_path, {"images": {f"{reg.host}/x:v1": f"{reg.host}/y"}})
    assert only_error(run) == (f"{reg.host}: authentication failed (401) for repository:x:pull"
                               " using user 'erin' from credential helper "
                               "docker-credential-fake")


def test_missing_helper_falls_back_to_anonymous_and_says_so(tmp_path, isolated_env,
                                                            registry_factory):
    reg = registry_factory(htpasswd=("erin", "real"), name="basic")
    write_docker_config(isolated_env, {"credsStore": "not-installed-xyz"})
    run = run_cli(tmp_path, {"images": {f"{reg.host}/x:v1": f"{reg.host}/y"}})
    assert "anonymous access (credential helper docker-credential-not-installed-xyz named in " \
           "Docker config" in only_error(run)


def test_identity_token_from_docker_config_is_exchanged(tmp_path, isolated_env, token_issuer,
                                                        token_registry):
    """docker login stores an OAuth2 refresh token as ``identitytoken`` (ACR, Harbor...)."""
    form = urllib.parse.urlencode({"grant_type": "password", "username": TOKEN_USER[0],
                                   "password": TOKEN_USER[1], "service": token_issuer.service,
                                   "client_id": "test"}).encode()
    with urllib.request.urlopen(token_issuer.realm, data=form) as resp:
        refresh = json.load(resp)["refresh_token"]
    push_random_image(RegistryAPI(token_registry, *TOKEN_USER), "app", "v1", (256,))
    start = len(token_issuer.requests)
    write_docker_config(isolated_env, {"auths": {token_registry.host: {
        "auth": b64("00000000-0000-0000-0000-000000000000:"), "identitytoken": refresh}}})
    run = run_cli(tmp_path, {"images": {f"{token_registry.host}/app:v1":
                                        f"{token_registry.host}/copy"}})
    assert run.code == 0, run.stdout
    seen = token_issuer.requests[start:]
    grants = [r for r in seen if r["grant_type"] == "refresh_token"]
    assert grants and all(r["status"] == 200 and r["account"] == TOKEN_USER[0] for r in grants)
    assert not [r for r in seen if r["method"] == "GET"]


async def test_helper_runs_without_blocking_and_gets_the_hub_server_url(isolated_env,
                                                                        fake_helper):
    from imagesync.dockerconfig import DOCKER_HUB_SERVER, DockerConfig

    set_creds, calls = fake_helper
    set_creds(DOCKER_HUB_SERVER, "hubuser", "hub-secret")
    write_docker_config(isolated_env, {"credHelpers": {"index.docker.io": "fake"}})
    seen: list[str] = []
    store = keychain_from_environment([], on_secret=seen.append)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    t = asyncio.create_task(ticker())
    cred = await store.resolve("docker.io", "library/ubuntu")
    t.cancel()
    assert isinstance(store.keychains[1].config, DockerConfig)
    assert (cred.username, cred.password) == ("hubuser", "hub-secret")
    assert cred.source == "credential helper docker-credential-fake"
    assert calls() == [f"get {DOCKER_HUB_SERVER}"]
    assert ticks > 0  # the loop kept running while the helper did
    assert "hub-secret" in seen and b64("hubuser:hub-secret") in seen


def test_wrong_entry_credentials_fail_fast_without_retries(tmp_path, registry_factory):
    """Refusals are not transient: no backoff, one line, exit 1."""
    reg = registry_factory(htpasswd=("bob", "right-pw"), name="basic")
    run = run_cli(tmp_path, {"auth": {reg.host: {"username": "bob", "password": "x"}},
                             "images": {f"{reg.host}/x:v1": f"{reg.host}/y"}})
    assert run.code == 1 and "retrying" not in run.stderr


def test_auth_error_is_an_auth_error(registry_factory):
    reg: LocalRegistry = registry_factory(htpasswd=("bob", "right-pw"), name="basic")

    async def go() -> None:
        store = default_keychain([AuthEntry(reg.host, "bob", "bad")])
        async with Client(store, RetryPolicy(retries=0)) as t:
            await t.request("GET", reg.host, "/v2/x/tags/list",
                            scopes=[repository_scope("x", False)])

    with pytest.raises(AuthError) as info:
        asyncio.run(go())
    assert info.value.status == 401
