"""The sync engine: runs the task graph on the bounded pool and collects results.

Per image: HEAD source and destinations and compare digests (an unchanged image costs
two HEADs, no GET, no blob traffic); otherwise GET the source manifest once, copy each
blob that the destination lacks (streamed, verified, at most once per destination
repository per run), push child manifests, and push the tagged manifest or index last.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from .errors import AuthError, ImagesyncError, NotFoundError, RegistryError
from .graph import ImageTask, image_tasks
from .manifest import Descriptor, Manifest, ManifestError, filter_index, image_platform
from .pool import Pool
from .reference import Reference
from .report import CONFLICT, FAILED, SAME_DIGEST, SKIPPED, SYNCED, Result
from .rules import Rule
from .store import Repository, Store

# Foreign / non-distributable layers (Windows base layers) are not ours to copy.
FOREIGN = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
           "application/vnd.oci.image.layer.nondistributable")


@dataclass
class Options:
    force: bool = False
    dry_run: bool = False     # read everything, write nothing; results are the plan
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
    selected: asyncio.Task[tuple[Manifest | None, str | None]] | None = None


@dataclass
class Engine:
    stores: Callable[[str], Store]   # registry name -> store
    pool: Pool
    retrying: Callable[[Callable[[], Awaitable[Any]], str], Awaitable[Any]]
    log: Any
    options: Options = field(default_factory=Options)
    # (destination repository, digest) -> the one transfer of that blob in this run
    _blobs: dict[tuple[str, str], asyncio.Task[int]] = field(default_factory=dict)
    # (store, digest) -> a repository of that store known to hold the blob: a mount source
    _holders: dict[tuple[str, str], str] = field(default_factory=dict)
    # (store, digest) -> the upload of that blob into some repository of the store
    _uploading: dict[tuple[str, str], asyncio.Future[None]] = field(default_factory=dict)
    blob_uploads: int = 0  # blobs actually uploaded this run
    blob_mounts: int = 0   # blobs linked by cross-repository mount instead

    async def run(self, rules: list[Rule]) -> list[Result]:
        results: list[Result] = []  # rule-level failures
        by_task: dict[int, list[Result]] = {}
        limit = asyncio.Semaphore(self.options.images_in_flight or self.pool.size * 2)
        seq = 0
        running: set[asyncio.Task[None]] = set()
        claimed: dict[Reference, Reference] = {}  # destination -> the source writing it

        async def run_image(task: ImageTask) -> None:
            try:
                by_task[task.seq] = await self.copy_image(task)
            finally:
                limit.release()

        # Listings run ahead (they are cheap and tell the plan); images start in order.
        listings = [asyncio.ensure_future(self._expand(rule)) for rule in rules]
        for rule, listing in zip(rules, listings, strict=True):
            try:
                expanded = await listing
            except Exception as e:  # the whole rule fails: say so once per destination
                err = describe_error(e)
                results.extend(Result(rule.key, t.name, FAILED, error=err) for t in rule.targets)
                self.log.error("rule failed", rule=rule.key, error=err)
                continue
            for concrete, tags in expanded:
                if isinstance(tags, BaseException):
                    err = describe_error(tags)
                    results.extend(Result(concrete.source_name, t.name, FAILED, error=err)
                                   for t in concrete.targets)
                    self.log.error("rule failed", rule=rule.key, error=err)
                    continue
                bad: list[tuple[Reference, str, str]] = []
                tasks = self._claim(image_tasks(concrete, tags, seq, bad), claimed, results)
                for source, dest_name, err in bad:
                    self.log.error("failed", source=str(source), destination=dest_name,
                                   error=err)
                    results.append(Result(str(source), dest_name, FAILED, error=err))
                seq += len(tasks) + 1
                if not tasks:
                    self.log.warning("no tags selected", rule=rule.key,
                                     repository=concrete.source_name)
                for task in tasks:
                    await limit.acquire()
                    t = asyncio.create_task(run_image(task))
                    running.add(t)
                    t.add_done_callback(running.discard)
        await asyncio.gather(*running)
        return results + [r for seq in sorted(by_task) for r in by_task[seq]]

    def _claim(self, tasks: list[ImageTask], claimed: dict[Reference, Reference],
               results: list[Result]) -> list[ImageTask]:
        """One source per destination tag: a second source mapped to the same destination
        (say a tag_template without {tag}) fails instead of silently overwriting."""
        out = []
        for task in tasks:
            keep = []
            for dest in task.destinations:
                first = claimed.setdefault(dest, task.source) if dest.tag else task.source
                if first == task.source:
                    keep.append(dest)
                    continue
                err = (f"{first} is also copied to {dest} by this run: two sources for one "
                       "destination tag (give tag_template a {tag})")
                self.log.error("failed", source=str(task.source), destination=str(dest),
                               error=err)
                results.append(Result(str(task.source), str(dest), FAILED, error=err))
            if keep:
                out.append(replace(task, destinations=tuple(keep)))
        return out

    async def _expand(self, rule: Rule) -> list[tuple[Rule, list[str] | BaseException | None]]:
        """A rule -> its concrete repositories, each with its tag listing (or the error)."""
        rules = [rule]
        if rule.namespace:
            store = self.stores(rule.registry)
            try:
                async with self.pool.slot(-1):
                    paths = await store.list_repositories()
            except AuthError as e:
                raise AuthError(f"rule {rule.key!r}: {rule.registry} refuses to list its "
                                f"repositories ({e}); name the repositories one by one "
                                "instead", status=e.status) from None
            except NotFoundError as e:
                raise NotFoundError(f"rule {rule.key!r}: {rule.registry} has no catalog "
                                    f"({e}); name the repositories one by one instead",
                                    status=e.status) from None
            except Exception as e:
                raise RegistryError(f"rule {rule.key!r}: cannot list the repositories of "
                                    f"{rule.registry}: {describe_error(e)}") from None
            rules = [rule.for_repository(p) for p in sorted(paths) if rule.wants_repository(p)]
        listings = await asyncio.gather(*(self._list(r) for r in rules), return_exceptions=True)
        return list(zip(rules, listings, strict=True))

    async def _list(self, rule: Rule) -> list[str] | None:
        if not rule.selector.needs_listing:
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
        seq, rule = run.task.seq, run.task.rule
        source = str(run.task.source)
        dst = self.stores(dest.registry).repository(dest.repository,
                                                    push=not self.options.dry_run)

        def result(status: str, digest: str | None, **kw: Any) -> Result:
            r = Result(source, str(dest), status, digest,
                       seconds=round(time.monotonic() - start, 3), **kw)
            level = {FAILED: "error", CONFLICT: "error", SKIPPED: "debug"}.get(status, "info")
            extra = {k: v for k, v in (("error", r.error), ("note", r.note)) if v}
            getattr(self.log, level)(status, source=source, destination=str(dest),
                                     digest=digest, bytes=r.bytes, **extra)
            return r

        try:
            async with self.pool.slot(seq):
                have = await dst.head_manifest(dest.tag or digest)
            if have is not None and have.digest == digest and not self.options.force:
                return result(SKIPPED, digest, note=SAME_DIGEST)
            manifest, note = await self._selected(run, digest)
            if manifest is None:
                return result(SKIPPED, digest, note=note)
            if have is not None and have.digest == manifest.digest and not self.options.force:
                return result(SKIPPED, manifest.digest, note=note or SAME_DIGEST)
            if have is not None and have.digest != manifest.digest and not rule.overwrite:
                return result(CONFLICT, manifest.digest, error=(
                    f"{dest} already points at {have.digest} and the rule says overwrite: "
                    "false; delete that tag, or set overwrite: true"))
            moved = await self._push_tree(run, manifest, dst, dest.tag or manifest.digest)
        except Exception as e:
            return result(FAILED, digest, error=describe_error(e))
        return result(SYNCED, manifest.digest, bytes=moved, note=note)

    def _selected(self, run: _ImageRun, digest: str
                  ) -> asyncio.Task[tuple[Manifest | None, str | None]]:
        """The manifest to push after platform selection (None: nothing selected)."""
        if run.selected is None:
            run.selected = asyncio.ensure_future(self._select_platforms(run, digest))
        return run.selected

    async def _select_platforms(self, run: _ImageRun, digest: str
                                ) -> tuple[Manifest | None, str | None]:
        manifest = await self._manifest(run, digest)
        wanted = run.task.rule.platforms
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
        async with self.pool.slot(run.task.seq):
            async with run.src.open_blob(config) as chunks:
                platform = image_platform(b"".join([c async for c in chunks]))
        if platform is not None and not wanted.matches(platform):
            return None, f"platform {platform} not selected ({wanted})"
        return manifest, None

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
        if not self.options.dry_run:
            async with self.pool.slot(seq):
                await dst.put_manifest(ref, m)
        return moved + m.size

    async def _push_child(self, run: _ImageRun, child: Descriptor, dst: Repository) -> int:
        async with self.pool.slot(run.task.seq):
            have = await dst.head_manifest(child.digest)
        if have is not None and not self.options.force:
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
        src, store_key = run.src, (dst.store_name, desc.digest)
        async with self.pool.slot(run.task.seq):
            if await dst.blob_exists(desc):
                self._holders.setdefault(store_key, dst.path)
                return 0
        if self.options.dry_run:
            # Count what a real run would send: a blob another repository of this
            # registry has (or will have by then) would be mounted, not uploaded.
            if src.store_name == dst.store_name or store_key in self._holders:
                return 0
            self._holders[store_key] = dst.path
            return desc.size
        # Another repository of this registry is receiving the same blob right now: wait
        # for it (holding no slot), then mount from there instead of sending it twice.
        other = self._uploading.get(store_key)
        if other is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(other)
        async with self.pool.slot(run.task.seq):
            if await self._mount(desc, dst, src):
                return 0
            upload = asyncio.ensure_future(dst.put_blob(desc, lambda o: src.open_blob(desc, o)))
            self._uploading.setdefault(store_key, upload)
            try:
                await asyncio.shield(upload)
            finally:
                if self._uploading.get(store_key) is upload:
                    del self._uploading[store_key]
            self.blob_uploads += 1
            self._holders[store_key] = dst.path
            return desc.size

    async def _mount(self, desc: Descriptor, dst: Repository, src: Repository) -> bool:
        """Link the blob from a repository of the same registry: the source repository
        when both share a registry, or one this run has seen holding it."""
        candidates = []
        if src.store_name == dst.store_name:
            candidates.append(src.path)
        holder = self._holders.get((dst.store_name, desc.digest))
        if holder and holder not in candidates and holder != dst.path:
            candidates.append(holder)
        for from_path in candidates:
            try:
                mounted = await dst.mount_blob(desc, from_path)
            except Exception as e:  # a refused mount is no failure: upload instead
                self.log.debug("mount refused", blob=desc.digest, into=dst.name,
                               error=describe_error(e))
                continue
            if mounted:
                self.blob_mounts += 1
                self._holders[(dst.store_name, desc.digest)] = dst.path
                return True
        return False
