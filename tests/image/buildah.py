"""Daemonless image building for the image test: Debian's mmdebstrap and buildah.

Everything lives in one cache directory (``IMAGESYNC_IMAGE_CACHE``, default
``/tmp/imagesync-image-test``): buildah's vfs storage and the base image, which is built
once per distinct mmdebstrap recipe (its hash is the tag) and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("IMAGESYNC_IMAGE_CACHE", "/tmp/imagesync-image-test"))
REPO_ROOT = Path(__file__).resolve().parents[2]
DEBIAN_MIRROR = os.environ.get("IMAGESYNC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY = os.environ.get("IMAGESYNC_DEBIAN_SECURITY",
                                 "http://deb.debian.org/debian-security")
SUITE = "bookworm"
#: The base: Debian's essential set + python3 and its venv module, ca-certificates for
#: HTTPS to the package index, passwd for useradd; no docs, man pages or locales.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
BASE_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
)


class BuildError(RuntimeError):
    pass


def run(cmd: list[str], *, timeout: float = 900, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise BuildError(f"{shlex.join(cmd[:6])}... exited {proc.returncode}:\n{tail}")
    return proc


@dataclass
class Buildah:
    """buildah with its own vfs storage under ``root``; chroot isolation throughout."""

    root: Path = CACHE

    def __call__(self, *args: str, timeout: float = 900, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        cmd = ["buildah", "--root", str(self.root / "storage"),
               "--runroot", str(self.root / "run"), "--storage-driver", "vfs", *args]
        # Credentials only from --creds: never the developer's (or the test's) auth files.
        authfile = self.root / "auth.json"
        if not authfile.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            authfile.write_text('{"auths": {}}\n')
        return run(cmd, timeout=timeout, check=check,
                   env={"BUILDAH_ISOLATION": "chroot", "REGISTRY_AUTH_FILE": str(authfile)})

    def has_image(self, name: str) -> bool:
        return self("inspect", "--type", "image", name, check=False).returncode == 0

    def image_size(self, name: str) -> str:
        """Uncompressed size as ``buildah images`` shows it, e.g. ``246 MB``."""
        return self("images", "--format", "{{.Size}}", name).stdout.strip()

    def image_config(self, name: str) -> dict:
        info = json.loads(self("inspect", "--type", "image", name).stdout)
        return info["OCIv1"]["config"]

    def container_config(self, container: str) -> dict:
        info = json.loads(self("inspect", "--type", "container", container).stdout)
        return info["OCIv1"]["config"]


def base_recipe() -> list[str]:
    mirrors = [f"deb {DEBIAN_MIRROR} {SUITE} main",
               f"deb {DEBIAN_MIRROR} {SUITE}-updates main",
               f"deb {DEBIAN_SECURITY} {SUITE}-security main"]
    return ["mmdebstrap", "--variant=essential", "--include=" + ",".join(BASE_PACKAGES),
            *(f"--dpkgopt={o}" for o in BASE_DPKG_OPTS), SUITE, "{rootfs}", *mirrors]


def base_image_name() -> str:
    key = hashlib.sha256(json.dumps(base_recipe()).encode()).hexdigest()[:16]
    return f"localhost/imagesync-test-base:{key}"


def ensure_base_image(buildah: Buildah) -> tuple[str, float | None]:
    """The Debian base image, built unless cached; (name, seconds spent or None if cached)."""
    name = base_image_name()
    if buildah.has_image(name):
        return name, None
    start = time.monotonic()
    buildah.root.mkdir(parents=True, exist_ok=True)
    rootfs = buildah.root / f"rootfs-{name.rsplit(':', 1)[1]}.tar"
    partial = rootfs.with_suffix(".partial.tar")
    partial.unlink(missing_ok=True)
    cmd = [a.replace("{rootfs}", str(partial)) for a in base_recipe()]
    run(cmd, timeout=1800)
    try:
        container = buildah("from", "scratch").stdout.strip()
        try:
            buildah("add", container, str(partial), "/")
            buildah("config", "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd", "/bin/sh", "--os", "linux", "--arch", "amd64",
                    "--created-by", "mmdebstrap " + SUITE, container)
            buildah("commit", "--rm", container, name)
        except BaseException:
            buildah("rm", container, check=False)
            raise
    finally:
        partial.unlink(missing_ok=True)
    return name, time.monotonic() - start


def pip_build_args() -> list[str]:
    """``--build-arg``/``--secret`` that give the build the host's package index: pip's
    index settings from the environment or ``pip config`` (http(s) URLs only: file://
    indexes do not exist inside the build) and the CA bundle pip trusts here, for an
    index behind a TLS-inspecting proxy."""
    settings: dict[str, str] = {}
    pip = shutil.which("pip3") or shutil.which("pip")
    if pip:
        listing = run([pip, "config", "list"], check=False).stdout
        for line in listing.splitlines():
            key, _, value = line.partition("=")
            name = key.rsplit(".", 1)[-1]
            settings.setdefault(name, value.strip().strip("'\""))
    for name in ("index-url", "extra-index-url", "trusted-host", "cert"):
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            settings[name] = env
    args: list[str] = []
    for name, arg in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                      ("trusted-host", "PIP_TRUSTED_HOST")):
        value = " ".join(v for v in settings.get(name, "").split()
                         if name == "trusted-host" or v.startswith(("http://", "https://")))
        if value:
            args += ["--build-arg", f"{arg}={value}"]
    cert = settings.get("cert") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(cert).is_file():
        args += ["--secret", f"id=pip_cert,src={cert}"]
    return args


def build_image(buildah: Buildah, base: str, tag: str, context: Path = REPO_ROOT) -> float:
    """``buildah bud`` the repository's Dockerfile on ``base``; returns the seconds."""
    start = time.monotonic()
    buildah("bud", "--isolation", "chroot", "--build-arg", f"BASE={base}", *pip_build_args(),
            "--pull=never", "-t", tag, "-f", str(context / "Dockerfile"), str(context),
            timeout=1800)
    return time.monotonic() - start
