"""Issue 13's data path and request economy, piece by piece:

* parallel range reads of a big blob: bytes in order, a registry that ignores ``Range``,
  a range broken mid-way (the reader resumes), memory bounded by the window;
* threaded, pipelined hashing (:class:`imagesync.upload.Digest`);
* a manifest fetched once per digest however many tags point at it; an index's children
  asked about once per destination repository.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

import aiohttp
import pytest
import structlog
from aiohttp import web

from imagesync import registry as registry_mod
from imagesync.manifest import Descriptor
from imagesync.registry import Registry
from imagesync.retry import RetryPolicy
from imagesync.transport import Client
from imagesync.upload import Digest
from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_index, push_random_image
from tests.support.proxy import Fault, Proxy
from tests.test_sync import log_mark, requests_since


def _client() -> Client:
    from imagesync.session import default_keychain

    return Client(default_keychain(), RetryPolicy(initial=0.01), log=structlog.get_logger())


async def _read(reg_name: str, repo: str, desc: Descriptor, offset: int = 0,
                client: Client | None = None) -> tuple[bytes, Registry]:
    async with client or _client() as c:
        reg = Registry(reg_name, c)
        async with reg.repository(repo).open_blob(desc, offset) as chunks:
            data = b"".join([bytes(x) async for x in chunks])
        return data, reg


@pytest.fixture
def small_ranges(monkeypatch):
    monkeypatch.setattr(registry_mod, "RANGE", 64 * 1024)
    monkeypatch.setattr(registry_mod, "PARALLEL_MIN", 128 * 1024)


def _push_blob(api: RegistryAPI, repo: str, size: int) -> tuple[bytes, Descriptor]:
    data = random.Random(size).randbytes(size)
    digest = api.push_blob(repo, data)
    return data, Descriptor("application/octet-stream", digest, len(data))


def test_a_big_blob_is_read_as_ranges_in_order(src_registry, small_ranges):
    api = RegistryAPI(src_registry)
    data, desc = _push_blob(api, "r", 1_000_003)
    with Proxy(src_registry.host) as proxy:
        got, reg = asyncio.run(_read(proxy.host, "r", desc))
        assert got == data and reg.ranges is True
        gets = proxy.count("GET", r"/blobs/sha256:")
        assert gets == -(-len(data) // (64 * 1024))  # one request per 64 KiB range
        # From an offset (a resumed read): the rest, from there.
        got, _ = asyncio.run(_read(proxy.host, "r", desc, offset=300_001))
        assert got == data[300_001:]


def test_a_broken_range_fails_the_stream_and_a_reader_resumes(src_registry, dst_registry,
                                                             tmp_path, small_ranges):
    api = RegistryAPI(src_registry)
    img = push_random_image(api, "big", "v1", (900_000,))
    with Proxy(src_registry.host) as proxy:
        # The third range request is cut after 10,000 bytes.
        proxy.add(Fault(method="GET", path=r"/blobs/sha256:", reset_after=10_000, skip=2))
        run = run_cli(tmp_path, {"images": {f"{proxy.host}/big": f"{dst_registry.host}/big"}},
                      "--retries", "2")
        assert run.code == 0, run.stdout + run.stderr
    dst = RegistryAPI(dst_registry)
    assert dst.head_manifest("big", "v1") == img.digest
    for b in img.blobs:
        assert "sha256:" + hashlib.sha256(dst.get_blob("big", b)).hexdigest() == b


def test_a_registry_that_ignores_range_is_read_as_one_stream(small_ranges):
    data = os.urandom(700_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    seen: list[str | None] = []

    async def blob(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Range"))
        return web.Response(body=data, content_type="application/octet-stream")

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    async def main() -> tuple[bytes, bytes, Registry]:
        app = web.Application()
        app.router.add_get("/v2/", ping)
        app.router.add_get(f"/v2/r/blobs/{digest}", blob)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            desc = Descriptor("application/octet-stream", digest, len(data))
            async with _client() as c:
                reg = Registry(f"127.0.0.1:{port}", c)
                repo = reg.repository("r")
                out = []
                for offset in (0, 123_456):
                    async with repo.open_blob(desc, offset) as chunks:
                        out.append(b"".join([bytes(x) async for x in chunks]))
                return out[0], out[1], reg
        finally:
            await runner.cleanup()

    whole, rest, reg = asyncio.run(main())
    assert whole == data and rest == data[123_456:]
    assert reg.ranges is False
    # One range asked, answered whole: then no more parallel ranges (an open-ended
    # Range for the resumed read is all that is asked).
    assert seen == ["bytes=0-65535", "bytes=123456-"]


def test_ranges_in_flight_are_bounded(src_registry, small_ranges):
    """The consumer stalls: at most RANGES ranges are asked for, so memory is bounded."""
    api = RegistryAPI(src_registry)
    data, desc = _push_blob(api, "r", 2_000_000)

    async def main() -> tuple[int, bytes]:
        async with _client() as c:
            reg = Registry(src_registry.host, c)
            async with reg.repository("r").open_blob(desc) as chunks:
                first = bytes(await chunks.__anext__())
                await asyncio.sleep(0.5)  # let every range in flight arrive
                asked = src_registry.log_file.read_text().count("GET /v2/r/blobs/")
                assert asked <= registry_mod.RANGES  # not the whole blob at once
                rest = b"".join([bytes(x) async for x in chunks])
            return reg.parallel, first + rest

    parallel, got = asyncio.run(main())
    assert got == data
    assert parallel == registry_mod.RANGES
    mark_text = src_registry.log_file.read_text()
    assert mark_text.count("GET /v2/r/blobs/") == -(-len(data) // (64 * 1024))


def test_pipelined_thread_hashing_matches_hashlib():
    rng = random.Random(3)
    pieces = [rng.randbytes(rng.choice([10, 5000, 70_000, 300_000, 1 << 20]))
              for _ in range(60)]

    async def main() -> str:
        d = Digest(hashlib.sha256())
        for p in pieces:
            await d.update(memoryview(p))
        h = await d.flush()
        assert d.count == sum(map(len, pieces))
        return h.hexdigest()

    assert asyncio.run(main()) == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_many_tags_of_few_images_fetch_each_manifest_once(tmp_path, src_registry,
                                                          dst_registry):
    api = RegistryAPI(src_registry)
    images = [push_random_image(api, "app", f"base{i}", (300,)) for i in range(2)]
    for t in range(30):
        img = images[t % 2]
        api.push_manifest("app", f"t{t}", img.manifest, img.media_type)
    mark = log_mark(src_registry)
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/app": f"{dst_registry.host}/app"}},
                  "--dry-run")
    assert run.code == 0, run.stdout + run.stderr
    reqs = requests_since(src_registry, mark)
    gets = [r for r in reqs if r.startswith("GET /v2/app/manifests/")]
    assert len(gets) == 2, gets  # one per digest, not one per tag
    # A real run: each blob crosses once, each manifest is fetched once.
    mark = log_mark(src_registry)
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/app": f"{dst_registry.host}/app"}})
    assert run.code == 0, run.stdout + run.stderr
    reqs = requests_since(src_registry, mark)
    assert len([r for r in reqs if r.startswith("GET /v2/app/manifests/")]) == 2
    assert len([r for r in reqs if r.startswith("GET /v2/app/blobs/")]) == 4
    dst = RegistryAPI(dst_registry)
    assert dst.head_manifest("app", "t7") == images[1].digest


def test_children_of_a_shared_index_are_asked_about_once(tmp_path, src_registry,
                                                         dst_registry):
    api = RegistryAPI(src_registry)
    index = push_index(api, "multi", "v0")
    for t in range(1, 12):
        api.push_manifest("multi", f"v{t}", index.manifest, index.media_type)
    mark = log_mark(dst_registry)
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/multi":
                                        f"{dst_registry.host}/multi"}})
    assert run.code == 0, run.stdout + run.stderr
    reqs = requests_since(dst_registry, mark)
    children = {c.digest for c in index.children}
    child_heads = [r for r in reqs if r.startswith("HEAD /v2/multi/manifests/sha256:")
                   and r.rsplit("/", 1)[1] in children]
    assert len(child_heads) == len(children), child_heads
    child_puts = [r for r in reqs if r.startswith("PUT /v2/multi/manifests/sha256:")]
    assert len(child_puts) == len(children)
    dst = RegistryAPI(dst_registry)
    for t in range(12):
        assert dst.head_manifest("multi", f"v{t}") == index.digest


def test_short_body_is_a_payload_error():
    """``_pieces`` turns a body that ends before its Content-Length into a retryable
    payload error, after handing on what did arrive."""
    async def main() -> tuple[list[bytes], BaseException | None]:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Length": "3000000"})
            await resp.prepare(request)
            await resp.write(b"x" * 1_500_000)
            request.transport.close()  # type: ignore[union-attr]
            return resp

        app = web.Application()
        app.router.add_get("/b", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        got: list[bytes] = []
        err: BaseException | None = None
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/b") as r:
                try:
                    async for piece in registry_mod._pieces(r):
                        got.append(piece)
                except aiohttp.ClientPayloadError as e:
                    err = e
        finally:
            await runner.cleanup()
        return got, err

    got, err = asyncio.run(main())
    assert isinstance(err, aiohttp.ClientPayloadError)
    assert sum(map(len, got)) <= 1_500_000 and got[0] == b"x" * len(got[0])
