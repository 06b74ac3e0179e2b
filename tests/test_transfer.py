"""Transfers: cross-repository mounts, chunked resumable uploads, verification."""

from __future__ import annotations

import hashlib
import re

from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_random_image
from tests.test_sync import log_mark, requests_since


def _blob_puts(reqs: list[str]) -> list[str]:
    return [r for r in reqs if r.startswith("PUT ") and "/blobs/uploads/" in r]


def test_same_registry_copy_mounts_instead_of_uploading(tmp_path, src_registry):
    api = RegistryAPI(src_registry)
    img = push_random_image(api, "dev/app", "1.2.3", (20000, 3000))
    mark = log_mark(src_registry)
    h = src_registry.host
    run = run_cli(tmp_path, {"images": {f"{h}/dev/app:1.2.3": f"{h}/prod/app"}})
    assert run.code == 0, run.stdout
    reqs = requests_since(src_registry, mark)
    assert not _blob_puts(reqs), reqs  # no byte was uploaded
    assert sum("mount=" in r for r in reqs) == len(img.blobs)
    assert api.head_manifest("prod/app", "1.2.3") == img.digest


def test_second_destination_repository_mounts_from_the_first(tmp_path, src_registry,
                                                             dst_registry):
    img = push_random_image(RegistryAPI(src_registry), "app", "v1", (50000,))
    mark = log_mark(dst_registry)
    d = dst_registry.host
    rule = {f"{src_registry.host}/app:v1": [f"{d}/one/app", f"{d}/two/app"]}
    run = run_cli(tmp_path, {"images": rule}, "--proc", "8")
    assert run.code == 0, run.stdout
    reqs = requests_since(dst_registry, mark)
    # Each blob crosses the network once; the other repository links it.
    assert len(_blob_puts(reqs)) == len(img.blobs)
    assert sum("mount=" in r for r in reqs) == len(img.blobs)
    dst = RegistryAPI(dst_registry)
    assert dst.head_manifest("one/app", "v1") == dst.head_manifest("two/app", "v1") == img.digest


def test_big_blob_goes_up_in_chunks(tmp_path, src_registry, dst_registry):
    img = push_random_image(RegistryAPI(src_registry), "big", "v1", (300_000, 100))
    mark = log_mark(dst_registry)
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/big": f"{dst_registry.host}/big"}},
                  "--chunk-size", "65536")
    assert run.code == 0, run.stdout
    patches = [r for r in requests_since(dst_registry, mark) if r.startswith("PATCH ")]
    assert len(patches) == 5  # 300,000 bytes in 64 KiB chunks; the small blobs go up whole
    dst = RegistryAPI(dst_registry)
    assert dst.head_manifest("big", "v1") == img.digest
    for b in img.blobs:
        data = dst.get_blob("big", b)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == b


def test_chunked_upload_resumes_from_the_registry_offset(tmp_path, src_registry, dst_registry):
    from tests.support.proxy import Fault, Proxy

    img = push_random_image(RegistryAPI(src_registry), "big", "v1", (300_000,))
    mark = log_mark(dst_registry)
    with Proxy(dst_registry.host) as dst_proxy:
        # The third PATCH never reaches the registry: the connection just closes.
        dst_proxy.add(Fault(method="PATCH", path=r"/blobs/uploads/", drop=True, skip=2))
        run = run_cli(tmp_path, {"images": {f"{src_registry.host}/big":
                                            f"{dst_proxy.host}/big"}},
                      "--chunk-size", "65536")
    assert run.code == 0, run.stdout
    reqs = requests_since(dst_registry, mark)
    posts = [r for r in reqs if r.startswith("POST ")]
    assert len(posts) == len(img.blobs)  # one upload per blob: resumed, not restarted
    assert any(r.startswith("GET /v2/big/blobs/uploads/") for r in reqs)  # asked the offset
    assert sum(r.startswith("PATCH ") for r in reqs) == 5  # each chunk stored once
    assert RegistryAPI(dst_registry).head_manifest("big", "v1") == img.digest


def test_broken_download_resumes_with_range(tmp_path, src_registry, dst_registry):
    from tests.support.proxy import Fault, Proxy

    api = RegistryAPI(src_registry)
    img = push_random_image(api, "big", "v1", (300_000,))
    layer = next(b for b in img.blobs if len(api.get_blob("big", b)) == 300_000)
    mark = log_mark(src_registry)
    with Proxy(src_registry.host) as src_proxy:
        src_proxy.add(Fault(method="GET", path=f"/blobs/{layer}", reset_after=150_000))
        run = run_cli(tmp_path, {"images": {f"{src_proxy.host}/big":
                                            f"{dst_registry.host}/big"}},
                      "--chunk-size", "65536")
    assert run.code == 0, run.stdout
    log = src_registry.log_file.read_text()[mark:]
    # The second GET of the blob asked for the rest only, and got 206 Partial Content.
    assert re.search(rf'"GET /v2/big/blobs/{layer} HTTP/1.1" 206 ', log), log
    assert RegistryAPI(dst_registry).head_manifest("big", "v1") == img.digest
