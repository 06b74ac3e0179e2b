"""The latency / fault-injecting proxy, shared with the tests (``tests/support/proxy.py``).

Also a small CLI for poking at a registry by hand::

    python -m benchmarks.proxy 127.0.0.1:5000 --latency 0.025 [--bandwidth 1e6]
"""

from __future__ import annotations

import argparse
import collections
import time

from tests.support.proxy import Fault, Proxy, Seen, _Throttle

__all__ = ["CappedProxy", "Fault", "Proxy", "RateLimitedProxy", "Seen"]


class RateLimitedProxy(Proxy):
    """Answers ``429 Too Many Requests`` (``Retry-After: 0``) to requests beyond ``rate``
    per second (a sliding quarter-second window), as a throttling registry does."""

    def __init__(self, upstream: str, *, rate: float, **kw: object) -> None:
        super().__init__(upstream, **kw)  # type: ignore[arg-type]
        self.rate = rate
        self.refused = 0
        self._recent: collections.deque[float] = collections.deque()

    def _match(self, method: str, target: str) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] < now - 0.25:
                self._recent.popleft()
            if len(self._recent) >= self.rate / 4:
                self.refused += 1
                return Fault(status=429, headers={"Retry-After": "0"})
            self._recent.append(now)
        return super()._match(method, target)


class CappedProxy(Proxy):
    """A proxy whose bandwidth cap is per connection (``per_connection`` bytes/s each
    way), as CDNs and object stores cap a single download: several connections together
    get several times the rate."""

    def __init__(self, upstream: str, *, per_connection: float, **kw: object) -> None:
        super().__init__(upstream, **kw)  # type: ignore[arg-type]
        self.per_connection = per_connection

    def _throttles(self) -> tuple[_Throttle | None, _Throttle | None]:
        return _Throttle(self.per_connection), _Throttle(self.per_connection)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.proxy")
    p.add_argument("upstream", help="host:port of the registry")
    p.add_argument("--latency", type=float, default=0.025, help="seconds each way")
    p.add_argument("--bandwidth", type=float, default=None, help="bytes/s each way")
    p.add_argument("--per-connection", type=float, default=None,
                   help="bytes/s each way for each connection on its own")
    p.add_argument("--connect-delay", type=float, default=0.0,
                   help="seconds before a new connection's first bytes (a handshake)")
    p.add_argument("--rate", type=float, default=None,
                   help="answer 429 to requests beyond this many per second")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    proxy_type: type[Proxy] = Proxy
    kw: dict = {"latency": args.latency, "bandwidth": args.bandwidth, "port": args.port,
                "connect_delay": args.connect_delay}
    if args.per_connection:
        proxy_type, kw = CappedProxy, {**kw, "per_connection": args.per_connection}
    if args.rate:
        proxy_type, kw = RateLimitedProxy, {**kw, "rate": args.rate}
    with proxy_type(args.upstream, **kw) as proxy:
        print(f"proxy {proxy.url} -> {args.upstream} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
