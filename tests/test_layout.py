"""OCI image layouts (imagesync/layout.py), with skopeo as the independent reader/writer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imagesync.errors import IntegrityError, NotFoundError, TransientError
from imagesync.layout import REF_NAME, ArchiveStore, LayoutStore
from imagesync.manifest import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    parse_manifest,
    sha256_digest,
)
from imagesync.store import BlobOpener, Repository, Store
from tests.support.images import RegistryAPI, push_index
from tests.support.registry import LocalRegistry

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _protocol_check(root: str) -> None:
    """Never called: mypy checks that the layout classes are the store.py protocols."""
    _s1: Store = LayoutStore(root)
    _r1: Repository = LayoutStore(root).repository("a")
    _s2: Store = ArchiveStore(root)
    _r2: Repository = ArchiveStore(root).repository("a.tar")


# -- building images ------------------------------------------------------------------


@dataclass
class Image:
    """A top-level manifest (image or index), its child manifests and all blobs."""

    manifest: Manifest
    children: list[Manifest] = field(default_factory=list)
    blobs: dict[str, tuple[Descriptor, bytes]] = field(default_factory=dict)


def _layer(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = os.urandom(size)
        info = tarfile.TarInfo("payload.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def _dumps(doc: dict) -> bytes:
    return json.dumps(doc, indent=2).encode()


def make_image(arch: str = "amd64", layers: tuple[int, ...] = (1000, 3000),
               docker: bool = False) -> Image:
    blobs: dict[str, tuple[Descriptor, bytes]] = {}
    config = _dumps({"architecture": arch, "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": []}, "config": {}})
    cfg = Descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, sha256_digest(config),
                     len(config))
    blobs[cfg.digest] = (cfg, config)
    layer_descs = []
    for size in layers:
        data = _layer(size)
        d = Descriptor(DOCKER_LAYER if docker else OCI_LAYER, sha256_digest(data), len(data))
        blobs[d.digest] = (d, data)
        layer_descs.append(d)
    media = DOCKER_MANIFEST if docker else OCI_MANIFEST

    def j(d: Descriptor) -> dict:
        return {"mediaType": d.media_type, "digest": d.digest, "size": d.size}

    raw = _dumps({"schemaVersion": 2, "mediaType": media, "config": j(cfg),
                  "layers": [j(d) for d in layer_descs]})
    return Image(parse_manifest(raw), [], blobs)


def make_index(arches: tuple[str, ...] = ("amd64", "arm64")) -> Image:
    images = [make_image(a) for a in arches]
    raw = _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": im.manifest.media_type, "digest": im.manifest.digest,
         "size": im.manifest.size, "platform": {"os": "linux", "architecture": a}}
        for im, a in zip(images, arches, strict=True)]})
    blobs: dict[str, tuple[Descriptor, bytes]] = {}
    for im in images:
        blobs.update(im.blobs)
    return Image(parse_manifest(raw), [im.manifest for im in images], blobs)


def source(data: bytes, chunk: int = 700) -> BlobOpener:
    @contextlib.asynccontextmanager
    async def opener(offset: int) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(offset, len(data), chunk):
                yield data[i:i + chunk]
        yield chunks()
    return opener


async def write_image(repo: Repository, tag: str | None, image: Image) -> None:
    """What the copier does: blobs, children by digest, then the top manifest."""
    await asyncio.gather(*(repo.put_blob(d, source(b)) for d, b in image.blobs.values()))
    for child in image.children:
        await repo.put_manifest(child.digest, child)
    await repo.put_manifest(tag or image.manifest.digest, image.manifest)


async def read_blob(repo: Repository, desc: Descriptor, offset: int = 0) -> bytes:
    out = bytearray()
    async with repo.open_blob(desc, offset) as chunks:
        async for c in chunks:
            out += c
    return bytes(out)


async def check_readback(repo: Repository, ref: str, digest: str) -> int:
    """Read ``ref`` and everything below it; every byte must hash to its digest.
    Returns the number of blobs checked."""
    head = await repo.head_manifest(ref)
    assert head is not None and head.digest == digest
    top = await repo.get_manifest(ref)
    assert top.digest == digest
    manifests = [top]
    if top.is_index:
        manifests = [await repo.get_manifest(c.digest) for c in top.children]
    n = 0
    for m in manifests:
        for b in m.blobs:
            assert await repo.blob_exists(b)
            data = await read_blob(repo, b)
            assert sha256_digest(data) == b.digest and len(data) == b.size
            n += 1
    return n


def skopeo_run(skopeo: str, *args: str) -> bytes:
    proc = subprocess.run([skopeo, "--insecure-policy", *args], capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def tmp_files(layout: Path) -> list[Path]:
    return [p for p in layout.rglob("*") if p.name.startswith(".imagesync-")]


# -- imagesync writes, skopeo reads ---------------------------------------------------


async def test_skopeo_reads_what_imagesync_writes(tmp_path: Path, skopeo: str) -> None:
    store = LayoutStore(tmp_path / "out")
    repo = store.repository("team/app", write=True)
    index, single, docker = make_index(), make_image("amd64"), make_image(docker=True)
    await write_image(repo, "multi", index)
    await write_image(repo, "single", single)
    await write_image(repo, "docker", docker)

    layout = tmp_path / "out/team/app"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert await repo.list_tags() == ["docker", "multi", "single"]
    # Only the tags are listed: the children went in by digest and their index took them.
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    assert [e["annotations"][REF_NAME] for e in entries] == ["multi", "single", "docker"]
    assert tmp_files(layout) == []

    for tag, im in (("multi", index), ("single", single)):
        raw = skopeo_run(skopeo, "inspect", "--raw", f"oci:{layout}:{tag}")
        assert raw == im.manifest.raw
    # Docker-typed manifests are stored byte for byte (their digest is the point), which
    # skopeo's oci: transport does not resolve by tag (it only looks at OCI entries).
    assert await check_readback(repo, "docker", docker.manifest.digest) == 3
    info = json.loads(skopeo_run(skopeo, "inspect", f"oci:{layout}:single"))
    assert info["Architecture"] == "amd64"
    assert info["Digest"] == single.manifest.digest

    other = tmp_path / "other"
    skopeo_run(skopeo, "copy", "--all", "--preserve-digests",
               f"oci:{layout}:multi", f"oci:{other}:multi")
    skopeo_run(skopeo, "copy", "--preserve-digests",
               f"oci:{layout}:single", f"oci:{other}:single")
    copied = LayoutStore(tmp_path).repository("other")
    assert await check_readback(copied, "multi", index.manifest.digest) == 6
    assert await check_readback(copied, "single", single.manifest.digest) == 3
    assert sorted(await LayoutStore(tmp_path).list_repositories()) == ["other", "out/team/app"]


async def test_layout_round_trip_keeps_digests_and_platform_subsets(tmp_path: Path) -> None:
    """layout -> layout through the Repository protocol only, as the copier does it."""
    src = LayoutStore(tmp_path).repository("src")
    index = make_index(("amd64", "arm64", "ppc64le"))
    await write_image(src, "v1", index)
    # a platform subset is a new index (new digest) holding some of the same children
    subset_raw = _dumps({**json.loads(index.manifest.raw),
                         "manifests": json.loads(index.manifest.raw)["manifests"][:1]})
    subset = parse_manifest(subset_raw)
    await src.put_manifest("v1-amd64", subset)

    dst = LayoutStore(tmp_path).repository("dst")
    for tag in await src.list_tags():
        top = await src.get_manifest(tag)
        for child in top.children:
            m = await src.get_manifest(child.digest)
            for b in m.blobs:
                if not await dst.blob_exists(b):
                    await dst.put_blob(b, functools.partial(src.open_blob, b))
            await dst.put_manifest(child.digest, m)
        await dst.put_manifest(tag, top)
    assert await dst.list_tags() == ["v1", "v1-amd64"]
    assert await check_readback(dst, "v1", index.manifest.digest) == 9
    assert await check_readback(dst, "v1-amd64", subset.digest) == 3


async def test_digest_only_put_is_listed_untagged(tmp_path: Path) -> None:
    repo = LayoutStore(tmp_path).repository("r")
    image = make_image()
    await write_image(repo, None, image)
    entries = json.loads((tmp_path / "r/index.json").read_text())["manifests"]
    assert entries == [{"mediaType": OCI_MANIFEST, "digest": image.manifest.digest,
                        "size": image.manifest.size}]
    assert await repo.list_tags() == []
    head = await repo.head_manifest(image.manifest.digest)
    assert head == image.manifest.descriptor()
    # tagging it later replaces the untagged entry; re-putting by digest adds nothing
    await repo.put_manifest("t", image.manifest)
    await repo.put_manifest(image.manifest.digest, image.manifest)
    entries = json.loads((tmp_path / "r/index.json").read_text())["manifests"]
    assert [e.get("annotations") for e in entries] == [{REF_NAME: "t"}]
    # a child put again after its index is tagged stays out of index.json
    index = make_index()
    await write_image(repo, "i", index)
    await repo.put_manifest(index.children[0].digest, index.children[0])
    entries = json.loads((tmp_path / "r/index.json").read_text())["manifests"]
    assert len(entries) == 2
    # moving a tag replaces its entry
    await repo.put_manifest("t", index.manifest)
    assert (await repo.head_manifest("t")) == index.manifest.descriptor()
    assert len(json.loads((tmp_path / "r/index.json").read_text())["manifests"]) == 2


async def test_missing_layout_and_manifest(tmp_path: Path) -> None:
    repo = LayoutStore(tmp_path).repository("nowhere/app")
    assert await repo.head_manifest("v1") is None
    assert await repo.blob_exists(make_image().manifest.blobs[0]) is False
    with pytest.raises(NotFoundError, match="directory does not exist"):
        await repo.list_tags()
    with pytest.raises(NotFoundError, match="directory does not exist"):
        await repo.get_manifest("v1")
    with pytest.raises(NotFoundError):
        async with repo.open_blob(make_image().manifest.blobs[0]):
            pass
    with pytest.raises(NotFoundError):
        await LayoutStore(tmp_path / "missing").list_repositories()
    ok = LayoutStore(tmp_path).repository("ok")
    await write_image(ok, "v1", make_image())
    with pytest.raises(NotFoundError, match="v2 not found"):
        await ok.get_manifest("v2")
    with pytest.raises(ValueError):
        LayoutStore(tmp_path).repository("../escape")


async def test_corrupt_manifest_blob_is_refused(tmp_path: Path) -> None:
    repo = LayoutStore(tmp_path).repository("r")
    image = make_image()
    await write_image(repo, "v1", image)
    blob = tmp_path / "r/blobs/sha256" / image.manifest.digest.split(":")[1]
    blob.write_bytes(image.manifest.raw.replace(b"2", b"3", 1))
    with pytest.raises(IntegrityError):
        await repo.get_manifest("v1")
    with pytest.raises(IntegrityError):
        await repo.get_manifest(image.manifest.digest)


# -- skopeo writes, imagesync reads ---------------------------------------------------


async def test_imagesync_reads_what_skopeo_copies_from_a_registry(
        tmp_path: Path, skopeo: str, src_registry: LocalRegistry, src_api: RegistryAPI,
) -> None:
    pushed = await asyncio.to_thread(push_index, src_api, "team/app", "v1", oci=True,
                                     layer_sizes=(2000, 300_000))
    layout = tmp_path / "layouts/team/app"
    layout.parent.mkdir(parents=True)
    src = f"docker://{src_registry.ref('team/app', 'v1')}"
    await asyncio.to_thread(skopeo_run, skopeo, "copy", "--all", "--preserve-digests",
                            "--src-tls-verify=false", src, f"oci:{layout}:v1")
    single = pushed.children[0]
    await asyncio.to_thread(skopeo_run, skopeo, "copy", "--preserve-digests",
                            "--src-tls-verify=false",
                            f"docker://{src_registry.ref('team/app', single.digest)}",
                            f"oci:{layout}:one")

    store = LayoutStore(tmp_path / "layouts")
    assert await store.list_repositories() == ["team/app"]
    repo = store.repository("team/app")
    assert await repo.list_tags() == ["one", "v1"]
    assert await check_readback(repo, "v1", pushed.digest) == 3 * 3
    assert await check_readback(repo, "one", single.digest) == 3
    index = await repo.get_manifest(pushed.digest)
    assert index.raw == pushed.manifest
    # resuming reads: from an offset into a layer
    children = [await repo.get_manifest(c.digest) for c in index.children]
    big = max((b for c in children for b in c.blobs), key=lambda b: b.size)
    whole = await read_blob(repo, big)
    assert await read_blob(repo, big, 123_457) == whole[123_457:]

    # and back out to a registry path via skopeo: same digest
    dst = f"docker://{src_registry.ref('copy/app', 'v1')}"
    await asyncio.to_thread(skopeo_run, skopeo, "copy", "--all", "--preserve-digests",
                            "--dest-tls-verify=false", f"oci:{layout}:v1", dst)
    assert src_api.head_manifest("copy/app", "v1") == pushed.digest


# -- atomicity, verification, concurrency ---------------------------------------------


async def test_corrupt_source_leaves_no_blob(tmp_path: Path) -> None:
    repo = LayoutStore(tmp_path).repository("r")
    data = os.urandom(3 << 20)
    desc = Descriptor(OCI_LAYER, sha256_digest(data), len(data))
    final = tmp_path / "r/blobs/sha256" / desc.digest.split(":")[1]
    bad = bytearray(data)
    bad[-1] ^= 1
    for wrong in (bytes(bad), data[:-1], data + b"x"):
        with pytest.raises(IntegrityError):
            await repo.put_blob(desc, source(wrong, chunk=1 << 16))
        assert not final.exists()
        assert tmp_files(tmp_path / "r") == []
    assert await repo.blob_exists(desc) is False

    # a source failing mid-stream (not transient) also leaves nothing behind
    @contextlib.asynccontextmanager
    async def broken(offset: int) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            yield data[: 2 << 20]
            raise ConnectionAbortedError("gone")
        yield chunks()

    with pytest.raises(ConnectionAbortedError):
        await repo.put_blob(desc, broken)
    assert not final.exists() and tmp_files(tmp_path / "r") == []

    # a transient failure resumes from the bytes already written
    offsets = []

    @contextlib.asynccontextmanager
    async def flaky(offset: int) -> AsyncIterator[AsyncIterator[bytes]]:
        offsets.append(offset)

        async def chunks() -> AsyncIterator[bytes]:
            pos = offset
            while pos < len(data):
                if not offset and pos >= (1 << 20) + 5:
                    raise TransientError("reset by peer")
                yield data[pos:pos + 5]
                pos += 5
                if pos > 50:  # the rest in large pieces
                    yield data[pos:pos + (1 << 20)]
                    pos += 1 << 20
        yield chunks()

    await repo.put_blob(desc, flaky)
    assert offsets[0] == 0 and offsets[1] > 0
    assert final.read_bytes() == data and await repo.blob_exists(desc)
    assert oct(final.stat().st_mode & 0o777) == oct(0o644)


async def test_concurrent_coroutines_lose_no_tags(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)
    images = [make_image(layers=(100,)) for _ in range(20)]

    async def one(i: int) -> None:
        repo = store.repository("shared")  # a repository object per writer, as in the copier
        await write_image(repo, f"t{i}", images[i])

    await asyncio.gather(*(one(i) for i in range(20)))
    repo = store.repository("shared")
    assert await repo.list_tags() == sorted(f"t{i}" for i in range(20))
    for i in (0, 19):
        assert (await repo.head_manifest(f"t{i}")) == images[i].manifest.descriptor()


WRITER = textwrap.dedent("""
    import asyncio, sys
    sys.path[:0] = [{root!r}]
    from imagesync.layout import LayoutStore
    from tests.test_layout import make_image, write_image

    async def main(proc):
        store = LayoutStore({dir!r})
        await asyncio.gather(*(write_image(store.repository("shared"), f"p{{proc}}-{{i}}",
                                           make_image(layers=(100,))) for i in range(10)))

    asyncio.run(main(int(sys.argv[1])))
