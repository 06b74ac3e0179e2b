"""Seed and inspect registries over the Registry V2 HTTP API, synchronously.

Built on ``http.client`` (no asyncio), so it is safe to call from inside a running event
loop, e.g. a pytest-aiohttp test — as long as the target server is not served by that
same loop. One keep-alive connection per thread; auth: Basic, and Bearer challenges
(token fetched with Basic credentials from the challenge realm, cached per scope).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import re
import ssl
import threading
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

from .registry import LocalRegistry

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ALL_MANIFESTS = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
ACCEPT_ALL = ", ".join(ALL_MANIFESTS)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

Platform = tuple[str, ...]  # (os, architecture) or (os, architecture, variant)
DEFAULT_PLATFORMS: tuple[Platform, ...] = (
    ("linux", "amd64"), ("linux", "arm64"), ("linux", "arm", "v7"),
)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryError(RuntimeError):
    """Unexpected HTTP status; ``status`` lets tests assert 401/404 without parsing text."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:300]!r}")
        self.method, self.url, self.status, self.body = method, url, status, body


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class PushedImage:
    repo: str
    tag: str | None
    digest: str
    media_type: str
    size: int
    blobs: list[str]  # layer + config digests (all children's for an index)
    manifest: bytes = b""
    platform: Platform | None = None
    children: list[PushedImage] = field(default_factory=list)

    @property
    def reference(self) -> str:
        """``repo:tag`` or ``repo@digest`` (prefix with the registry host yourself)."""
        return f"{self.repo}:{self.tag}" if self.tag else f"{self.repo}@{self.digest}"


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


def _scope_for(method: str, path: str) -> str | None:
    """The scope distribution will demand for this request (mirrors its access records)."""
    if path.startswith("/v2/_catalog"):
        return "registry:catalog:*"
    m = re.match(r"^/v2/(.+?)/(manifests|blobs|tags)/", path)
    if not m:
        return None
    if method in ("GET", "HEAD"):
        actions = "pull"
    elif method == "DELETE":
        actions = "delete"
    else:
        actions = "pull,push"
    return f"repository:{m.group(1)}:{actions}"


def _close_all(conns: list[http.client.HTTPConnection]) -> None:
    for conn in conns:
        conn.close()


