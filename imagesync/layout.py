"""OCI image layouts as stores: ``oci:<root>`` (directories) and ``oci-archive:<root>`` (tars).

**Directories.** ``LayoutStore(root)`` holds one OCI image layout per repository:
``repository("team/app")`` is the layout directory ``<root>/team/app`` (``oci-layout``,
``index.json``, ``blobs/<alg>/<hex>``), so a whole-namespace copy gives one layout per
repository under the root. Tags are ``index.json`` entries annotated with
``org.opencontainers.image.ref.name``, as skopeo writes and reads them.

Writes are
- *verified*: a blob is hashed (and its size counted) while it is written; bytes that do not
  match their descriptor raise IntegrityError;
- *atomic*: bytes go to a temporary file in the blob's own directory, renamed into place only
  once verified, so no partial or wrong blob ever sits under its final name;
- *safe with concurrent writers*: every ``index.json`` change is a read-modify-write under an
  exclusive ``flock`` on the layout's ``oci-layout`` file (taken in a worker thread), writing a
  temporary file renamed over ``index.json``; coroutines, threads and processes may write one
  layout at once without losing entries, and readers never see a half-written index.

``put_manifest(digest, m)`` (by digest only) stores the blob and, unless ``index.json``
already lists that digest or an index listed there has it as a child, adds an *untagged*
entry, so a digest-only image stays reachable (garbage collectors and other tools only see
what ``index.json`` lists). Putting an index removes the untagged entries of its children, so
the usual order — children by digest, then their index by tag — leaves only the tag.

**Archives.** ``ArchiveStore(root)``: ``repository("app.tar")`` is the tar file
``<root>/app.tar`` holding one layout (what ``skopeo copy ... oci-archive:FILE.tar`` makes).
Read in place: member offsets come from the tar headers and blob bytes are read straight from
the file. Written as a stream: blobs are appended to ``.FILE.tar.<random>.tmp`` as they arrive
(one at a time; a blob that fails verification is cut off again), and ``aclose()`` appends
what an existing archive held that was not replaced, then ``index.json`` and ``oci-layout``,
and renames the tar over ``FILE.tar``. Without ``aclose()`` nothing replaces ``FILE.tar``.

All file I/O runs in worker threads (``asyncio.to_thread``), in chunks of ``CHUNK`` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import IntegrityError, NotFoundError, RegistryError, TransientError
from .manifest import (
    INDEX_TYPES,
    OCI_INDEX,
    Descriptor,
    Manifest,
    ManifestError,
    parse_manifest,
)
from .store import BlobOpener

CHUNK = 1 << 20
#: Manifests larger than this are not read as manifests (registries cap them at 4 MiB).
MAX_MANIFEST = 4 << 20
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = b'{"imageLayoutVersion": "1.0.0"}'
TMP_PREFIX = ".imagesync-"
#: How often put_blob reopens its source from the bytes already written after a
#: TransientError, before giving up.
RESUMES = 3

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def is_digest(ref: str) -> bool:
    return ":" in ref


def _check_digest(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a well-formed digest; never a path outside ``blobs/``."""
    if not _DIGEST.match(digest):
        raise IntegrityError(f"unsupported or malformed digest {digest!r}")
    alg, _, hexpart = digest.partition(":")
    return alg, hexpart


def _check_tag(tag: str, where: str) -> None:
    if not _TAG.match(tag):
        raise RegistryError(f"{where}: invalid tag {tag!r}", code="TAG_INVALID")


def _clean_path(path: str) -> str:
    """A repository path kept inside the store's root: no ``..``, no empty parts."""
    path = path.strip("/")
    if path and any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"invalid repository path {path!r}")
    return path


def _blob_name(digest: str) -> str:
    alg, hexpart = _check_digest(digest)
    return f"blobs/{alg}/{hexpart}"


def _entry(desc: Descriptor, tag: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest,
                             "size": desc.size}
    if tag is not None:
        entry["annotations"] = {REF_NAME: tag}
    return entry


def _tag_of(entry: dict[str, Any]) -> str | None:
    ann = entry.get("annotations")
    tag = ann.get(REF_NAME) if isinstance(ann, dict) else None
    return tag if isinstance(tag, str) else None


def _entries(index: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in index.get("manifests") or () if isinstance(e, dict)]


