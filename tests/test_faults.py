"""Flaky networks: a fault-injecting proxy between imagesync and real registries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_random_image
from tests.support.proxy import Fault, Proxy
from tests.test_sync import log_mark, requests_since


@pytest.fixture
def src_proxy(src_registry):
    with Proxy(src_registry.host) as proxy:
        yield proxy


@pytest.fixture
def dst_proxy(dst_registry):
    with Proxy(dst_registry.host) as proxy:
        yield proxy


def _images(api: RegistryAPI, n: int = 3, sizes=(200_000, 5000)) -> dict[str, object]:
    return {f"v{i}": push_random_image(api, "app", f"v{i}", sizes) for i in range(n)}


def _rule(src: str, dst: str) -> dict:
    return {"images": {f"{src}/app": f"{dst}/app"}}


def _assert_all_arrived(dst_registry, images) -> None:
    api = RegistryAPI(dst_registry)
    for tag, img in images.items():
        assert api.head_manifest("app", tag) == img.digest
        for b in img.blobs:
            assert "sha256:" + hashlib.sha256(api.get_blob("app", b)).hexdigest() == b


def test_resets_mid_blob_and_5xx_are_retried(tmp_path: Path, src_registry, dst_registry,
                                             src_proxy, dst_proxy):
    images = _images(RegistryAPI(src_registry))
    src_proxy.add(Fault(method="GET", path=r"/blobs/sha256:", reset_after=50_000, times=3))
    src_proxy.add(Fault(method="HEAD", path=r"/manifests/", status=502, times=2))
    src_proxy.add(Fault(method="GET", path=r"/manifests/", status=500, times=1))
    dst_proxy.add(Fault(method="HEAD", path=r"/blobs/", status=503, times=2))
    dst_proxy.add(Fault(method="PUT", path=r"/manifests/", status=500, times=1))
    dst_proxy.add(Fault(method="PUT", path=r"/blobs/uploads/", drop=True, times=1))
    run = run_cli(tmp_path, _rule(src_proxy.host, dst_proxy.host), "--retries", "4")
    assert run.code == 0, run.stdout + run.stderr
    assert set(run.statuses().values()) == {"synced"}
    # The faults really happened, and were retried past.
    assert src_proxy.count("GET", r"/blobs/sha256:") > len(images) * 2
    assert dst_proxy.count("PUT", r"/manifests/", status=500) == 1
    _assert_all_arrived(dst_registry, images)


def test_429_retry_after_is_honoured(tmp_path, src_registry, dst_registry, src_proxy):
    images = _images(RegistryAPI(src_registry), n=1)
    src_proxy.add(Fault(method="GET", path=r"/blobs/", status=429,
                        headers={"Retry-After": "1"}, times=2))
    run = run_cli(tmp_path, _rule(src_proxy.host, dst_registry.host), "-v")
    assert run.code == 0, run.stdout
    assert src_proxy.count("GET", r"/blobs/", status=429) == 2
    waits = [float(w) for w in __import__("re").findall(r"wait=([0-9.]+)", run.stderr)]
    assert len(waits) == 2 and min(waits) >= 1.0  # waited at least what the server asked
    _assert_all_arrived(dst_registry, images)


def test_stalled_response_recovers(tmp_path, src_registry, dst_registry, src_proxy):
    images = _images(RegistryAPI(src_registry), n=1)
    src_proxy.add(Fault(method="GET", path=r"/blobs/", stall=1.0, stall_after=1000))
    run = run_cli(tmp_path, _rule(src_proxy.host, dst_registry.host))
    assert run.code == 0, run.stdout
    _assert_all_arrived(dst_registry, images)


def test_exhausted_retries_fail_one_image_and_push_no_manifest(tmp_path, src_registry,
                                                               dst_registry, src_proxy):
    images = _images(RegistryAPI(src_registry))
    doomed = images["v1"]
    layer = doomed.blobs[-1]
    src_proxy.add(Fault(method="GET", path=f"/blobs/{layer}", status=503, times=None))
    run = run_cli(tmp_path, _rule(src_proxy.host, dst_registry.host), "--retries", "2")
    assert run.code == 1
    st = run.statuses()
    assert st[f"{dst_registry.host}/app:v1"] == "failed"
    assert st[f"{dst_registry.host}/app:v0"] == st[f"{dst_registry.host}/app:v2"] == "synced"
    assert "503" in run.by_destination()[f"{dst_registry.host}/app:v1"]["error"]
    assert src_proxy.count("GET", f"/blobs/{layer}") == 3  # first try + 2 retries
    api = RegistryAPI(dst_registry)
    assert api.head_manifest("app", "v1") is None  # never a manifest without its blobs
    assert "1 failed" in run.stdout and "app:v1" in run.stdout


def test_manifest_is_pushed_after_all_its_blobs(tmp_path, src_registry, dst_registry):
    images = _images(RegistryAPI(src_registry), n=4, sizes=(30_000, 20_000, 10_000))
    mark = log_mark(dst_registry)
    run = run_cli(tmp_path, _rule(src_registry.host, dst_registry.host))
    assert run.code == 0
    reqs = requests_since(dst_registry, mark)  # in the order the registry finished them
    for tag, img in images.items():
        manifest_at = reqs.index(f"PUT /v2/app/manifests/{tag}")
        for blob in img.blobs:
            hexd = blob.split(":")[1]
            done = [i for i, r in enumerate(reqs) if r.startswith("PUT ") and hexd in r]
            assert done and done[0] < manifest_at


def test_source_serving_corrupt_bytes_fails_that_image(tmp_path, src_registry, dst_registry):
    images = _images(RegistryAPI(src_registry), n=2)
    bad = images["v0"].blobs[-1]
    hexd = bad.split(":")[1]
    data = next(src_registry.storage.rglob(f"blobs/sha256/{hexd[:2]}/{hexd}/data"))
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF  # the registry serves what is on disk without checking it
    data.write_bytes(bytes(raw))
    run = run_cli(tmp_path, _rule(src_registry.host, dst_registry.host))
    assert run.code == 1
    entry = run.by_destination()[f"{dst_registry.host}/app:v0"]
    assert entry["status"] == "failed" and "blob bytes hash to" in entry["error"]
    assert run.statuses()[f"{dst_registry.host}/app:v1"] == "synced"
    api = RegistryAPI(dst_registry)
    assert api.head_manifest("app", "v0") is None
    assert not api.blob_exists("app", bad)


def test_429_holds_every_request_to_that_registry(tmp_path, src_registry, dst_registry,
                                                  src_proxy):
    _images(RegistryAPI(src_registry), n=4)
    src_proxy.add(Fault(method="GET", path=r"/blobs/", status=429,
                        headers={"Retry-After": "2"}, times=1))
    run = run_cli(tmp_path, _rule(src_proxy.host, dst_registry.host), "--proc", "8")
    assert run.code == 0, run.stdout
    seen = list(src_proxy.requests)
    refused = next(s for s in seen if s.status == 429)
    later = [s for s in seen if s.at > refused.at]
    assert later, "the run went on after the 429"
    # Not only the refused request: nothing at all went to that registry until the
    # Retry-After had passed (requests already in flight at the time excepted).
    started_after = [s.at - refused.at for s in later if s.at - refused.at > 0.05]
    assert started_after and min(started_after) >= 1.9
