"""Where images live, as the engine sees it.

The engine only talks to these two interfaces, so a registry (``registry.py``) and,
later, an OCI image-layout directory can both be a source or a destination.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from .manifest import Descriptor, Manifest

# Opens a blob's bytes from an offset: lets a destination resume a broken transfer.
BlobOpener = Callable[[int], AbstractAsyncContextManager[AsyncIterator[bytes]]]


class Repository(Protocol):
    """One repository: its tags, manifests and blobs."""

    name: str        # human-readable "registry/repository", for reports and errors
    path: str        # the repository path inside its store
    store_name: str  # which store: blobs can be mounted between repositories of one store

    async def list_tags(self) -> list[str]: ...

    async def head_manifest(self, ref: str) -> Descriptor | None:
        """The manifest's descriptor, or None when it does not exist. No body is fetched."""

    async def get_manifest(self, ref: str) -> Manifest: ...

    async def put_manifest(self, ref: str, manifest: Manifest) -> None: ...

    async def blob_exists(self, desc: Descriptor) -> bool: ...

    def open_blob(self, desc: Descriptor, offset: int = 0
                  ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a blob's bytes from ``offset`` in bounded chunks."""

    async def put_blob(self, desc: Descriptor, source: BlobOpener) -> None:
        """Store a blob read from ``source``, verifying its digest and size, retrying and
        resuming after transient failures. Raises IntegrityError for bytes that do not
        match ``desc`` (and then stores nothing)."""

    async def mount_blob(self, desc: Descriptor, from_path: str) -> bool:
        """Link a blob from another repository of the same store; False if it could not."""


class Store(Protocol):
    """A registry or a layout: a set of repositories."""

    name: str

    def repository(self, path: str, *, push: bool = False) -> Repository: ...

    async def list_repositories(self) -> list[str]: ...
