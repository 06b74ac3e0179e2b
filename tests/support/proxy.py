"""A fault-injecting, latency-adding HTTP/1.1 proxy on loopback, for tests and benchmarks.

One :class:`Proxy` stands in front of one upstream ``host:port`` (a registry). Clients
talk to ``proxy.host`` as if it were the registry: each client connection gets its own
upstream connection, requests and responses are relayed byte for byte (streamed, never
buffered whole; ``Host`` is forwarded unchanged so the registry's ``Location`` headers
already name the proxy, and any that name the upstream are rewritten anyway).

Network shaping, per direction, for every byte (a delay line, so throughput is not
throttled by the latency, only delayed):

* ``latency``: seconds added to each direction (0.025 -> 50 ms round trip);
* ``connect_delay``: extra wait before a new connection's first bytes are relayed, to
  model the TCP handshake's round trip (``2 * latency``); default 0, like toxiproxy;
* ``bandwidth``: bytes per second per direction, shared by all connections (None: no cap).

Faults, matched against each request's method and target (path and query) in the order
they were added; the first matching :class:`Fault` with hits left applies:

* ``Fault(path=r"/blobs/sha256:", status=503)``: answer 503 without asking upstream
  (``headers={"Retry-After": "1"}`` adds headers; the request body is read and dropped);
* ``Fault(path=..., reset_after=1000)``: forward, then cut the client connection with a
  TCP RST after 1000 bytes of the response body (0: right after the headers);
* ``Fault(path=..., stall=5.0)``: forward, hold the response 5 s before its headers, or
  after ``stall_after`` body bytes when given, then carry on;
* ``Fault(path=..., drop=True)``: read the request, close the connection, answer nothing;
* ``times`` (default 1, None: every match) and ``skip`` (let the first N through).

Bytes that do not look like HTTP (e.g. a TLS ClientHello probing a plain-HTTP registry)
switch that connection to a raw TCP relay with the same latency.

The proxy runs its own event loop in a daemon thread, so it works from synchronous code
and from inside a test's running loop alike::

    with Proxy(registry.host, latency=0.025) as proxy:
        proxy.add(Fault(method="GET", path=r"/blobs/", status=429,
                        headers={"Retry-After": "1"}))
        run_imagesync(f"{proxy.host}/repo")
        assert proxy.count(method="GET", path=r"/blobs/") >= 2
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

__all__ = ["Fault", "Proxy", "Seen"]

READ_SIZE = 64 * 1024
MAX_HEAD = 256 * 1024
SHAPE_PIECE = 16 * 1024  # bandwidth shaping granularity
LINE_DEPTH = 256  # chunks queued per direction before the reader waits (~16 MiB max)

_HTTP_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass
class Fault:
    """One injected failure; see the module docstring. ``hits`` counts applications."""

    path: str = ""
    method: str | None = None
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    reset_after: int | None = None
    reset_request_after: int | None = None
    stall: float = 0.0
    stall_after: int | None = None
    drop: bool = False
    times: int | None = 1
    skip: int = 0
    hits: int = 0
    seen: int = 0  # matching requests, including skipped ones

    def __post_init__(self) -> None:
        self._re = re.compile(self.path)

    def matches(self, method: str, target: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return self._re.search(target) is not None

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass(frozen=True)
class Seen:
    """A request that went through the proxy, with the status the client got (0: none)."""

    method: str
    target: str
    status: int
    fault: Fault | None = None
    at: float = 0.0


class _Throttle:
    """A shared token bucket: ``take(n)`` returns when n bytes may go on the wire."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.next = 0.0

    async def take(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self.next)
        self.next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class _Line:
    """One direction of a connection: writes each item ``delay`` seconds after it is queued.

    Items are bytes, or callables (run in order at their due time; may return awaitables),
    which is how resets and stalls stay in sequence with the bytes before them.
    """

    def __init__(self, writer: asyncio.StreamWriter, delay: Callable[[], float],
                 throttle: _Throttle | None) -> None:
        self.writer = writer
        self.delay = delay
        self.throttle = throttle
        self.queue: asyncio.Queue[tuple[float, Any]] = asyncio.Queue(LINE_DEPTH)
        self.failed: BaseException | None = None
        self.task = asyncio.ensure_future(self._run())

    async def send(self, item: Any) -> None:
        if self.failed is not None:
            raise ConnectionResetError(f"peer went away: {self.failed!r}")
        if self.task.done():
            raise ConnectionResetError("line closed")
        await self.queue.put((asyncio.get_running_loop().time() + self.delay(), item))

    async def finish(self) -> None:
        """Flush everything queued so far (after its delay)."""
        with contextlib.suppress(ConnectionError):
            await self.send(None)
        with contextlib.suppress(Exception):
            await self.task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, item = await self.queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if item is None:
                    return
                if callable(item):
                    r = item()
                    if asyncio.iscoroutine(r):
                        await r
                    continue
                if self.throttle is None:
                    self.writer.write(item)
                else:
                    view = memoryview(item)
                    for i in range(0, len(view), SHAPE_PIECE):
                        piece = view[i:i + SHAPE_PIECE]
                        await self.throttle.take(len(piece))
                        self.writer.write(bytes(piece))
                await self.writer.drain()
        except (ConnectionError, OSError) as e:
            self.failed = e
            # Unblock a reader waiting on a full queue.
            while not self.queue.empty():
                self.queue.get_nowait()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Head:
    """A parsed request or response head; ``raw`` is what gets forwarded."""

    def __init__(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            self.headers.append((name.strip(), value.strip()))

    def get(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def has_token(self, name: str, token: str) -> bool:
        value = self.get(name) or ""
        return token in [t.strip().lower() for t in value.split(",")]

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def framing(self, *, response: bool, method: str = "", status: int = 0) -> tuple[str, int]:
        """("none"|"length"|"chunked"|"close", length)."""
        if response and (method == "HEAD" or 100 <= status < 200 or status in (204, 304)):
            return "none", 0
        if self.has_token("Transfer-Encoding", "chunked"):
            return "chunked", 0
        length = self.get("Content-Length")
        if length is not None:
            n = int(length)
            return ("length", n) if n else ("none", 0)
        return ("close", 0) if response else ("none", 0)


async def _read_head(reader: asyncio.StreamReader, first: bytes = b"") -> bytes | None:
    """Bytes up to and including the blank line; None on a clean EOF before any byte."""
    try:
        rest = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial and not first:
            return None
        raise ConnectionResetError("connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise ConnectionResetError("message head too large") from None
    return first + rest


async def _body(reader: asyncio.StreamReader, framing: tuple[str, int]
                ) -> AsyncIterator[tuple[bytes, int]]:
    """Yield (raw bytes to forward, payload bytes among them) until the body ends."""
    kind, length = framing
    if kind == "length":
        left = length
        while left:
            data = await reader.read(min(left, READ_SIZE))
            if not data:
                raise ConnectionResetError("body ended early")
            left -= len(data)
            yield data, len(data)
    elif kind == "close":
        while data := await reader.read(READ_SIZE):
            yield data, len(data)
    elif kind == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            yield line, 0
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = await reader.readuntil(b"\r\n")
                    yield trailer, 0
                    if trailer == b"\r\n":
                        return
            left = size
            while left:
                data = await reader.read(min(left, READ_SIZE))
                if not data:
                    raise ConnectionResetError("chunk ended early")
                left -= len(data)
                yield data, len(data)
            yield await reader.readexactly(2), 0


class Proxy:
    """See the module docstring. ``start()``/``stop()`` or use it as a context manager."""

    def __init__(
        self,
        upstream: str | Any,
        *,
        latency: float = 0.0,
        bandwidth: float | None = None,
        connect_delay: float = 0.0,
        faults: Iterable[Fault] = (),
        port: int = 0,
        keep_log: int = 100_000,
    ) -> None:
        upstream = getattr(upstream, "host", upstream)  # a LocalRegistry will do
        if "://" in upstream:
            upstream = upstream.split("://", 1)[1]
        self.upstream = upstream.rstrip("/")
        self.latency = latency
        self.bandwidth = bandwidth
        self.connect_delay = connect_delay
        self._port = port
        self._faults: list[Fault] = list(faults)
        self._lock = threading.Lock()
        self.requests: collections.deque[Seen] = collections.deque(maxlen=keep_log)
        self.connections = 0  # client connections accepted so far
        self.host = ""
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._up: _Throttle | None = None
        self._down: _Throttle | None = None

    # -- control (any thread) ----------------------------------------------------------

    def start(self) -> Proxy:
        if self._thread is not None:
            return self
        ready = threading.Event()
        error: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:  # report to start(), don't die silently
                error.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name=f"proxy->{self.upstream}",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            self._thread = None
            raise error[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._faults.remove(fault)

    def clear(self, *, log: bool = False) -> None:
        """Forget every fault (and the request log too when ``log``)."""
        with self._lock:
            self._faults.clear()
            if log:
                self.requests.clear()

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def history(self) -> list[Seen]:
        """A copy of the request log, oldest first (safe while requests are in flight)."""
        with self._lock:
            return list(self.requests)

    def count(self, method: str | None = None, path: str = "",
              status: int | None = None) -> int:
        """How many logged requests match (``path`` is a regex searched in the target)."""
        rx = re.compile(path)
        return sum(1 for s in self.history()
                   if (method is None or s.method == method.upper())
                   and rx.search(s.target) and (status is None or s.status == status))

    # -- the loop side -----------------------------------------------------------------

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self._port, limit=MAX_HEAD)
        port = self._server.sockets[0].getsockname()[1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _latency(self) -> float:
        return self.latency

    def _throttles(self) -> tuple[_Throttle | None, _Throttle | None]:
        if self.bandwidth is None:
            self._up = self._down = None
        elif self._up is None or self._up.rate != self.bandwidth:
            self._up, self._down = _Throttle(self.bandwidth), _Throttle(self.bandwidth)
        return self._up, self._down

    def _match(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.exhausted or not f.matches(method, target):
                    continue
                f.seen += 1
                if f.seen <= f.skip:
                    continue
                f.hits += 1
                return f
        return None

    def _log(self, method: str, target: str, status: int, fault: Fault | None) -> None:
        with self._lock:
            self.requests.append(Seen(method, target, status, fault, time.monotonic()))

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.connections += 1
        uwriter: asyncio.StreamWriter | None = None
        lines: list[_Line] = []
        try:
            host, port = self.upstream.rsplit(":", 1)
            ureader, uwriter = await asyncio.open_connection(host, int(port), limit=MAX_HEAD)
            for w in (cwriter, uwriter):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up, down = self._throttles()
            to_up = _Line(uwriter, self._latency, up)
            to_client = _Line(cwriter, self._latency, down)
            lines += [to_up, to_client]
            first = await creader.read(1)
            if first:
                if self.connect_delay > 0:
                    await asyncio.sleep(self.connect_delay)
                if first[0] in _HTTP_METHOD_START:
                    await self._http(first, creader, cwriter, ureader, to_up, to_client)
                else:
                    await self._raw(first, creader, cwriter, ureader, uwriter,
                                    to_up, to_client)
            for line in lines:  # flush what is still in flight
                if not line.task.done():
                    await line.finish()
        except (ConnectionError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            for line in lines:
                line.task.cancel()
            if lines:
                await asyncio.gather(*(line.task for line in lines), return_exceptions=True)
            for w in (cwriter, uwriter):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    async def _raw(self, first: bytes, creader: asyncio.StreamReader,
                   cwriter: asyncio.StreamWriter, ureader: asyncio.StreamReader,
                   uwriter: asyncio.StreamWriter, to_up: _Line, to_client: _Line) -> None:
        """Not HTTP: relay bytes both ways, with the same latency, until either side ends."""
        async def up() -> None:
            await to_up.send(first)
            await _pump_from(creader, to_up)
            with contextlib.suppress(OSError, RuntimeError):
                uwriter.write_eof()

        async def down() -> None:
            await _pump_from(ureader, to_client)
            cwriter.close()

        await asyncio.gather(up(), down(), return_exceptions=True)

    async def _http(self, first: bytes, creader: asyncio.StreamReader,
                    cwriter: asyncio.StreamWriter, ureader: asyncio.StreamReader,
                    to_up: _Line, to_client: _Line) -> None:
        while True:
            raw = await _read_head(creader, first)
            first = b""
            if raw is None:
                return
            req = _Head(raw)
            try:
                method, target, _version = req.start.split(" ", 2)
            except ValueError:
                return
            fault = self._match(method, target)
            req_framing = req.framing(response=False)
            client_close = req.has_token("Connection", "close")

            if fault is not None and (fault.status is not None or fault.drop):
                if fault.drop:
                    self._log(method, target, 0, fault)
                    return
                expect = req.has_token("Expect", "100-continue")
                if not expect:
                    async for _raw, _n in _body(creader, req_framing):
                        pass
                await to_client.send(_answer(fault, method, close=expect or client_close))
                self._log(method, target, fault.status or 0, fault)
                if expect or client_close:
                    return
                continue

            await to_up.send(raw)
            sender = asyncio.ensure_future(self._forward_body(
                creader, req_framing, to_up, fault, to_client, method, target))
            try:
                status, close = await self._response(method, target, fault, ureader,
                                                     to_client)
            except BaseException:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                raise
            if not sender.done():
                # Answered before the request body was all through (an early error):
                # give the client a moment to finish, else drop the connection.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(sender), 5)
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            if sender.cancelled() or sender.exception() is not None:
                return
            if close or client_close or status < 0:
                return

    async def _forward_body(self, reader: asyncio.StreamReader, framing: tuple[str, int],
                            to_up: _Line, fault: Fault | None, to_client: _Line,
                            method: str, target: str) -> None:
        cut = fault.reset_request_after if fault is not None else None
        sent = 0
        async for raw, n in _body(reader, framing):
            if cut is not None and n and sent + n >= cut:
                if cut > sent:
                    await to_up.send(raw[:cut - sent])
                # A broken network: both ends see a reset once the bytes before it land.
                self._log(method, target, 0, fault)
                await to_up.send(lambda: _reset(to_up.writer))
                await to_client.send(lambda: _reset(to_client.writer))
                await asyncio.gather(to_up.finish(), to_client.finish())
                raise ConnectionResetError("request cut by a fault")
            await to_up.send(raw)
            sent += n
        if cut is not None:  # body shorter than the mark: cut at its end
            self._log(method, target, 0, fault)
            await to_up.send(lambda: _reset(to_up.writer))
            await to_client.send(lambda: _reset(to_client.writer))
            await asyncio.gather(to_up.finish(), to_client.finish())
            raise ConnectionResetError("request cut by a fault")

    async def _response(self, method: str, target: str, fault: Fault | None,
                        ureader: asyncio.StreamReader, to_client: _Line) -> tuple[int, bool]:
        """Relay one response (after any 1xx). Returns (status, close the connection?);
        status -1 when a fault cut the connection."""
        while True:
            raw = await _read_head(ureader)
            if raw is None:
                raise ConnectionResetError("upstream closed")
            resp = _Head(raw)
            parts = resp.start.split(" ", 2)
            status = int(parts[1])
            if not 100 <= status < 200 or status == 101:
                break
            await to_client.send(raw)
        self._rewrite_location(resp)
        framing = resp.framing(response=True, method=method, status=status)
        close = framing[0] == "close" or resp.has_token("Connection", "close") or \
            resp.start.startswith("HTTP/1.0")
        self._log(method, target, status, fault)

        stall = fault.stall if fault is not None else 0.0
        stall_at = fault.stall_after if fault is not None and stall else None
        reset_at = fault.reset_after if fault is not None else None
        if stall and stall_at is None:
            await to_client.send(_sleeper(stall))
        await to_client.send(resp.encode())
        sent = 0
        marks = sorted({m for m in (stall_at, reset_at) if m is not None})
        async for raw_piece, n in _body(ureader, framing):
            if n and marks and sent + n >= marks[0]:
                # Split the payload piece at each mark it crosses.
                view = raw_piece
                base = sent
                while marks and base + len(view) >= marks[0]:
                    cut = marks[0] - base
                    if cut:
                        await to_client.send(view[:cut])
                    view, base = view[cut:], marks[0]
                    mark = marks.pop(0)
                    if mark == reset_at:
                        await self._cut(to_client)
                        return -1, True
                    await to_client.send(_sleeper(stall))
                if view:
                    await to_client.send(view)
                sent += n
                continue
            await to_client.send(raw_piece)
            sent += n
        if reset_at is not None and reset_at >= sent:  # body shorter than the mark
            await self._cut(to_client)
            return -1, True
        return status, close

    async def _cut(self, to_client: _Line) -> None:
        await to_client.send(lambda: _reset(to_client.writer))
        await to_client.finish()

    def _rewrite_location(self, resp: _Head) -> None:
        for i, (k, v) in enumerate(resp.headers):
            if k.lower() == "location":
                for scheme in ("http://", "https://"):
                    old = scheme + self.upstream
                    if v.startswith(old):
                        resp.headers[i] = (k, f"http://{self.host}" + v[len(old):])


async def _pump_from(reader: asyncio.StreamReader, line: _Line) -> None:
    while data := await reader.read(READ_SIZE):
        await line.send(data)
    await line.finish()


def _sleeper(seconds: float) -> Callable[[], Any]:
    return lambda: asyncio.sleep(seconds)


def _answer(fault: Fault, method: str, *, close: bool) -> bytes:
    status = fault.status or 500
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected"
    if fault.body is not None:
        body = fault.body
    else:
        code = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN",
                429: "TOOMANYREQUESTS"}.get(status, "UNAVAILABLE")
        body = json.dumps({"errors": [{"code": code, "message": "injected by test proxy",
                                       "detail": None}]}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)),
               "Docker-Distribution-Api-Version": "registry/2.0"}
    if close:
        headers["Connection"] = "close"
    headers.update(fault.headers)
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + (b"" if method == "HEAD" else body)
