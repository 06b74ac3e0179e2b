"""The engine end to end: real registries, every image-syncer rule form, re-runs."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_index, push_random_image
from tests.support.registry import LocalRegistry


def requests_since(reg: LocalRegistry, mark: int) -> list[str]:
    """``"METHOD /path?query"`` of every request the registry served after ``mark``,
    without the once-per-run ``GET /v2/`` ping."""
    text = reg.log_file.read_text()[mark:]
    return [r for r in re.findall(r'"([A-Z]+ /v2/[^ "]*) HTTP/', text) if r != "GET /v2/"]


def log_mark(reg: LocalRegistry) -> int:
    return len(reg.log_file.read_text())


def _insecure(*regs: LocalRegistry) -> dict:
    return {r.host: {"insecure": True} for r in regs}


def test_all_tags_then_idempotent_rerun(tmp_path: Path, src_registry, dst_registry, src_api,
                                        dst_api):
    images = {t: push_random_image(src_api, "team/app", t, (4096, 1024)) for t in ("v1", "v2")}
    cfg = {"auth": _insecure(src_registry, dst_registry),
           "images": {f"{src_registry.host}/team/app": f"{dst_registry.host}/mirror/app"}}

    first = run_cli(tmp_path, cfg)
    assert first.code == 0, first.stderr
    assert sorted(dst_api.tags("mirror/app")) == ["v1", "v2"]
    for tag, img in images.items():
        assert dst_api.head_manifest("mirror/app", tag) == img.digest
        entry = first.by_destination()[f"{dst_registry.host}/mirror/app:{tag}"]
        assert entry["status"] == "synced" and entry["digest"] == img.digest
        assert entry["bytes"] >= 4096 + 1024 and entry["seconds"] >= 0
    assert "2 synced, 0 skipped, 0 failed" in first.stdout

    second = run_cli(tmp_path, cfg)
    assert second.code == 0
    assert set(second.statuses().values()) == {"skipped"}
    assert second.report["summary"]["bytes"] == 0
    assert "0 synced, 2 skipped, 0 failed" in second.stdout


def test_rerun_costs_no_source_get_and_no_blob_traffic(tmp_path, src_registry, dst_registry,
                                                       src_api):
    push_random_image(src_api, "a", "v1")
    cfg = {"images": {f"{src_registry.host}/a:v1": f"{dst_registry.host}/a"}}
    assert run_cli(tmp_path, cfg).code == 0
    src_mark, dst_mark = log_mark(src_registry), log_mark(dst_registry)
    assert run_cli(tmp_path, cfg).code == 0
    # The no-op run made one HEAD of each manifest and nothing else.
    assert requests_since(src_registry, src_mark) == ["HEAD /v2/a/manifests/v1"]
    assert requests_since(dst_registry, dst_mark) == ["HEAD /v2/a/manifests/v1"]


def test_one_tag_several_tags_rename_and_regex(tmp_path, src_registry, dst_registry, src_api,
                                               dst_api):
    pushed = {t: push_random_image(src_api, "team/api", t) for t in
              ("v1", "v2", "v3", "v1.10", "v1.2", "v10.1", "latest")}
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {
        f"{s}/team/api:v1": f"{d}/one/api",
        f"{s}/team/api:v1,v2,v3": f"{d}/several/api",
        f"{s}/team/api:v2": f"{d}/renamed/api:stable",
        f"{s}/team/api:v1,v2": f"{d}/pairs/api:a,b",
        f"{s}/team/api:/^v1\\.[0-9]+$/": f"{d}/regex/api",
    }}
    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout + run.stderr
    assert dst_api.tags("one/api") == ["v1"]
    assert sorted(dst_api.tags("several/api")) == ["v1", "v2", "v3"]
    assert dst_api.tags("renamed/api") == ["stable"]
    assert dst_api.head_manifest("renamed/api", "stable") == pushed["v2"].digest
    assert dst_api.head_manifest("pairs/api", "a") == pushed["v1"].digest
    assert dst_api.head_manifest("pairs/api", "b") == pushed["v2"].digest
    assert sorted(dst_api.tags("regex/api")) == ["v1.10", "v1.2"]


def test_digest_source_and_several_destinations(tmp_path, src_registry, dst_registry,
                                                registry_factory, src_api, dst_api):
    third = registry_factory(name="third")
    img = push_random_image(src_api, "team/db", "v1")
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {
        f"{s}/team/db@{img.digest}": f"{d}/mirror/db:pinned",
        f"{s}/team/db": [f"{d}/a/db", f"{third.host}/b/db"],
    }}
    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout
    assert dst_api.head_manifest("mirror/db", "pinned") == img.digest
    assert dst_api.head_manifest("a/db", "v1") == img.digest
    assert RegistryAPI(third).head_manifest("b/db", "v1") == img.digest


@pytest.mark.parametrize("oci", [False, True], ids=["docker-manifest-list", "oci-index"])
def test_index_copied_verbatim_children_first(tmp_path, src_registry, dst_registry, src_api,
                                              dst_api, skopeo, oci):
    index = push_index(src_api, "multi", "v1", oci=oci)
    cfg = {"images": {f"{src_registry.host}/multi:v1": f"{dst_registry.host}/multi"}}
    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout
    raw, _, digest = dst_api.get_manifest("multi", "v1")
    assert digest == index.digest and raw == index.manifest
    for child in index.children:
        assert dst_api.head_manifest("multi", child.digest) == child.digest
        for blob in child.blobs:
            assert dst_api.blob_exists("multi", blob)
    # An independent client agrees on what was written.
    out = subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false",
         f"docker://{dst_registry.host}/multi:v1"], capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(out).hexdigest() == index.digest


def test_oci_manifest_and_blob_dedup_in_flight(tmp_path, src_registry, dst_registry, src_api,
                                               dst_api):
    base = [b"shared-base-layer" * 1000]
    for t in ("a", "b", "c", "d"):
        push_random_image(src_api, "oci", t, (512,), oci=True, base_layers=base)
    cfg = {"images": {f"{src_registry.host}/oci": f"{dst_registry.host}/oci"}}
    mark = log_mark(dst_registry)
    run = run_cli(tmp_path, cfg, "--proc", "8")
    assert run.code == 0
    shared = hashlib.sha256(base[0]).hexdigest()
    puts = [r for r in requests_since(dst_registry, mark)
            if r.startswith("PUT ") and "/blobs/uploads/" in r]
    # Five distinct blobs per image... but the shared layer is uploaded once, although
    # four images needed it at the same time.
    assert sum(shared in r for r in puts) == 1
    assert len(puts) == 1 + 4 * 2  # shared + (own layer + config) per image
    assert sorted(dst_api.tags("oci")) == ["a", "b", "c", "d"]


def test_missing_tag_and_schema_failures_are_reported(tmp_path, src_registry, dst_registry,
                                                      src_api):
    push_random_image(src_api, "ok", "v1")
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {f"{s}/ok:v1": f"{d}/ok", f"{s}/ok:nope": f"{d}/ok",
                      f"{s}/absent": f"{d}/absent"}}
    run = run_cli(tmp_path, cfg)
    assert run.code == 1
    st = run.statuses()
    assert st[f"{d}/ok:v1"] == "synced"
    assert st[f"{d}/ok:nope"] == "failed"
    assert "not found" in run.by_destination()[f"{d}/ok:nope"]["error"]
    assert st[f"{d}/absent"] == "failed"
    assert "1 synced, 0 skipped, 2 failed" in run.stdout
    assert "absent" in run.stdout and "Traceback" not in run.stderr


def test_force_repushes_identical_manifest(tmp_path, src_registry, dst_registry, src_api):
    push_random_image(src_api, "f", "v1")
    cfg = {"images": {f"{src_registry.host}/f": f"{dst_registry.host}/f"}}
    assert run_cli(tmp_path, cfg).code == 0
    run = run_cli(tmp_path, cfg, "--force")
    assert run.statuses() == {f"{dst_registry.host}/f:v1": "synced"}
    assert run.report["summary"]["bytes"] < 2048  # manifest only: blobs were present


def test_separate_auth_and_images_files(tmp_path, src_registry, dst_registry, src_api, dst_api):
    push_random_image(src_api, "sep", "v1")
    (tmp_path / "auth.json").write_text(
        f'{{"{dst_registry.host}": {{"insecure": true}}}}')
    (tmp_path / "images.json").write_text(
        f'{{"{src_registry.host}/sep": "{dst_registry.host}/sep"}}')
    run = run_cli(tmp_path, None, "--auth", str(tmp_path / "auth.json"),
                  "--images", str(tmp_path / "images.json"))
    assert run.code == 0, run.stdout + run.stderr
    assert dst_api.tags("sep") == ["v1"]


def test_empty_destination_uses_default_registry_and_namespace(tmp_path, src_registry,
                                                               dst_registry, src_api, dst_api):
    push_random_image(src_api, "org/tool", "v1")
    cfg = {"images": {f"{src_registry.host}/org/tool": ""}}
    run = run_cli(tmp_path, cfg, "--registry", dst_registry.host, "--namespace", "default")
    assert run.code == 0, run.stdout
    assert dst_api.tags("default/tool") == ["v1"]


def test_htpasswd_basic_auth(tmp_path, registry_factory, src_registry, src_api):
    locked = registry_factory(htpasswd=("robot", "s3cret-pass"), name="locked")
    push_random_image(src_api, "app", "v1")
    rule = {f"{src_registry.host}/app": f"{locked.host}/app"}
    denied = run_cli(tmp_path, {"images": rule})
    assert denied.code == 1 and "authentication failed" in denied.stdout
    cfg = {"auth": {locked.host: {"username": "robot", "password": "${ROBOT_PW}"}},
           "images": rule}
    import os
    os.environ["ROBOT_PW"] = "s3cret-pass"
    try:
        run = run_cli(tmp_path, cfg)
    finally:
        del os.environ["ROBOT_PW"]
    assert run.code == 0, run.stdout
    assert RegistryAPI(locked, username="robot", password="s3cret-pass").tags("app") == ["v1"]


def test_bearer_token_auth(tmp_path, token_registry, token_issuer, src_registry, src_api):
    push_random_image(src_api, "app", "v1")
    push_random_image(src_api, "app", "v2")
    user, password = next(iter(token_issuer.users.items()))
    cfg = {"auth": {token_registry.host: {"username": user, "password": password}},
           "images": {f"{src_registry.host}/app": f"{token_registry.host}/team/app"}}
    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout + run.stderr
    scopes = [r["scope"] for r in token_issuer.requests]
    assert any("repository:team/app:pull,push" in s for s in scopes)
    # One token for the repository, shared by both images and all their requests.
    assert len(token_issuer.requests) <= 2
    api = RegistryAPI(token_registry, username=user, password=password)
    assert sorted(api.tags("team/app")) == ["v1", "v2"]
