"""``imagesync serve``: real docker-registry processes send their notifications to a
running server, which mirrors what the rules take to another real registry.

Most tests run the server in a thread with its own event loop (the test helpers push
synchronously); the signal test runs ``imagesync serve`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from imagesync.config import load_document
from imagesync.errors import ConfigError
from imagesync.log import Redactor, make_logger
from imagesync.serve import (
    ServeOptions,
    Server,
    load_serve_config,
    load_serve_document,
    parse_duration,
)
from imagesync.session import Settings
from imagesync.webhooks import DISTRIBUTION, HARBOR, PayloadError, PushedImage, parse
from tests.support.images import RegistryAPI, push_index, push_random_image, seed_many
from tests.support.images import RegistryError as ImagesRegistryError
from tests.support.registry import RegistryFactory, free_port

TOKEN = "s3cret-webhook-token-0123456789"
WRONG = "not-the-token-9876543210abcdef"
SMALL = (256,)
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "serve"


# -- harness ---------------------------------------------------------------------------------

class ServerThread:
    """A :class:`Server` on its own event loop in a thread, listening on ``sock``."""

    def __init__(self, config: Path, log: Path, sock: socket.socket | None = None, *,
                 queue: int = 64, interval: float = 0, grace: float = 10):
        self.sock = sock or _listening_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        settings = Settings(proc=4, retries=2, backoff_initial=0.05, timeout=10)
        self.options = ServeOptions(f"127.0.0.1:{self.port}", interval, queue, grace,
                                    settings)
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        redact = Redactor()
        self._log_file = self.log_path.open("a", encoding="utf-8")
        log = make_logger(redact, self._log_file, verbose=True)
        env = {**os.environ, "WEBHOOK_TOKEN": TOKEN}

        async def start() -> Server:
            server = Server(str(self.config), self.options, log, redact, environ=env)
            await server.start(self.sock)
            return server

        self.server = self.call(start())
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float | None = None) -> bool:
        if self.server is None:
            return True
        server, self.server = self.server, None
        try:
            return bool(self.call(server.shutdown(grace)))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
            self._log_file.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        status, body = http_request(self.url, "GET", "/metrics")
        assert status == 200
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def metric(self, name: str, **labels: str) -> float:
        return sum(v for lab, v in self.metrics().get(name, [])
                   if all(lab.get(k) == x for k, x in labels.items()))

    def wait_full_syncs(self, n: int, timeout: float = 20) -> None:
        wait_for(lambda: self.server is not None and self.server.full_syncs >= n, timeout,
                 f"{n} full sync(s)")


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def http_request(base: str, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host = base.split("://", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post_event(base: str, payload: Any, token: str | None = TOKEN, **headers: str
               ) -> tuple[int, bytes]:
    h = {"Content-Type": "application/json", **headers}
    if token is not None and "Authorization" not in headers:
        h["Authorization"] = f"Bearer {token}"
    return http_request(base, "POST", "/events", payload, h)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.02
             ) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def has_manifest(api: RegistryAPI, repo: str, tag: str) -> str | None:
    """The tag's digest, or None. docker-registry answers 500 to a HEAD that races the
    tag's write (its link file is not there whole yet): not there yet either."""
    try:
        return api.head_manifest(repo, tag)
    except ImagesRegistryError as e:
        if e.status == 500:
            return None
        raise


