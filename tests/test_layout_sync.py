"""OCI layouts in rules, end to end: registry -> layout -> registry keeps every digest
(images, indexes, platform subsets), a namespace goes to one layout per repository, and
an archive carries a repository across an air gap. skopeo reads what was written."""

from __future__ import annotations

import json
import subprocess
import tarfile

from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_index, push_random_image


def _skopeo_raw(skopeo: str, ref: str) -> bytes:
    return subprocess.run([skopeo, "inspect", "--raw", ref], check=True,
                          capture_output=True).stdout


def test_registry_to_layout_to_registry_keeps_every_digest(
        tmp_path, registry_factory, src_registry, dst_registry, src_api, dst_api, skopeo):
    oci = push_random_image(src_api, "team/app", "v1", (3000, 1000), oci=True)
    index = push_index(src_api, "team/app", "multi", oci=True)
    layout = tmp_path / "carry" / "app"
    out = run_cli(tmp_path, {"images": {f"{src_registry.host}/team/app": f"oci:{layout}"}})
    assert out.code == 0, out.stdout + out.stderr
    assert (layout / "oci-layout").exists()
    # skopeo reads the layout imagesync wrote, byte for byte.
    assert _skopeo_raw(skopeo, f"oci:{layout}:v1") == oci.manifest
    assert _skopeo_raw(skopeo, f"oci:{layout}:multi") == index.manifest

    back = run_cli(tmp_path, {"images": {f"oci:{layout}": f"{dst_registry.host}/back/app"}})
    assert back.code == 0, back.stdout + back.stderr
    assert dst_api.head_manifest("back/app", "v1") == oci.digest
    assert dst_api.head_manifest("back/app", "multi") == index.digest
    for child in index.children:
        assert dst_api.head_manifest("back/app", child.digest) == child.digest

    again = run_cli(tmp_path, {"images": {f"oci:{layout}": f"{dst_registry.host}/back/app"}})
    assert again.code == 0 and set(again.statuses().values()) == {"skipped"}


def test_platform_subset_through_a_layout(tmp_path, src_registry, dst_registry, src_api,
                                          dst_api, skopeo):
    push_index(src_api, "app", "multi", oci=True)
    layout = tmp_path / "subset"
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/app:multi": {
        "to": f"oci:{layout}", "platforms": ["linux/arm64"]}}})
    assert run.code == 0, run.stdout + run.stderr
    subset = json.loads(_skopeo_raw(skopeo, f"oci:{layout}:multi"))
    assert [m["platform"]["architecture"] for m in subset["manifests"]] == ["arm64"]
    digest = run.by_destination()[f"oci:{layout}:multi"]["digest"]
    back = run_cli(tmp_path, {"images": {f"oci:{layout}:multi": f"{dst_registry.host}/app"}})
    assert back.code == 0
    assert dst_api.head_manifest("app", "multi") == digest  # the subset's digest, kept


def test_namespace_into_a_directory_gives_a_layout_per_repository(
        tmp_path, src_registry, src_api, skopeo):
    for repo in ("team/a", "team/b/c"):
        push_random_image(src_api, repo, "v1", (500,), oci=True)
    root = tmp_path / "mirror"
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/team/*": f"oci:{root}"}})
    assert run.code == 0, run.stdout + run.stderr
    for repo in ("a", "b/c"):
        assert (root / repo / "oci-layout").exists()
        _skopeo_raw(skopeo, f"oci:{root / repo}:v1")


def test_skopeo_written_layout_is_a_source(tmp_path, src_registry, dst_registry, src_api,
                                           dst_api, skopeo):
    img = push_random_image(src_api, "app", "v1", (2000,), oci=True)
    layout = tmp_path / "by-skopeo"
    subprocess.run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
                    f"docker://{src_registry.host}/app:v1", f"oci:{layout}:v1"],
                   check=True, capture_output=True)
    run = run_cli(tmp_path, {"images": {f"oci:{layout}:v1": f"{dst_registry.host}/copy"}})
    assert run.code == 0, run.stdout + run.stderr
    assert dst_api.head_manifest("copy", "v1") == img.digest


def test_archive_carries_a_repository(tmp_path, src_registry, dst_registry, src_api,
                                      dst_api, skopeo):
    imgs = {t: push_random_image(src_api, "app", t, (1500,), oci=True) for t in ("v1", "v2")}
    archive = tmp_path / "app.tar"
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/app": f"oci-archive:{archive}"}})
    assert run.code == 0, run.stdout + run.stderr
    with tarfile.open(archive) as tar:
        assert "index.json" in tar.getnames()
    assert _skopeo_raw(skopeo, f"oci-archive:{archive}:v2") == imgs["v2"].manifest
    back = run_cli(tmp_path, {"images": {f"oci-archive:{archive}": f"{dst_registry.host}/app"}})
    assert back.code == 0, back.stdout + back.stderr
    for tag, img in imgs.items():
        assert RegistryAPI(dst_registry).head_manifest("app", tag) == img.digest
