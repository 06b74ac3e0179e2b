"""A Docker Registry V2 / OCI distribution registry as a :class:`~imagesync.store.Store`.

Only the distribution API lives here (paths, headers, status codes); authorisation,
retries, queues and error classification belong to :mod:`imagesync.transport`.

Two things make it ask a registry less and read faster:

* **manifests by digest are fetched once**: a small LRU of ``(repository, digest) ->
  manifest`` per registry (content-addressed and verified, so it cannot go stale), with
  concurrent fetches of one digest sharing one request: a registry with 100,000 tags
  over 100 images costs 100 manifest GETs, not 100,000;
* **big blobs are read as parallel ranges** when the registry honours ``Range``
  (:class:`_Ranges`): registries behind CDNs and object stores often cap what one
  connection gets. ``RANGES`` requests of ``RANGE`` bytes are in flight at once, each
  buffered up to its size, and the bytes are handed on strictly in order, so memory per
  blob is bounded by ``RANGES * RANGE``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .auth import repository_scope
from .errors import IntegrityError, NotFoundError, RegistryError, TransientError
from .manifest import ACCEPT, OCI_INDEX, Descriptor, Manifest, ManifestError, parse_manifest
from .store import BlobOpener
from .transport import Client, Response
from .upload import MONOLITHIC_MAX, BlobUploader

PAGE = 1000
#: Bytes handed on at a time from a blob stream: big pieces cost less Python per byte
#: (one hash handoff, one write per MiB) and bound memory per transfer.
PIECE = 1 << 20
#: Blobs with at least this much left to read are read as parallel ranges.
PARALLEL_MIN = 48 << 20
RANGE = 8 << 20       # bytes per range request
RANGES = 4            # range requests in flight per blob
RANGES_PER_REGISTRY = 8  # ... and per source registry, all blobs together
MANIFESTS = 512       # manifests by digest remembered per registry


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
    #: Does the registry honour ``Range`` on blobs? None: not asked yet.
    ranges: bool | None = None
    parallel: int = RANGES  # range requests per blob (1: never read ranges in parallel)
    _manifests: collections.OrderedDict[tuple[str, str], asyncio.Future[Manifest]] = field(
        default_factory=collections.OrderedDict, repr=False)
    _range_slots: asyncio.Semaphore | None = field(default=None, repr=False)

    def manifest_by_digest(self, path: str, digest: str, fetch: Any
                           ) -> asyncio.Future[Manifest]:
        """The manifest ``digest`` of repository ``path``: fetched once (``fetch()``),
        shared by concurrent callers, remembered (a failure is not)."""
        key = (path, digest)
        fut = self._manifests.get(key)
        if fut is not None:
            self._manifests.move_to_end(key)
            return fut
        fut = asyncio.ensure_future(fetch())
        self._manifests[key] = fut

        def done(f: asyncio.Future[Manifest]) -> None:
            if (f.cancelled() or f.exception() is not None) and self._manifests.get(key) is f:
                del self._manifests[key]
        fut.add_done_callback(done)
        while len(self._manifests) > MANIFESTS:
            self._manifests.popitem(last=False)
        return fut

    @property
    def range_slots(self) -> asyncio.Semaphore:
        if self._range_slots is None:
            self._range_slots = asyncio.Semaphore(RANGES_PER_REGISTRY)
        return self._range_slots

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
        if ref.startswith("sha256:"):
            # Content-addressed: once per digest, however many tags point at it.
            return await asyncio.shield(self.registry.manifest_by_digest(
                self.path, ref, lambda: self._get_manifest(ref)))
        return await self._get_manifest(ref)

    async def _get_manifest(self, ref: str) -> Manifest:
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
        """The blob's bytes from ``offset`` on, as they arrive (pieces of any size).
        One attempt: a broken read is resumed from its offset by the reader (upload.py)."""
        reg = self.registry
        if (reg.parallel > 1 and reg.ranges is not False
                and desc.size - offset >= PARALLEL_MIN):
            ranged = _Ranges(self, desc, offset)
            try:
                chunks = await ranged.open()
                yield chunks
            finally:
                await ranged.aclose()
            return
        headers = {"Range": f"bytes={offset}-"} if offset else None
        async with reg.client.stream(
            "GET", reg.name, self._blob_path(desc), scopes=self.scopes, headers=headers,
            ok=(200, 206),
        ) as resp:
            chunks = _pieces(resp)
            if offset and resp.status == 200:
                chunks = _skip(chunks, offset)  # the registry ignored Range
            yield chunks

    def _blob_path(self, desc: Descriptor) -> str:
        return f"/v2/{self.path}/blobs/{desc.digest}"

    def _uploader(self, scopes: list[str] | None = None) -> BlobUploader:
        return BlobUploader(self.registry.client, self.registry.name, self.path,
                            scopes or self.scopes, self.registry.chunk_size)

    async def put_blob(self, desc: Descriptor, source: BlobOpener) -> None:
        await self._uploader().upload(desc, source)

    async def referrers(self, digest: str) -> list[Descriptor] | None:
        """OCI 1.1 ``GET /v2/<name>/referrers/<digest>``; None where the registry has no
        referrers API (it answers 404 for the endpoint, as distribution 2.8 does)."""
        try:
            resp = await self._request("GET", f"/referrers/{digest}",
                                       headers={"Accept": OCI_INDEX})
        except NotFoundError:
            return None
        if resp.status != 200 or not resp.body:
            return None
        try:
            index = parse_manifest(resp.body, resp.headers.get("Content-Type"))
        except ManifestError:
            return None  # not an index: a registry answering something else there
        return list(index.children) if index.is_index else None

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


class _Range:
    """One range request's bytes, buffered as they arrive (at most ``RANGE`` bytes)."""

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end  # end exclusive
        self.chunks: collections.deque[bytes] = collections.deque()
        self.got = 0
        self.done = False
        self.error: BaseException | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class _Ranges:
    """A blob read as up to ``parallel`` range requests at once, handed on in order.

    The first range is asked in :meth:`open`: a ``206`` means the registry honours
    ``Range`` (remembered per registry) and the next ranges are asked alongside it; a
    ``200`` means it does not, and that answer is read as one stream (remembered too,
    so later blobs are read that way from the start). Range requests run on the
    caller's context (an upload's source read takes no queue slot, see
    ``transport.unslotted``), but at most ``RANGES_PER_REGISTRY`` per source registry at
    once. Any failure of any range ends the stream with that error; the reader in
    ``upload.py`` then reopens from the first byte it has not handed on.
    """

    def __init__(self, repo: RegistryRepository, desc: Descriptor, offset: int):
        self.repo = repo
        self.desc = desc
        self.offset = offset
        self.next = offset           # first byte not yet asked for
        self.window: collections.deque[_Range] = collections.deque()
        self.ctx: contextvars.Context | None = None
        self._single: Any = None     # the stream of a registry that ignores Range
        self._first: Any = None      # the first range's request, until it is released

    async def open(self) -> AsyncIterator[bytes]:
        self.ctx = contextvars.copy_context()
        reg = self.repo.registry
        first = self._take_range()
        cm = reg.client.stream("GET", reg.name, self.repo._blob_path(self.desc),
                               scopes=self.repo.scopes, headers=_range_header(first),
                               ok=(200, 206))
        resp = await cm.__aenter__()
        if resp.status == 200:  # Range ignored: read it as one stream
            reg.ranges = False
            self._single = cm
            chunks = _pieces(resp)
            return _skip(chunks, self.offset) if self.offset else chunks
        reg.ranges = True
        self._first = cm
        _check_range(resp, first, self.desc)
        first.task = self._spawn(self._pump_first(first, resp))
        self._fill()
        return self._chunks()

    def _take_range(self) -> _Range:
        r = _Range(self.next, min(self.next + RANGE, self.desc.size))
        self.next = r.end
        self.window.append(r)
        return r

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        assert self.ctx is not None
        return asyncio.get_running_loop().create_task(coro, context=self.ctx)

    def _fill(self) -> None:
        while len(self.window) < self.repo.registry.parallel and self.next < self.desc.size:
            r = self._take_range()
            r.task = self._spawn(self._fetch(r))

    async def _fetch(self, r: _Range) -> None:
        reg = self.repo.registry
        try:
            async with reg.range_slots:
                async with reg.client.stream(
                    "GET", reg.name, self.repo._blob_path(self.desc), scopes=self.repo.scopes,
                    headers=_range_header(r), ok=(206,),
                ) as resp:
                    _check_range(resp, r, self.desc)
                    await self._pump(r, resp)
        except BaseException as e:
            self._failed(r, e)
            if not isinstance(e, Exception):
                raise

    async def _pump_first(self, r: _Range, resp: aiohttp.ClientResponse) -> None:
        try:
            try:
                await self._pump(r, resp)
            finally:
                await self._release_first()
        except BaseException as e:
            self._failed(r, e)
            if not isinstance(e, Exception):
                raise

    async def _pump(self, r: _Range, resp: aiohttp.ClientResponse) -> None:
        want = r.end - r.start
        async for chunk in _pieces(resp):
            if r.got + len(chunk) > want:
                raise RegistryError(f"{self.repo.name}: range {r.start}-{r.end - 1} of "
                                    f"{self.desc.digest} is longer than asked")
            r.got += len(chunk)
            r.chunks.append(chunk)
            r.wake.set()
        if r.got != want:
            raise TransientError(f"{self.repo.name}: range {r.start}-{r.end - 1} of "
                                 f"{self.desc.digest} ended after {r.got} bytes")
        r.done = True
        r.wake.set()

    @staticmethod
    def _failed(r: _Range, e: BaseException) -> None:
        if isinstance(e, aiohttp.ClientError | asyncio.TimeoutError | OSError):
            e = TransientError(f"reading a range of a blob: {e or type(e).__name__}")
        r.error = e
        r.wake.set()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while self.window:
            r = self.window[0]
            while True:
                if r.chunks:
                    yield r.chunks.popleft()
                    continue
                if r.error is not None:
                    raise r.error
                if r.done:
                    break
                r.wake.clear()
                await r.wake.wait()
            self.window.popleft()
            self._fill()

    async def _release_first(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            await first.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._single is not None:
            single, self._single = self._single, None
            await single.__aexit__(None, None, None)
        tasks = [r.task for r in self.window if r.task is not None and not r.task.done()]
        self.window.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._release_first()  # a task cancelled before it ran did not


def _range_header(r: _Range) -> dict[str, str]:
    return {"Range": f"bytes={r.start}-{r.end - 1}"}


def _check_range(resp: aiohttp.ClientResponse, r: _Range, desc: Descriptor) -> None:
    """A 206 must be the range we asked for (else bytes would land out of order)."""
    want = f"bytes {r.start}-{r.end - 1}/"
    got = resp.headers.get("Content-Range", "")
    if not got.startswith(want):
        raise RegistryError(f"asked for bytes {r.start}-{r.end - 1} of {desc.digest}, "
                            f"got Content-Range {got!r}")


async def _pieces(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body in pieces of ``PIECE`` bytes (the last may be shorter): whatever has
    arrived is joined up to that size, so a fast stream costs one step per MiB. When the
    body breaks, the bytes that did arrive are handed on before the error (the reader
    resumes after them with ``Range``)."""
    content = resp.content
    left = resp.content_length
    if left is None:  # no length: pieces as they come
        async for chunk in content.iter_any():
            yield chunk
        return
    parts: list[bytes] = []
    have = 0
    while left > 0:
        want = min(PIECE, left)
        try:
            chunk = await content.read(want - have)
            if not chunk:
                raise aiohttp.ClientPayloadError(
                    f"the response body ended {left - have} bytes early")
        except Exception:
            if parts:
                yield b"".join(parts)
            raise
        if not parts and len(chunk) == want:
            left -= want
            yield chunk  # a whole piece at once: no copy
            continue
        parts.append(chunk)
        have += len(chunk)
        if have == want:
            piece, parts, have = b"".join(parts), [], 0
            left -= want
            yield piece


async def _skip(chunks: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:]
        n = 0