def write_config(path: Path, images: dict[str, Any], serve: dict[str, Any] | None = None,
                 auth: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {"serve": {"token": "${WEBHOOK_TOKEN}", **(serve or {})}}
    if auth:
        doc["auth"] = auth
    doc["images"] = images
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def notify_to(port: int, token: str = TOKEN, **extra: Any) -> dict[str, Any]:
    return {"url": f"http://127.0.0.1:{port}/events",
            "headers": {"Authorization": [f"Bearer {token}"]}, **extra}


@pytest.fixture
def serve_thread(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def factory(config: Path, sock: socket.socket | None = None, **kw: Any) -> ServerThread:
        st = ServerThread(config, tmp_path / f"serve-{len(started)}.log", sock, **kw)
        started.append(st)
        return st.start()

    yield factory
    for st in started:
        st.stop(grace=0)


def distribution_envelope(host: str, repo: str, tag: str | None, digest: str,
                          action: str = "push") -> dict[str, Any]:
    """A notification as docker-registry 2.8 sends it (recorded, ids shortened)."""
    return {"events": [{
        "id": "ffd04c57-d59c-4559-8e75-98c889e2bd26",
        "timestamp": "2026-01-23T12:32:22.3295716Z",
        "action": action,
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 732, "digest": digest, "length": 732, "repository": repo,
            "url": f"http://{host}/v2/{repo}/manifests/{digest}",
            **({"tag": tag} if tag else {}),
        },
        "request": {"id": "3021929d", "addr": "127.0.0.1:32954", "host": host,
                    "method": "PUT", "useragent": ""},
        "actor": {},
        "source": {"addr": "vm:5000", "instanceID": "5e5b177c"},
    }]}


def harbor_payload(resource_host: str, project_repo: str, tag: str, digest: str,
                   kind: str = "PUSH_ARTIFACT") -> dict[str, Any]:
    """Harbor 2.x's default webhook payload for one pushed artifact."""
    namespace, _, name = project_repo.partition("/")
    return {
        "type": kind,
        "occur_at": 1700000000,
        "operator": "robot$ci",
        "event_data": {
            "resources": [{
                "digest": digest, "tag": tag,
                "resource_url": f"{resource_host}/{project_repo}:{tag}",
            }],
            "repository": {"date_created": 1690000000, "name": name,
                           "namespace": namespace, "repo_full_name": project_repo,
                           "repo_type": "private"},
        },
    }


# -- payloads, durations, config (no registries) ------------------------------------------

def test_parse_distribution_ignores_pulls_and_blobs() -> None:
    env = distribution_envelope("reg:5000", "team/app", "v1", "sha256:" + "a" * 64)
    blob = json.loads(json.dumps(env["events"][0]))
    blob["target"].update(mediaType="application/octet-stream",
                          url="http://reg:5000/v2/team/app/blobs/sha256:" + "b" * 64)
    del blob["target"]["tag"]
    pull = json.loads(json.dumps(env["events"][0]))
    pull["action"] = "pull"
    env["events"] += [blob, pull]
    p = parse(json.dumps(env).encode())
    assert p.sender == DISTRIBUTION and p.ignored == 2
    assert p.pushes == [PushedImage("reg:5000", "team/app", "v1", "sha256:" + "a" * 64)]


def test_parse_harbor_forms() -> None:
    digest = "sha256:" + "c" * 64
    p = parse(json.dumps(harbor_payload("harbor.example.com", "proj/app", "v1", digest)
                         ).encode())
    assert p.sender == HARBOR
    assert p.pushes == [PushedImage("harbor.example.com", "proj/app", "v1", digest)]
    cloud = {"specversion": "1.0", "type": "harbor.artifact.pushed", "id": "x",
             "data": harbor_payload("h.io", "proj/app", "v2", digest)["event_data"]}
    assert parse(json.dumps(cloud).encode()).pushes[0].tag == "v2"
    pulled = parse(json.dumps(harbor_payload("h.io", "p/a", "v1", digest, "PULL_ARTIFACT")
                              ).encode())
    assert pulled.pushes == [] and pulled.ignored == 1
    for bad in (b"not json", b"[]", b'{"hello": 1}'):
        with pytest.raises(PayloadError):
            parse(bad)


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600), ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("0", 0), ("2.5", 2.5),
    ("500ms", 0.5)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_serve_config_block_is_validated(tmp_path: Path) -> None:
    env = {"WEBHOOK_TOKEN": TOKEN}
    images = {"src.example.com/team/app": "dst.example.com/team/app"}
    cfg, serve = load_serve_document(
        {"serve": {"token": "${WEBHOOK_TOKEN}", "registry": {"r:5000": "src.example.com"},
                   "coalesce": 1}, "images": images}, "c.yaml", env)
    assert serve.token == TOKEN and serve.coalesce == 1.0
    assert serve.registry_of("r:5000") == "src.example.com"
    assert serve.registry_of("other.io") == "other.io"
    assert len(cfg.rules) == 1
    with pytest.raises(ConfigError, match=r"serve: unknown key 'tokn': did you mean 'token'"):
        load_serve_document({"serve": {"tokn": TOKEN}, "images": images}, "c.yaml", env)
    with pytest.raises(ConfigError, match=r"serve: is required"):
        load_serve_document({"images": images}, "c.yaml", env)
    with pytest.raises(ConfigError, match="WEBHOOK_TOKEN is not set"):
        load_serve_document({"serve": {"token": "${WEBHOOK_TOKEN}"}, "images": images},
                            "c.yaml", {})


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    from imagesync.cli import main
    with pytest.raises(SystemExit) as e:
        main(["serve", "--config", "x.yaml", "--interval", "soon"])
    assert e.value.code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("images: {a.io/x: b.io/x}\n")
    assert main(["serve", "--config", str(bad)]) == 2


