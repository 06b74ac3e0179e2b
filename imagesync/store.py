"""The scheme interface: where images live, as the copier sees it.

A *store* is a set of repositories reached one way: a registry over the distribution API
(``registry.py``) or a directory of OCI image layouts (``layout.py``). The copier only
talks to these two protocols, so any store can be a source or a destination.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from .manifest import Descriptor, Manifest

# Opens a blob's bytes from an offset: lets a destination resume a broken transfer.
BlobOpener = Callable[[int], AbstractAsyncContextManager[AsyncIterator[bytes]]]


class Repository(Protocol):
    """One repository of a store: its tags, manifests and blobs."""

    @property
    def name(self) -> str:
        """Human-readable full name (``registry/path``, ``oci:/dir``): reports, errors."""

    @property
    def path(self) -> str:
        """The repository's path inside its store."""

    @property
    def store(self) -> str:
        """Which store holds it (``Store.name``): blobs can be linked between
        repositories of one store without moving their bytes."""

    async def list_tags(self) -> list[str]: ...

    async def head_manifest(self, ref: str) -> Descriptor | None:
        """The manifest's descriptor by tag or digest, or None when it does not exist.
        No body is read where the store can avoid it."""

    async def get_manifest(self, ref: str) -> Manifest:
        """The manifest by tag or digest; raises NotFoundError when it does not exist."""

    async def put_manifest(self, ref: str, manifest: Manifest) -> None:
        """Store ``manifest`` byte for byte under ``ref`` (a tag, or its own digest)."""

    async def blob_exists(self, desc: Descriptor) -> bool: ...

    def open_blob(self, desc: Descriptor, offset: int = 0
                  ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a blob's bytes from ``offset`` in bounded chunks."""

    async def put_blob(self, desc: Descriptor, source: BlobOpener) -> None:
        """Store a blob read from ``source``, verifying its digest and size, resuming
        after transient failures where the store can. Raises IntegrityError for bytes
        that do not match ``desc`` (and then stores nothing under that digest)."""

    async def referrers(self, digest: str) -> list[Descriptor] | None:
        """The manifests whose ``subject`` is ``digest`` (signatures, SBOMs,
        attestations) by the OCI 1.1 referrers API; None when the store has no such
        API (then the ``sha256-<hex>`` fallback tag is where they are listed)."""

    async def link_blob(self, desc: Descriptor, from_path: str) -> bool:
        """Make the blob present by reference to repository ``from_path`` of the same
        store (a registry's cross-repository mount); False when the store could not."""


class Store(Protocol):
    """A registry, or a directory of layouts: a set of repositories."""

    @property
    def name(self) -> str: ...

    def repository(self, path: str, *, write: bool = False) -> Repository:
        """``write``: the caller will write to it (a registry asks for push rights once,
        up front, rather than a second token later)."""

    async def list_repositories(self) -> list[str]: ...
