"""A Docker Registry V2 / OCI distribution registry as a :class:`~imagesync.store.Store`.

Only the distribution API lives here (paths, headers, status codes); authorisation,
retries, queues and error classification belong to :mod:`imagesync.transport`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .auth import repository_scope
from .errors import IntegrityError, NotFoundError, RegistryError
from .manifest import ACCEPT, Descriptor, Manifest, parse_manifest
from .store import BlobOpener
from .transport import Client, Response
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
    client: Client
    chunk_size: int = MONOLITHIC_MAX

    def repository(self, path: str, *, write: bool = False) -> RegistryRepository:
        return RegistryRepository(self, path, write)

    async def list_repositories(self) -> list[str]:
        return await self._paged(f"/v2/_catalog?n={PAGE}", "repositories",
                                 ["registry:catalog:*"])

    async def _paged(self, path: str, key: str, scopes: list[str]) -> list[str]:
        out: list[str] = []
        next_path: str | None = path
        while next_path:
            resp = await self.client.request("GET", self.name, next_path, scopes=scopes)
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
    write: bool = False  # ask for pull,push tokens: one token serves reads and writes

    @property
    def name(self) -> str:
        return f"{self.registry.name}/{self.path}"

    @property
    def store(self) -> str:
        return self.registry.name

    @property
    def scopes(self) -> list[str]:
        return [repository_scope(self.path, self.write)]

    async def _request(self, method: str, path: str, **kw: Any) -> Response:
        return await self.registry.client.request(
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
        # One attempt: a broken read is resumed from its offset by the reader (upload.py).
        async with self.registry.client.stream(
            "GET", self.registry.name, f"/v2/{self.path}/blobs/{desc.digest}",
            scopes=self.scopes, headers=headers, ok=(200, 206),
        ) as resp:
            chunks = resp.content.iter_chunked(CHUNK)
            if offset and resp.status == 200:
                chunks = _skip(chunks, offset)  # the registry ignored Range
            yield chunks

    def _uploader(self, scopes: list[str] | None = None) -> BlobUploader:
        return BlobUploader(self.registry.client, self.registry.name, self.path,
                            scopes or self.scopes, self.registry.chunk_size)

    async def put_blob(self, desc: Descriptor, source: BlobOpener) -> None:
        await self._uploader().upload(desc, source)

    async def link_blob(self, desc: Descriptor, from_path: str) -> bool:
        """Cross-repository mount (``POST ...?mount=&from=``)."""
        # The token must also allow pulling from the repository we mount from.
        scopes = [*self.scopes, repository_scope(from_path, False)]
        uploader = self._uploader(scopes)
        client = self.registry.client
        status, location, _ = await client.retrying(
            lambda: uploader.start_upload(f"?mount={desc.digest}&from={from_path}", scopes),
            f"mount {desc.digest[:19]} into {self.name}", self.registry.name)
        if status != 201 and location:
            # Not mounted (blob unknown there, or mounting unsupported): drop the upload
            # the registry opened instead, rather than leave it to be purged later.
            with contextlib.suppress(Exception):
                async with client.stream("DELETE", self.registry.name, location,
                                         scopes=scopes, ok=(204, 200)):
                    pass
        return status == 201


async def _skip(chunks: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:]
        n = 0