# -- examples ----------------------------------------------------------------------------------

def test_serve_examples(tmp_path: Path) -> None:
    env = {"WEBHOOK_TOKEN": TOKEN, "SRC_PASSWORD": "p", "DST_PASSWORD": "p"}
    cfg, serve = load_serve_config(str(EXAMPLES / "serve.yaml"), env)
    assert serve.token == TOKEN and cfg.rules
    reg = yaml.safe_load((EXAMPLES / "distribution-config.yml").read_text())
    [endpoint] = reg["notifications"]["endpoints"]
    assert endpoint["url"].endswith("/events")
    assert endpoint["headers"]["Authorization"][0].startswith("Bearer ")
    assert endpoint["backoff"] and endpoint["threshold"]
    policy = json.loads((EXAMPLES / "harbor-webhook-policy.json").read_text())
    [target] = policy["targets"]
    assert target["address"].endswith("/events") and target["auth_header"].startswith("Bearer")
    assert "PUSH_ARTIFACT" in policy["event_types"]
    # the rules are a valid imagesync config for one-off syncs too
    rest = yaml.safe_load((EXAMPLES / "serve.yaml").read_text())
    rest.pop("serve")
    assert load_document(rest, "serve.yaml", environ=env).rules


# -- against real registries -------------------------------------------------------------------

def test_push_is_mirrored_with_template_filter_and_namespaces(
        registry_factory: RegistryFactory, serve_thread: Callable[..., ServerThread],
        tmp_path: Path) -> None:
    sock = _listening_socket()
    port = sock.getsockname()[1]
    # every event, blob pushes too: the server must tell them apart itself
    src = registry_factory(name="src", notify=notify_to(port, ignoredmediatypes=[]))
    dst = registry_factory(name="dst")
    s, d = src.host, dst.host
    config = write_config(tmp_path / "serve.yaml", {
        f"{s}/team/app": {"to": [f"{d}/mirror/app", f"{d}/backup/app"],
                          "tags": {"ends_with": "stable"}, "tag_template": "{tag}-mirrored"},
        f"{s}/ns/*": {"to": f"{d}/nsmirror", "exclude_repos": ["-test$"],
                      "platforms": ["linux/arm64"]},
    })
    st = serve_thread(config, sock)
    st.wait_full_syncs(1)
    src_api, dst_api = RegistryAPI(src), RegistryAPI(dst)
    # not taken: a tag the filter refuses, a repository no rule names, an excluded one
    push_random_image(src_api, "team/app", "v1", SMALL)
    push_random_image(src_api, "other/repo", "v1-stable", SMALL)
    push_random_image(src_api, "ns/svc-test", "v1", SMALL)
    # taken
    pushed = push_random_image(src_api, "team/app", "v2-stable", SMALL)
    index = push_index(src_api, "ns/deep/svc", "v3", layer_sizes=SMALL)
    t0 = time.monotonic()
    wait_for(lambda: all(has_manifest(dst_api, r, "v2-stable-mirrored")
                         for r in ("mirror/app", "backup/app"))
             and has_manifest(dst_api, "nsmirror/deep/svc", "v3"), 20, "the mirror")
    print(f"mirrored in {time.monotonic() - t0:.2f}s")
    assert dst_api.head_manifest("mirror/app", "v2-stable-mirrored") == pushed.digest
    # platforms: [linux/arm64] -> a new index with only that child
    arm = json.loads(dst_api.get_manifest("nsmirror/deep/svc", "v3")[0])
    assert [m["platform"]["architecture"] for m in arm["manifests"]] == ["arm64"]
    assert index.digest != dst_api.head_manifest("nsmirror/deep/svc", "v3")
    # the ignored pushes were delivered first (one endpoint delivers in order)
    assert dst_api.tags("mirror/app") == ["v2-stable-mirrored"]
    assert sorted(dst_api.catalog()) == ["backup/app", "mirror/app", "nsmirror/deep/svc"]
    m = st.metrics()
    synced = {(lab["rule"], lab["trigger"]): v for lab, v in m["imagesync_images_total"]
              if lab["status"] == "synced"}
    assert synced == {(f"{s}/team/app", "event"): 2, (f"{s}/ns/*", "event"): 1}
    assert st.metric("imagesync_events_total", sender="distribution", outcome="ignored") >= 3
    assert st.metric("imagesync_event_to_mirror_seconds_count") == 2
    assert st.metric("imagesync_bytes_total") > 0
    assert st.metric("imagesync_queue_depth") == 0
    # (the start-up sync found team/app missing: "failed", and said so in the log)
    assert st.metric("imagesync_full_syncs_total", trigger="start-up") == 1
    for name in ("imagesync_retries_total", "imagesync_copies_in_flight"):
        assert name in m
    status, _ = http_request(st.url, "GET", "/healthz")
    assert status == 200


