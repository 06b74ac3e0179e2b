"""A Docker Registry V2 / OCI distribution registry as a :class:`~imagesync.store.Store`.

Only the distribution API lives here (paths, headers, status codes); authorisation,
retries and error classification belong to :mod:`imagesync.transport`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urljoin

from .auth import repository_scope
from .errors import IntegrityError, NotFoundError, RegistryError
from .manifest import ACCEPT, Descriptor, Manifest, parse_manifest
from .store import BlobOpener
from .transport import Transport
from .upload import MONOLITHIC_MAX, BlobUploader

CHUNK = 1 << 20  # bytes read from a blob stream at a time: bounds memory per transfer
PAGE = 1000


def _next_link(link: str | None) -> str | None:
    """``Link: </v2/_catalog?last=x&n=100>; rel="next"`` -> the path, if any."""
    if not link:
        return None
    for part in link.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            return part.split(";")[0].strip().strip("<>")
    return None


@dataclass
class Registry:
    """One registry host."""

    name: str  # canonical host[:port], e.g. "docker.io" or "127.0.0.1:5000"
    transport: Transport
    chunk_size: int = MONOLITHIC_MAX
    _repos: dict[tuple[str, bool], RegistryRepository] = field(default_factory=dict)

    def repository(self, path: str, *, push: bool = False) -> RegistryRepository:
        key = (path, push)
        if key not in self._repos:
            self._repos[key] = RegistryRepository(self, path, push)
        return self._repos[key]

    async def list_repositories(self) -> list[str]:
        return await self._paged(f"/v2/_catalog?n={PAGE}", "repositories",
                                 ["registry:catalog:*"])

    async def _paged(self, path: str, key: str, scopes: list[str]) -> list[str]:
        out: list[str] = []
        next_path: str | None = path
        while next_path:
            resp = await self.transport.request("GET", self.name, next_path, scopes=scopes)
            try:
                out += json.loads(resp.body).get(key) or []
            except (ValueError, AttributeError) as e:
                raise RegistryError(f"{self.name}{next_path}: answer is not JSON") from e
            next_path = _next_link(resp.headers.get("Link"))
        return out


@dataclass
class RegistryRepository:
    registry: Registry
    path: str
    push: bool = False  # ask for pull,push tokens: one token serves reads and writes

    @property
    def name(self) -> str:
        return f"{self.registry.name}/{self.path}"

    @property
    def store_name(self) -> str:
        return self.registry.name

    @property
    def scopes(self) -> list[str]:
        return [repository_scope(self.path, self.push)]

    async def _request(self, method: str, path: str, **kw):
        return await self.registry.transport.request(
            method, self.registry.name, f"/v2/{self.path}{path}", scopes=self.scopes, **kw)

    async def list_tags(self) -> list[str]:
        try:
            return await self.registry._paged(f"/v2/{self.path}/tags/list?n={PAGE}", "tags",
                                              self.scopes)
        except NotFoundError:
            raise NotFoundError(f"repository {self.name} not found") from None

    async def head_manifest(self, ref: str) -> Descriptor | None:
        try:
            resp = await self._request("HEAD", f"/manifests/{ref}", headers={"Accept": ACCEPT})
        except NotFoundError:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        media_type = resp.headers.get("Content-Type", "").split(";")[0]
        size = int(resp.headers.get("Content-Length") or 0)
        if not digest:
            # Some registries omit the digest on HEAD: fall back to the body.
            m = await self.get_manifest(ref)
            return m.descriptor()
        return Descriptor(media_type, digest, size)

    async def get_manifest(self, ref: str) -> Manifest:
        resp = await self._request("GET", f"/manifests/{ref}", headers={"Accept": ACCEPT})
        manifest = parse_manifest(resp.body, resp.headers.get("Content-Type"))
        if ref.startswith("sha256:") and manifest.digest != ref:
            raise IntegrityError(f"{self.name}@{ref}: manifest bytes hash to {manifest.digest}")
        return manifest

    async def put_manifest(self, ref: str, manifest: Manifest) -> None:
        await self._request("PUT", f"/manifests/{ref}", data=manifest.raw,
                            headers={"Content-Type": manifest.media_type}, ok=(200, 201, 202))

    async def blob_exists(self, desc: Descriptor) -> bool:
        try:
            await self._request("HEAD", f"/blobs/{desc.digest}")
        except NotFoundError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def open_blob(self, desc: Descriptor, offset: int = 0
                        ) -> AsyncIterator[AsyncIterator[bytes]]:
        headers = {"Range": f"bytes={offset}-"} if offset else None
        async with self.registry.transport.stream(
            "GET", self.registry.name, f"/v2/{self.path}/blobs/{desc.digest}",
            scopes=self.scopes, headers=headers, ok=(200, 206),
        ) as resp:
            chunks = resp.content.iter_chunked(CHUNK)
            if offset and resp.status == 200:
                chunks = _skip(chunks, offset)  # the registry ignored Range
            yield chunks

    async def start_upload(self, params: str = "",
                           scopes: list[str] | None = None) -> tuple[int, str, int]:
        """POST an upload: (status, location, minimum chunk length). Not retried on its
        own: it is one step of a blob copy, which is retried whole."""
        async with self.registry.transport.stream(
            "POST", self.registry.name, f"/v2/{self.path}/blobs/uploads/{params}",
            scopes=scopes or self.scopes, ok=(201, 202),
        ) as resp:
            location = resp.headers.get("Location")
            status = resp.status
            min_chunk = int(resp.headers.get("OCI-Chunk-Min-Length") or 0)
        if not location and status == 202:
            raise RegistryError(f"{self.name}: upload started without a Location")
        return status, self.resolve(location or ""), min_chunk

    def resolve(self, location: str) -> str:
        ep = self.registry.transport.endpoint_base(self.registry.name)
        return urljoin(ep, location)

    async def put_blob(self, desc: Descriptor, source: BlobOpener) -> None:
        await BlobUploader(self, self.registry.chunk_size).upload(desc, source)

    async def mount_blob(self, desc: Descriptor, from_path: str) -> bool:
        # The token must also allow pulling from the repository we mount from.
        scopes = [*self.scopes, repository_scope(from_path, False)]
        status, location, _ = await self.registry.transport.retrying(
            lambda: self.start_upload(f"?mount={desc.digest}&from={from_path}", scopes),
            f"mount {desc.digest[:19]} into {self.name}")
        if status != 201 and location:
            # Not mounted (blob unknown there, or mounting unsupported): drop the upload
            # the registry opened instead, rather than leave it to be purged later.
            with contextlib.suppress(Exception):
                async with self.registry.transport.stream(
                    "DELETE", self.registry.name, location, scopes=scopes, ok=(204, 200)):
                    pass
        return status == 201


async def _skip(chunks: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:]
        n = 0
