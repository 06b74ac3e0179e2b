"""Manifests and media types: what an image is made of, read from its raw bytes.

Manifests are never re-serialised: the bytes fetched are the bytes pushed, so digests
are preserved. Parsing only extracts what the copy needs (children, blobs, platform).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

# Sent on every manifest request. Schema 1 is accepted (last) only so that we can
# recognise it and fail that image with a clear reason instead of a 404.
ACCEPT = ", ".join(
    [OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST,
     f"{DOCKER_SCHEMA1_SIGNED};q=0.1", f"{DOCKER_SCHEMA1};q=0.1"]
)


class ManifestError(ValueError):
    """A manifest that cannot be copied (schema 1, unknown type, malformed JSON)."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class PlatformSelector:
    """Which platforms to copy from an index: ``linux/amd64``, ``linux/arm/v7``; or
    image-syncer's ``--os`` / ``--arch`` lists (``arch:variant`` allowed)."""

    platforms: tuple[Platform, ...] = ()
    oses: tuple[str, ...] = ()
    archs: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, specs: tuple[str, ...] = (), oses: tuple[str, ...] = (),
              archs: tuple[str, ...] = ()) -> PlatformSelector:
        plats = []
        for spec in specs:
            parts = spec.split("/")
            if len(parts) not in (2, 3) or not all(parts):
                raise ValueError(f"invalid platform {spec!r}: use os/arch[/variant]")
            plats.append(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None))
        arch_pairs = []
        for a in archs:
            arch, _, variant = a.partition(":")
            arch_pairs.append((arch, variant or None))
        return cls(tuple(plats), tuple(oses), tuple(arch_pairs))

    def __bool__(self) -> bool:
        return bool(self.platforms or self.oses or self.archs)

    def matches(self, p: Platform | None) -> bool:
        if not self:
            return True
        if p is None:
            return False  # an index entry without a platform (attestations): not selected
        if self.platforms and not any(
            s.os == p.os and s.architecture == p.architecture
            and (s.variant is None or s.variant == p.variant)
            for s in self.platforms
        ):
            return False
        if self.oses and p.os not in self.oses:
            return False
        return not self.archs or any(
            a == p.architecture and (v is None or v == p.variant) for a, v in self.archs)

    def __str__(self) -> str:
        parts = [str(p) for p in self.platforms]
        parts += [f"os={o}" for o in self.oses]
        parts += [f"arch={a}{':' + v if v else ''}" for a, v in self.archs]
        return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content-addressed pointer: media type, digest, size (and platform in an index)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    # The descriptor as written (artifactType, annotations...): re-emitted unchanged.
    raw: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        if self.raw is not None:
            return dict(self.raw)
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.platform is not None:
            out["platform"] = {k: v for k, v in (
                ("os", self.platform.os), ("architecture", self.platform.architecture),
                ("variant", self.platform.variant)) if v}
        if self.urls:
            out["urls"] = list(self.urls)
        return out

    @classmethod
    def from_json(cls, d: dict) -> Descriptor:
        try:
            p = d.get("platform")
            platform = (
                Platform(p.get("os", ""), p.get("architecture", ""), p.get("variant"))
                if isinstance(p, dict) else None
            )
            return cls(str(d.get("mediaType", "")), str(d["digest"]), int(d["size"]),
                       platform, tuple(d.get("urls") or ()), d)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"malformed descriptor {d!r}") from e


@dataclass(frozen=True)
class Manifest:
    """Raw manifest bytes with what was parsed out of them."""

    raw: bytes
    media_type: str
    digest: str
    children: tuple[Descriptor, ...] = ()   # index / manifest list entries
    blobs: tuple[Descriptor, ...] = field(default=())   # config first, then layers

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def size(self) -> int:
        return len(self.raw)

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))


def filter_index(index: Manifest, keep: PlatformSelector) -> Manifest:
    """A new index holding only the selected children (a new digest: the bytes differ)."""
    doc = json.loads(index.raw)
    entries = doc.get("manifests") or []
    kept = [e for e, d in zip(entries, index.children, strict=True) if keep.matches(d.platform)]
    if len(kept) == len(entries):
        return index
    doc["manifests"] = kept
    raw = json.dumps(doc, indent=3).encode()
    return parse_manifest(raw, index.media_type)


def image_platform(config_blob: bytes) -> Platform | None:
    """The platform an image's config blob declares."""
    try:
        doc = json.loads(config_blob)
        return Platform(doc["os"], doc["architecture"], doc.get("variant"))
    except (ValueError, KeyError, TypeError):
        return None


def parse_manifest(raw: bytes, content_type: str | None = None) -> Manifest:
    """Parse raw bytes as served; the media type comes from the body, else the header."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ManifestError(f"manifest is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    header_type = (content_type or "").split(";")[0].strip()
    media_type = doc.get("mediaType") or header_type
    if doc.get("schemaVersion") == 1 or media_type in SCHEMA1_TYPES:
        raise ManifestError(
            "docker schema 1 manifest: deprecated and not copyable with its digest; "
            "rebuild or re-push the image with a current client"
        )
    if not media_type:
        # OCI allows mediaType to be absent; tell an index from an image by shape.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    digest = sha256_digest(raw)
    if media_type in INDEX_TYPES:
        children = tuple(Descriptor.from_json(d) for d in doc.get("manifests") or ())
        return Manifest(raw, media_type, digest, children=children)
    if media_type in IMAGE_TYPES or "layers" in doc:
        if "config" not in doc:
            raise ManifestError(f"{media_type} manifest has no config")
        blobs = [Descriptor.from_json(doc["config"])]
        blobs += [Descriptor.from_json(d) for d in doc.get("layers") or ()]
        return Manifest(raw, media_type, digest, blobs=tuple(blobs))
    raise ManifestError(f"unsupported manifest media type {media_type!r}")
