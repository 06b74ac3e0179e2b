"""The core's promises, end to end against real registries and the fault proxy:

* a registry that throttles everything does not slow another registry's images;
* a registry that cannot be reached costs one backoff cycle in all, not one per image;
* a registry that accepts connections and never answers fails in bounded time;
* Ctrl-C / SIGTERM leave a summary, a report and no half-pushed image; a re-run finishes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_random_image
from tests.support.proxy import Fault, Proxy

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_throttled_registry_does_not_slow_a_healthy_one(tmp_path, registry_factory,
                                                        src_registry, dst_registry):
    slow = registry_factory(name="throttled")
    healthy_api, slow_api = RegistryAPI(src_registry), RegistryAPI(slow)
    for i in range(16):
        push_random_image(healthy_api, "ok", f"v{i}", (3000,))
        push_random_image(slow_api, "busy", f"v{i}", (3000,))
    with Proxy(slow.host) as proxy:
        proxy.add(Fault(status=429, headers={"Retry-After": "1"}, times=None))
        tags = ",".join(f"v{i}" for i in range(16))
        cfg = {"images": {f"{proxy.host}/busy:{tags}": f"{dst_registry.host}/busy",
                          f"{src_registry.host}/ok": f"{dst_registry.host}/ok"}}
        # The throttled rule comes first: a shared pool would fill with its waiters.
        run = run_cli(tmp_path, cfg, "--proc", "8", "--retries", "2")
    assert run.code == 1
    by_dest = run.by_destination()
    healthy = [r for d, r in by_dest.items() if "/ok:" in d]
    throttled = [r for d, r in by_dest.items() if "/busy" in d]
    assert len(healthy) == 16 and {r["status"] for r in healthy} == {"synced"}
    assert throttled and {r["status"] for r in throttled} == {"failed"}
    assert all("429" in r["error"] for r in throttled)
    # Each throttled image waited out Retry-After twice before failing; each healthy image
    # took less time than that: none of them waited on the throttled registry.
    assert min(r["seconds"] for r in throttled) >= 2.0
    assert max(r["seconds"] for r in healthy) < min(r["seconds"] for r in throttled)


def test_unreachable_registry_costs_one_backoff_cycle_in_all(tmp_path, dst_registry):
    port = _closed_port()
    cfg = {"images": {f"127.0.0.1:{port}/app:v{i}": f"{dst_registry.host}/app"
                      for i in range(20)}}
    run = run_cli(tmp_path, cfg, "--retries", "3", "--proc", "4")
    assert run.code == 1
    results = run.report["images"]
    assert len(results) == 20 and {r["status"] for r in results} == {"failed"}
    for r in results:
        assert r["error"].startswith(f"127.0.0.1:{port} is unreachable (")
        assert "gave up after 4 attempts" in r["error"]
    # One line per failure cycle of the registry (3 retries), one when it is given up on:
    # not one per image and attempt.
    lines = run.stderr.splitlines()
    assert sum("registry unreachable" in line for line in lines) == 3, run.stderr
    assert sum("registry down" in line for line in lines) == 1
    assert not [line for line in lines
                if "retrying" in line and "registry unreachable" not in line]


def test_stalled_registry_fails_in_bounded_time_while_others_finish(
        tmp_path, registry_factory, src_registry, dst_registry):
    stalled = registry_factory(name="stalled")
    push_random_image(RegistryAPI(stalled), "hang", "v1", (1000,))
    good = {f"v{i}": push_random_image(RegistryAPI(src_registry), "ok", f"v{i}", (2000,))
            for i in range(3)}
    with Proxy(stalled.host) as proxy:
        proxy.add(Fault(path="/v2/hang/", stall=60.0, stall_after=0, times=None))
        cfg = {"images": {f"{proxy.host}/hang:v1": f"{dst_registry.host}/hang",
                          f"{src_registry.host}/ok": f"{dst_registry.host}/ok"}}
        run = run_cli(tmp_path, cfg, "--timeout", "1", "--retries", "1")
    assert run.code == 1
    by_dest = run.by_destination()
    err = by_dest[f"{dst_registry.host}/hang:v1"]["error"]
    # The error names the request that stalled and how long it waited.
    assert re.search(rf"(HEAD|GET) http://{proxy.host}/v2/hang/manifests/\S+: no answer "
                     r"within 1s; gave up after 2 attempts", err), err
    assert by_dest[f"{dst_registry.host}/hang:v1"]["seconds"] < 10
    for tag in good:
        assert by_dest[f"{dst_registry.host}/ok:{tag}"]["status"] == "synced"


def test_stall_longer_than_the_timeout_is_retried_and_recovers(tmp_path, src_registry,
                                                              dst_registry):
    img = push_random_image(RegistryAPI(src_registry), "app", "v1", (300_000,))
    with Proxy(src_registry.host) as proxy:
        fault = proxy.add(Fault(method="GET", path=f"/blobs/{img.blobs[0]}", stall=5.0,
                                stall_after=1000))
        run = run_cli(tmp_path, {"images": {f"{proxy.host}/app": f"{dst_registry.host}/app"}},
                      "--timeout", "1", "-v")
    assert run.code == 0, run.stdout + run.stderr
    assert fault.hits == 1
    # It timed out after 1 s rather than sit out the 5 s stall, and read again.
    assert re.search(r"retrying.*read blob \S+ from byte \d+", run.stderr), run.stderr
    assert run.report["images"][0]["seconds"] < 5.0
    assert RegistryAPI(dst_registry).head_manifest("app", "v1") == img.digest


def _start_cli(tmp_path: Path, cfg: dict, *args: str) -> subprocess.Popen[str]:
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "imagesync", "--config", str(path), "--report",
         str(tmp_path / "report.json"), "--log", str(tmp_path / "log.txt"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _no_half_pushed_image(api: RegistryAPI, repo: str) -> list[str]:
    """Every tag in ``repo`` has a manifest whose blobs are all there."""
    complete = []
    for tag in _tags(api):
        manifest = json.loads(api.get_manifest(repo, tag)[0])
        for d in [manifest["config"], *manifest["layers"]]:
            assert api.blob_exists(repo, d["digest"]), (tag, d["digest"])
        complete.append(tag)
    return complete


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_mid_run_leaves_summary_report_and_whole_images(tmp_path, src_registry,
                                                             dst_registry, signum, code):
    api = RegistryAPI(src_registry)
    images = {f"v{i}": push_random_image(api, "app", f"v{i}", (400_000, 2000))
              for i in range(12)}
    dst = RegistryAPI(dst_registry)
    with Proxy(src_registry.host, bandwidth=1_500_000) as proxy:  # ~0.3 s per image
        cfg = {"images": {f"{proxy.host}/app": f"{dst_registry.host}/app"}}
        proc = _start_cli(tmp_path, cfg, "--proc", "2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_tags(dst)) < 2:
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out + err
    assert "received: stopping" in err and "Traceback" not in err
    log = (tmp_path / "log.txt").read_text()
    assert "retrying" not in log  # a stop is not a network failure
    report = json.loads((tmp_path / "report.json").read_text())
    statuses = {r["destination"]: r["status"] for r in report["images"]}
    assert set(statuses.values()) <= {"synced", "interrupted"}
    assert "interrupted" in statuses.values() and "synced" in statuses.values()
    assert f"{report['summary']['interrupted']} interrupted" in out
    complete = _no_half_pushed_image(dst, "app")
    synced = sorted(d.rsplit(":", 1)[1] for d, s in statuses.items() if s == "synced")
    assert sorted(complete) == synced  # nothing pushed that the report does not say

    rerun = run_cli(tmp_path, {"images": {f"{src_registry.host}/app":
                                          f"{dst_registry.host}/app"}})
    assert rerun.code == 0, rerun.stdout + rerun.stderr
    for tag, img in images.items():
        assert dst.head_manifest("app", tag) == img.digest


def _tags(api: RegistryAPI) -> list[str]:
    try:
        return api.tags("app")
    except Exception:  # no tag yet: the repository is unknown to the registry
        return []
