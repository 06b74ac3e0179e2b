"""The one-liners and image-syncer's flags against real registries: ``copy``, ``tags``,
``digest``, ``verify`` (cross-checked with ``skopeo inspect --raw``), the success and
failed image lists, ``--strict``, ``--config -``."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from imagesync.cli import main
from tests.support.images import RegistryAPI, push_index, push_random_image

SMALL = (512, 256)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def cli(*argv: str, stdin: bytes | None = None) -> Run:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--no-progress", *argv] if argv[0].startswith("-") else
                            [argv[0], "--no-progress", *argv[1:]])
            except SystemExit as e:
                code = int(e.code or 0)
    finally:
        sys.stdin = old
    return Run(code, out.getvalue(), err.getvalue())


def skopeo_digest(skopeo: str, ref: str, creds: str | None = None) -> str | None:
    """sha256 of ``skopeo inspect --raw``: the manifest digest as skopeo reads it."""
    args = [skopeo, "inspect", "--raw", "--tls-verify=false"]
    if creds:
        args += ["--creds", creds]
    proc = subprocess.run([*args, f"docker://{ref}"], capture_output=True, timeout=60)
    if proc.returncode != 0:
        return None
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


# -- copy ------------------------------------------------------------------------------------------

def test_copy_forms(tmp_path, src_registry, dst_registry, src_api, dst_api):
    s, d = src_registry.host, dst_registry.host
    imgs = {t: push_random_image(src_api, "team/app", t, SMALL) for t in
            ("latest", "v1", "v2", "v3")}
    other = push_random_image(src_api, "team/tool", "v1", SMALL)

    r = cli("copy", f"{s}/team/app", f"{d}/one/app")  # no tag: latest, as crane does
    assert r.code == 0, r.stderr
    assert dst_api.tags("one/app") == ["latest"]
    r = cli("copy", f"{s}/team/app:v1", f"{d}/one/renamed:stable", "-p", "2", "-r", "1")
    assert r.code == 0, r.stderr
    assert dst_api.head_manifest("one/renamed", "stable") == imgs["v1"].digest
    r = cli("cp", f"{s}/team/app:v1,v2", f"{d}/list/app")
    assert r.code == 0 and sorted(dst_api.tags("list/app")) == ["v1", "v2"]
    r = cli("copy", "-a", f"{s}/team/app", f"{d}/all/app")
    assert r.code == 0 and sorted(dst_api.tags("all/app")) == ["latest", "v1", "v2", "v3"]
    assert "4 synced, 0 skipped, 0 failed" in r.stdout
    r = cli("copy", f"{s}/team/*", f"{d}/ns")
    assert r.code == 0, r.stderr
    assert dst_api.head_manifest("ns/tool", "v1") == other.digest
    assert sorted(dst_api.tags("ns/app")) == ["latest", "v1", "v2", "v3"]
    r = cli("copy", f"{s}/team/app@{imgs['v3'].digest}", f"{d}/bydigest/app")
    assert r.code == 0 and dst_api.head_manifest("bydigest/app", imgs["v3"].digest)
    # a re-run is a no-op; --force=true re-pushes
    again = cli("copy", "-a", f"{s}/team/app", f"{d}/all/app")
    assert again.code == 0 and "0 synced, 4 skipped" in again.stdout
    forced = cli("copy", "-a", f"{s}/team/app", f"{d}/all/app", "--force=true")
    assert forced.code == 0 and "4 synced, 0 skipped" in forced.stdout


def test_copy_dry_run_report_and_overwrite(tmp_path, src_registry, dst_registry, src_api,
                                          dst_api):
    s, d = src_registry.host, dst_registry.host
    img = push_random_image(src_api, "app", "v1", SMALL)
    report = tmp_path / "r.json"
    r = cli("copy", f"{s}/app:v1", f"{d}/app", "--dry-run", "--report", str(report))
    assert r.code == 0 and "1 to copy" in r.stdout
    assert dst_api.head_manifest("app", "v1") is None
    assert json.loads(report.read_text())["images"][0]["status"] == "would-copy"
    assert cli("copy", f"{s}/app:v1", f"{d}/app").code == 0
    newer = push_random_image(src_api, "app", "v1", SMALL)
    r = cli("copy", f"{s}/app:v1", f"{d}/app", "--no-overwrite")
    assert r.code == 1 and "overwrite: false" in r.stdout
    assert cli("copy", f"{s}/app:v1", f"{d}/app", "-n").code == 1
    assert dst_api.head_manifest("app", "v1") == img.digest
    assert cli("copy", f"{s}/app:v1", f"{d}/app", "--overwrite=true").code == 0
    assert dst_api.head_manifest("app", "v1") == newer.digest


def test_copy_platform_subset(tmp_path, src_registry, dst_registry, src_api, dst_api):
    s, d = src_registry.host, dst_registry.host
    index = push_index(src_api, "multi", "v1")
    r = cli("copy", f"{s}/multi:v1", f"{d}/multi", "--platform", "linux/arm64")
    assert r.code == 0, r.stderr
    pushed = json.loads(dst_api.get_manifest("multi", "v1")[0])
    assert [m["platform"]["architecture"] for m in pushed["manifests"]] == ["arm64"]
    assert dst_api.head_manifest("multi", "v1") != index.digest
    # every platform: the index verbatim
    assert cli("copy", f"{s}/multi:v1", f"{d}/whole").code == 0
    assert dst_api.head_manifest("whole", "v1") == index.digest


def test_copy_credentials(tmp_path, registry_factory, monkeypatch, skopeo):
    src = registry_factory(htpasswd=("reader", "read-pw"), name="csrc")
    dst = registry_factory(htpasswd=("writer", "write-pw"), name="cdst")
    img = push_random_image(RegistryAPI(src), "app", "v1", SMALL)
    dst_api = RegistryAPI(dst)

    r = cli("copy", f"{src.host}/app:v1", f"{dst.host}/app")
    assert r.code == 1  # anonymous: refused, said so
    r = cli("copy", f"{src.host}/app:v1", f"{dst.host}/a1", "--src-creds", "reader:read-pw",
            "--dest-creds", "writer:write-pw", "--src-tls-verify=false")
    assert r.code == 0, r.stdout + r.stderr
    assert "read-pw" not in r.stdout + r.stderr
    assert dst_api.head_manifest("a1", "v1") == img.digest
    # ${VAR} in a --creds value is read from the environment
    monkeypatch.setenv("DST_TOKEN", "write-pw")
    r = cli("copy", f"{src.host}/app:v1", f"{dst.host}/a2", "--src-creds", "reader:read-pw",
            "--dest-creds", "writer:${DST_TOKEN}")
    assert r.code == 0, r.stdout + r.stderr
    # Docker's config.json (DOCKER_CONFIG is a fresh directory in every test)
    config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"auths": {
        src.host: {"auth": base64.b64encode(b"reader:read-pw").decode()},
        dst.host: {"auth": base64.b64encode(b"writer:write-pw").decode()}}}))
    r = cli("copy", f"{src.host}/app:v1", f"{dst.host}/a3", "--insecure")
    assert r.code == 0, r.stdout + r.stderr
    assert skopeo_digest(skopeo, f"{dst.host}/a3:v1", "writer:write-pw") == img.digest
    # tags and digest take the same credentials
    assert cli("tags", f"{src.host}/app").lines == ["v1"]
    config.unlink()
    assert cli("tags", f"{src.host}/app").code == 1
    r = cli("digest", f"{src.host}/app:v1", "--creds", "reader:read-pw")
    assert r.lines == [img.digest]


# -- tags, digest ----------------------------------------------------------------------------------

def test_tags_with_filters(src_registry, src_api):
    for t in ("v1.0.0", "v1.2.0", "v2.0.0", "v2.1.0-rc1", "latest", "nightly"):
        push_random_image(src_api, "app", t, (64,))
    repo = f"{src_registry.host}/app"
    assert sorted(cli("tags", repo).lines) == sorted(
        ["v1.0.0", "v1.2.0", "v2.0.0", "v2.1.0-rc1", "latest", "nightly"])
    assert cli("ls", repo, "--include", r"v\d.*").lines == [
        "v1.0.0", "v1.2.0", "v2.0.0", "v2.1.0-rc1"]
    assert cli("tags", repo, "--include", r"v\d.*", "--exclude=-rc").lines == [
        "v1.0.0", "v1.2.0", "v2.0.0"]
    assert cli("tags", repo, "--semver", ">=1.1 <3").lines == [
        "v1.2.0", "v2.0.0", "v2.1.0-rc1"]
    assert cli("tags", repo, "--latest", "2", "--exclude", "rc").lines == ["v2.0.0", "v1.2.0"]
    sig = "sha256-" + "a" * 64 + ".sig"
    push_random_image(src_api, "app", sig, (64,))
    assert sig in cli("tags", repo).lines
    assert sig not in cli("tags", repo, "-O").lines and len(cli("tags", repo, "-O").lines) == 6
    missing = cli("tags", f"{src_registry.host}/nothing-here")
    assert missing.code == 1 and missing.stderr.count("\n") == 1


def test_digest_matches_skopeo(src_registry, src_api, skopeo):
    img = push_random_image(src_api, "app", "v1", SMALL)
    latest = push_random_image(src_api, "app", "latest", SMALL)
    index = push_index(src_api, "multi", "v1")
    h = src_registry.host
    assert cli("digest", f"{h}/app:v1").lines == [img.digest]
    assert cli("digest", f"{h}/app").lines == [latest.digest]
    assert cli("digest", f"{h}/app@{img.digest}").lines == [img.digest]
    assert cli("digest", f"{h}/multi:v1").lines == [index.digest]
    assert skopeo_digest(skopeo, f"{h}/multi:v1") == index.digest
    arm = cli("digest", f"{h}/multi:v1", "--platform", "linux/arm/v7")
    assert arm.lines == [index.children[2].digest]
    assert cli("digest", f"{h}/multi:v1", "--platform", "windows/amd64").code == 1
    gone = cli("digest", f"{h}/app:nope")
    assert gone.code == 1 and "not found" in gone.stderr


# -- verify ----------------------------------------------------------------------------------------

def test_verify_config_reports_every_drift(tmp_path, src_registry, dst_registry, src_api,
                                           dst_api, skopeo):
    s, d = src_registry.host, dst_registry.host
    for t in ("v1", "v2", "v3"):
        push_random_image(src_api, "app", t, SMALL)
    index = push_index(src_api, "multi", "v1")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"images": {
        f"{s}/app": f"{d}/app",
        f"{s}/multi:v1": {"to": f"{d}/multi", "platforms": ["linux/amd64", "linux/arm64"]},
    }}))
    assert cli("--config", str(cfg)).code == 0
    ok = cli("verify", "--config", str(cfg))
    assert ok.code == 0, ok.stdout + ok.stderr
    assert ok.lines == ["imagesync: verify: 4 match, 0 drift (0 missing, 0 different), 0 errors"]
    # the subset's digest is what was pushed, and what verify compared with
    subset = skopeo_digest(skopeo, f"{d}/multi:v1")
    assert subset != index.digest and subset == cli("digest", f"{d}/multi:v1").lines[0]

    # drift: a destination tag moved to another image, a new source tag not copied yet
    other = push_random_image(dst_api, "app", "v2", SMALL)
    new = push_random_image(src_api, "app", "v4", SMALL)
    bad = cli("verify", "--config", str(cfg))
    assert bad.code == 1
    src_v2 = skopeo_digest(skopeo, f"{s}/app:v2")
    assert skopeo_digest(skopeo, f"{d}/app:v2") == other.digest != src_v2
    assert skopeo_digest(skopeo, f"{d}/app:v4") is None
    assert sorted(bad.lines[:-1]) == sorted([
        f"differs  {s}/app:v2 -> {d}/app:v2: destination {other.digest}, source {src_v2}",
        f"missing  {s}/app:v4 -> {d}/app:v4: not in the destination (source {new.digest})",
    ])
    assert bad.lines[-1] == ("imagesync: verify: 3 match, 2 drift (1 missing, "
                             "1 different), 0 errors")
    # nothing was written by verify
    assert dst_api.head_manifest("app", "v2") == other.digest
    # a sync repairs it, verify agrees
    assert cli("--config", str(cfg)).code == 0
    assert cli("verify", "--config", str(cfg)).code == 0


def test_verify_src_dst(src_registry, dst_registry, src_api, dst_api):
    s, d = src_registry.host, dst_registry.host
    index = push_index(src_api, "multi", "v1")
    assert cli("copy", f"{s}/multi:v1", f"{d}/multi", "--platform", "linux/amd64").code == 0
    # the subset was copied: against the whole index it differs, against the subset not
    whole = cli("verify", f"{s}/multi:v1", f"{d}/multi")
    assert whole.code == 1 and whole.lines[0].startswith("differs")
    assert index.digest in whole.lines[0]
    assert cli("verify", f"{s}/multi:v1", f"{d}/multi", "--platform", "linux/amd64").code == 0
    missing = cli("verify", f"{s}/multi:v1", f"{d}/elsewhere")
    assert missing.code == 1 and missing.lines[0].startswith("missing")
    err = cli("verify", f"{s}/nothing:v1", f"{d}/multi")
    assert err.code == 1 and "not found" in err.stdout


# -- sync with image-syncer's flags ------------------------------------------------------------

def _images(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_success_and_failed_image_lists(tmp_path, src_registry, dst_registry, src_api,
                                        dst_api, fmt):
    s, d = src_registry.host, dst_registry.host
    a1 = push_random_image(src_api, "a", "v1", SMALL)
    push_random_image(src_api, "a", "v2", SMALL)
    auth, images = tmp_path / "auth.yaml", tmp_path / "images.yaml"
    auth.write_text(yaml.safe_dump({s: {"insecure": True}, d: {"insecure": True}}))
    images.write_text(yaml.safe_dump({
        f"{s}/a:v1,v2": [f"{d}/a", f"{d}/b"],
        f"{s}/a:missing": f"{d}/c",
        f"{s}/a:v1": {"to": f"{d}/keep", "overwrite": False},
    }))
    push_random_image(dst_api, "keep", "v1", SMALL)  # a conflict with overwrite: false
    ok, failed = tmp_path / f"ok.{fmt}", tmp_path / f"failed.{fmt}"
    flags = ["--output-success-images", str(ok), "--output-failed-images", str(failed),
             "--output-images-format", fmt]
    r = cli("--auth", str(auth), "--images", str(images), *flags)
    assert r.code == 1
    assert _images(ok) == {f"{s}/a:v1": [f"{d}/a:v1", f"{d}/b:v1"],
                           f"{s}/a:v2": [f"{d}/a:v2", f"{d}/b:v2"]}
    assert _images(failed) == {f"{s}/a:missing": [f"{d}/c:missing"],
                               f"{s}/a:v1": {"to": f"{d}/keep:v1", "overwrite": False}}
    if fmt == "json":
        assert ok.read_text().count("\n") == 1  # one line, as Go's json.Marshal
    else:
        assert ok.read_text().startswith(f"{s}/a:v1:\n- {d}/a:v1\n")

    # the failed list retries exactly the failures: fix them, re-run it
    fixed = push_random_image(src_api, "a", "missing", SMALL)
    again = tmp_path / f"again.{fmt}"
    r = cli("--auth", str(auth), "--images", str(failed), "--output-success-images",
            str(again), "--output-images-format", fmt)
    assert r.code == 1  # the conflict stays a conflict: overwrite: false was kept
    assert "1 synced, 0 skipped, 0 failed, 1 conflicts" in r.stdout
    assert _images(again) == {f"{s}/a:missing": [f"{d}/c:missing"]}
    assert dst_api.head_manifest("c", "missing") == fixed.digest

    # a re-run of everything: skipped images are not in the success list
    r = cli("--auth", str(auth), "--images", str(images), *flags)
    assert _images(ok) in ({}, None)
    assert dst_api.head_manifest("a", "v1") == a1.digest


def test_failed_list_after_a_registry_stopped(tmp_path, registry_factory, src_registry,
                                              src_api):
    s = src_registry.host
    up = registry_factory(name="up")
    down = registry_factory(name="down")
    push_random_image(src_api, "a", "v1", SMALL)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"images": {f"{s}/a:v1": [f"{up.host}/a", f"{down.host}/a"]}}))
    down.stop()
    failed = tmp_path / "failed.yaml"
    r = cli("--config", str(cfg), "--output-failed-images", str(failed), "-r", "0",
            "--timeout", "5")
    assert r.code == 1
    assert yaml.safe_load(failed.read_text()) == {f"{s}/a:v1": [f"{down.host}/a:v1"]}
    assert failed.read_text().startswith("# Images that failed")


def test_strict_stdin_records_and_sync_name(tmp_path, src_registry, dst_registry, src_api,
                                            dst_api):
    s, d = src_registry.host, dst_registry.host
    img = push_random_image(src_api, "a", "v1", SMALL)
    doc = {"images": {f"{s}/a": f"{d}/a", f"{s}/a:/^nothing$/": f"{d}/n"}}
    text = json.dumps(doc).encode()
    r = cli("--config", "-", stdin=text)
    assert r.code == 0 and "matched nothing" in r.stdout
    assert dst_api.head_manifest("a", "v1") == img.digest
    strict = cli("sync", "--config", "-", "--strict", stdin=yaml.safe_dump(doc).encode())
    assert strict.code == 1
    assert f"--strict: rule '{s}/a:/^nothing$/' matched nothing" in strict.stderr
    r = cli("sync", "--config", "-", "--records", "./records", "-p", "3", "--force=false",
            stdin=text)
    assert r.code == 0 and "--records ./records ignored" in r.stderr
    assert "0 synced, 1 skipped" in r.stdout


def test_registry_alone_for_empty_destinations(tmp_path, src_registry, dst_registry, src_api,
                                               dst_api):
    img = push_random_image(src_api, "team/sub/app", "v1", SMALL)
    images = tmp_path / "images.json"
    images.write_text(json.dumps({f"{src_registry.host}/team/sub/app:v1": ""}))
    r = cli("--images", str(images), "--registry", dst_registry.host)
    assert r.code == 0, r.stderr
    assert dst_api.head_manifest("team/sub/app", "v1") == img.digest
    r = cli("--images", str(images), "--registry", dst_registry.host, "--namespace", "ns")
    assert r.code == 0 and dst_api.head_manifest("ns/sub/app", "v1") == img.digest
