"""A Docker Registry V2 / OCI distribution registry as a :class:`~imagesync.store.Store`.

Only the distribution API lives here (paths, headers, status codes); authorisation,
retries and error classification belong to :mod:`imagesync.transport`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from yarl import URL

from .auth import repository_scope
from .errors import IntegrityError, NotFoundError, RegistryError
from .manifest import ACCEPT, Descriptor, Manifest, parse_manifest, sha256_digest
from .transport import Transport

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

    def repository(self, path: str, *, push: bool = False) -> RegistryRepository:
        return RegistryRepository(self, path, push)

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
    def _scopes(self) -> list[str]:
        return [repository_scope(self.path, self.push)]

    async def _request(self, method: str, path: str, **kw):
        return await self.registry.transport.request(
            method, self.registry.name, f"/v2/{self.path}{path}", scopes=self._scopes, **kw)

    async def list_tags(self) -> list[str]:
        try:
            return await self.registry._paged(f"/v2/{self.path}/tags/list?n={PAGE}", "tags",
                                              self._scopes)
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
    async def open_blob(self, desc: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        transport = self.registry.transport
        async with transport.stream("GET", self.registry.name,
                                    f"/v2/{self.path}/blobs/{desc.digest}",
                                    scopes=self._scopes) as resp:
            yield resp.content.iter_chunked(CHUNK)

    async def _start_upload(self, params: str = "") -> tuple[int, str]:
        # Not retried on its own: it is one step of a blob copy, which is retried whole.
        async with self.registry.transport.stream(
            "POST", self.registry.name, f"/v2/{self.path}/blobs/uploads/{params}",
            scopes=self._scopes, ok=(201, 202),
        ) as resp:
            location = resp.headers.get("Location")
            status = resp.status
        if not location and status == 202:
            raise RegistryError(f"{self.name}: upload started without a Location")
        return status, location or ""

    async def put_blob(self, desc: Descriptor, chunks: AsyncIterator[bytes]) -> None:
        transport = self.registry.transport
        ep = await transport.endpoint(self.registry.name)
        _, location = await self._start_upload()
        url = URL(transport.resolve(ep.base, location), encoded=True)
        url = url.update_query(digest=desc.digest)
        async with transport.stream(
            "PUT", self.registry.name, str(url), scopes=self._scopes, data=chunks,
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(desc.size)},
            ok=(201, 204),
        ):
            pass

    async def mount_blob(self, desc: Descriptor, from_path: str) -> bool:
        status, _ = await self._start_upload(f"?mount={desc.digest}&from={from_path}")
        return status == 201


def verified(chunks: AsyncIterator[bytes], desc: Descriptor,
             where: str) -> AsyncIterator[bytes]:
    """Pass chunks through, failing before the last byte if they do not match ``desc``."""
    async def gen() -> AsyncIterator[bytes]:
        h = sha256_hasher(desc.digest)
        n = 0
        async for chunk in chunks:
            n += len(chunk)
            if n > desc.size:
                raise IntegrityError(f"{where}: blob {desc.digest} is larger than {desc.size}")
            if h:
                h.update(chunk)
            if n == desc.size and h and "sha256:" + h.hexdigest() != desc.digest:
                raise IntegrityError(f"{where}: blob bytes do not match digest {desc.digest}")
            yield chunk
        if n != desc.size:
            raise IntegrityError(f"{where}: blob {desc.digest} ended at {n} of {desc.size} bytes")
    return gen()


def sha256_hasher(digest: str) -> Any:
    return hashlib.sha256() if digest.startswith("sha256:") else None


__all__ = ["Registry", "RegistryRepository", "sha256_digest", "verified"]