class RegistryAPI:
    """Tiny V2 client for seeding and inspecting registries in tests, demo and benchmarks.

    ``reg`` may be a :class:`LocalRegistry` (its URL, credentials and CA are used unless
    overridden) or a base URL.
    """

    def __init__(
        self,
        reg: LocalRegistry | str,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | str | None = None,
        *,
        verify: bool = True,
        timeout: float = 60.0,
    ) -> None:
        if isinstance(reg, LocalRegistry):
            self.url = reg.url
            username = username if username is not None else reg.username
            password = password if password is not None else reg.password
            ca_file = ca_file if ca_file is not None else reg.ca_file
        else:
            self.url = reg.rstrip("/")
        self.username, self.password = username, password
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self.url.startswith("https"):
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if not verify:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._local = threading.local()
        # Every connection of every thread, so close()/GC can close them without
        # ResourceWarnings (a closed http.client connection reopens on next use).
        self._conns: list[http.client.HTTPConnection] = []
        self._finalizer = weakref.finalize(self, _close_all, self._conns)
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._use_basic = False
        self.token_fetches = 0

    # -- transport ---------------------------------------------------------------------

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "conns", {}
        )
        conn = conns.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                ctx = self._ssl or ssl.create_default_context()
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            conns[(scheme, netloc)] = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (0, 1):  # a reused keep-alive connection may have been closed
            conn = self._conn(parts.scheme, parts.netloc)
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest):
                conn.close()
                if attempt:
                    raise
                continue
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                conn.close()
            return Response(resp.status, hdrs, data)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close all keep-alive connections; the client stays usable (they reopen)."""
        with self._lock:
            _close_all(self._conns)

    def __enter__(self) -> RegistryAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _basic_header(self) -> str:
        raw = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def fetch_token(self, realm: str, service: str | None, scopes: Iterable[str]) -> str:
        """GET a bearer token from ``realm`` with our Basic credentials (if any)."""
        query = [("service", service)] if service else []
        query += [("scope", s) for s in scopes]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {"Authorization": self._basic_header()} if self.username else {}
        resp = self._send("GET", url, None, headers)
        if resp.status != 200:
            raise RegistryError("GET", url, resp.status, resp.body)
        self.token_fetches += 1
        data = resp.json()
        return str(data.get("token") or data["access_token"])

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Response:
        """One request, answering a 401 challenge once; never raises on HTTP status."""
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        scope = _scope_for(method, urlsplit(url).path)
        key = scope or ""
        hdrs = dict(headers or {})
        for attempt in (0, 1):
            if auth and "Authorization" not in (headers or {}):
                with self._lock:
                    token = self._tokens.get(key)
                if token:
                    hdrs["Authorization"] = f"Bearer {token}"
                elif self._use_basic:
                    hdrs["Authorization"] = self._basic_header()
            resp = self._send(method, url, body, hdrs)
            if resp.status != 401 or not auth or attempt or "Authorization" in (headers or {}):
                return resp
            scheme, params = _parse_challenge(resp.headers.get("www-authenticate", ""))
            if scheme == "basic":
                if not self.username or self._use_basic:
                    return resp
                self._use_basic = True
            elif scheme == "bearer" and "realm" in params:
                # Ask for exactly what the registry demanded, as docker/containerd do.
                scopes = [s for s in (params.get("scope") or scope,) if s]
                token = self.fetch_token(params["realm"], params.get("service"), scopes)
                with self._lock:
                    self._tokens[key] = token
            else:
                return resp
        return resp

    def _check(self, method: str, url: str, resp: Response, *ok: int) -> Response:
        if resp.status not in ok:
            raise RegistryError(method, url, resp.status, resp.body)
        return resp

    def _call(self, method: str, path: str, *ok: int, **kw: Any) -> Response:
        return self._check(method, path, self.request(method, path, **kw), *ok)

    # -- API ---------------------------------------------------------------------------

    def ping(self) -> int:
        """Status of ``GET /v2/`` after answering any challenge (200 when creds work)."""
        return self.request("GET", "/v2/").status

    def push_blob(self, repo: str, data: bytes, *, check_exists: bool = False) -> str:
        """Monolithic upload: POST an upload session, then PUT the bytes with ``digest``."""
        digest = sha256_digest(data)
        if check_exists and self.blob_exists(repo, digest):
            return digest
        start = self._call("POST", f"/v2/{repo}/blobs/uploads/", 202,
                           headers={"Content-Length": "0"})
        location = urljoin(self.url + "/", start.headers["location"])
        location += ("&" if "?" in location else "?") + "digest=" + quote(digest)
        resp = self.request("PUT", location, body=data, headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        })
        self._check("PUT", location, resp, 201)
        got = resp.headers.get("docker-content-digest", digest)
        if got != digest:
            raise RuntimeError(f"registry stored {got}, expected {digest}")
        return digest

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repo mount; True when the registry mounted instead of opening an upload."""
        path = f"/v2/{repo}/blobs/uploads/?{urlencode({'mount': digest, 'from': from_repo})}"
        resp = self._call("POST", path, 201, 202, headers={"Content-Length": "0"})
        return resp.status == 201

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self._call("GET", f"/v2/{repo}/blobs/{digest}", 200).body

    def blob_exists(self, repo: str, digest: str) -> bool:
        return self._call("HEAD", f"/v2/{repo}/blobs/{digest}", 200, 404).status == 200

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        resp = self._call("PUT", f"/v2/{repo}/manifests/{ref}", 201, body=body,
                          headers={"Content-Type": media_type})
        digest = sha256_digest(body)
        got = resp.headers.get("docker-content-digest", digest)
        if got != digest:
            raise RuntimeError(f"registry stored manifest as {got}, expected {digest}")
        return digest

    def get_manifest(
        self, repo: str, ref: str, accept: str | Sequence[str] = ACCEPT_ALL
    ) -> tuple[bytes, str, str]:
        """(body, media type, digest); digest is computed from the body, as clients must."""
        accept_value = accept if isinstance(accept, str) else ", ".join(accept)
        resp = self._call("GET", f"/v2/{repo}/manifests/{ref}", 200,
                          headers={"Accept": accept_value})
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        return resp.body, media_type, sha256_digest(resp.body)

    def head_manifest(self, repo: str, ref: str) -> str | None:
        resp = self._call("HEAD", f"/v2/{repo}/manifests/{ref}", 200, 404,
                          headers={"Accept": ACCEPT_ALL})
        return resp.headers.get("docker-content-digest") if resp.status == 200 else None

    def delete_manifest(self, repo: str, digest: str) -> None:
        self._call("DELETE", f"/v2/{repo}/manifests/{digest}", 202)

    def _paged(self, path: str, key: str) -> list[str]:
        out: list[str] = []
        next_path: str | None = path
        while next_path:
            data = self._call("GET", next_path, 200)
            out += data.json().get(key) or []
            link = data.headers.get("link")
            m = re.match(r"<([^>]+)>", link or "")
            next_path = m.group(1) if m else None
        return out

    def tags(self, repo: str) -> list[str]:
        return self._paged(f"/v2/{repo}/tags/list?n=1000", "tags")

    def catalog(self) -> list[str]:
        return self._paged("/v2/_catalog?n=1000", "repositories")