def test_sender_authentication(registry_factory: RegistryFactory,
                               serve_thread: Callable[..., ServerThread],
                               tmp_path: Path) -> None:
    src = registry_factory(name="src")
    dst = registry_factory(name="dst")
    config = write_config(tmp_path / "serve.yaml", {
        f"{src.host}/team/app": f"{dst.host}/mirror/app"}, {"header": "X-Hook-Secret"})
    st = serve_thread(config)
    pushed = push_random_image(RegistryAPI(src), "team/app", "v1", SMALL)
    env = distribution_envelope(src.host, "team/app", "v1", pushed.digest)
    assert post_event(st.url, env, token=WRONG)[0] == 401
    assert post_event(st.url, env, token=None)[0] == 401
    assert post_event(st.url, env, token=None, Authorization=f"Basic {WRONG}")[0] == 401
    assert post_event(st.url, env, token=None, **{"X-Hook-Secret": WRONG})[0] == 401
    # a wrong token from a real registry is refused too, again and again (it retries)
    bad = registry_factory(name="bad", notify=notify_to(st.port, WRONG))
    push_random_image(RegistryAPI(bad), "team/app", "v1", SMALL)
    wait_for(lambda: st.metric("imagesync_events_total", outcome="unauthorized") >= 6, 10,
             "the registry's refused deliveries")
    assert not has_manifest(RegistryAPI(dst), "mirror/app", "v1")
    log = st.log()
    assert "refused event" in log and "wrong token" in log and "no token" in log
    assert WRONG not in log and TOKEN not in log
    # the three accepted forms: Bearer, Harbor's verbatim auth header, the secret header
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"Authorization": TOKEN},
                    {"X-Hook-Secret": TOKEN}):
        status, _ = post_event(st.url, env, token=None, **headers)
        assert status == 202, headers
    wait_for(lambda: has_manifest(RegistryAPI(dst), "mirror/app", "v1"), 10, "the mirror")
    # three deliveries of one tag close together: coalesced into at most two copies
    assert st.metric("imagesync_events_coalesced_total") >= 1
    bad.stop()


def test_burst_larger_than_the_queue_loses_nothing(
        registry_factory: RegistryFactory, serve_thread: Callable[..., ServerThread],
        tmp_path: Path) -> None:
    sock = _listening_socket()
    src = registry_factory(name="src", notify=notify_to(sock.getsockname()[1]))
    dst = registry_factory(name="dst")
    config = write_config(tmp_path / "serve.yaml", {
        f"{src.host}/team/app": {"to": f"{dst.host}/mirror/app",
                                 "tags": {"ends_with": "stable"}}},
        {"coalesce": 0.5})
    st = serve_thread(config, sock, queue=3)
    st.wait_full_syncs(1)
    tags = [f"b{i}-stable" for i in range(16)]
    seed_many(RegistryAPI(src), ["team/app"], tags, SMALL, workers=8)
    dst_api = RegistryAPI(dst)
    wait_for(lambda: sorted(tags_of(dst_api, "mirror/app")) == sorted(tags), 60,
             "every tag mirrored")
    assert st.metric("imagesync_events_total", outcome="queue_full") >= 1
    assert st.metric("imagesync_images_total", status="synced", trigger="event") == len(tags)
    assert st.metric("imagesync_queue_depth") == 0


def tags_of(api: RegistryAPI, repo: str) -> list[str]:
    """The repository's tags; none while it does not exist (yet)."""
    try:
        return api.tags(repo) or []
    except ImagesRegistryError as e:
        if e.status == 404:
            return []
        raise


