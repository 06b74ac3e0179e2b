"""Self-test of tests/support against real registries: if these fail, trust nothing else."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.certs import CertAuthority
from tests.support.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryAPI,
    RegistryError,
    push_index,
    push_random_image,
    seed_many,
    sha256_digest,
)
from tests.support.registry import (
    LocalRegistry,
    RegistryFactory,
    RegistryStartError,
    bcrypt_htpasswd_line,
    start_registry,
)
from tests.support.tokenserver import (
    TEST_USER,
    TokenIssuer,
    TokenIssuerFactory,
    parse_scope,
)


def _bearer_status(reg: LocalRegistry, path: str, token: str) -> int:
    return RegistryAPI(reg).request(
        "GET", path, headers={"Authorization": f"Bearer {token}"}
    ).status


@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
def test_plain_image_roundtrip(src_registry: LocalRegistry, oci: bool) -> None:
    api = RegistryAPI(src_registry)
    img = push_random_image(api, "team/app", "v1", (100, 2000, 30000), oci=oci, seed=7)
    body, media_type, digest = api.get_manifest("team/app", "v1")
    assert (media_type, digest) == (OCI_MANIFEST if oci else DOCKER_MANIFEST, img.digest)
    assert body == img.manifest and len(img.blobs) == 4
    assert api.head_manifest("team/app", "v1") == img.digest
    assert api.head_manifest("team/app", "nope") is None
    assert all(api.blob_exists("team/app", b) for b in img.blobs)
    assert not api.blob_exists("team/app", sha256_digest(b"absent"))
    layer = json.loads(body)["layers"][2]
    assert len(api.get_blob("team/app", layer["digest"])) == 30000
    assert api.tags("team/app") == ["v1"] and api.catalog() == ["team/app"]
    # Same seed, same bytes: reproducible fixtures for byte-for-byte comparisons.
    assert push_random_image(api, "team/app", "v2", (100, 2000, 30000), oci=oci,
                             seed=7).digest == img.digest


@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
def test_index_roundtrip(src_registry: LocalRegistry, oci: bool) -> None:
    api = RegistryAPI(src_registry)
    idx = push_index(api, "multi", "latest", oci=oci)
    body, media_type, digest = api.get_manifest("multi", "latest")
    assert (media_type, digest) == (OCI_INDEX if oci else DOCKER_LIST, idx.digest)
    entries = json.loads(body)["manifests"]
    assert [e["platform"].get("variant") for e in entries] == [None, None, "v7"]
    for entry, child in zip(entries, idx.children, strict=True):
        assert entry["digest"] == child.digest
        assert api.get_manifest("multi", child.digest)[2] == child.digest
    assert api.tags("multi") == ["latest"]  # children were pushed by digest only
    api.delete_manifest("multi", idx.digest)
    assert api.head_manifest("multi", "latest") is None


def test_seed_many_is_parallel_and_unshared(dst_registry: LocalRegistry) -> None:
    api = RegistryAPI(dst_registry)
    images = seed_many(api, ["a/x", "b/y", "c/z"], ["1", "2"], (4096,), workers=4,
                       shared_layers=(512,))
    assert [i.reference for i in images] == [
        "a/x:1", "a/x:2", "b/y:1", "b/y:2", "c/z:1", "c/z:2"]
    assert len({i.digest for i in images}) == 6
    assert len({i.blobs[0] for i in images}) == 1  # the shared base layer
    assert len({i.blobs[1] for i in images}) == 6  # everything else unique
    assert sorted(api.catalog()) == ["a/x", "b/y", "c/z"]


def test_htpasswd_over_tls(registry_factory: RegistryFactory, tmp_path: Path) -> None:
    reg = registry_factory(tls=True, htpasswd=("alice", "wonder land"))
    assert reg.url.startswith("https://127.0.0.1:") and reg.ca_file is not None
    api = RegistryAPI(reg)  # picks up username, password and ca_file
    assert api.ping() == 200
    img = push_random_image(api, "secure/app", "v1")
    assert api.get_manifest("secure/app", "v1")[2] == img.digest

    with pytest.raises(RegistryError) as anon:
        RegistryAPI(reg.url, ca_file=reg.ca_file).tags("secure/app")
    assert anon.value.status == 401
    with pytest.raises(RegistryError) as wrong:
        RegistryAPI(reg.url, "alice", "nope", ca_file=reg.ca_file).tags("secure/app")
    assert wrong.value.status == 401
    with pytest.raises(ssl.SSLCertVerificationError):  # the CA really is needed
        RegistryAPI(reg.url, "alice", "wonder land").ping()
    assert RegistryAPI(reg.url, "alice", "wonder land", verify=False).ping() == 200

    # A second registry signed by a shared CA is trusted through the same ca_file.
    ca = CertAuthority.create(tmp_path / "shared-ca")
    a, b = registry_factory(ca=ca, name="a"), registry_factory(ca=ca, name="b")
    assert a.ca_file == b.ca_file == ca.cert_file
    assert RegistryAPI(b.url, ca_file=ca.cert_file).ping() == 200


def test_bcrypt_fallback_without_htpasswd_cli(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """apache2-utils is not pulled in by docker-registry: the crypt(3) path must work too."""
    monkeypatch.setattr("tests.support.registry.shutil.which", lambda _name: None)
    line = bcrypt_htpasswd_line("bob", "pw")
    assert line.startswith("bob:$2b$05$")
    monkeypatch.undo()
    reg = start_registry(tmp_path, htpasswd=("bob", "pw"))
    with reg:
        (reg.root / "htpasswd").write_text(line + "\n")  # re-read on every request
        assert RegistryAPI(reg).ping() == 200
        assert RegistryAPI(reg.url, "bob", "bad").ping() == 401


def test_token_auth_push_and_anonymous_pull(
    token_registry: LocalRegistry, token_issuer: TokenIssuer
) -> None:
    authed = RegistryAPI(token_registry, *TEST_USER)
    img = push_random_image(authed, "tok/app", "v1")
    assert authed.token_fetches == 1  # one pull,push token covered the whole push
    # distribution orders the challenge's actions randomly (Go map): compare as sets.
    [req] = token_issuer.requests
    assert req["account"] == TEST_USER[0] and req["status"] == 200
    [scope] = req["scopes"]
    typ, name, actions = parse_scope(scope)
    assert (typ, name, sorted(actions)) == ("repository", "tok/app", ["pull", "push"])

    anon = RegistryAPI(token_registry)
    assert anon.get_manifest("tok/app", "v1")[2] == img.digest  # anonymous pull is fine
    with pytest.raises(RegistryError) as denied:
        push_random_image(anon, "tok/app", "v2")
    assert denied.value.status == 401
    assert b"UNAUTHORIZED" in denied.value.body

    with pytest.raises(RegistryError) as bad:
        RegistryAPI(token_registry, TEST_USER[0], "wrong").tags("tok/app")
    assert bad.value.status == 401 and bad.value.url.startswith(token_issuer.realm)
    with pytest.raises(RegistryError):
        anon.catalog()  # the catalog needs an account
    assert authed.catalog() == ["tok/app"]

    # Tokens for the wrong audience or issuer are refused even when properly signed.
    access = token_issuer.grant("x", ["repository:tok/app:pull"])
    path = "/v2/tok/app/tags/list"
    assert _bearer_status(token_registry, path, token_issuer.issue_token("x", access)) == 200
    forged = token_issuer.issue_token("x", access, audience="other-service")
    assert _bearer_status(token_registry, path, forged) == 401
    forged = token_issuer.issue_token("x", access, issuer="someone-else")
    assert _bearer_status(token_registry, path, forged) == 401


def test_token_expiry_and_refresh(
    registry_factory: RegistryFactory, token_issuer_factory: TokenIssuerFactory
) -> None:
    issuer = token_issuer_factory(ttl=1)
    reg = registry_factory(token=issuer)
    api = RegistryAPI(reg, *TEST_USER)
    push_random_image(api, "short/lived", "v1")
    query = urllib.parse.urlencode({"service": issuer.service,
                                    "scope": "repository:short/lived:pull"})
    req = urllib.request.Request(f"{issuer.realm}?{query}", headers={
        "Authorization": "Basic " + base64.b64encode(":".join(TEST_USER).encode()).decode()})
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = json.load(resp)
    assert body["expires_in"] == 1 and body["token"] == body["access_token"]
    assert _bearer_status(reg, "/v2/short/lived/tags/list", body["token"]) == 200
    time.sleep(2.1)
    assert _bearer_status(reg, "/v2/short/lived/tags/list", body["token"]) == 401
    before = api.token_fetches
    assert api.tags("short/lived") == ["v1"]  # cached token expired: client re-fetches
    assert api.token_fetches == before + 1


def test_token_oauth2_post(token_registry: LocalRegistry, token_issuer: TokenIssuer) -> None:
    def post(**form: str) -> dict[str, object]:
        data = urllib.parse.urlencode({"service": token_issuer.service, **form}).encode()
        with urllib.request.urlopen(token_issuer.realm, data=data, timeout=5) as resp:
            return dict(json.load(resp))

    scope = "repository:o/p:pull,push"
    first = post(grant_type="password", username=TEST_USER[0], password=TEST_USER[1],
                 scope=scope, client_id="imagesync")
    second = post(grant_type="refresh_token", refresh_token=str(first["refresh_token"]),
                  scope=scope, client_id="imagesync")
    for token in (first["access_token"], second["access_token"]):
        status = RegistryAPI(token_registry).request(
            "POST", "/v2/o/p/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
        ).status
        assert status == 202
    with pytest.raises(urllib.error.HTTPError) as bad:
        post(grant_type="password", username=TEST_USER[0], password="x", scope=scope)
    assert bad.value.code == 401
    bad.value.close()


def _skopeo_raw(skopeo: str, ref: str, *args: str) -> bytes:
    out = subprocess.run([skopeo, "inspect", "--raw", *args, f"docker://{ref}"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


def test_skopeo_sees_the_same_bytes(
    skopeo: str, src_registry: LocalRegistry, registry_factory: RegistryFactory,
    token_issuer: TokenIssuer,
) -> None:
    api = RegistryAPI(src_registry)
    img = push_random_image(api, "sk/app", "v1")
    raw = _skopeo_raw(skopeo, src_registry.ref("sk/app", "v1"), "--tls-verify=false")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == img.digest
    idx = push_index(api, "sk/multi", "v1", oci=True)
    raw = _skopeo_raw(skopeo, src_registry.ref("sk/multi", "v1"), "--tls-verify=false")
    assert sha256_digest(raw) == idx.digest

    # A Go client through our token issuer, and through TLS with the CA as --cert-dir.
    tok = registry_factory(token=token_issuer)
    img = push_random_image(RegistryAPI(tok, *TEST_USER), "sk/tok", "v1")
    raw = _skopeo_raw(skopeo, tok.ref("sk/tok", "v1"), "--tls-verify=false",
                      "--creds", ":".join(TEST_USER))
    assert sha256_digest(raw) == img.digest
    tls = registry_factory(tls=True, htpasswd=("carol", "pw"))
    assert tls.ca_file is not None
    img = push_random_image(RegistryAPI(tls), "sk/tls", "v1")
    raw = _skopeo_raw(skopeo, tls.ref("sk/tls", "v1"), "--cert-dir", str(tls.ca_file.parent),
                      "--creds", "carol:pw")
    assert sha256_digest(raw) == img.digest


def test_registry_lifecycle_and_start_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_registry(tmp_path, name="cm") as reg:
        proc = reg.process
        assert proc is not None and RegistryAPI(reg).ping() == 200
    assert proc.poll() is not None and reg.process is None
    reg.stop()  # idempotent
    with TokenIssuer(tmp_path / "t") as issuer, pytest.raises(ValueError, match="exclusive"):
        start_registry(tmp_path, htpasswd=("a", "b"), token=issuer)

    broken = tmp_path / "broken-registry"
    broken.write_text("#!/bin/sh\necho 'configuration error: boom' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("IMAGESYNC_REGISTRY_BIN", str(broken))
    with pytest.raises(RegistryStartError, match="configuration error: boom"):
        start_registry(tmp_path, name="broken")
    monkeypatch.setenv("IMAGESYNC_REGISTRY_BIN", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="make test"):
        start_registry(tmp_path)


async def test_usable_from_a_running_event_loop(
    src_registry: LocalRegistry, token_registry: LocalRegistry, token_issuer: TokenIssuer
) -> None:
    """pytest-aiohttp tests call the sync helpers; the issuer lives on its own loop."""
    import aiohttp

    img = push_random_image(RegistryAPI(src_registry), "loop/app", "v1")
    assert RegistryAPI(src_registry).head_manifest("loop/app", "v1") == img.digest
    basic = "Basic " + base64.b64encode(":".join(TEST_USER).encode()).decode()
    params = {"service": token_issuer.service, "scope": "repository:loop/app:pull,push"}
    async with aiohttp.ClientSession() as session:
        async with session.get(token_issuer.realm, params=params,
                               headers={"Authorization": basic}) as resp:
            token = (await resp.json())["token"]
        async with session.post(f"{token_registry.url}/v2/loop/app/blobs/uploads/",
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 202
