"""Unit tests of credential lookup, Docker config parsing, the token cache and friends."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from imagesync.auth import BearerTokens, Challenge, repository_scope, scope_repository
from imagesync.config import load
from imagesync.dockerconfig import DockerConfig, registry_of_key
from imagesync.errors import AuthError, ConfigError
from imagesync.keychain import AuthEntry, CachedFetch, Credential
from imagesync.log import Redactor
from imagesync.session import default_keychain


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- config entries ----------------------------------------------------------------------


async def test_longest_prefix_picks_the_credential_per_repository():
    store = default_keychain([
        AuthEntry("reg.io", "all", "pw-all"),
        AuthEntry("reg.io/team", "team", "pw-team"),
        AuthEntry("reg.io/team/special", token="tok-special"),
    ])
    assert (await store.resolve("reg.io", "other/x")).username == "all"
    assert (await store.resolve("reg.io", "team/x")).username == "team"
    assert (await store.resolve("reg.io", "teamster/x")).username == "all"
    special = await store.resolve("reg.io", "team/special/y")
    assert special.token == "tok-special" and special.username is None
    assert await store.resolve("other.io", "x") is None
    assert store.anonymous("other.io") == (
        "anonymous access (no credentials for other.io in the config auth entries)")


async def test_docker_hub_aliases_share_entries():
    store = default_keychain([AuthEntry("index.docker.io", "hub", "pw")])
    assert (await store.resolve("docker.io", "library/ubuntu")).username == "hub"


async def test_password_file_is_read_and_reread_after_rotation(tmp_path: Path):
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account"}\n')
    clock = FakeClock()
    store = default_keychain([AuthEntry("gcr.io", "_json_key", password_file=str(key))],
                            clock=clock)
    cred = await store.resolve("gcr.io", "proj/app")
    assert (cred.username, cred.password) == ("_json_key", '{"type": "service_account"}')
    key.write_text("rotated")
    assert (await store.resolve("gcr.io", "proj/app")).password == cred.password
    assert store.invalidate("gcr.io", "proj/app", cred)  # e.g. after a 401
    assert (await store.resolve("gcr.io", "proj/app")).password == "rotated"
    missing = default_keychain([AuthEntry("x.io", "u", password_file=str(tmp_path / "nope"))])
    with pytest.raises(AuthError, match="cannot read password_file of the config auth entry"):
        await missing.resolve("x.io", "a")


async def test_tls_only_entry_falls_through_to_docker_config():
    dc = DockerConfig.from_dict({"auths": {"reg.io": {"auth": b64("u:p")}}})
    store = default_keychain([AuthEntry("reg.io", insecure=True)], docker_config=dc)
    cred = await store.resolve("reg.io", "x")
    assert (cred.username, cred.password) == ("u", "p")
    assert cred.source == "Docker config (auths['reg.io'])"


def test_reprs_never_show_secrets():
    entry = AuthEntry("r.io", "u", "hunter22", aws_secret_access_key="aws-secret-1")
    cred = Credential("u", "hunter22", token="tok-123", identity_token="idt-123")
    for text in (repr(entry), repr(cred), str(cred), cred.describe()):
        assert "hunter22" not in text and "tok-123" not in text and "aws-secret-1" not in text


def test_secrets_include_base64_forms_and_reach_the_redactor():
    redact = Redactor()
    dc = DockerConfig.from_dict({"auths": {"h.io": {"auth": b64("dockeruser:docker-pw")}}})
    default_keychain([AuthEntry("r.io", "u", "cfg-pw"), AuthEntry("t.io", token="cfg-tok")],
                    docker_config=dc, on_secret=redact.add)
    for secret in ("cfg-pw", b64("u:cfg-pw"), b64("cfg-pw"), "cfg-tok", "docker-pw",
                   b64("dockeruser:docker-pw")):
        assert redact(f"x {secret} y") == "x *** y"


async def test_resolved_secrets_are_registered():
    seen: list[str] = []
    dc = DockerConfig.from_dict({"auths": {"h.io": {"identitytoken": "idtok-77"}}})
    store = default_keychain([], docker_config=dc, on_secret=seen.append)
    cred = await store.resolve("h.io", "a")
    assert cred.identity_token == "idtok-77" and "idtok-77" in seen


def test_scope_helpers():
    assert repository_scope("dst/a", True) == "repository:dst/a:pull,push"
    assert repository_scope("src/b", False) == "repository:src/b:pull"
    assert scope_repository(["registry:catalog:*"]) is None
    assert scope_repository(["repository:dst/a:pull,push", "repository:src/b:pull"]) == "dst/a"
    assert scope_repository(["repository(plugin):x/y:pull"]) == "x/y"


def test_challenge_parsing():
    ch = Challenge.parse('Bearer realm="https://auth.docker.io/token",'
                         'service="registry.docker.io",scope="repository:a:pull b"')
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.docker.io/token",
                         "service": "registry.docker.io", "scope": "repository:a:pull b"}
    assert Challenge.parse('Basic realm="x"').scheme == "basic"
    assert Challenge.parse(None) is None


# -- Docker config.json ------------------------------------------------------------------


def test_docker_config_keys_are_normalised():
    assert registry_of_key("https://index.docker.io/v1/") == "docker.io"
    assert registry_of_key("http://127.0.0.1:5000/") == "127.0.0.1:5000"
    assert registry_of_key("Quay.io") == "quay.io"


async def test_docker_config_entry_kinds(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:hub-pw")},
        "acr.azurecr.io": {"auth": b64("00000000-0000-0000-0000-000000000000:"),
                           "identitytoken": "refresh-1"},
        "tok.io": {"registrytoken": "bearer-1"},
        "old.io": {"username": "olduser", "password": "old-pw"},
        "empty.io": {},
    }}))
    dc = DockerConfig.load(path=path)
    hub = await dc.credential("docker.io")
    assert (hub.username, hub.password) == ("hub", "hub-pw")
    assert hub.source == f"Docker config {path} (auths['https://index.docker.io/v1/'])"
    acr = await dc.credential("acr.azurecr.io")
    assert acr.identity_token == "refresh-1" and acr.password is None
    assert (await dc.credential("tok.io")).token == "bearer-1"
    assert (await dc.credential("old.io")).password == "old-pw"
    assert await dc.credential("empty.io") is None
    assert await dc.credential("nope.io") is None


def test_docker_config_location_and_errors(tmp_path: Path):
    env = {"DOCKER_CONFIG": str(tmp_path / "d"), "HOME": str(tmp_path)}
    assert DockerConfig.default_path(env) == tmp_path / "d" / "config.json"
    assert DockerConfig.default_path({"HOME": str(tmp_path)}) == (
        tmp_path / ".docker" / "config.json")
    assert DockerConfig.load(env) is None
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON in Docker config"):
        DockerConfig.load(env)
    with pytest.raises(ConfigError, match="credsStore: must be a string"):
        DockerConfig.from_dict({"credsStore": 3})


# -- the token cache ---------------------------------------------------------------------


class FakeTokenServer:
    def __init__(self, ttl: float = 300) -> None:
        self.calls: list[tuple[str, str, list, str | None]] = []
        self.ttl = ttl

    async def __call__(self, method, realm, params, authz):
        self.calls.append((method, realm, params, authz))
        await asyncio.sleep(0.01)
        return {"token": f"t{len(self.calls)}", "expires_in": self.ttl}


CH = Challenge("bearer", {"realm": "https://auth/token", "service": "svc"})


async def test_concurrent_callers_share_one_fetch_and_credentials_do_not_mix():
    server = FakeTokenServer()
    tokens = BearerTokens("r.io", server)
    alice, bob = Credential("alice", "a-pw", source="s"), Credential("bob", "b-pw", source="s")
    got = await asyncio.gather(*(tokens.get(CH, ["repository:x:pull"], alice)
                                 for _ in range(50)))
    assert set(got) == {"t1"} and len(server.calls) == 1
    method, _realm, params, authz = server.calls[0]
    assert method == "GET" and authz == "Basic " + b64("alice:a-pw")
    assert ("service", "svc") in params and ("scope", "repository:x:pull") in params
    assert await tokens.get(CH, ["repository:x:pull"], bob) == "t2"
    # A 401 invalidates only the token that was refused.
    tokens.invalidate(["repository:x:pull"], "stale", alice)
    assert await tokens.get(CH, ["repository:x:pull"], alice) == "t1"
    tokens.invalidate(["repository:x:pull"], "t1", alice)
    assert await tokens.get(CH, ["repository:x:pull"], alice) == "t3"


async def test_token_refreshed_before_expiry():
    clock = FakeClock()
    server = FakeTokenServer(ttl=100)
    tokens = BearerTokens("r.io", server, clock=clock)
    assert await tokens.get(CH, ["s"]) == "t1"
    clock.now += 75  # margin: min(30, ttl/5 = 20) -> valid for 80 s
    assert await tokens.get(CH, ["s"]) == "t1"
    clock.now += 6
    assert await tokens.get(CH, ["s"]) == "t2"


async def test_identity_token_uses_the_oauth2_refresh_grant():
    server = FakeTokenServer()
    tokens = BearerTokens("acr.io", server)
    cred = Credential("00000000-0000-0000-0000-000000000000", identity_token="rt-1",
                      source="s")
    await tokens.get(CH, ["repository:b:pull", "repository:a:pull,push"], cred)
    method, realm, form, authz = server.calls[0]
    assert (method, realm, authz) == ("POST", "https://auth/token", None)
    assert dict(form) == {"grant_type": "refresh_token", "client_id": "imagesync",
                          "refresh_token": "rt-1", "service": "svc",
                          "scope": "repository:a:pull,push repository:b:pull"}


async def test_ready_token_needs_no_fetch():
    server = FakeTokenServer()
    tokens = BearerTokens("r.io", server)
    assert await tokens.get(CH, ["s"], Credential(token="ready", source="s")) == "ready"
    assert server.calls == []


async def test_dynamic_credentials_single_flight_expiry_and_error_memory():
    clock = FakeClock()
    calls = 0

    async def fetch() -> Credential:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 3:
            raise AuthError("helper broke")
        return Credential("u", f"pw{calls}", source="s", expires_at=clock.now + 60)

    cached = CachedFetch(fetch, clock)
    first = await asyncio.gather(*(cached.get() for _ in range(10)))
    assert {c.password for c in first} == {"pw1"} and calls == 1
    assert cached.invalidate(first[0]) and (await cached.get()).password == "pw2"
    clock.now += 61
    with pytest.raises(AuthError):
        await cached.get()
    with pytest.raises(AuthError):  # remembered, not retried at once
        await cached.get()
    assert calls == 3
    clock.now += CachedFetch.ERROR_TTL + 1
    assert (await cached.get()).password == "pw4"
    static = Credential("u", "p", source="s")
    assert not CachedFetch(fetch, clock).invalidate(static)


# -- config schema -----------------------------------------------------------------------


def test_new_auth_fields_load_and_validate(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "auth:\n"
        "  123456789012.dkr.ecr.eu-west-1.amazonaws.com:\n"
        "    aws_access_key_id: ${AK}\n    aws_secret_access_key: ${SK}\n"
        "    aws_region: eu-west-1\n    endpoint: 127.0.0.1:5000\n"
        "  europe-docker.pkg.dev: {gcp_adc: true}\n"
        "  acr.azurecr.io: {identity_token: rt}\n"
        "  gcr.io: {username: _json_key, password_file: /k.json}\n"
        "images: {a/b: c/d}\n")
    loaded = load(str(cfg), environ={"AK": "AKIA1", "SK": "sk-1"})
    ecr = loaded.auth[0]
    assert ecr.uses_ecr and ecr.aws_secret_access_key == "sk-1" and ecr.endpoint
    assert loaded.auth[1].gcp_adc and loaded.auth[2].identity_token == "rt"

    cfg.write_text("auth:\n  r.io: {aws_access_key_id: x}\nimages: {a/b: c/d}\n")
    with pytest.raises(ConfigError, match="aws_secret_access_key"):
        load(str(cfg))
    cfg.write_text("auth:\n  r.io: {identitytoken: x}\nimages: {a/b: c/d}\n")
    with pytest.raises(ConfigError, match="did you mean 'identity_token'"):
        load(str(cfg))
