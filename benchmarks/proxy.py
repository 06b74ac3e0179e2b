"""The latency / fault-injecting proxy, shared with the tests (``tests/support/proxy.py``).

Also a small CLI for poking at a registry by hand::

    python -m benchmarks.proxy 127.0.0.1:5000 --latency 0.025 [--bandwidth 1e6]
"""

from __future__ import annotations

import argparse
import time

from tests.support.proxy import Fault, Proxy, Seen

__all__ = ["Fault", "Proxy", "Seen"]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.proxy")
    p.add_argument("upstream", help="host:port of the registry")
    p.add_argument("--latency", type=float, default=0.025, help="seconds each way")
    p.add_argument("--bandwidth", type=float, default=None, help="bytes/s each way")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    with Proxy(args.upstream, latency=args.latency, bandwidth=args.bandwidth,
               port=args.port) as proxy:
        print(f"proxy {proxy.url} -> {args.upstream} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