def _find(index: dict[str, Any], ref: str) -> dict[str, Any] | None:
    """The entry for a tag (the last one, as a later write wins) or a digest."""
    key = "digest" if is_digest(ref) else None
    found = None
    for e in _entries(index):
        if (e.get("digest") == ref) if key else (_tag_of(e) == ref):
            found = e
    return found


def _new_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def _update_entries(index: dict[str, Any], tag: str | None, manifest: Manifest,
                    children_of: Callable[[dict[str, Any]], set[str]]) -> None:
    """Apply a manifest put to ``index`` in place (see the module docstring)."""
    entries = _entries(index)
    desc = manifest.descriptor()
    children = {c.digest for c in manifest.children}
    # An index now references these: they no longer need entries of their own.
    entries = [e for e in entries
               if not (_tag_of(e) is None and e.get("digest") in children)]
    if tag is not None:
        entries = [e for e in entries if _tag_of(e) != tag
                   and not (_tag_of(e) is None and e.get("digest") == desc.digest)]
        entries.append(_entry(desc, tag))
    elif not any(e.get("digest") == desc.digest for e in entries):
        referenced: set[str] = set()
        for e in entries:
            if e.get("mediaType") in INDEX_TYPES:
                referenced |= children_of(e)
        if desc.digest not in referenced:
            entries.append(_entry(desc, None))
    index["manifests"] = entries


