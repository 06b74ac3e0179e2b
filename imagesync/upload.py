"""Blob uploads to a registry: monolithic for small blobs, chunked and resumable for big.

Each step is retried on its own: the ``POST`` that opens an upload, then the body.
Small blobs go up as one streamed ``PUT ?digest=``; a broken ``PUT`` opens a new upload
and sends again. Blobs above the threshold go up as ``PATCH`` chunks with
``Content-Range``: after a broken connection the upload's offset is asked of the
registry (``GET`` on the upload location) and the copy resumes there, reading the source
with ``Range`` from the same offset; every chunk that arrives restores the retry budget.
The digest of every byte sent is checked before the final ``PUT``, so bytes that do not
match the descriptor are never committed.

Bytes are handed on as they arrive, as ``memoryview`` slices (never copied here), and
hashed in a worker thread while the event loop moves the next ones (hashlib releases the
GIL on big buffers): SHA-256 and the network use both cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin

from yarl import URL

from .errors import IntegrityError, RegistryError, TransientError
from .manifest import Descriptor
from .retry import RetryPolicy, is_transient
from .store import BlobOpener
from .transport import Client, unslotted

# Blobs up to this size go up in one PUT; bigger ones in PATCHes of this size (raised to
# the registry's OCI-Chunk-Min-Length). Big enough that PATCH round trips don't matter,
# small enough that a break costs little.
MONOLITHIC_MAX = 64 << 20
T = TypeVar("T")
PATCH_SIZE = MONOLITHIC_MAX


def _hasher(digest: str) -> Any:
    algo = digest.split(":", 1)[0]
    if algo not in ("sha256", "sha512"):
        raise IntegrityError(f"unsupported digest algorithm {algo!r}")
    return hashlib.new(algo)


#: Pieces at least this big are hashed in a worker thread (smaller ones: the handoff
#: would cost more than the hashing).
THREAD_MIN = 64 << 10
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _tune_allocator() -> None:
    """Blob pieces (up to a few MiB) come from glibc's heap and are reused, instead of
    fresh ``mmap``s that fault in zeroed pages and are unmapped again: ~0.3 s of kernel
    time per GB moved. Process-wide, once; only where glibc is."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 32 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _hash_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _tune_allocator()
        _pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(4, (os.cpu_count() or 2) - 1)),
            thread_name_prefix="imagesync-hash")
    return _pool


class Digest:
    """A hash fed in order, big pieces in a worker thread, one piece at a time: piece k
    is hashed while the caller moves piece k (and reads k+1). :meth:`flush` before
    reading the result or copying the hash."""

    def __init__(self, h: Any):
        self.h = h
        self.count = 0
        self._last: asyncio.Future[None] | None = None

    async def update(self, piece: Any) -> None:
        if self._last is not None:
            last, self._last = self._last, None
            await last
        self.count += len(piece)
        if len(piece) >= THREAD_MIN:
            self._last = asyncio.get_running_loop().run_in_executor(
                _hash_pool(), self.h.update, piece)
        else:
            self.h.update(piece)

    async def flush(self) -> Any:
        if self._last is not None:
            last, self._last = self._last, None
            await last
        return self.h


def _check(h: Any, desc: Descriptor, where: str) -> None:
    got = f"{desc.digest.split(':', 1)[0]}:{h.hexdigest()}"
    if got != desc.digest:
        raise IntegrityError(f"{where}: blob bytes hash to {got}, not {desc.digest}")


