"""Self-test of tests/support/proxy.py against a real registry: latency, shaping, faults."""

from __future__ import annotations

import hashlib
import http.client
import socket
import time

import pytest

from tests.support.images import RegistryAPI, push_random_image
from tests.support.proxy import Fault, Proxy
from tests.support.registry import LocalRegistry


def _get(host: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def image(src_registry: LocalRegistry):
    return push_random_image(RegistryAPI(src_registry), "px/app", "v1", (300_000, 1000))


def test_latency_each_way_and_connect_delay(src_registry: LocalRegistry) -> None:
    with Proxy(src_registry.host, latency=0.05, connect_delay=0.1) as proxy:
        conn = http.client.HTTPConnection(proxy.host, timeout=10)
        t = time.monotonic()
        conn.request("GET", "/v2/")
        conn.getresponse().read()
        first = time.monotonic() - t
        t = time.monotonic()
        conn.request("GET", "/v2/")
        conn.getresponse().read()
        second = time.monotonic() - t
        conn.close()
    # Lower bounds only: the delays were added. (An upper bound would fail on a busy
    # machine and prove nothing about imagesync.)
    assert first >= 0.2   # connect delay + round trip
    assert second >= 0.1  # round trip on a kept-alive connection
    assert proxy.count("GET", r"^/v2/$", status=200) == 2 and proxy.connections == 1


def test_relays_blobs_and_chunked_uploads(src_registry: LocalRegistry, image) -> None:
    with Proxy(src_registry.host, latency=0.005) as proxy:
        api = RegistryAPI(proxy.url)
        assert api.get_blob("px/app", image.blobs[0]) == RegistryAPI(src_registry).get_blob(
            "px/app", image.blobs[0])
        data = b"chunk" * 50_000
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        conn = http.client.HTTPConnection(proxy.host, timeout=10)
        conn.request("POST", "/v2/px/up/blobs/uploads/", headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        location = resp.getheader("Location", "")
        assert location.startswith(proxy.url)  # the registry names the proxy, not itself
        conn.request("PATCH", location, body=iter([data[:1000], data[1000:]]),
                     encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 202
        conn.request("PUT", f"{resp.getheader('Location')}&digest={digest}", body=b"")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201
        conn.close()
    assert RegistryAPI(src_registry).get_blob("px/up", digest) == data


def test_status_fault_with_retry_after(src_registry: LocalRegistry, image) -> None:
    with Proxy(src_registry.host) as proxy:
        fault = proxy.add(Fault(method="GET", path=r"/blobs/", status=429,
                                headers={"Retry-After": "2"}, times=2, skip=1))
        path = f"/v2/px/app/blobs/{image.blobs[1]}"
        answers = [_get(proxy.host, path) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 429, 429, 200]
        assert answers[1][1]["retry-after"] == "2" and b"TOOMANYREQUESTS" in answers[1][2]
        assert _get(proxy.host, path, "HEAD")[0] == 200 and fault.hits == 2
        proxy.add(Fault(path=r"/manifests/", status=503, times=None))
        for _ in range(3):
            status, _, body = _get(proxy.host, "/v2/px/app/manifests/v1")
            assert status == 503 and b"UNAVAILABLE" in body
        proxy.clear()
        assert _get(proxy.host, "/v2/px/app/manifests/v1")[0] == 200
    assert proxy.count(status=429) == 2 and proxy.count(status=503) == 3


def test_reset_after_bytes(src_registry: LocalRegistry, image) -> None:
    with Proxy(src_registry.host) as proxy:
        proxy.add(Fault(path=r"/blobs/", reset_after=10_000))
        conn = http.client.HTTPConnection(proxy.host, timeout=10)
        conn.request("GET", f"/v2/px/app/blobs/{image.blobs[0]}")
        resp = conn.getresponse()
        assert resp.status == 200
        got = b""
        with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
            while chunk := resp.read(4096):
                got += chunk
            raise AssertionError(f"read {len(got)} bytes without a reset")
        assert len(got) <= 10_000
        conn.close()
        # times=1: the next request goes through whole
        assert len(_get(proxy.host, f"/v2/px/app/blobs/{image.blobs[0]}")[2]) == 300_000


def test_stall_and_drop(src_registry: LocalRegistry, image) -> None:
    with Proxy(src_registry.host) as proxy:
        proxy.add(Fault(path=r"/blobs/", stall=0.5, stall_after=1000))
        t = time.monotonic()
        status, _, body = _get(proxy.host, f"/v2/px/app/blobs/{image.blobs[0]}")
        assert status == 200 and len(body) == 300_000 and time.monotonic() - t >= 0.5
        proxy.add(Fault(path=r"/manifests/", drop=True))
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            _get(proxy.host, "/v2/px/app/manifests/v1")


def test_bandwidth_cap(src_registry: LocalRegistry, image) -> None:
    with Proxy(src_registry.host, bandwidth=1_000_000) as proxy:
        t = time.monotonic()
        _, _, body = _get(proxy.host, f"/v2/px/app/blobs/{image.blobs[0]}")
        elapsed = time.monotonic() - t
    assert len(body) == 300_000 and elapsed >= 0.25  # 300 kB at 1 MB/s, less the burst


def test_non_http_bytes_are_relayed_raw(src_registry: LocalRegistry) -> None:
    with Proxy(src_registry.host, latency=0.01) as proxy:
        host, port = proxy.host.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            # A TLS ClientHello's first bytes: the registry answers 400 and closes.
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\r\n" * 4)
            assert s.recv(100).startswith(b"HTTP/1.1 400")


def test_reset_mid_request_body(src_registry: LocalRegistry) -> None:
    with Proxy(src_registry) as proxy:  # a LocalRegistry works as the upstream too
        fault = proxy.add(Fault(method="PATCH", reset_request_after=100_000))
        conn = http.client.HTTPConnection(proxy.host, timeout=10)
        conn.request("POST", "/v2/px/cut/blobs/uploads/", headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        location = resp.getheader("Location", "")
        with pytest.raises((ConnectionResetError, BrokenPipeError,
                            http.client.RemoteDisconnected)):
            conn.request("PATCH", location, body=b"x" * 1_000_000,
                         headers={"Content-Type": "application/octet-stream"})
            conn.getresponse().read()
        conn.close()
        assert fault.hits == 1
        # The proxy carries on: a new upload goes through.
        conn = http.client.HTTPConnection(proxy.host, timeout=10)
        conn.request("POST", "/v2/px/cut/blobs/uploads/", headers={"Content-Length": "0"})
        assert conn.getresponse().status == 202
        conn.close()
    assert [(s.method, s.status) for s in proxy.history()] == [
        ("POST", 202), ("PATCH", 0), ("POST", 202)]
