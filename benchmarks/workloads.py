"""Benchmark workloads: seed a source registry, then check a destination against it."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from tests.support.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    RegistryAPI,
    push_index,
    push_random_image,
    seed_many,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass
class Workload:
    """What was seeded: every (repository, tag) and the digest it must have."""

    name: str
    prefix: str                      # every repository is "<prefix>/<name>"
    repos: list[str]
    digests: dict[tuple[str, str], str] = field(default_factory=dict)
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size, for big layers
    bytes: int = 0                   # payload bytes of distinct blobs
    explicit: bool = False           # a subset: tools must be given the tags by name

    @property
    def images(self) -> int:
        return len(self.digests)

    def tags(self, repo: str) -> list[str]:
        return sorted(t for r, t in self.digests if r == repo)

    def subset(self, n: int) -> Workload:
        """The first ``n`` tags of each repository, to be named explicitly."""
        keep = {(r, t) for r in self.repos for t in self.tags(r)[:n]}
        return Workload(self.name, self.prefix, self.repos,
                        {k: v for k, v in self.digests.items() if k in keep},
                        self.blobs, self.bytes, explicit=True)


def seed_images(api: RegistryAPI, name: str, prefix: str, n_repos: int, n_tags: int,
                layer_sizes: tuple[int, ...], workers: int = 4) -> Workload:
    """n_repos x n_tags independent images with random layers (nothing shared)."""
    repos = [f"{prefix}/r{i:02d}" for i in range(n_repos)]
    tags = [f"v{j}" for j in range(n_tags)]
    pushed = seed_many(api, repos, tags, layer_sizes, workers=workers)
    wl = Workload(name, prefix, repos)
    for img in pushed:
        wl.digests[(img.repo, img.tag or img.digest)] = img.digest
    wl.bytes = len(pushed) * sum(layer_sizes)
    return wl


def seed_indexes(api: RegistryAPI, name: str, prefix: str, n_repos: int, n_tags: int,
                 layer_sizes: tuple[int, ...], platforms: int = 3,
                 workers: int = 4) -> Workload:
    """n_repos x n_tags multi-platform images: an index of ``platforms`` children, each
    with its own random layers."""
    from tests.support.images import DEFAULT_PLATFORMS

    repos = [f"{prefix}/r{i:02d}" for i in range(n_repos)]
    jobs = [(r, f"v{j}") for r in repos for j in range(n_tags)]

    def one(job: tuple[str, str]) -> tuple[str, str, str]:
        img = push_index(api, job[0], job[1], DEFAULT_PLATFORMS[:platforms],
                         layer_sizes=layer_sizes)
        return job[0], job[1], img.digest

    wl = Workload(name, prefix, repos)
    with ThreadPoolExecutor(workers, thread_name_prefix="seed") as pool:
        for repo, tag, digest in pool.map(one, jobs):
            wl.digests[(repo, tag)] = digest
    wl.bytes = len(jobs) * platforms * sum(layer_sizes)
    return wl


def _random_stream(size: int, hasher: hashlib._Hash, chunk: int = 4 * MiB) -> Iterator[bytes]:
    left = size
    while left:
        data = os.urandom(min(chunk, left))
        hasher.update(data)
        left -= len(data)
        yield data


def push_streamed_blob(base_url: str, repo: str, size: int) -> str:
    """Upload ``size`` random bytes without holding them: POST, one streamed PATCH, PUT."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=600)
    try:
        conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise RuntimeError(f"POST upload -> {resp.status}")
        location = urljoin(base_url + "/", resp.getheader("Location", ""))
        hasher = hashlib.sha256()
        conn.request("PATCH", location, body=_random_stream(size, hasher),
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(size)})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 202:
            raise RuntimeError(f"PATCH upload -> {resp.status}: {body[:200]!r}")
        location = urljoin(base_url + "/", resp.getheader("Location", ""))
        digest = "sha256:" + hasher.hexdigest()
        sep = "&" if "?" in location else "?"
        conn.request("PUT", f"{location}{sep}digest={digest}", body=b"",
                     headers={"Content-Length": "0"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 201:
            raise RuntimeError(f"PUT upload -> {resp.status}: {body[:200]!r}")
        return digest
    finally:
        conn.close()


def seed_big_layer(api: RegistryAPI, size: int) -> Workload:
    """One image whose single layer is ``size`` random bytes (streamed, never in memory)."""
    repo = "big/layer"
    layer = push_streamed_blob(api.url, repo, size)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    }).encode()
    config_digest = api.push_blob(repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": config_digest},
        "layers": [{"mediaType": DOCKER_LAYER, "size": size, "digest": layer}],
    }, indent=3).encode()
    digest = api.push_manifest(repo, "v1", manifest, DOCKER_MANIFEST)
    wl = Workload("big", "big", [repo], {(repo, "v1"): digest}, {layer: size}, size)
    return wl


