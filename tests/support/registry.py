"""Start throw-away CNCF distribution (``docker-registry``) processes on loopback.

Used by the pytest fixtures, ``make demo`` and ``make bench``; no pytest import here.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import http.client
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .certs import CertAuthority

if TYPE_CHECKING:
    from .tokenserver import TokenIssuer

#: Binary names tried in order: Debian's package, then upstream's release tarball.
REGISTRY_BINARIES = ("docker-registry", "registry")
START_TIMEOUT = 15.0
POLL_INTERVAL = 0.02
INSTALL_HINT = "run `make test`, which installs docker-registry (Debian package docker-registry)"


#: What the pytest ``registry_factory`` fixture returns: ``**start_registry kwargs -> reg``.
RegistryFactory = Callable[..., "LocalRegistry"]


class RegistryStartError(RuntimeError):
    """The registry process exited or never answered ``GET /v2/``; message has the log tail."""


def find_registry_binary() -> str | None:
    """Path of the distribution binary, honouring ``IMAGESYNC_REGISTRY_BIN``."""
    override = os.environ.get("IMAGESYNC_REGISTRY_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in REGISTRY_BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    """A currently free loopback TCP port (racy by nature; start_registry retries on clashes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalRegistry:
    """A running registry process; ``stop()`` (or leaving the ``with`` block) kills it."""

    host: str
    url: str
    root: Path
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_file: Path | None = None
    config_file: Path | None = None

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def storage(self) -> Path:
        """Filesystem-driver root, for tests that want to corrupt or inspect blobs."""
        return self.root / "data"

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        """Image reference on this registry, e.g. ``127.0.0.1:5000/foo/bar:v1``."""
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file or not self.log_file.exists():
            return ""
        text = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 5 s; idempotent."""
        proc, self.process = self.process, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def __enter__(self) -> LocalRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unique_dir(workdir: Path, name: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    candidate, n = workdir / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = workdir / f"{name}-{n}"


def bcrypt_htpasswd_line(user: str, password: str) -> str:
    """``user:$2y$...`` — distribution only accepts bcrypt.

    Uses ``htpasswd`` (apache2-utils) when present, else libxcrypt's crypt(3) via ctypes,
    because apache2-utils is not a dependency of Debian's docker-registry.
    """
    exe = shutil.which("htpasswd")
    if exe:
        out = subprocess.run(
            [exe, "-Bbn", user, password], check=True, capture_output=True, text=True
        ).stdout
        return out.strip()
    libname = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(libname)
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    # The last salt char only carries 2 bits; "." "O" "e" "u" keep the salt canonical.
    salt = "".join(secrets.choice(alphabet) for _ in range(21)) + secrets.choice(".Oeu")
    hashed = lib.crypt(password.encode(), f"$2b$05${salt}".encode())
    if not hashed or not hashed.startswith(b"$2"):
        raise RuntimeError("no bcrypt available: install apache2-utils (htpasswd)")
    return f"{user}:{hashed.decode()}"


def _config(
    root: Path,
    port: int,
    *,
    tls: tuple[Path, Path] | None,
    htpasswd_file: Path | None,
    token: TokenIssuer | None,
) -> dict[str, Any]:
    http_cfg: dict[str, Any] = {
        "addr": f"127.0.0.1:{port}",
        # A fixed secret silences the "generated random secret" warning on every start.
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls:
        http_cfg["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    cfg: dict[str, Any] = {
        "version": 0.1,
        # The access log (one line per request) lets tests assert on what was sent.
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http_cfg,
        "health": {"storagedriver": {"enabled": False}},
    }
    if htpasswd_file and token:
        raise ValueError("htpasswd and token auth are mutually exclusive")
    if htpasswd_file:
        cfg["auth"] = {"htpasswd": {"realm": "imagesync-test", "path": str(htpasswd_file)}}
    if token:
        cfg["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.cert_file),
            }
        }
    return cfg


def _probe(url: str, ctx: ssl.SSLContext | None) -> int | str:
    """Status of ``GET /v2/``, or the connection error while nothing answers yet."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    conn: http.client.HTTPConnection
    if ctx is not None:
        conn = http.client.HTTPSConnection(host, int(port), timeout=2, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/v2/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException) as exc:  # incl. ssl.SSLError
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def start_registry(
    workdir: Path,
    *,
    tls: bool = False,
    htpasswd: tuple[str, str] | None = None,
    token: TokenIssuer | None = None,
    name: str = "registry",
    ca: CertAuthority | None = None,
    timeout: float = START_TIMEOUT,
    reuse: bool = False,
    notify: dict[str, Any] | None = None,
) -> LocalRegistry:
    """Start ``docker-registry serve`` in ``workdir/<name>`` and wait until ``/v2/`` answers.

    ``ca``: sign the TLS cert with this CA (implies ``tls``) so several registries share
    one ``ca_file``; otherwise a fresh CA is made under the registry dir.
    ``reuse``: keep using ``workdir/<name>`` and its stored images (the demo's second run).
    ``notify``: send push/pull notifications to one endpoint (``url``, ``headers``; a short
    retry backoff unless given).
    """
    binary = find_registry_binary()
    if binary is None:
        raise FileNotFoundError(f"docker-registry not found on PATH: {INSTALL_HINT}")
    if reuse:
        root = Path(workdir) / name
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = _unique_dir(Path(workdir), name)
    tls = tls or ca is not None
    tls_files: tuple[Path, Path] | None = None
    ca_file: Path | None = None
    if tls:
        ca = ca or CertAuthority.create(root / "ca")
        tls_files = ca.issue_server_cert(root / "tls")
        ca_file = ca.cert_file
    htpasswd_file: Path | None = None
    if htpasswd:
        htpasswd_file = root / "htpasswd"
        htpasswd_file.write_text(bcrypt_htpasswd_line(*htpasswd) + "\n")
    # REGISTRY_* variables would silently override the config file; never inherit them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    log_file = root / "registry.log"
    config_file = root / "config.yml"
    last_error = ""
    for _attempt in range(3):  # free_port() can race with other processes: retry on clash
        port = free_port()
        cfg = _config(root, port, tls=tls_files, htpasswd_file=htpasswd_file, token=token)
        if notify:  # one notifications endpoint: {"url": ..., "headers": {k: [v]}, ...}
            cfg["notifications"] = {"endpoints": [{
                "name": "test", "timeout": "2s", "threshold": 2, "backoff": "100ms",
                "ignoredmediatypes": ["application/octet-stream"], **notify}]}
        config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        scheme = "https" if tls else "http"
        reg = LocalRegistry(
            host=f"127.0.0.1:{port}",
            url=f"{scheme}://127.0.0.1:{port}",
            root=root,
            username=htpasswd[0] if htpasswd else None,
            password=htpasswd[1] if htpasswd else None,
            ca_file=ca_file,
            log_file=log_file,
            config_file=config_file,
        )
        with log_file.open("ab") as log:
            reg.process = subprocess.Popen(
                [binary, "serve", str(config_file)],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(reg.stop)
        ctx = reg.ssl_context()
        deadline = time.monotonic() + timeout
        probe: int | str = "not probed"
        while time.monotonic() < deadline:
            if reg.process.poll() is not None:
                break
            probe = _probe(reg.url, ctx)
            if probe in (200, 401):
                return reg
            time.sleep(POLL_INTERVAL)
        exited = reg.process.poll() is not None
        reg.stop()
        last_error = f"last probe: {probe}\n{reg.log_tail()}"
        if not (exited and "address already in use" in last_error):
            break
    raise RegistryStartError(
        f"docker-registry in {root} did not answer GET /v2/ within {timeout:.0f}s; "
        f"log tail:\n{last_error}"
    )
