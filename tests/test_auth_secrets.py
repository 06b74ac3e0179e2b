"""Secrets stay secret: grep everything a failing run writes for every credential it used.

One run reads from a registry with credentials from a credential helper, and fails to
write to an htpasswd registry (wrong password from the config, via ${VAR}) and to a
token registry (wrong password from Docker's config.json). stdout, stderr, the -v log
and the JSON report must not contain any secret, nor its base64 forms.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.images import RegistryAPI, push_random_image
from tests.support.tokenserver import TEST_USER
from tests.test_auth_registries import HELPER

HELPER_SECRET = "helper-secret-3f9a1c"
CONFIG_SECRET = "config-secret-8d2e7b"
DOCKER_SECRET = "docker-secret-5c4b0a"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forms(user: str, secret: str) -> list[str]:
    return [secret, b64(secret), b64(f"{user}:{secret}"),
            b64(f"{user}:{secret}").rstrip("=")]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_no_secret_in_any_output_of_a_failing_run(tmp_path: Path, registry_factory,
                                                   token_registry, dry_run):
    src = registry_factory(htpasswd=("reader", HELPER_SECRET), name="src")
    dst = registry_factory(htpasswd=("writer", "the-real-password"), name="dst")
    push_random_image(RegistryAPI(src), "app", "v1", (1024,))

    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-fake"
    helper.write_text(HELPER.format(python=sys.executable))
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "helper-db.json").write_text(json.dumps({src.host: ["reader", HELPER_SECRET]}))
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({
        "credHelpers": {src.host: "fake"},
        "auths": {token_registry.host: {"auth": b64(f"{TEST_USER[0]}:{DOCKER_SECRET}")}}}))
    cfg = tmp_path / "imagesync.yaml"
    cfg.write_text(yaml.safe_dump({
        "auth": {dst.host: {"username": "writer", "password": "${DST_PASSWORD}"}},
        "images": {f"{src.host}/app:v1": [f"{dst.host}/app", f"{token_registry.host}/app"]}}))
    log, report = tmp_path / "run.log", tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", DOCKER_CONFIG=str(docker),
               DST_PASSWORD=CONFIG_SECRET, FAKE_HELPER_DB=str(tmp_path / "helper-db.json"),
               FAKE_HELPER_LOG=str(tmp_path / "helper.log"))
    argv = [sys.executable, "-m", "imagesync", "--config", str(cfg), "--log", str(log),
            "--report", str(report), "-v"] + (["--dry-run"] if dry_run else [])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{dst.host}: authentication failed (401)" in proc.stdout
    assert f"{token_registry.host}: token server refused the credentials (401)" in proc.stdout
    outputs = {"stdout": proc.stdout, "stderr": proc.stderr, "log": log.read_text(),
               "report": report.read_text()}
    # -v really logged the run in detail: every request, with its status
    assert re.search(r"Z debug +request +(GET|HEAD) ", outputs["log"]), outputs["log"]
    assert (tmp_path / "helper.log").read_text().strip() == f"get {src.host}"
    secrets = (forms("reader", HELPER_SECRET) + forms("writer", CONFIG_SECRET)
               + forms(TEST_USER[0], DOCKER_SECRET))
    for name, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {name}"
        assert "Basic " not in text and "Bearer ey" not in text, name