def seed_many_tags(api: RegistryAPI, n_tags: int, n_images: int = 4,
                   workers: int = 6) -> Workload:
    """One repository, ``n_tags`` tags spread over ``n_images`` tiny images."""
    repo = "many/tags"
    images = [push_random_image(api, repo, None, (512, 1024), seed=1000 + i)
              for i in range(n_images)]
    tags = [f"t{i:05d}" for i in range(n_tags)]
    wl = Workload("many", "many", [repo])

    def put(i: int) -> None:
        img = images[i % len(images)]
        api.push_manifest(repo, tags[i], img.manifest, img.media_type)

    with ThreadPoolExecutor(workers, thread_name_prefix="tags") as pool:
        list(pool.map(put, range(n_tags)))
    for i, tag in enumerate(tags):
        wl.digests[(repo, tag)] = images[i % len(images)].digest
    wl.bytes = sum(512 + 1024 for _ in images)
    return wl


@dataclass
class FarmImage:
    """One image of a tag farm: its manifest (and children) and blobs, as bytes."""

    digest: str
    media_type: str
    manifest: bytes
    blobs: dict[str, bytes]               # every blob, children's included
    children: list[tuple[str, bytes]]     # (digest, manifest) of an index's children


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def farm_images(n: int, *, platforms: int = 0, layer: int = 512,
                seed: int = 7) -> list[FarmImage]:
    """``n`` distinct tiny images (config + one random layer); with ``platforms`` > 0
    each is an index (Docker manifest list) of that many single-platform children."""
    rng = random.Random(seed)
    arches = ["amd64", "arm64", "ppc64le", "s390x", "386", "riscv64"]

    def single(arch: str) -> tuple[str, bytes, dict[str, bytes]]:
        data = bytes(rng.getrandbits(8) for _ in range(layer))
        layer_digest = _sha(data)
        config = json.dumps({"architecture": arch, "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [layer_digest]}},
                            sort_keys=True).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config),
                       "digest": _sha(config)},
            "layers": [{"mediaType": DOCKER_LAYER, "size": len(data),
                        "digest": layer_digest}],
        }, indent=3).encode()
        return _sha(manifest), manifest, {layer_digest: data, _sha(config): config}

    out = []
    for _ in range(n):
        if not platforms:
            digest, manifest, blobs = single("amd64")
            out.append(FarmImage(digest, DOCKER_MANIFEST, manifest, blobs, []))
            continue
        children, blobs, entries = [], {}, []
        for a in arches[:platforms]:
            d, m, b = single(a)
            children.append((d, m))
            blobs.update(b)
            entries.append({"mediaType": DOCKER_MANIFEST, "size": len(m), "digest": d,
                            "platform": {"os": "linux", "architecture": a}})
        index = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST,
                            "manifests": entries}, indent=3).encode()
        out.append(FarmImage(_sha(index), DOCKER_LIST, index, blobs, children))
    return out


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_tag_farm(storage: Path, repos: list[str], n_tags: int,
                   images: list[FarmImage]) -> dict[tuple[str, str], str]:
    """Write ``repos`` x ``n_tags`` tags straight into docker-registry's filesystem
    storage (``LocalRegistry.storage``), tag ``i`` of every repository pointing at image
    ``i % len(images)``: no HTTP, ~20 s per 100,000 tags on tmpfs. Returns (repo, tag) ->
    digest. The registry may be running: it reads its storage on every request."""
    v2 = storage / "docker" / "registry" / "v2"
    for img in images:  # blobs: manifests are blobs too
        for digest, data in [(img.digest, img.manifest), *img.children,
                             *img.blobs.items()]:
            hexd = digest.split(":", 1)[1]
            blob = v2 / "blobs" / "sha256" / hexd[:2] / hexd / "data"
            if not blob.exists():
                _write(blob, data)
    digests: dict[tuple[str, str], str] = {}
    for repo in repos:
        root = v2 / "repositories" / repo
        for img in images:
            for digest in [img.digest, *(d for d, _ in img.children)]:
                _write(root / "_manifests" / "revisions" / "sha256" / digest[7:] / "link",
                       digest.encode())
            for digest in img.blobs:
                _write(root / "_layers" / "sha256" / digest[7:] / "link", digest.encode())
        for i in range(n_tags):
            tag = f"t{i:05d}"
            digest = images[i % len(images)].digest
            tag_dir = root / "_manifests" / "tags" / tag
            _write(tag_dir / "current" / "link", digest.encode())
            _write(tag_dir / "index" / "sha256" / digest[7:] / "link", digest.encode())
            digests[(repo, tag)] = digest
    return digests