# -- image builders --------------------------------------------------------------------


def _platform_dict(platform: Platform) -> dict[str, str]:
    out = {"os": platform[0], "architecture": platform[1]}
    if len(platform) > 2 and platform[2]:
        out["variant"] = platform[2]
    return out


def _random_bytes(rng: random.Random | None, n: int) -> bytes:
    return rng.randbytes(n) if rng is not None else os.urandom(n)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=3).encode()  # like docker: stable, human-readable


def push_random_image(
    api: RegistryAPI,
    repo: str,
    tag: str | None,
    layer_sizes: Sequence[int] = (1024, 2048),
    *,
    oci: bool = False,
    platform: Platform = ("linux", "amd64"),
    seed: int | None = None,
    base_layers: Sequence[bytes] = (),
) -> PushedImage:
    """Push random layers + config + manifest; ``tag=None`` pushes by digest only.

    ``seed`` makes the image reproducible; ``base_layers`` are shared leading layers
    (to model a common base image). Layer bytes are random, not real tar/gzip.
    """
    rng = random.Random(seed) if seed is not None else None
    layers = [*base_layers, *(_random_bytes(rng, n) for n in layer_sizes)]
    layer_digests = [api.push_blob(repo, data) for data in layers]
    config = {
        **_platform_dict(platform),
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": [f"IMAGESYNC_NONCE={_random_bytes(rng, 8).hex()}"]},
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
        "history": [{"created_by": "imagesync tests/support"} for _ in layers],
    }
    config_bytes = _dumps(config)
    config_digest = api.push_blob(repo, config_bytes)
    layer_type = OCI_LAYER if oci else DOCKER_LAYER
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
            "size": len(config_bytes),
            "digest": config_digest,
        },
        "layers": [
            {"mediaType": layer_type, "size": len(data), "digest": digest}
            for data, digest in zip(layers, layer_digests, strict=True)
        ],
    }
    body = _dumps(manifest)
    digest = api.push_manifest(repo, tag or sha256_digest(body), body, media_type)
    return PushedImage(
        repo=repo, tag=tag, digest=digest, media_type=media_type, size=len(body),
        blobs=[*layer_digests, config_digest], manifest=body, platform=tuple(platform),
    )


def push_index(
    api: RegistryAPI,
    repo: str,
    tag: str | None,
    platforms: Sequence[Platform] = DEFAULT_PLATFORMS,
    *,
    oci: bool = False,
    layer_sizes: Sequence[int] = (1024, 2048),
    seed: int | None = None,
) -> PushedImage:
    """Push one child image per platform by digest, then the list/index (by tag)."""
    children = [
        push_random_image(
            api, repo, None, layer_sizes, oci=oci, platform=p,
            seed=None if seed is None else seed + i,
        )
        for i, p in enumerate(platforms)
    ]
    media_type = OCI_INDEX if oci else DOCKER_LIST
    index = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": c.media_type,
                "size": c.size,
                "digest": c.digest,
                "platform": _platform_dict(c.platform or ("linux", "amd64")),
            }
            for c in children
        ],
    }
    body = _dumps(index)
    digest = api.push_manifest(repo, tag or sha256_digest(body), body, media_type)
    return PushedImage(
        repo=repo, tag=tag, digest=digest, media_type=media_type, size=len(body),
        blobs=[b for c in children for b in c.blobs], manifest=body, children=children,
    )