class _Reader:
    """Reads a source blob from an offset in exact byte counts, carrying remainders over.

    A source connection that breaks mid-blob is reopened with ``Range`` at the first byte
    not yet read, so a download resumes instead of starting over, and the upload it
    feeds never notices.
    """

    def __init__(self, source: BlobOpener, offset: int, policy: RetryPolicy, log: Any,
                 what: str):
        self._source = source
        self._offset = offset  # bytes read from the source so far (pending ones included)
        self._policy = policy
        self._log = log
        self._what = what
        self._opened: Any = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._pending = memoryview(b"")
        # Why the body stopped, when it was the source's fault: the HTTP client reports
        # an aborted request body as a connection error, which would be retried.
        self.failure: BaseException | None = None

    async def _next(self) -> bytes:
        attempt = 0
        while True:
            try:
                if self._chunks is None:
                    self._opened = self._source(self._offset)
                    # The upload's slot covers this read (see transport.unslotted).
                    token = unslotted.set(True)
                    try:
                        self._chunks = await self._opened.__aenter__()
                    finally:
                        unslotted.reset(token)
                chunk = await self._chunks.__anext__()
                self._offset += len(chunk)
                return chunk
            except StopAsyncIteration:
                raise
            except Exception as e:
                await self.aclose()
                if not is_transient(e):
                    self.failure = e
                    raise
                if attempt >= self._policy.retries:
                    # Retried here already: the upload around it must not retry it again.
                    self.failure = RegistryError(f"reading {self._what}: {e} (after "
                                                 f"{attempt} retries)")
                    raise self.failure from None
                attempt += 1
                wait = self._policy.delay(attempt, e)
                self._log.warning("retrying", what=f"read {self._what} from byte "
                                  f"{self._offset}", attempt=attempt, error=str(e) or
                                  type(e).__name__, wait=round(wait, 2))
                await asyncio.sleep(wait)

    async def take(self, n: int, h: Digest) -> AsyncIterator[memoryview]:
        """Yield exactly ``n`` bytes (hashing them into ``h``: flush it once the bytes
        are through), or fail if the stream ends. The pieces are views, not copies."""
        while n > 0:
            if not self._pending:
                try:
                    self._pending = memoryview(await self._next())
                except StopAsyncIteration:
                    raise TransientError("source blob stream ended early") from None
            piece, self._pending = self._pending[:n], self._pending[n:]
            n -= len(piece)
            await h.update(piece)
            yield piece

    async def rest(self) -> int:
        """Count bytes left after the expected end (a source serving too much)."""
        extra = len(self._pending)
        while True:
            try:
                extra += len(await self._next())
            except StopAsyncIteration:
                return extra

    async def sending(self, request: Awaitable[T]) -> T:
        """Await a request whose body this reader feeds; if the body failed because of
        the source, raise that failure rather than the client's connection error."""
        try:
            return await request
        except Exception:
            if self.failure is not None:
                raise self.failure from None
            raise

    async def aclose(self) -> None:
        opened, self._opened, self._chunks = self._opened, None, None
        if opened is not None:
            with contextlib.suppress(Exception):
                await opened.__aexit__(None, None, None)


@dataclass
class _State:
    """A chunked upload in progress: what the registry has, and the hash up to there."""

    location: str | None = None
    offset: int = 0          # bytes the registry has confirmed, all hashed into hasher
    registry_has: int = 0    # what it reported after a break (may be mid-PATCH)
    hasher: Any = None
    chunk: int = PATCH_SIZE
    broken: bool = False     # the last attempt failed: ask the registry where it is