def test_startup_and_interval_syncs_repair_missed_events(
        registry_factory: RegistryFactory, serve_thread: Callable[..., ServerThread],
        tmp_path: Path) -> None:
    """The source sends no notification at all: every push is a missed event."""
    src = registry_factory(name="src")
    dst = registry_factory(name="dst")
    src_api, dst_api = RegistryAPI(src), RegistryAPI(dst)
    config = write_config(tmp_path / "serve.yaml", {
        f"{src.host}/team/app": {"to": f"{dst.host}/mirror/app",
                                 "tags": {"ends_with": "stable"},
                                 "tag_template": "{tag}-mirrored"}})
    push_random_image(src_api, "team/app", "v1-stable", SMALL)  # while the server was down
    st = serve_thread(config, interval=1.5)
    st.wait_full_syncs(1)
    assert has_manifest(dst_api, "mirror/app", "v1-stable-mirrored")
    push_random_image(src_api, "team/app", "v2-stable", SMALL)  # no event comes
    wait_for(lambda: has_manifest(dst_api, "mirror/app", "v2-stable-mirrored"), 10,
             "the interval sync")
    assert st.server is not None and st.server.full_syncs >= 2
    assert st.metric("imagesync_full_syncs_total", trigger="interval") >= 1
    assert st.metric("imagesync_images_total", status="synced", trigger="sync") == 2


def test_harbor_webhook_with_registry_mapping(
        registry_factory: RegistryFactory, serve_thread: Callable[..., ServerThread],
        tmp_path: Path) -> None:
    src = registry_factory(name="src")
    dst = registry_factory(name="dst")
    config = write_config(tmp_path / "serve.yaml", {
        f"{src.host}/proj/app": {"to": f"{dst.host}/qa/app",
                                 "tags": {"ends_with": "stable"},
                                 "tag_template": "{tag}-{timestamp}"}},
        {"registry": {"harbor.example.com": src.host}})
    st = serve_thread(config)
    st.wait_full_syncs(1)
    pushed = push_random_image(RegistryAPI(src), "proj/app", "v5-stable", SMALL)
    pulled = harbor_payload("harbor.example.com", "proj/app", "v5-stable", pushed.digest,
                            "PULL_ARTIFACT")
    assert post_event(st.url, pulled, token=None, Authorization=TOKEN)[0] == 200
    unknown = harbor_payload("other.example.com", "proj/app", "v5-stable", pushed.digest)
    assert post_event(st.url, unknown, token=None, Authorization=TOKEN)[0] == 200
    payload = harbor_payload("harbor.example.com", "proj/app", "v5-stable", pushed.digest)
    status, body = post_event(st.url, payload, token=None, Authorization=TOKEN)
    assert status == 202 and json.loads(body)["accepted"] == 1
    dst_api = RegistryAPI(dst)
    wait_for(lambda: bool(tags_of(dst_api, "qa/app")), 10, "the mirror")
    [tag] = tags_of(dst_api, "qa/app")
    assert tag.startswith("v5-stable-2") and len(tag) == len("v5-stable-") + 14
    assert dst_api.head_manifest("qa/app", tag) == pushed.digest
    assert post_event(st.url, {"nonsense": True})[0] == 400
    assert st.metric("imagesync_events_total", sender="harbor", outcome="accepted") == 1