""")


def test_concurrent_processes_lose_no_tags(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    code = WRITER.format(root=root, dir=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(p)], stderr=subprocess.PIPE)
             for p in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    tags = asyncio.run(LayoutStore(tmp_path).repository("shared").list_tags())
    assert tags == sorted(f"p{p}-{i}" for p in range(4) for i in range(10))
    assert tmp_files(tmp_path / "shared") == []


async def test_link_blob(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)
    a, b = store.repository("a"), store.repository("team/b")
    image = make_image()
    await write_image(a, "v1", image)
    layer = image.manifest.blobs[1]
    assert await b.link_blob(layer, "a") is True
    assert await b.blob_exists(layer)
    hexpart = layer.digest.split(":")[1]
    src, dst = tmp_path / "a/blobs/sha256" / hexpart, tmp_path / "team/b/blobs/sha256" / hexpart
    assert src.stat().st_ino == dst.stat().st_ino
    assert (tmp_path / "team/b/oci-layout").is_file()
    assert await b.link_blob(layer, "a") is True  # already there
    missing = make_image().manifest.blobs[1]
    assert await b.link_blob(missing, "a") is False
    assert await b.link_blob(missing, "../elsewhere") is False
    # wrong size in the descriptor: not linked
    wrong = Descriptor(layer.media_type, image.manifest.blobs[0].digest, 1)
    assert await store.repository("c").link_blob(wrong, "a") is False


# -- archives -------------------------------------------------------------------------


async def test_archive_written_by_imagesync_read_by_skopeo(tmp_path: Path, skopeo: str) -> None:
    index, single = make_index(), make_image()
    async with ArchiveStore(tmp_path) as store:
        repo = store.repository("app.tar", write=True)
        await write_image(repo, "multi", index)
        await write_image(repo, "single", single)
        assert not (tmp_path / "app.tar").exists()  # nothing final before the end
        assert await repo.head_manifest("single") == single.manifest.descriptor()
        assert await check_readback(repo, "multi", index.manifest.digest) == 6
    archive = tmp_path / "app.tar"
    assert os.listdir(tmp_path) == ["app.tar"]
    raw = skopeo_run(skopeo, "inspect", "--raw", f"oci-archive:{archive}:multi")
    assert raw == index.manifest.raw
    skopeo_run(skopeo, "copy", "--all", "--preserve-digests",
               f"oci-archive:{archive}:multi", f"oci:{tmp_path / 'dir'}:multi")
    assert await check_readback(LayoutStore(tmp_path).repository("dir"), "multi",
                                index.manifest.digest) == 6

    # adding to an existing archive keeps what it held
    extra = make_image("arm64")
    async with ArchiveStore(tmp_path) as store:
        repo = store.repository("app.tar", write=True)
        assert await repo.list_tags() == ["multi", "single"]
        await write_image(repo, "extra", extra)
    repo2 = ArchiveStore(tmp_path).repository("app.tar")
    assert await repo2.list_tags() == ["extra", "multi", "single"]
    for tag, im in (("extra", extra), ("multi", index), ("single", single)):
        await check_readback(repo2, tag, im.manifest.digest)
    assert await ArchiveStore(tmp_path).list_repositories() == ["app.tar"]


async def test_archive_written_by_skopeo_read_by_imagesync(tmp_path: Path, skopeo: str) -> None:
    index = make_index()
    await write_image(LayoutStore(tmp_path).repository("dir"), "v1", index)
    archive = tmp_path / "out.tar"
    skopeo_run(skopeo, "copy", "--all", "--preserve-digests",
               f"oci:{tmp_path / 'dir'}:v1", f"oci-archive:{archive}:v1")
    repo = ArchiveStore(tmp_path).repository("out.tar")
    assert await repo.list_tags() == ["v1"]
    assert await check_readback(repo, "v1", index.manifest.digest) == 6
    layer = index.children[0].blobs[1]
    assert await read_blob(repo, layer, 10) == index.blobs[layer.digest][1][10:]


async def test_archive_corrupt_blob_is_cut_off(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    desc = Descriptor(OCI_LAYER, sha256_digest(data), len(data))
    image = make_image()
    async with ArchiveStore(tmp_path) as store:
        repo = store.repository("x.tar", write=True)
        with pytest.raises(IntegrityError):
            await repo.put_blob(desc, source(data[:-1] + b"!"))
        assert not await repo.blob_exists(desc)
        await write_image(repo, "v1", image)
    with tarfile.open(tmp_path / "x.tar") as tf:
        names = tf.getnames()
    assert f"blobs/sha256/{desc.digest.split(':')[1]}" not in names
    assert len(names) == len(image.blobs) + 1 + 2  # blobs, manifest, index.json, oci-layout
    await check_readback(ArchiveStore(tmp_path).repository("x.tar"), "v1",
                         image.manifest.digest)
