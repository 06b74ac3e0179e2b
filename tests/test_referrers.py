"""Signatures, SBOMs and attestations travel with their image (``referrers: true``).

docker-registry 2.8 has no OCI 1.1 referrers API, so artifacts are found the two ways
clients attach them there: the ``sha256-<hex>`` fallback tag (an index of referrers,
with each referrer's ``subject`` pointing at the image) and cosign's ``.sig`` / ``.att``
/ ``.sbom`` tags. skopeo reads what imagesync wrote.
"""

from __future__ import annotations

import json
import subprocess

from tests.support.cli import run_cli
from tests.support.images import (
    push_cosign_signature,
    push_random_image,
    push_referrer,
    push_referrers_tag,
)

SBOM = "application/spdx+json"
SIG = "application/vnd.dev.sigstore.bundle.v0.3+json"


def _raw(skopeo: str, ref: str) -> bytes:
    return subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                          check=True, capture_output=True).stdout


def test_cosign_tags_and_the_fallback_index_are_copied_with_the_image(
        tmp_path, src_registry, dst_registry, src_api, dst_api, skopeo):
    img = push_random_image(src_api, "app", "v1", (2000,), oci=True)
    sig = push_cosign_signature(src_api, "app", img, "sig")
    att = push_cosign_signature(src_api, "app", img, "att")
    sbom = push_referrer(src_api, "app", img, SBOM, b'{"spdxVersion": "SPDX-2.3"}')
    bundle = push_referrer(src_api, "app", img, SIG, b'{"bundle": 1}')
    fallback = push_referrers_tag(src_api, "app", img, [sbom, bundle], [SBOM, SIG])
    other = push_random_image(src_api, "app", "v2", (1000,), oci=True)  # nothing attached
    # Tags named: an all-tags rule would copy the artifact tags anyway, as plain tags.
    cfg = {"images": {f"{src_registry.host}/app:v1,v2": {"to": f"{dst_registry.host}/app",
                                                         "referrers": True}}}

    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout + run.stderr
    entry = run.by_destination()[f"{dst_registry.host}/app:v1"]
    assert entry["status"] == "synced" and "4 attached artifact(s) copied" in entry["note"]
    tag = img.digest.replace(":", "-", 1)
    for name, pushed in ((f"{tag}.sig", sig), (f"{tag}.att", att)):
        assert dst_api.head_manifest("app", name) == pushed.digest
        assert _raw(skopeo, f"{dst_registry.host}/app:{name}") == pushed.manifest
    # The fallback index is copied byte for byte, and the referrers it lists are there.
    assert dst_api.head_manifest("app", tag) == fallback
    for r in (sbom, bundle):
        body = _raw(skopeo, f"{dst_registry.host}/app@{r.digest}")
        assert body == r.manifest and json.loads(body)["subject"]["digest"] == img.digest
        for blob in r.blobs:
            assert dst_api.blob_exists("app", blob)
    assert dst_api.head_manifest("app", "v2") == other.digest
    other_tag = other.digest.replace(":", "-", 1)
    assert not [t for t in dst_api.tags("app") if t.startswith(other_tag)]

    again = run_cli(tmp_path, cfg)  # a no-op: nothing attached changed
    assert again.code == 0 and set(again.statuses().values()) == {"skipped"}
    assert not any(r["bytes"] for r in again.report["images"])


def test_without_referrers_nothing_attached_is_copied(tmp_path, src_registry, dst_registry,
                                                      src_api, dst_api):
    img = push_random_image(src_api, "app", "v1", (1000,))
    push_cosign_signature(src_api, "app", img, "sig")
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/app:v1":
                                        f"{dst_registry.host}/app"}})
    assert run.code == 0
    assert dst_api.tags("app") == ["v1"]


def test_new_referrers_are_merged_into_the_destinations_fallback_index(
        tmp_path, src_registry, dst_registry, src_api, dst_api):
    img = push_random_image(src_api, "app", "v1", (1000,), oci=True)
    mine = push_referrer(src_api, "app", img, SBOM, b'{"sbom": "source"}')
    push_referrers_tag(src_api, "app", img, [mine], [SBOM])
    # The destination already has the image, with a referrer of its own.
    for b in img.blobs:
        dst_api.push_blob("app", src_api.get_blob("app", b))
    dst_api.push_manifest("app", "v1", img.manifest, img.media_type)
    theirs = push_referrer(dst_api, "app", img, SIG, b'{"sig": "destination"}')
    push_referrers_tag(dst_api, "app", img, [theirs], [SIG])

    cfg = {"images": {f"{src_registry.host}/app:v1": {"to": f"{dst_registry.host}/app",
                                                      "referrers": True}}}
    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout + run.stderr
    body, _, _ = dst_api.get_manifest("app", img.digest.replace(":", "-", 1))
    listed = {m["digest"]: m.get("artifactType") for m in json.loads(body)["manifests"]}
    assert listed == {theirs.digest: SIG, mine.digest: SBOM}
