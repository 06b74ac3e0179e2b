"""The sync engine: runs the task graph on the bounded pool and collects results.

Per image: HEAD source and destinations and compare digests (an unchanged image costs
two HEADs, no GET, no blob traffic); otherwise GET the source manifest once, copy each
blob that the destination lacks (streamed, verified, at most once per destination
repository per run), push child manifests, and push the tagged manifest or index last.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .errors import ImagesyncError, NotFoundError
from .graph import ImageTask, image_tasks
from .manifest import Descriptor, Manifest, ManifestError
from .pool import Pool
from .reference import Reference
from .registry import verified
from .report import FAILED, SKIPPED, SYNCED, Result
from .rules import Rule
from .store import Repository, Store

# Foreign / non-distributable layers (Windows base layers) are not ours to copy.
FOREIGN = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
           "application/vnd.oci.image.layer.nondistributable")


@dataclass
class Options:
    force: bool = False
    images_in_flight: int = 0  # 0: twice the pool size


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ImagesyncError | ManifestError):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientError):
        return f"network error: {exc}" if str(exc) else f"network error: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _ImageRun:
    """State of one image task: shared source reads, per-destination byte counts."""

    task: ImageTask
    src: Repository
    manifests: dict[str, asyncio.Task[Manifest]] = field(default_factory=dict)


@dataclass
class Engine:
    stores: Callable[[str], Store]   # registry name -> store
    pool: Pool
    retrying: Callable[[Callable[[], Awaitable[Any]], str], Awaitable[Any]]
    log: Any
    options: Options = field(default_factory=Options)
    # (destination repository, digest) -> the one transfer of that blob in this run
    _blobs: dict[tuple[str, str], asyncio.Task[int]] = field(default_factory=dict)
    blob_uploads: int = 0  # blobs actually uploaded this run (tests assert on no-op re-runs)

    async def run(self, rules: list[Rule]) -> list[Result]:
        results: list[Result] = []
        limit = asyncio.Semaphore(self.options.images_in_flight or self.pool.size * 2)
        seq = 0
        running: set[asyncio.Task[None]] = set()

        async def run_image(task: ImageTask) -> None:
            try:
                results.extend(await self.copy_image(task))
            finally:
                limit.release()

        listings = [asyncio.ensure_future(self._list(rule)) for rule in rules]
        for rule, listing in zip(rules, listings, strict=True):
            try:
                tags = await listing
            except Exception as e:  # the whole rule fails: say so once per destination
                results.extend(Result(rule.key, t.name, FAILED, error=describe_error(e))
                               for t in rule.targets)
                self.log.error("rule failed", rule=rule.key, error=describe_error(e))
                continue
            tasks = image_tasks(rule, tags, seq)
            seq += len(tasks) + 1
            if not tasks:
                self.log.warning("no tags selected", rule=rule.key)
            for task in tasks:
                await limit.acquire()
                t = asyncio.create_task(run_image(task))
                running.add(t)
                t.add_done_callback(running.discard)
        await asyncio.gather(*running)
        return results

    async def _list(self, rule: Rule) -> list[str] | None:
        if not rule.selector.needs_listing and rule.selector.pattern is None:
            return None
        repo = self.stores(rule.registry).repository(rule.repository)
        async with self.pool.slot(-1):
            return await repo.list_tags()

    # -- one image --------------------------------------------------------------
    async def copy_image(self, task: ImageTask) -> list[Result]:
        start = time.monotonic()
        src = self.stores(task.source.registry).repository(task.source.repository)
        run = _ImageRun(task, src)
        try:
            src_digest = await self._source_digest(run)
        except Exception as e:
            err = describe_error(e)
            self.log.error("failed", source=str(task.source), error=err)
            return [Result(str(task.source), str(d), FAILED, error=err,
                           seconds=time.monotonic() - start) for d in task.destinations]
        outcomes = await asyncio.gather(
            *(self._to_destination(run, src_digest, d, start) for d in task.destinations))
        for t in run.manifests.values():
            t.cancel()
        return list(outcomes)

    async def _source_digest(self, run: _ImageRun) -> str:
        ref = run.task.source
        if ref.digest:
            return ref.digest
        async with self.pool.slot(run.task.seq):
            desc = await run.src.head_manifest(ref.ref)
        if desc is None:
            raise NotFoundError(f"{ref} not found")
        return desc.digest

    async def _to_destination(self, run: _ImageRun, digest: str, dest: Reference,
                              start: float) -> Result:
        seq = run.task.seq
        source = str(run.task.source)
        dst = self.stores(dest.registry).repository(dest.repository, push=True)
        try:
            if not self.options.force:
                async with self.pool.slot(seq):
                    have = await dst.head_manifest(dest.tag or digest)
                if have is not None and have.digest == digest:
                    self.log.info("skipped", source=source, destination=str(dest),
                                  digest=digest)
                    return Result(source, str(dest), SKIPPED, digest,
                                  seconds=round(time.monotonic() - start, 3),
                                  note="destination has the same digest")
            manifest = await self._manifest(run, digest)
            moved = await self._push_tree(run, manifest, dst, dest.tag or digest)
        except Exception as e:
            err = describe_error(e)
            self.log.error("failed", source=source, destination=str(dest), error=err)
            return Result(source, str(dest), FAILED, digest, error=err,
                          seconds=round(time.monotonic() - start, 3))
        self.log.info("synced", source=source, destination=str(dest), digest=digest,
                      bytes=moved)
        return Result(source, str(dest), SYNCED, digest, bytes=moved,
                      seconds=round(time.monotonic() - start, 3))

    def _manifest(self, run: _ImageRun, digest: str) -> asyncio.Task[Manifest]:
        """Each source manifest is fetched once per image, whatever the destinations."""
        t = run.manifests.get(digest)
        if t is None:
            async def get() -> Manifest:
                async with self.pool.slot(run.task.seq):
                    return await run.src.get_manifest(digest)
            t = run.manifests[digest] = asyncio.ensure_future(get())
        return t

    async def _push_tree(self, run: _ImageRun, m: Manifest, dst: Repository, ref: str) -> int:
        """Push what ``m`` needs, then ``m`` itself as ``ref``. Returns bytes moved."""
        seq = run.task.seq
        if m.is_index:
            moved = await self._gather_sum(
                self._push_child(run, child, dst) for child in m.children)
        else:
            moved = await self._gather_sum(
                self._ensure_blob(run, b, dst) for b in m.blobs if b.media_type not in FOREIGN)
        async with self.pool.slot(seq):
            await dst.put_manifest(ref, m)
        return moved + m.size

    async def _push_child(self, run: _ImageRun, child: Descriptor, dst: Repository) -> int:
        if not self.options.force:
            async with self.pool.slot(run.task.seq):
                have = await dst.head_manifest(child.digest)
            if have is not None:
                return 0
        m = await self._manifest(run, child.digest)
        return await self._push_tree(run, m, dst, child.digest)

    @staticmethod
    async def _gather_sum(coros) -> int:
        # Wait for every sibling even when one fails, so no transfer is left running
        # unobserved; then raise the first failure.
        results = await asyncio.gather(*coros, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return sum(results)

    async def _ensure_blob(self, run: _ImageRun, desc: Descriptor, dst: Repository) -> int:
        """Make ``desc`` exist in ``dst``; bytes this call moved (0 if it was already there
        or another image is moving it)."""
        key = (dst.name, desc.digest)
        existing = self._blobs.get(key)
        if existing is not None:
            await asyncio.shield(existing)
            return 0
        t = asyncio.ensure_future(self._transfer_blob(run, desc, dst))
        self._blobs[key] = t
        try:
            return await asyncio.shield(t)
        except BaseException:
            # Let a later image try again rather than inherit this failure.
            if self._blobs.get(key) is t:
                del self._blobs[key]
            raise

    async def _transfer_blob(self, run: _ImageRun, desc: Descriptor, dst: Repository) -> int:
        async with self.pool.slot(run.task.seq):
            if await dst.blob_exists(desc):
                return 0

            async def copy() -> None:
                async with run.src.open_blob(desc) as chunks:
                    await dst.put_blob(desc, verified(chunks, desc, run.src.name))

            await self.retrying(copy, f"copy blob {desc.digest[:19]} to {dst.name}")
            self.blob_uploads += 1
            return desc.size