def test_signals_reload_and_graceful_stop(registry_factory: RegistryFactory,
                                          tmp_path: Path) -> None:
    """The real command: SIGHUP with a broken config keeps the old one, with a good one
    takes the new rules; SIGTERM finishes the accepted push and exits 0."""
    src = registry_factory(name="src")
    dst = registry_factory(name="dst")
    rule_a = {f"{src.host}/team/a": f"{dst.host}/mirror/a"}
    config = write_config(tmp_path / "serve.yaml", rule_a)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "WEBHOOK_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagesync", "serve", "--config", str(config),
         "--listen", f"127.0.0.1:{port}", "--interval", "0", "--grace", "20",
         "--log", str(log)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                return http_request(base, "GET", "/healthz")[0] == 200
            except OSError:
                return False
        wait_for(healthy, 15, "the server")
        api = RegistryAPI(src)
        b = push_random_image(api, "team/b", "v1", SMALL)
        config.write_text(config.read_text().replace("images:", "images: [broken"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reload failed" in log.read_text(), 10, "the failed reload")
        assert healthy()
        write_config(config, {**rule_a, f"{src.host}/team/b": f"{dst.host}/mirror/b"})
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in log.read_text(), 10, "the reload")
        status, _ = post_event(base, distribution_envelope(src.host, "team/b", "v1", b.digest))
        assert status == 202
        proc.send_signal(signal.SIGTERM)  # the push is accepted but not copied yet
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "SIGTERM received" in err.decode()
    assert RegistryAPI(dst).head_manifest("mirror/b", "v1") == b.digest
    text = log.read_text()
    assert "stopped" in text and "interrupted" not in text


def test_stopping_refuses_events_and_grace_bounds_the_wait(
        registry_factory: RegistryFactory, serve_thread: Callable[..., ServerThread],
        tmp_path: Path) -> None:
    src = registry_factory(name="src")
    dst = registry_factory(name="dst")
    config = write_config(tmp_path / "serve.yaml", {
        f"{src.host}/team/app": f"{dst.host}/mirror/app"})
    st = serve_thread(config)
    st.wait_full_syncs(1)
    # announced but never written: the copy waits for the tag, longer than the grace
    ghost = distribution_envelope(src.host, "team/app", "ghost", "sha256:" + "0" * 64)
    assert post_event(st.url, ghost)[0] == 202
    server = st.server
    assert server is not None
    stopping = asyncio.run_coroutine_threadsafe(server.shutdown(1.0), st.loop)
    wait_for(lambda: not server.accepting, 5, "the shutdown")
    assert post_event(st.url, ghost)[0] == 503
    assert http_request(st.url, "GET", "/healthz")[0] == 503
    assert stopping.result(10) is False  # the grace period ran out: interrupted
    assert "grace period over" in st.log()
    assert "1 accepted push(es) not mirrored" in st.log()  # said so, not hidden


# -- latency ---------------------------------------------------------------------------------------

def test_push_to_mirror_latency(registry_factory: RegistryFactory,
                                serve_thread: Callable[..., ServerThread],
                                tmp_path: Path) -> None:
    """50 pushes, one after the other, to a registry notifying through the example's
    endpoint block: from the end of the push (the manifest PUT answered) to the mirrored
    manifest being visible at the destination. ``IMAGESYNC_LATENCY_PUSHES`` and
    ``IMAGESYNC_LATENCY_COALESCE`` (seconds, default the server's 0.25) change the run."""
    n = int(os.environ.get("IMAGESYNC_LATENCY_PUSHES", "50"))
    coalesce = os.environ.get("IMAGESYNC_LATENCY_COALESCE")
    sock = _listening_socket()
    reg_cfg = yaml.safe_load((EXAMPLES / "distribution-config.yml").read_text())
    [endpoint] = reg_cfg["notifications"]["endpoints"]
    endpoint.update(notify_to(sock.getsockname()[1]))
    src = registry_factory(name="src", notify=endpoint)
    dst = registry_factory(name="dst")
    config = write_config(tmp_path / "serve.yaml", {
        f"{src.host}/team/app": {"to": f"{dst.host}/mirror/app",
                                 "tags": {"ends_with": "stable"},
                                 "tag_template": "{tag}-mirrored"}},
        {"coalesce": float(coalesce)} if coalesce else None)
    st = serve_thread(config, sock)
    st.wait_full_syncs(1)
    src_api, dst_api = RegistryAPI(src), RegistryAPI(dst)
    latencies = []
    for i in range(n):
        push_random_image(src_api, "team/app", f"l{i}-stable", (4096, 4096))
        t0 = time.monotonic()
        wait_for(lambda i=i: has_manifest(dst_api, "mirror/app", f"l{i}-stable-mirrored"),
                 10, f"push {i}", poll=0.005)
        latencies.append(time.monotonic() - t0)
    med, worst = statistics.median(latencies), max(latencies)
    server_side = (st.metric("imagesync_event_to_mirror_seconds_sum")
                   / st.metric("imagesync_event_to_mirror_seconds_count"))
    window = coalesce or "0.25"
    print(f"\npush-to-mirror latency over {n} pushes (coalesce {window}s): median "
          f"{med * 1000:.0f} ms, worst {worst * 1000:.0f} ms; server-side event-to-mirror "
          f"mean {server_side * 1000:.0f} ms")
    assert st.metric("imagesync_event_to_mirror_seconds_count") == n
    assert worst < 5
