"""Registry push events -> pushed images, as plain data. No I/O here.

Two senders, told apart by the content (their Content-Type headers are not reliable:
Harbor sends ``application/json``, proxies rewrite headers):

* the CNCF distribution registry's notifications: an envelope ``{"events": [...]}``
  (``application/vnd.docker.distribution.events.v2+json``); an event with action
  ``push`` and a manifest target (``target.repository``, ``target.tag``,
  ``target.digest``, ``target.mediaType``, ``target.url``) is a pushed image; pulls,
  mounts, deletes and blob pushes are ignored. The registry host is ``request.host``,
  else the host of ``target.url``.
* Harbor's webhook ``PUSH_ARTIFACT`` payload (``pushImage`` before Harbor 2.0, and the
  CloudEvents form ``harbor.artifact.pushed``): ``event_data.repository.repo_full_name``
  and one entry per ``event_data.resources[]`` with ``tag``, ``digest`` and
  ``resource_url`` (``host/project/repo:tag``), whose host is the registry's.

Anything else is refused with :class:`PayloadError` (the server answers 400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DISTRIBUTION, HARBOR = "distribution", "harbor"
DISTRIBUTION_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"

#: Manifest media types; blob pushes carry a layer or config type (or octet-stream).
MANIFEST_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
})
HARBOR_PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "pushImage", "harbor.artifact.pushed"})


class PayloadError(ValueError):
    """Not a payload this server understands (HTTP 400)."""


@dataclass(frozen=True)
class PushedImage:
    """One image a registry says was pushed: ``tag`` or ``digest`` or both."""

    host: str | None        # the registry as the sender names it (host[:port])
    repository: str
    tag: str | None
    digest: str | None


@dataclass
class Payload:
    sender: str             # DISTRIBUTION or HARBOR
    pushes: list[PushedImage]
    ignored: int            # events that are not image pushes (pulls, blobs, ...)


def parse(body: bytes) -> Payload:
    """Parse one delivery; raise :class:`PayloadError` when it is neither format."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadError(f"the body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PayloadError("the body is not a JSON object")
    if isinstance(doc.get("events"), list):
        return _distribution(doc["events"])
    if "event_data" in doc and "type" in doc:
        return _harbor(str(doc["type"]), doc["event_data"])
    if "specversion" in doc and str(doc.get("type", "")).startswith("harbor."):
        return _harbor(str(doc["type"]), doc.get("data"))
    raise PayloadError("neither a distribution notification envelope ({\"events\": [...]}) "
                       "nor a Harbor webhook payload ({\"type\": ..., \"event_data\": ...})")


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _host_of_url(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).netloc or None
    except ValueError:
        return None


def _is_manifest(target: dict[str, Any]) -> bool:
    url = _str(target.get("url")) or ""
    if "/manifests/" in url:
        return True
    if "/blobs/" in url:
        return False
    return target.get("mediaType") in MANIFEST_TYPES


def _distribution(events: list[Any]) -> Payload:
    out = Payload(DISTRIBUTION, [], 0)
    for ev in events:
        target = ev.get("target") if isinstance(ev, dict) else None
        if (not isinstance(target, dict) or ev.get("action") != "push"
                or not _is_manifest(target) or not _str(target.get("repository"))):
            out.ignored += 1
            continue
        raw = ev.get("request")
        request: dict[str, Any] = raw if isinstance(raw, dict) else {}
        host = _str(request.get("host")) or _host_of_url(_str(target.get("url")))
        tag, digest = _str(target.get("tag")), _str(target.get("digest"))
        if tag is None and digest is None:
            out.ignored += 1
            continue
        out.pushes.append(PushedImage(host, str(target["repository"]), tag, digest))
    return out


def _harbor(kind: str, data: Any) -> Payload:
    if kind not in HARBOR_PUSH_TYPES:
        return Payload(HARBOR, [], 1)  # pulls, deletes, scans, quota, replication...
    if not isinstance(data, dict):
        raise PayloadError("Harbor payload without event_data")
    raw = data.get("repository")
    repo: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = _str(repo.get("repo_full_name"))
    if name is None and _str(repo.get("namespace")) and _str(repo.get("name")):
        name = f"{repo['namespace']}/{repo['name']}"
    resources = data.get("resources")
    if name is None or not isinstance(resources, list):
        raise PayloadError("Harbor push payload without event_data.repository.repo_full_name "
                           "or event_data.resources")
    out = Payload(HARBOR, [], 0)
    for res in resources:
        if not isinstance(res, dict):
            out.ignored += 1
            continue
        url = _str(res.get("resource_url"))
        host = url.split("/", 1)[0] if url and "/" in url else None
        tag, digest = _str(res.get("tag")), _str(res.get("digest"))
        if tag is None and digest is None:
            out.ignored += 1
            continue
        out.pushes.append(PushedImage(host, name, tag, digest))
    return out