class _Hasher:
    """Digest and size of a blob being written, checked against its descriptor."""

    def __init__(self, desc: Descriptor, where: str):
        alg, self.hex = _check_digest(desc.digest)
        self.h = hashlib.new(alg)
        self.desc, self.where, self.size = desc, where, 0

    def update(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.desc.size:
            raise IntegrityError(
                f"{self.where}: blob {self.desc.digest} is larger than its "
                f"descriptor's {self.desc.size} bytes")
        self.h.update(data)

    def verify(self) -> None:
        if self.size != self.desc.size:
            raise IntegrityError(
                f"{self.where}: blob {self.desc.digest} has {self.size} bytes, "
                f"its descriptor says {self.desc.size}")
        if self.h.hexdigest() != self.hex:
            got = f"{self.h.name}:{self.h.hexdigest()}"
            raise IntegrityError(
                f"{self.where}: blob bytes hash to {got}, expected {self.desc.digest}")


async def _read_verified(source: BlobOpener, desc: Descriptor, where: str,
                         sink: Callable[[bytes], Any]) -> None:
    """Stream ``source`` into ``sink`` (called in a worker thread with ~CHUNK-sized
    buffers), hashing as it goes; resume from the bytes written after a TransientError."""
    hasher = _Hasher(desc, where)
    resumes = 0

    def write(buf: bytes) -> None:
        hasher.update(buf)  # hashlib releases the GIL on large buffers
        sink(buf)

    while True:
        try:
            async with source(hasher.size) as chunks:
                buf = bytearray()
                async for chunk in chunks:
                    buf += chunk
                    if len(buf) >= CHUNK:
                        data, buf = bytes(buf), bytearray()
                        await asyncio.to_thread(write, data)
                if buf:
                    await asyncio.to_thread(write, bytes(buf))
            break
        except TransientError:
            resumes += 1
            if resumes > RESUMES:
                raise
            await asyncio.sleep(min(0.2 * 2 ** resumes, 2.0))
    hasher.verify()


# -- directories ---------------------------------------------------------------------


class LayoutStore:
    """``oci:<root>``: a directory holding one OCI image layout per repository."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = False):
        self.root = Path(os.path.abspath(root))
        self.fsync = fsync
        # One in-process lock per layout: coroutines queue here, so only one worker
        # thread per process waits on the layout's flock.
        self._locks: dict[str, asyncio.Lock] = {}
        self._children: dict[str, frozenset[str]] = {}  # index digest -> child digests

    @property
    def name(self) -> str:
        return f"oci:{self.root}"

    def repository(self, path: str, *, write: bool = False) -> LayoutRepository:
        return LayoutRepository(self, _clean_path(path))

    def _lock(self, path: str) -> asyncio.Lock:
        return self._locks.setdefault(path, asyncio.Lock())

    async def list_repositories(self) -> list[str]:
        return await asyncio.to_thread(self._list_repositories)

    def _list_repositories(self) -> list[str]:
        if not self.root.is_dir():
            raise NotFoundError(f"{self.name}: no such directory")
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            if LAYOUT_FILE in filenames:
                found.append(Path(dirpath).relative_to(self.root).as_posix())
                # a layout's own blobs are no repositories; nested layouts may follow
                dirnames[:] = [d for d in dirnames if d != "blobs"]
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        return sorted("" if p == "." else p for p in found)


class LayoutRepository:
    """One OCI image layout directory: ``<root>/<path>``."""

    def __init__(self, layout_store: LayoutStore, path: str):
        self.layout_store, self._path = layout_store, path

    def __repr__(self) -> str:
        return f"LayoutRepository({self.name!r})"

    @property
    def name(self) -> str:
        return f"oci:{self.dir}"

    @property
    def path(self) -> str:
        return self._path

    @property
    def store(self) -> str:
        return self.layout_store.name

    @property
    def dir(self) -> Path:
        return self.layout_store.root / self._path if self._path else self.layout_store.root

    def _blob(self, digest: str) -> Path:
        return self.dir / _blob_name(digest)

    # -- reading ----------------------------------------------------------------------

    def _read_index(self, must_exist: bool) -> dict[str, Any]:
        try:
            data = (self.dir / INDEX_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            if not must_exist:
                return _new_index()
            if not self.dir.is_dir():
                raise NotFoundError(
                    f"{self.name}: no OCI layout here (the directory does not exist)",
                    status=404, code="NAME_UNKNOWN") from None
            raise NotFoundError(f"{self.name}: not an OCI layout (no {INDEX_FILE})",
                                status=404, code="NAME_UNKNOWN") from None
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise ManifestError(f"{self.name}: malformed {INDEX_FILE}: {e}") from e
        return doc

    def _children_of(self, entry: dict[str, Any]) -> set[str]:
        """Children digests of an index listed in index.json (read from its blob once:
        a digest's content never changes)."""
        digest = str(entry.get("digest"))
        cache = self.layout_store._children
        if digest not in cache:
            try:
                path = self._blob(digest)
                if path.stat().st_size > MAX_MANIFEST:
                    return set()
                raw = path.read_bytes()
                if hashlib.sha256(raw).hexdigest() != digest.partition(":")[2]:
                    return set()
                cache[digest] = frozenset(c.digest for c in parse_manifest(raw).children)
            except (OSError, ManifestError, IntegrityError):
                return set()
        return set(cache[digest])

    async def list_tags(self) -> list[str]:
        index = await asyncio.to_thread(self._read_index, True)
        return sorted({t for e in _entries(index) if (t := _tag_of(e)) is not None})

    def _head(self, ref: str) -> Descriptor | None:
        index = self._read_index(False)
        entry = _find(index, ref)
        if entry is not None:
            desc = Descriptor.from_json(entry)
            return desc if self._blob(desc.digest).is_file() else None
        if not is_digest(ref):
            return None
        # A manifest stored by digest only, or a child of an index: read its type.
        path = self._blob(ref)
        try:
            size = path.stat().st_size
            if size > MAX_MANIFEST:
                return None
            raw = path.read_bytes()
            return Descriptor(parse_manifest(raw).media_type, ref, len(raw))
        except (FileNotFoundError, NotADirectoryError, ManifestError):
            return None

    async def head_manifest(self, ref: str) -> Descriptor | None:
        if is_digest(ref):
            _check_digest(ref)
        return await asyncio.to_thread(self._head, ref)

    def _get(self, ref: str) -> Manifest:
        if not self.dir.is_dir():
            raise NotFoundError(f"{self.name}: no OCI layout here (the directory does not "
                                f"exist)", status=404, code="NAME_UNKNOWN")
        desc = self._head(ref)
        if desc is None:
            raise NotFoundError(f"{self.name}: manifest {ref} not found", status=404,
                                code="MANIFEST_UNKNOWN")
        raw = self._blob(desc.digest).read_bytes()
        hasher = _Hasher(desc, self.name)
        hasher.h.update(raw)
        hasher.size = len(raw)
        hasher.verify()
        return parse_manifest(raw, desc.media_type)

    async def get_manifest(self, ref: str) -> Manifest:
        if is_digest(ref):
            _check_digest(ref)
        return await asyncio.to_thread(self._get, ref)

    async def blob_exists(self, desc: Descriptor) -> bool:
        path = self._blob(desc.digest)

        def exists() -> bool:
            try:
                return path.stat().st_size == desc.size
            except OSError:
                return False

        return await asyncio.to_thread(exists)

    @contextlib.asynccontextmanager
    async def open_blob(self, desc: Descriptor, offset: int = 0
                        ) -> AsyncIterator[AsyncIterator[bytes]]:
        path = self._blob(desc.digest)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"{self.name}: blob {desc.digest} not found", status=404,
                                code="BLOB_UNKNOWN") from None
        try:
            if offset:
                await asyncio.to_thread(f.seek, offset)
            yield _read_chunks(f)
        finally:
            await asyncio.to_thread(f.close)

    # -- writing ----------------------------------------------------------------------

    def _lock_fd(self) -> int:
        """Create the layout if needed; return the ``oci-layout`` fd, flocked exclusively."""
        (self.dir / "blobs").mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LAYOUT_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size == 0:
                os.write(fd, LAYOUT_VERSION)
                if self.layout_store.fsync:
                    os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _ensure_layout(self) -> None:
        if not (self.dir / LAYOUT_FILE).is_file() or not (self.dir / "blobs").is_dir():
            os.close(self._lock_fd())  # closing the fd releases the lock

    def _write_atomic(self, final: Path, data: bytes) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                if self.layout_store.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _update_index(self, tag: str | None, manifest: Manifest) -> None:
        fd = self._lock_fd()
        try:
            index = self._read_index(False)
            _update_entries(index, tag, manifest, self._children_of)
            self._write_atomic(self.dir / INDEX_FILE,
                               json.dumps(index, indent=2).encode() + b"\n")
        finally:
            os.close(fd)

    def _put_manifest_blob(self, manifest: Manifest) -> None:
        self._ensure_layout()
        path = self._blob(manifest.digest)
        try:
            if path.stat().st_size == manifest.size:
                return
        except FileNotFoundError:
            pass
        self._write_atomic(path, manifest.raw)

    async def put_manifest(self, ref: str, manifest: Manifest) -> None:
        if hashlib.sha256(manifest.raw).hexdigest() != manifest.digest.partition(":")[2]:
            raise IntegrityError(f"{self.name}: manifest bytes do not hash to "
                                 f"{manifest.digest}")
        tag: str | None = None
        if is_digest(ref):
            if ref != manifest.digest:
                raise IntegrityError(f"{self.name}: manifest {manifest.digest} put under "
                                     f"another digest {ref}")
        else:
            _check_tag(ref, self.name)
            tag = ref
        await asyncio.to_thread(self._put_manifest_blob, manifest)
        async with self.layout_store._lock(self._path):
            await asyncio.to_thread(self._update_index, tag, manifest)

    async def put_blob(self, desc: Descriptor, source: BlobOpener) -> None:
        final = self._blob(desc.digest)
        if await self.blob_exists(desc):
            return
        await asyncio.to_thread(self._ensure_layout)

        def open_tmp() -> tuple[Path, BinaryIO]:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}.tmp"
            return tmp, open(tmp, "xb")

        tmp, f = await asyncio.to_thread(open_tmp)
        try:
            try:
                await _read_verified(source, desc, self.name, f.write)
                if self.layout_store.fsync:
                    await asyncio.to_thread(_flush_sync, f)
            finally:
                await asyncio.to_thread(f.close)

            def publish() -> None:
                os.chmod(tmp, 0o644)
                os.replace(tmp, final)

            await asyncio.to_thread(publish)
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.shield(asyncio.to_thread(_unlink, tmp))
            raise

    async def referrers(self, digest: str) -> list[Descriptor] | None:
        return None  # no referrers API: the sha256-<hex> fallback tag lists them

    async def link_blob(self, desc: Descriptor, from_path: str) -> bool:
        try:
            other = self.layout_store.repository(from_path)
        except ValueError:
            return False
        src, dst = other._blob(desc.digest), self._blob(desc.digest)

        def link() -> bool:
            try:
                if src.stat().st_size != desc.size:
                    return False
                self._ensure_layout()
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)  # atomic: the name appears with all its bytes
            except FileExistsError:
                return True
            except OSError:
                return False  # missing there, another filesystem, no hard links...
            return True

        return await asyncio.to_thread(link)


