"""The imagesync container image, built and used as a CI-plugin step, without a daemon.

1. a Debian root from mmdebstrap, committed with buildah (cached by its recipe's hash);
2. ``buildah bud`` of the repository's Dockerfile with ``BASE`` = that image;
3. ``buildah push`` to loopback registry A, then imagesync itself copies it A -> B
   (htpasswd on B);
4. ``buildah from`` B, and its entrypoint run (``buildah run --isolation chroot``) with
   ``PLUGIN_*`` settings copies an image between two other loopback registries (htpasswd on
   both); skopeo checks the copy; a second build under the same tag is a conflict (exit 1).

Build time, image sizes and the test's own time go to ``<cache>/last-run.json`` and are
printed (``make test-image`` shows them).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

import imagesync.cli
from tests.image.buildah import CACHE, REPO_ROOT, Buildah, build_image, ensure_base_image
from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_random_image

PLUGIN_MODE = hasattr(imagesync.cli, "PLUGIN_MODE")


def _tools() -> None:
    import shutil
    missing = [t for t in ("buildah", "mmdebstrap", "skopeo") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `make test-image`, which installs "
                    "them with apt-get", pytrace=False)


def _skopeo_digest(skopeo: str, ref: str, creds: str) -> str:
    out = subprocess.run([skopeo, "inspect", "--tls-verify=false", "--creds", creds,
                          f"docker://{ref}"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    return json.loads(out)["Digest"]


def test_image_builds_and_runs_as_a_plugin(tmp_path, registry_factory, skopeo):
    _tools()
    started = time.monotonic()
    buildah = Buildah()
    results: dict = {"repo": str(REPO_ROOT)}

    base, base_seconds = ensure_base_image(buildah)
    results["base_image"] = base
    results["base_build_seconds"] = round(base_seconds, 1) if base_seconds else "cached"
    results["base_size"] = buildah.image_size(base)

    tag = f"localhost/imagesync:test-{secrets.token_hex(4)}"
    container = None
    registries = []
    try:
        results["build_seconds"] = round(build_image(buildah, base, tag), 1)
        results["image_size"] = buildah.image_size(tag)
        config = buildah.image_config(tag)
        assert config["Entrypoint"] == ["imagesync"]
        assert config["User"] not in ("", "0", "root") and not config["User"].startswith("0:")

        # buildah pushes to A; imagesync copies A -> B (B wants a password).
        reg_a = registry_factory(name="image-a")
        reg_b = registry_factory(htpasswd=("image-pusher", "b-pw-7"), name="image-b")
        registries += [reg_a, reg_b]
        buildah("push", "--tls-verify=false", tag, f"docker://{reg_a.host}/tools/imagesync:1")
        api_a = RegistryAPI(reg_a)
        raw, _, pushed_digest = api_a.get_manifest("tools/imagesync", "1")
        layers = json.loads(raw)["layers"]
        results["image_compressed_bytes"] = sum(layer["size"] for layer in layers)
        results["image_layer_bytes"] = [layer["size"] for layer in layers]
        copy = run_cli(tmp_path, {
            "auth": {reg_b.host: {"username": "image-pusher", "password": "b-pw-7"}},
            "images": {f"{reg_a.host}/tools/imagesync:1": f"{reg_b.host}/tools/imagesync"}})
        assert copy.code == 0, copy.stdout + copy.stderr
        assert copy.statuses() == {f"{reg_b.host}/tools/imagesync:1": "synced"}
        assert RegistryAPI(reg_b).head_manifest("tools/imagesync", "1") == pushed_digest

        # The plugin step: the image from B, its own entrypoint, PLUGIN_* settings.
        container = buildah("from", "--tls-verify=false", "--creds", "image-pusher:b-pw-7",
                            "--pull=always", f"docker://{reg_b.host}/tools/imagesync:1"
                            ).stdout.strip().splitlines()[-1]
        entrypoint = buildah.container_config(container)["Entrypoint"]
        version = buildah("run", "--isolation", "chroot", container, "--", *entrypoint,
                          "--version")
        assert version.stdout.startswith("imagesync ")
        whoami = buildah("run", "--isolation", "chroot", container, "--", "id", "-u").stdout
        assert whoami.strip() == "10001"
        if not PLUGIN_MODE:
            results["plugin_run"] = "skipped: imagesync.cli has no PLUGIN_MODE yet"
            pytest.skip("image built and pushed; plugin mode not wired in the CLI yet")

        src = registry_factory(htpasswd=("ci-reader", "src-secret-1"), name="plugin-src")
        dst = registry_factory(htpasswd=("ci-pusher", "dst-secret-2"), name="plugin-dst")
        image = push_random_image(RegistryAPI(src), "app", "v1", (4096, 1024))
        settings = {"PLUGIN_SOURCE": f"{src.host}/app:v1",
                    "PLUGIN_DESTINATION": f"{dst.host}/mirror/app:v1",
                    "PLUGIN_SOURCE_USERNAME": "ci-reader",
                    "PLUGIN_SOURCE_PASSWORD": "src-secret-1",
                    "PLUGIN_USERNAME": "ci-pusher", "PLUGIN_PASSWORD": "dst-secret-2"}
        env_args = [a for k, v in settings.items() for a in ("--env", f"{k}={v}")]

        def plugin_step() -> subprocess.CompletedProcess[str]:
            return buildah("run", "--isolation", "chroot", *env_args, container, "--",
                           *entrypoint, check=False, timeout=300)

        t0 = time.monotonic()
        step = plugin_step()
        results["plugin_step_seconds"] = round(time.monotonic() - t0, 1)
        output = step.stdout + step.stderr
        assert step.returncode == 0, output
        assert "src-secret-1" not in output and "dst-secret-2" not in output
        assert _skopeo_digest(skopeo, f"{dst.host}/mirror/app:v1",
                              "ci-pusher:dst-secret-2") == image.digest

        # overwrite defaults to false: a new build under the same tag is a conflict.
        push_random_image(RegistryAPI(src), "app", "v1", (4096, 1024))
        again = plugin_step()
        assert again.returncode == 1, again.stdout + again.stderr
        assert _skopeo_digest(skopeo, f"{dst.host}/mirror/app:v1",
                              "ci-pusher:dst-secret-2") == image.digest
        results["plugin_run"] = "copied; overwrite=false conflict exit 1"
    finally:
        if container:
            buildah("rm", container, check=False)
        for name in (tag, *(f"{r.host}/tools/imagesync:1" for r in registries)):
            buildah("rmi", "-f", name, check=False)
        results["test_seconds"] = round(time.monotonic() - started, 1)
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "last-run.json").write_text(json.dumps(results, indent=1) + "\n")
        print("\nimage test:", json.dumps(results))