class BlobUploader:
    """Uploads blobs into one repository of one registry."""

    def __init__(self, client: Client, registry: str, path: str, scopes: Sequence[str],
                 chunk_size: int = MONOLITHIC_MAX):
        self.client = client
        self.registry = registry
        self.path = path
        self.scopes = list(scopes)
        self.name = f"{registry}/{path}"
        self.monolithic_max = chunk_size
        self.patch_size = chunk_size

    async def start_upload(self, params: str = "",
                           scopes: Sequence[str] | None = None) -> tuple[int, str, int]:
        """One ``POST`` opening an upload (or a mount): (status, location, minimum chunk
        length). One attempt: the caller's step is what is retried."""
        async with self.client.stream(
            "POST", self.registry, f"/v2/{self.path}/blobs/uploads/{params}",
            scopes=scopes or self.scopes, ok=(201, 202),
        ) as resp:
            location = resp.headers.get("Location")
            status = resp.status
            min_chunk = int(resp.headers.get("OCI-Chunk-Min-Length") or 0)
        if not location and status == 202:
            raise RegistryError(f"{self.name}: upload started without a Location")
        return status, self._resolve(location or ""), min_chunk

    async def upload(self, desc: Descriptor, source: BlobOpener) -> None:
        what = f"upload {desc.digest[:19]} to {self.name}"
        state = _State()
        _, state.location, min_chunk = await self.client.retrying(
            self.start_upload, f"start {what}", self.registry)
        if desc.size <= self.monolithic_max:
            await self.client.retrying(lambda: self._monolithic(desc, source, state), what,
                                       self.registry)
            return
        state.hasher, state.chunk = _hasher(desc.digest), max(self.patch_size, min_chunk)
        await self.client.retrying(lambda: self._chunked(desc, source, state), what,
                                   self.registry, progress=lambda: state.offset)

    def _reader(self, source: BlobOpener, offset: int, desc: Descriptor) -> _Reader:
        return _Reader(source, offset, self.client.policy, self.client.log,
                       f"blob {desc.digest[:19]}")

    async def _monolithic(self, desc: Descriptor, source: BlobOpener, state: _State) -> None:
        if state.location is None:  # the last PUT broke: its upload is gone with it
            _, state.location, _ = await self.start_upload()
        location, state.location = state.location, None
        h = Digest(_hasher(desc.digest))
        reader = self._reader(source, 0, desc)
        try:

            async def body() -> AsyncIterator[memoryview]:
                async for piece in reader.take(desc.size, h):
                    yield piece
                # Check before the request completes: a mismatch aborts the PUT.
                try:
                    _check(await h.flush(), desc, self.name)
                    if await reader.rest():
                        raise IntegrityError(f"{self.name}: blob {desc.digest} is "
                                             f"larger than its descriptor's {desc.size} bytes")
                except IntegrityError as e:
                    reader.failure = e
                    raise

            await reader.sending(self._send("PUT", self._with_digest(location, desc), body(),
                                            desc.size, ok=(201, 204)))
        finally:
            await reader.aclose()

    async def _chunked(self, desc: Descriptor, source: BlobOpener, state: _State) -> None:
        if state.broken:
            await self._resume(state)
        if state.location is None:
            _, state.location, min_chunk = await self.start_upload()
            state.offset, state.hasher = 0, _hasher(desc.digest)
            state.registry_has = 0
            state.chunk = max(self.patch_size, min_chunk)
        state.broken = True  # until this attempt ends well
        reader = self._reader(source, state.offset, desc)
        try:
            if state.registry_has > state.offset:
                # The registry kept part of the broken PATCH: hash those bytes without
                # sending them again, then continue from where it is.
                skip = Digest(state.hasher.copy())
                async for _ in reader.take(state.registry_has - state.offset, skip):
                    pass
                state.hasher = await skip.flush()
                state.offset = state.registry_has
            while state.offset < desc.size:
                n = min(state.chunk, desc.size - state.offset)
                h = Digest(state.hasher.copy())
                resp_headers = await reader.sending(self._send(
                    "PATCH", state.location, reader.take(n, h), n, ok=(202, 204),
                    extra={"Content-Range": f"{state.offset}-{state.offset + n - 1}"}))
                hashed = await h.flush()
                if h.count != n:  # the registry took the PATCH before its last bytes?
                    raise TransientError(f"{self.name}: PATCH answered after {h.count} "
                                         f"of {n} bytes")
                state.location = self._resolve(resp_headers.get("Location") or state.location)
                state.offset += n
                state.hasher = hashed
            _check(state.hasher, desc, self.name)
        finally:
            await reader.aclose()
        await self._send("PUT", self._with_digest(state.location, desc), b"", 0,
                         ok=(201, 204))
        state.broken = False

    async def _resume(self, state: _State) -> None:
        """Ask the registry how much of the upload it has; continue from there."""
        assert state.location is not None
        try:
            async with self.client.stream("GET", self.registry, state.location,
                                          scopes=self.scopes, ok=(204, 200)) as resp:
                rng = resp.headers.get("Range", "")
                location = resp.headers.get("Location")
        except RegistryError:
            state.location = None  # the registry forgot the upload: start again
            return
        have = int(rng.rsplit("-", 1)[1]) + 1 if "-" in rng else 0
        if location:
            state.location = self._resolve(location)
        if have < state.offset:
            state.location = None  # it lost confirmed bytes: only a fresh upload is safe
        state.registry_has = have

    async def _send(self, method: str, url: str, data: Any, length: int, *,
                    ok: tuple[int, ...], extra: dict[str, str] | None = None) -> Any:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                   **(extra or {})}
        async with self.client.stream(method, self.registry, url, scopes=self.scopes,
                                      data=data, headers=headers, ok=ok) as resp:
            return resp.headers

    def _resolve(self, location: str) -> str:
        return urljoin(self.client.endpoint_base(self.registry), location)

    def _with_digest(self, location: str, desc: Descriptor) -> str:
        return str(URL(location, encoded=True).update_query(digest=desc.digest))