def _flush_sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _read_chunks(f: BinaryIO, remaining: int | None = None) -> AsyncIterator[bytes]:
    while remaining is None or remaining > 0:
        n = CHUNK if remaining is None else min(CHUNK, remaining)
        data = await asyncio.to_thread(f.read, n)
        if not data:
            if remaining:
                raise IntegrityError(f"{getattr(f, 'name', 'blob')}: truncated "
                                     f"({remaining} bytes missing)")
            return
        if remaining is not None:
            remaining -= len(data)
        yield data


# -- archives ------------------------------------------------------------------------


@dataclass
class _Member:
    offset: int  # of the data
    size: int


@dataclass
class _ArchiveState:
    """What one archive holds: read from the existing file, plus what was written."""

    existing: dict[str, _Member] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=_new_index)
    written: dict[str, _Member] = field(default_factory=dict)
    tmp: Path | None = None
    out: BinaryIO | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _scan_tar(path: Path) -> tuple[dict[str, _Member], dict[str, Any]]:
    """Members by normalised name and the parsed index.json of a layout tar."""
    try:
        tf = tarfile.open(path, "r:")
    except FileNotFoundError:
        raise NotFoundError(f"oci-archive:{path}: no such file", status=404,
                            code="NAME_UNKNOWN") from None
    except tarfile.TarError as e:
        raise ManifestError(f"oci-archive:{path}: not an uncompressed tar: {e}") from e
    members: dict[str, _Member] = {}
    with tf:
        for info in tf:
            name = info.name
            while name.startswith("./"):
                name = name[2:]
            if info.isfile():
                members[name] = _Member(info.offset_data, info.size)
    if INDEX_FILE not in members or LAYOUT_FILE not in members:
        raise NotFoundError(f"oci-archive:{path}: not an OCI layout archive "
                            f"(no {INDEX_FILE} or {LAYOUT_FILE})", status=404,
                            code="NAME_UNKNOWN")
    m = members[INDEX_FILE]
    try:
        index = json.loads(_pread(path, m.offset, m.size))
        if not isinstance(index, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ManifestError(f"oci-archive:{path}: malformed {INDEX_FILE}: {e}") from e
    return members, index


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


class ArchiveStore:
    """``oci-archive:<root>``: tar files of one OCI image layout each, under ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = False):
        self.root = Path(os.path.abspath(root))
        self.fsync = fsync
        self._repos: dict[str, ArchiveRepository] = {}

    @property
    def name(self) -> str:
        return f"oci-archive:{self.root}"

    def repository(self, path: str, *, write: bool = False) -> ArchiveRepository:
        path = _clean_path(path)
        if not path:
            raise ValueError("an archive repository is a file under the store's root")
        if path not in self._repos:
            self._repos[path] = ArchiveRepository(self, path)
        return self._repos[path]

    async def list_repositories(self) -> list[str]:
        """Tar files under the root that hold a layout."""
        def walk() -> list[str]:
            if not self.root.is_dir():
                raise NotFoundError(f"{self.name}: no such directory")
            found = []
            for dirpath, _dirs, files in os.walk(self.root):
                for f in files:
                    p = Path(dirpath) / f
                    if f.startswith(".") or not tarfile.is_tarfile(p):
                        continue
                    try:
                        _scan_tar(p)
                    except (NotFoundError, ManifestError, ValueError):
                        continue
                    found.append(p.relative_to(self.root).as_posix())
            return sorted(found)

        return await asyncio.to_thread(walk)

    async def aclose(self) -> None:
        """Finish every archive written through this store (see ArchiveRepository)."""
        for repo in self._repos.values():
            await repo.aclose()

    async def __aenter__(self) -> ArchiveStore:
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            for repo in self._repos.values():
                await repo.abort()


class ArchiveRepository:
    """One ``.tar`` of an OCI layout, read in place and written as a stream."""

    def __init__(self, archive_store: ArchiveStore, path: str):
        self.archive_store, self._path = archive_store, path
        self._state: _ArchiveState | None = None
        self._init = asyncio.Lock()

    @property
    def name(self) -> str:
        return f"oci-archive:{self.file}"

    @property
    def path(self) -> str:
        return self._path

    @property
    def store(self) -> str:
        return self.archive_store.name

    @property
    def file(self) -> Path:
        return self.archive_store.root / self._path

    async def _load(self, must_exist: bool) -> _ArchiveState:
        async with self._init:
            if self._state is None:
                try:
                    members, index = await asyncio.to_thread(_scan_tar, self.file)
                    self._state = _ArchiveState(existing=members, index=index)
                except NotFoundError:
                    if must_exist or await asyncio.to_thread(self.file.exists):
                        raise
                    self._state = _ArchiveState()
            return self._state

    def _member(self, st: _ArchiveState, digest: str) -> tuple[Path, _Member] | None:
        name = _blob_name(digest)
        if name in st.written and st.tmp is not None:
            return st.tmp, st.written[name]
        if name in st.existing:
            return self.file, st.existing[name]
        return None

    async def _read_member(self, st: _ArchiveState, digest: str) -> bytes | None:
        found = self._member(st, digest)
        if found is None or found[1].size > MAX_MANIFEST:
            return None
        return await asyncio.to_thread(_pread, found[0], found[1].offset, found[1].size)

    async def list_tags(self) -> list[str]:
        st = await self._load(True)
        return sorted({t for e in _entries(st.index) if (t := _tag_of(e)) is not None})

    async def head_manifest(self, ref: str) -> Descriptor | None:
        st = await self._load(False)
        entry = _find(st.index, ref)
        if entry is not None:
            desc = Descriptor.from_json(entry)
            return desc if self._member(st, desc.digest) else None
        if not is_digest(ref):
            return None
        raw = await self._read_member(st, ref)
        if raw is None:
            return None
        try:
            return Descriptor(parse_manifest(raw).media_type, ref, len(raw))
        except ManifestError:
            return None

    async def get_manifest(self, ref: str) -> Manifest:
        await self._load(True)
        desc = await self.head_manifest(ref)
        st = self._state
        raw = None if desc is None or st is None else await self._read_member(st, desc.digest)
        if desc is None or raw is None:
            raise NotFoundError(f"{self.name}: manifest {ref} not found", status=404,
                                code="MANIFEST_UNKNOWN")
        hasher = _Hasher(desc, self.name)
        hasher.update(raw)
        hasher.verify()
        return parse_manifest(raw, desc.media_type)

    async def blob_exists(self, desc: Descriptor) -> bool:
        st = await self._load(False)
        found = self._member(st, desc.digest)
        return found is not None and found[1].size == desc.size

    @contextlib.asynccontextmanager
    async def open_blob(self, desc: Descriptor, offset: int = 0
                        ) -> AsyncIterator[AsyncIterator[bytes]]:
        st = await self._load(True)
        found = self._member(st, desc.digest)
        if found is None:
            raise NotFoundError(f"{self.name}: blob {desc.digest} not found", status=404,
                                code="BLOB_UNKNOWN")
        path, m = found
        f = await asyncio.to_thread(open, path, "rb")
        try:
            await asyncio.to_thread(f.seek, m.offset + offset)
            yield _read_chunks(f, m.size - offset)
        finally:
            await asyncio.to_thread(f.close)

    # -- writing ----------------------------------------------------------------------

    async def _writer(self) -> _ArchiveState:
        """The state with its temporary tar open; call with ``st.lock`` held."""
        st = await self._load(False)
        if st.out is None:
            def start() -> tuple[Path, BinaryIO]:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.file.parent / f".{self.file.name}.{secrets.token_hex(6)}.tmp"
                return tmp, open(tmp, "xb")

            st.tmp, st.out = await asyncio.to_thread(start)
        return st

    async def _append(self, name: str, size: int,
                      fill: Callable[[Callable[[bytes], Any]], Any]) -> None:
        """Append one member; ``fill(write)`` produces its bytes. On any error the tar is
        cut back to where the member started."""
        st = await self._load(False)
        async with st.lock:
            st = await self._writer()
            out = st.out
            assert out is not None
            start = await asyncio.to_thread(out.tell)
            try:
                await asyncio.to_thread(out.write, _tar_header(name, size))
                data_at = await asyncio.to_thread(out.tell)
                await fill(out.write)
                await asyncio.to_thread(out.write, _padding(size))
                await asyncio.to_thread(out.flush)  # readers open the file by name
            except BaseException:
                def cut() -> None:
                    out.seek(start)
                    out.truncate()
                await asyncio.shield(asyncio.to_thread(cut))
                raise
            st.written[name] = _Member(data_at, size)

    async def put_blob(self, desc: Descriptor, source: BlobOpener) -> None:
        if await self.blob_exists(desc):
            return
        name = _blob_name(desc.digest)

        async def fill(write: Callable[[bytes], Any]) -> None:
            await _read_verified(source, desc, self.name, write)

        await self._append(name, desc.size, fill)

    async def put_manifest(self, ref: str, manifest: Manifest) -> None:
        if hashlib.sha256(manifest.raw).hexdigest() != manifest.digest.partition(":")[2]:
            raise IntegrityError(f"{self.name}: manifest bytes do not hash to "
                                 f"{manifest.digest}")
        tag: str | None = None
        if is_digest(ref):
            if ref != manifest.digest:
                raise IntegrityError(f"{self.name}: manifest {manifest.digest} put under "
                                     f"another digest {ref}")
        else:
            _check_tag(ref, self.name)
            tag = ref
        if not await self.blob_exists(manifest.descriptor()):
            async def fill(write: Callable[[bytes], Any]) -> None:
                await asyncio.to_thread(write, manifest.raw)

            await self._append(_blob_name(manifest.digest), manifest.size, fill)
        st = await self._load(False)
        children: dict[str, set[str]] = {}
        for e in _entries(st.index):  # the few indexes listed, read ahead of the update
            if e.get("mediaType") in INDEX_TYPES and isinstance(e.get("digest"), str):
                raw = await self._read_member(st, e["digest"])
                try:
                    children[e["digest"]] = (
                        {c.digest for c in parse_manifest(raw).children} if raw else set())
                except ManifestError:
                    children[e["digest"]] = set()
        _update_entries(st.index, tag, manifest,
                        lambda e: children.get(str(e.get("digest")), set()))

    async def referrers(self, digest: str) -> list[Descriptor] | None:
        return None  # no referrers API: the sha256-<hex> fallback tag lists them

    async def link_blob(self, desc: Descriptor, from_path: str) -> bool:
        return False  # every archive carries its own bytes

    async def abort(self) -> None:
        """Drop what was written: the archive stays as it was."""
        st = self._state
        if st is None or st.out is None or st.tmp is None:
            return
        out, tmp = st.out, st.tmp
        st.out = st.tmp = None
        st.written.clear()
        await asyncio.to_thread(out.close)
        await asyncio.to_thread(_unlink, tmp)

    async def aclose(self) -> None:
        """Complete the tar: the existing archive's members that were not rewritten, then
        ``index.json`` and ``oci-layout``; rename it over the archive."""
        st = self._state
        if st is None or st.out is None or st.tmp is None:
            return
        async with st.lock:
            out, tmp = st.out, st.tmp
            assert out is not None and tmp is not None
            try:
                for name, m in st.existing.items():
                    if name in st.written or name in (INDEX_FILE, LAYOUT_FILE):
                        continue
                    await self._copy_member(out, name, m)
                index = json.dumps(st.index, indent=2).encode() + b"\n"
                for name, data in ((LAYOUT_FILE, LAYOUT_VERSION), (INDEX_FILE, index)):
                    buf = _tar_header(name, len(data)) + data + _padding(len(data))
                    await asyncio.to_thread(out.write, buf)
                fsync = self.archive_store.fsync

                def finish() -> None:
                    out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
                    out.flush()
                    if fsync:
                        os.fsync(out.fileno())
                    out.close()
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, self.file)

                await asyncio.to_thread(finish)
            except BaseException:
                await asyncio.to_thread(out.close)
                await asyncio.to_thread(_unlink, tmp)
                raise
            finally:
                st.out = st.tmp = None
            # The archive now holds everything: read it from there from now on.
            self._state = None

    async def _copy_member(self, out: BinaryIO, name: str, m: _Member) -> None:
        await asyncio.to_thread(out.write, _tar_header(name, m.size))
        f = await asyncio.to_thread(open, self.file, "rb")
        try:
            await asyncio.to_thread(f.seek, m.offset)
            async for chunk in _read_chunks(f, m.size):
                await asyncio.to_thread(out.write, chunk)
        finally:
            await asyncio.to_thread(f.close)
        await asyncio.to_thread(out.write, _padding(m.size))


def _pread(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise IntegrityError(f"{path}: truncated member at {offset}")
    return data


__all__ = [
    "CHUNK",
    "REF_NAME",
    "ArchiveRepository",
    "ArchiveStore",
    "LayoutRepository",
    "LayoutStore",
    "is_digest",
]