def seed_many(
    api: RegistryAPI,
    repos: Sequence[str],
    tags: Sequence[str],
    layer_sizes: Sequence[int] = (1024, 2048),
    *,
    workers: int = 8,
    oci: bool = False,
    shared_layers: Sequence[int] = (),
    seed: int | None = None,
) -> list[PushedImage]:
    """Push ``len(repos) * len(tags)`` independent images in parallel (repo-major order).

    Nothing is shared between images unless ``shared_layers`` gives sizes of common
    leading layers (a "base image" pushed into every repo).
    """
    rng = random.Random(seed) if seed is not None else None
    base = [_random_bytes(rng, n) for n in shared_layers]
    jobs = [(r, t) for r in repos for t in tags]

    def one(i: int) -> PushedImage:
        repo, tag = jobs[i]
        return push_random_image(
            api, repo, tag, layer_sizes, oci=oci, base_layers=base,
            seed=None if seed is None else seed * 1_000_003 + i,
        )

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="seed") as pool:
        return list(pool.map(one, range(len(jobs))))


# -- artifacts attached to an image: signatures, SBOMs, attestations --------------------

OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


def push_referrer(api: RegistryAPI, repo: str, subject: PushedImage, artifact_type: str,
                  payload: bytes, *, tag: str | None = None) -> PushedImage:
    """An OCI 1.1 artifact whose ``subject`` is ``subject`` (an SBOM, a signature),
    pushed by digest (or ``tag``): empty config, one layer of ``payload``."""
    empty = b"{}"
    empty_digest = api.push_blob(repo, empty)
    layer_digest = api.push_blob(repo, payload)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "size": len(empty), "digest": empty_digest},
        "layers": [{"mediaType": artifact_type, "size": len(payload),
                    "digest": layer_digest}],
        "subject": {"mediaType": subject.media_type, "size": subject.size,
                    "digest": subject.digest},
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    body = _dumps(manifest)
    digest = api.push_manifest(repo, tag or sha256_digest(body), body, OCI_MANIFEST)
    return PushedImage(repo=repo, tag=tag, digest=digest, media_type=OCI_MANIFEST,
                       size=len(body), blobs=[layer_digest, empty_digest], manifest=body,
                       platform=("", ""))


def push_referrers_tag(api: RegistryAPI, repo: str, subject: PushedImage,
                       referrers: Sequence[PushedImage], artifact_types: Sequence[str]) -> str:
    """The OCI fallback for registries without the referrers API: an index tagged
    ``sha256-<hex>`` listing the referrers of ``subject``."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX_TYPE, "manifests": [
        {"mediaType": r.media_type, "size": r.size, "digest": r.digest, "artifactType": t}
        for r, t in zip(referrers, artifact_types, strict=True)]}
    body = _dumps(index)
    return api.push_manifest(repo, subject.digest.replace(":", "-", 1), body, OCI_INDEX_TYPE)


def push_cosign_signature(api: RegistryAPI, repo: str, subject: PushedImage,
                          suffix: str = "sig") -> PushedImage:
    """What ``cosign sign`` (``.sig``) or ``cosign attest`` (``.att``) pushes: a tag
    ``sha256-<hex>.<suffix>`` holding a small OCI image of simple-signing payloads."""
    payload = json.dumps({"critical": {"image": {"docker-manifest-digest": subject.digest},
                                       "type": "cosign container image signature"},
                          "optional": None}).encode()
    layer = api.push_blob(repo, payload)
    config = _dumps({"architecture": "", "os": "", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": [layer]}})
    config_digest = api.push_blob(repo, config)
    kind = ("application/vnd.dev.cosign.simplesigning.v1+json" if suffix == "sig"
            else "application/vnd.dsse.envelope.v1+json")
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": config_digest},
        "layers": [{"mediaType": kind, "size": len(payload), "digest": layer,
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ-test"}}],
    }
    body = _dumps(manifest)
    tag = f"{subject.digest.replace(':', '-', 1)}.{suffix}"
    digest = api.push_manifest(repo, tag, body, OCI_MANIFEST)
    return PushedImage(repo=repo, tag=tag, digest=digest, media_type=OCI_MANIFEST,
                       size=len(body), blobs=[layer, config_digest], manifest=body,
                       platform=("", ""))