def seed_tag_farm(storage: Path, prefix: str, n_repos: int, n_tags: int,
                  n_images: int, *, platforms: int = 0,
                  mirror: Path | None = None, mirror_prefix: str = "") -> Workload:
    """``n_repos`` repositories ``<prefix>/rNNN`` of ``n_tags`` tags over ``n_images``
    distinct images, written on disk. ``mirror``: the same again in another registry's
    storage under ``<mirror_prefix>/<repo>`` (a destination already in sync: no-op runs)."""
    images = farm_images(n_images, platforms=platforms)
    repos = [f"{prefix}/r{i:03d}" for i in range(n_repos)]
    wl = Workload("farm", prefix, repos)
    wl.digests = write_tag_farm(storage, repos, n_tags, images)
    if mirror is not None:
        write_tag_farm(mirror, [f"{mirror_prefix}/{r}".strip("/") for r in repos], n_tags,
                       images)
    wl.bytes = sum(len(b) for img in images for b in img.blobs.values())
    return wl


def verify(dst: RegistryAPI, wl: Workload, *, sample: int | None = None,
           seed: int = 0) -> list[str]:
    """Problems found in ``dst`` (empty: it holds the workload): every repository's tag
    list, the digest of ``sample`` tags per repository (all when None, by HEAD) and the
    big blobs' presence."""
    problems: list[str] = []
    rng = random.Random(seed)
    for repo in wl.repos:
        want = wl.tags(repo)
        try:
            have = sorted(dst.tags(repo))
        except Exception as e:
            problems.append(f"{repo}: cannot list tags ({e})")
            continue
        if have != want:
            missing = sorted(set(want) - set(have))
            extra = sorted(set(have) - set(want))
            problems.append(f"{repo}: {len(missing)} tags missing {missing[:3]}, "
                            f"{len(extra)} unexpected {extra[:3]}")
        check = want if sample is None or sample >= len(want) else rng.sample(want, sample)
        for tag in check:
            got = dst.head_manifest(repo, tag)
            if got != wl.digests[(repo, tag)]:
                problems.append(f"{repo}:{tag}: digest {got} != {wl.digests[(repo, tag)]}")
                if len(problems) > 10:
                    return problems
    for digest, size in wl.blobs.items():
        for repo in wl.repos:
            resp = dst.request("HEAD", f"/v2/{repo}/blobs/{digest}")
            length = int(resp.headers.get("content-length", -1))
            if resp.status != 200 or length != size:
                problems.append(f"{repo}@{digest[:19]}: HEAD {resp.status}, {length} bytes")
    return problems

