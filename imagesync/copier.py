"""The copier: one plan item, from its source to each destination, over any two stores.

Per image: HEAD the source and each destination; equal digests mean *skipped* at the
cost of two HEADs. Otherwise the source manifest is fetched once, each blob the
destination lacks is streamed source -> destination (verified on the way, at most once
per destination repository per run, linked instead of sent where the store can),
children of an index are pushed by digest, and the tagged manifest or index is pushed
last, byte for byte. A failed or interrupted image never gets its manifest pushed.

What happens is told to an :class:`~imagesync.events.Observer`; nothing is printed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ImagesyncError, NotFoundError
from .events import Observer
from .hostqueue import priority
from .manifest import (
    OCI_INDEX,
    Descriptor,
    Manifest,
    ManifestError,
    filter_index,
    image_platform,
    parse_manifest,
)
from .names import Reference
from .plan import PlanItem
from .report import CONFLICT, FAILED, INTERRUPTED, SAME_DIGEST, SKIPPED, SYNCED, Result
from .retry import describe
from .store import Repository, Store

# Foreign / non-distributable layers (Windows base layers) are not ours to copy.
FOREIGN = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
           "application/vnd.oci.image.layer.nondistributable")


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ImagesyncError | ManifestError):
        return str(exc)
    return describe(exc)


@dataclass
class CopyOptions:
    force: bool = False    # re-push manifests the destination already has
    dry_run: bool = False  # read everything, write nothing; results are the plan


@dataclass
class BlobLedger:
    """What one run knows about blobs: each (destination repository, digest) is moved
    once, and where a store already holds a blob (a link source). Lives for one run."""

    # (destination repository, digest) -> the one transfer of that blob in this run
    transfers: dict[tuple[str, str], asyncio.Future[int]] = field(default_factory=dict)
    # (store, digest) -> a repository of that store known to hold the blob
    holders: dict[tuple[str, str], str] = field(default_factory=dict)
    # (store, digest) -> the upload of that blob into some repository of the store
    uploading: dict[tuple[str, str], asyncio.Future[None]] = field(default_factory=dict)
    # source repository -> its tag listing (referrer tags are looked up there)
    tags: dict[str, asyncio.Future[list[str]]] = field(default_factory=dict)
    uploads: int = 0  # blobs actually uploaded
    links: int = 0    # blobs linked (cross-repository mount) instead


@dataclass
class _Image:
    """One item in flight: shared source reads across its destinations."""

    item: PlanItem
    src: Repository
    manifests: dict[str, asyncio.Future[Manifest]] = field(default_factory=dict)
    selected: asyncio.Future[tuple[Manifest | None, str | None]] | None = None


@dataclass
class Copier:
    stores: Callable[[str], Store]
    observer: Observer = field(default_factory=Observer)
    options: CopyOptions = field(default_factory=CopyOptions)
    ledger: BlobLedger = field(default_factory=BlobLedger)

    async def copy(self, item: PlanItem) -> list[Result]:
        """Copy one item to every destination; one result per destination. Results are
        also told to the observer as each destination finishes."""
        priority.set(item.seq)  # this task's requests: depth-first in every queue
        start = time.monotonic()
        source = item.source_ref
        src = self.stores(source.registry).repository(source.repository)
        image = _Image(item, src)
        self.observer.image_started(item)
        try:
            src_digest = await self._source_digest(image, source)
        except asyncio.CancelledError:
            for d in item.destinations:
                self._finish(Result(item.source, d, INTERRUPTED,
                                    seconds=_since(start)))
            raise
        except Exception as e:
            err = describe_error(e)
            return [self._finish(Result(item.source, d, FAILED, error=err,
                                        seconds=_since(start)))
                    for d in item.destinations]
        try:
            return list(await asyncio.gather(
                *(self._to_destination(image, src_digest, d, start)
                  for d in item.destination_refs)))
        finally:
            for t in image.manifests.values():
                t.cancel()

    def _finish(self, result: Result) -> Result:
        self.observer.image_finished(result)
        return result

    async def _source_digest(self, image: _Image, ref: Reference) -> str:
        if ref.digest:
            return ref.digest
        desc = await image.src.head_manifest(ref.ref)
        if desc is None:
            raise NotFoundError(f"{ref} not found")
        return desc.digest

    async def _to_destination(self, image: _Image, digest: str, dest: Reference,
                              start: float) -> Result:
        item = image.item
        dst = self.stores(dest.registry).repository(dest.repository,
                                                    write=not self.options.dry_run)

        def result(status: str, digest: str | None, **kw: Any) -> Result:
            return self._finish(Result(item.source, str(dest), status, digest,
                                       seconds=_since(start), **kw))

        pushed: list[int] = []  # the tagged manifest landed (bytes moved)
        manifest: Manifest | None = None
        note: str | None = None
        try:
            have = await dst.head_manifest(dest.tag or digest)
            status, final, moved = SKIPPED, digest, 0
            if have is not None and have.digest == digest and not self.options.force:
                note = SAME_DIGEST
            else:
                manifest, note = await self._selected(image, digest)
                if manifest is None:
                    return result(SKIPPED, digest, note=note)
                final = manifest.digest
                if (have is not None and have.digest == manifest.digest
                        and not self.options.force):
                    note = note or SAME_DIGEST
                elif have is not None and have.digest != manifest.digest and not item.overwrite:
                    return result(CONFLICT, manifest.digest, error=(
                        f"{dest} already points at {have.digest} and the rule says overwrite: "
                        "false; delete that tag, or set overwrite: true"))
                else:
                    moved = await self._push_tree(image, manifest, dst,
                                                  dest.tag or manifest.digest, pushed)
                    status = SYNCED
            if item.referrers and final == digest:  # a platform subset has no referrers
                count, extra = await self._copy_referrers(image, digest, dst)
                moved += extra
                if count:
                    copied = f"{count} attached artifact(s) copied"
                    note = copied if note in (None, SAME_DIGEST) else f"{note}; {copied}"
        except asyncio.CancelledError:
            if pushed and manifest is not None:  # stopped as its manifest landed: complete
                result(SYNCED, manifest.digest, bytes=pushed[0], note=note)
            else:
                result(INTERRUPTED, digest)
            raise
        except Exception as e:
            return result(FAILED, digest, error=describe_error(e))
        return result(status, final, bytes=moved, note=note)

    # -- what travels with an image: signatures, SBOMs, attestations ----------------------
    async def _copy_referrers(self, image: _Image, digest: str, dst: Repository
                              ) -> tuple[int, int]:
        """Copy the artifacts attached to ``digest``: through the referrers API where the
        source has it, and the tags of the fallback scheme (``sha256-<hex>``, an index of
        referrers) and of cosign (``sha256-<hex>.sig``, ``.att``, ``.sbom``).
        Returns (artifacts copied, bytes moved)."""
        src = image.src
        count = moved = 0
        fallback = digest.replace(":", "-", 1)
        api = await src.referrers(digest)
        if api:
            for desc in api:
                if await dst.head_manifest(desc.digest) is None or self.options.force:
                    m = await self._manifest(image, desc.digest)
                    moved += await self._push_tree(image, m, dst, desc.digest)
                    count += 1
            if await dst.referrers(digest) is None:  # list them where the destination looks
                moved += await self._merge_fallback(dst, fallback, api)
        tags = set(await self._tags(src))
        for tag in (fallback, f"{fallback}.sig", f"{fallback}.att", f"{fallback}.sbom"):
            if tag not in tags:
                continue
            found = await src.head_manifest(tag)
            if found is None:
                continue
            have = await dst.head_manifest(tag)
            if have is not None and have.digest == found.digest and not self.options.force:
                continue
            m = await self._manifest(image, found.digest)
            if tag == fallback and have is not None and m.is_index:
                # The destination lists other referrers already: keep them, add ours.
                moved += await _gather_sum(self._push_child(image, c, dst)
                                           for c in m.children)
                moved += await self._merge_fallback(dst, tag, list(m.children))
            else:
                moved += await self._push_tree(image, m, dst, tag)
            count += len(m.children) if m.is_index else 1
        return count, moved

    async def _merge_fallback(self, dst: Repository, tag: str,
                              descs: list[Descriptor]) -> int:
        """Make the fallback index at ``tag`` list ``descs`` as well as what it had."""
        entries: dict[str, dict[str, Any]] = {}
        have = await dst.head_manifest(tag)
        if have is not None:
            for e in json.loads((await dst.get_manifest(tag)).raw).get("manifests") or ():
                entries[e["digest"]] = e
        for d in descs:
            entries.setdefault(d.digest, d.to_json())
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                          "manifests": list(entries.values())}, indent=2).encode()
        index = parse_manifest(raw, OCI_INDEX)
        if have is not None and have.digest == index.digest:
            return 0
        if not self.options.dry_run:
            await dst.put_manifest(tag, index)
        return index.size

    def _tags(self, src: Repository) -> asyncio.Future[list[str]]:
        """The source repository's tags, listed once per run."""
        t = self.ledger.tags.get(src.name)
        if t is None:
            t = self.ledger.tags[src.name] = asyncio.ensure_future(src.list_tags())
        return t

    def _selected(self, image: _Image, digest: str
                  ) -> asyncio.Future[tuple[Manifest | None, str | None]]:
        """The manifest to push after platform selection (None: nothing selected)."""
        if image.selected is None:
            image.selected = asyncio.ensure_future(self._select_platforms(image, digest))
        return image.selected

    async def _select_platforms(self, image: _Image, digest: str
                                ) -> tuple[Manifest | None, str | None]:
        manifest = await self._manifest(image, digest)
        wanted = image.item.platform_selector
        if not wanted:
            return manifest, None
        if manifest.is_index:
            subset = filter_index(manifest, wanted)
            if not subset.children:
                return None, f"no platform of the index matches {wanted}"
            if subset is manifest:
                return manifest, None
            chosen = ",".join(str(c.platform) for c in subset.children)
            return subset, (f"index digest changed: pushed the subset {chosen} of "
                            f"{manifest.digest} as {subset.digest}")
        config = manifest.blobs[0]
        async with image.src.open_blob(config) as chunks:
            platform = image_platform(b"".join([c async for c in chunks]))
        if platform is not None and not wanted.matches(platform):
            return None, f"platform {platform} not selected ({wanted})"
        return manifest, None

    def _manifest(self, image: _Image, digest: str) -> asyncio.Future[Manifest]:
        """Each source manifest is fetched once per image, whatever the destinations."""
        t = image.manifests.get(digest)
        if t is None:
            t = image.manifests[digest] = asyncio.ensure_future(
                image.src.get_manifest(digest))
        return t

    async def _push_tree(self, image: _Image, m: Manifest, dst: Repository, ref: str,
                         pushed: list[int] | None = None) -> int:
        """Push what ``m`` needs, then ``m`` itself as ``ref``. Returns bytes moved;
        ``pushed`` gets them too once ``m`` has landed, even if the run is stopped."""
        if m.is_index:
            moved = await _gather_sum(self._push_child(image, child, dst)
                                      for child in m.children)
        else:
            moved = await _gather_sum(self._ensure_blob(image, b, dst)
                                      for b in m.blobs if b.media_type not in FOREIGN)
        if not self.options.dry_run:
            # Only now, with every blob and child in place: a failed or interrupted
            # image never has its manifest pushed. Once sent, a stop lets the PUT finish,
            # so the report says whether the image landed.
            put = asyncio.ensure_future(dst.put_manifest(ref, m))
            try:
                await asyncio.shield(put)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await put
                if (pushed is not None and put.done() and not put.cancelled()
                        and put.exception() is None):
                    pushed.append(moved + m.size)
                raise
        return moved + m.size

    async def _push_child(self, image: _Image, child: Descriptor, dst: Repository) -> int:
        """Push one child of an index into ``dst`` (unless there), once per destination
        repository per run: many tags of one index ask about each child once."""
        key, ledger = (dst.name, child.digest), self.ledger
        known = ledger.transfers.get(key)
        if known is not None:
            await asyncio.shield(known)
            return 0

        async def push() -> int:
            have = await dst.head_manifest(child.digest)
            if have is not None and not self.options.force:
                return 0
            m = await self._manifest(image, child.digest)
            return await self._push_tree(image, m, dst, child.digest)

        t = asyncio.ensure_future(push())
        ledger.transfers[key] = t
        try:
            return await asyncio.shield(t)
        except BaseException:
            if not t.done():
                t.cancel()
            if ledger.transfers.get(key) is t:  # a later image may try again
                del ledger.transfers[key]
            raise

    async def _ensure_blob(self, image: _Image, desc: Descriptor, dst: Repository) -> int:
        """Make ``desc`` exist in ``dst``; bytes this call moved (0 if it was already there
        or another image is moving it)."""
        key = (dst.name, desc.digest)
        ledger = self.ledger
        existing = ledger.transfers.get(key)
        if existing is not None:
            await asyncio.shield(existing)
            return 0
        t = asyncio.ensure_future(self._transfer_blob(image, desc, dst))
        ledger.transfers[key] = t
        try:
            return await asyncio.shield(t)
        except BaseException:
            if not t.done():
                t.cancel()  # interrupted: stop the transfer, not only our wait for it
            # Let a later image try again rather than inherit this failure.
            if ledger.transfers.get(key) is t:
                del ledger.transfers[key]
            raise

    async def _transfer_blob(self, image: _Image, desc: Descriptor, dst: Repository) -> int:
        src, ledger = image.src, self.ledger
        store_key = (dst.store, desc.digest)
        if await dst.blob_exists(desc):
            ledger.holders.setdefault(store_key, dst.path)
            self.observer.blob_finished(dst.name, desc, "present")
            return 0
        if self.options.dry_run:
            # Count what a real run would send: a blob another repository of this
            # store has (or will have by then) would be linked, not uploaded.
            if src.store == dst.store or store_key in ledger.holders:
                return 0
            ledger.holders[store_key] = dst.path
            return desc.size
        # Another repository of this store is receiving the same blob right now: wait
        # for it (holding nothing), then link from there instead of sending it twice.
        other = ledger.uploading.get(store_key)
        if other is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(other)
        if await self._link(desc, dst, src):
            self.observer.blob_finished(dst.name, desc, "mounted")
            return 0
        self.observer.blob_started(dst.name, desc)
        upload = asyncio.ensure_future(dst.put_blob(desc, self._counted(src, desc, dst.name)))
        ledger.uploading.setdefault(store_key, upload)
        try:
            await asyncio.shield(upload)
        except BaseException:
            if not upload.done():
                upload.cancel()
            self.observer.blob_finished(dst.name, desc, "failed")
            raise
        finally:
            if ledger.uploading.get(store_key) is upload:
                del ledger.uploading[store_key]
        ledger.uploads += 1
        ledger.holders[store_key] = dst.path
        self.observer.blob_finished(dst.name, desc, "uploaded")
        return desc.size

    def _counted(self, src: Repository, desc: Descriptor, destination: str
                 ) -> Callable[[int], contextlib.AbstractAsyncContextManager[
                     AsyncIterator[bytes]]]:
        """The source blob opener, telling the observer about every chunk read."""
        observer = self.observer

        @contextlib.asynccontextmanager
        async def opener(offset: int) -> AsyncIterator[AsyncIterator[bytes]]:
            async with src.open_blob(desc, offset) as chunks:
                async def counted() -> AsyncIterator[bytes]:
                    async for chunk in chunks:
                        observer.bytes_moved(destination, desc, len(chunk))
                        yield chunk
                yield counted()
        return opener

    async def _link(self, desc: Descriptor, dst: Repository, src: Repository) -> bool:
        """Link the blob from a repository of the same store: the source repository when
        both share a store, or one this run has seen holding it."""
        candidates = []
        if src.store == dst.store:
            candidates.append(src.path)
        holder = self.ledger.holders.get((dst.store, desc.digest))
        if holder and holder not in candidates and holder != dst.path:
            candidates.append(holder)
        for from_path in candidates:
            try:
                linked = await dst.link_blob(desc, from_path)
            except Exception:  # a refused mount is no failure: upload instead
                continue
            if linked:
                self.ledger.links += 1
                self.ledger.holders[(dst.store, desc.digest)] = dst.path
                return True
        return False


def _since(start: float) -> float:
    return round(time.monotonic() - start, 3)


async def _gather_sum(coros: Iterable[Any]) -> int:
    # Wait for every sibling even when one fails, so no transfer is left running
    # unobserved; then raise the first failure.
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return sum(results)  # type: ignore[arg-type]
