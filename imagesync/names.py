"""Names: where an image lives, and which image.

A reference names a *store* (where), a repository in it, and a tag and/or digest:

* a registry: ``registry[:port]/path/name[:tag][@digest]``, following the grammar of
  distribution's ``reference`` package, with Docker Hub's defaults (a name without a
  registry lives on ``docker.io``; a one-component name there lives under ``library/``);
* an OCI image layout: ``oci:/dir/of/layout[:tag][@digest]``. Its store is the
  directory that holds the layout (``oci:/dir/of``), the repository is the layout's
  own directory name (``layout``), so a namespace copied into ``oci:/mirror`` gives one
  layout per repository below ``/mirror``.

The store is the ``registry`` field, with a scheme prefix for anything not a registry,
so everything keyed by a registry name (stores, auth, queues) works for every scheme.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

#: Scheme prefixes of stores that are not registries.
OCI = "oci:"
OCI_ARCHIVE = "oci-archive:"
_SCHEMES = (OCI_ARCHIVE, OCI)

DOCKER_HUB = "docker.io"
# Every spelling users give Docker Hub; all mean the same registry.
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")


class InvalidReference(ValueError):
    """A string that is not a valid image reference."""


def _looks_like_domain(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or (
        component.startswith("[")
    )


def scheme_of(store: str) -> str:
    """``registry``, ``oci`` or ``oci-archive``: how a store is reached."""
    for prefix in _SCHEMES:
        if store.startswith(prefix):
            return prefix[:-1]
    return "registry"


def _split_local(name: str) -> tuple[str, str]:
    """``oci:/a/b/dir`` -> (``oci:/a/b``, ``dir``); relative paths become absolute."""
    prefix = next(p for p in _SCHEMES if name.startswith(p))
    path = name[len(prefix):]
    if not path:
        raise InvalidReference(f"{name!r}: give a directory after {prefix!r}")
    full = os.path.abspath(os.path.expanduser(path))
    parent, base = os.path.split(full)
    if not base:
        raise InvalidReference(f"{name!r}: the root directory cannot be a layout")
    return f"{prefix}{parent}", base


def canonical_registry(registry: str) -> str:
    """Fold Docker Hub's aliases into ``docker.io``; lower-case host names."""
    if scheme_of(registry) != "registry":
        return registry
    registry = registry.lower()
    return DOCKER_HUB if registry in DOCKER_HUB_ALIASES else registry


def split_name(name: str) -> tuple[str, str]:
    """Split a repository name (no tag, no digest) into (registry, repository).

    ``ubuntu`` -> (docker.io, library/ubuntu); ``host:5000/a/b`` -> (host:5000, a/b).
    """
    if not name:
        raise InvalidReference("empty image name")
    if scheme_of(name) != "registry":
        return _split_local(name)
    first, _, rest = name.partition("/")
    if rest and _looks_like_domain(first):
        registry, path = canonical_registry(first), rest
        if not _DOMAIN_RE.match(first):
            raise InvalidReference(f"invalid registry host {first!r} in {name!r}")
    else:
        registry, path = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH_RE.match(path):
        raise InvalidReference(
            f"invalid repository {path!r} in {name!r}: use lower-case letters, digits "
            "and separators (. _ - /)"
        )
    return registry, path


def split_tag_part(ref: str) -> tuple[str, str | None]:
    """Split ``name:tagspec`` at the tag colon (never at a registry port's colon)."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash and not any(ref[:colon + 1] == p for p in _SCHEMES):
        return ref[:colon], ref[colon + 1 :]
    return ref, None


@dataclass(frozen=True, slots=True)
class Reference:
    """One image: a repository plus a tag or a digest (or neither, for a repository)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Reference:
        name, _, digest = ref.partition("@")
        if digest and not DIGEST_RE.match(digest):
            raise InvalidReference(f"invalid digest {digest!r} in {ref!r}")
        name, tag = split_tag_part(name)
        if tag is not None and not TAG_RE.match(tag):
            raise InvalidReference(f"invalid tag {tag!r} in {ref!r}")
        registry, repository = split_name(name)
        return cls(registry, repository, tag, digest or None)

    @property
    def scheme(self) -> str:
        return scheme_of(self.registry)

    @property
    def name(self) -> str:
        """``registry/repository``, the repository's full name."""
        return f"{self.registry}/{self.repository}"

    @property
    def ref(self) -> str:
        """What goes after ``/manifests/`` in a request: the digest wins over the tag."""
        ref = self.digest or self.tag
        if ref is None:
            raise InvalidReference(f"{self.name} has neither a tag nor a digest")
        return ref

    def with_tag(self, tag: str | None) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out
