"""Slow down before a registry's pull rate limit refuses us (Docker Hub).

Docker Hub answers manifest requests with ``ratelimit-limit: 100;w=21600`` and
``ratelimit-remaining: 95;w=21600``: pulls allowed and left in a window of ``w`` seconds.
Only ``GET`` of a manifest counts as a pull (``HEAD`` does not: imagesync compares
digests with ``HEAD``, so unchanged images cost nothing).

Policy, per registry that sends these headers:

* while more than the *reserve* is left (10 % of the limit, at least 1) nothing changes;
* once ``remaining`` is at or below the reserve, manifest ``GET`` requests to that
  registry are spaced ``window / (remaining + 1)`` seconds apart (at most
  :attr:`RateLimiter.max_delay`), so the rest of the budget is spread over the window
  instead of being spent at once and ending in ``429 Too Many Requests``;
* at 0 remaining, requests are spaced by ``max_delay``; if the registry refuses anyway,
  the transport's 429 handling (``Retry-After``, backoff) takes over.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_VALUE_RE = re.compile(r"^\s*(\d+)\s*(?:;\s*w\s*=\s*(\d+))?")


def parse_ratelimit(value: str | None) -> tuple[int, float | None] | None:
    """``"95;w=21600"`` -> (95, 21600.0); ``"95"`` -> (95, None); junk -> None."""
    if not value:
        return None
    m = _VALUE_RE.match(value)
    if not m:
        return None
    return int(m.group(1)), float(m.group(2)) if m.group(2) else None


@dataclass
class _State:
    remaining: int
    limit: int | None
    window: float
    next_at: float = 0.0
    warned: bool = False


def is_pull(method: str, path: str) -> bool:
    return method.upper() == "GET" and "/manifests/" in path


@dataclass
class RateLimiter:
    reserve_fraction: float = 0.1
    max_delay: float = 60.0
    default_window: float = 21600.0
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    log: Any = None
    _hosts: dict[str, _State] = field(default_factory=dict)
    delays: list[float] = field(default_factory=list)  # every delay applied (tests, report)

    def observe(self, registry: str, headers: Mapping[str, str]) -> None:
        remaining = parse_ratelimit(headers.get("ratelimit-remaining"))
        if remaining is None:
            return
        limit = parse_ratelimit(headers.get("ratelimit-limit"))
        window = remaining[1] or (limit[1] if limit else None) or self.default_window
        st = self._hosts.get(registry)
        if st is None:
            st = self._hosts[registry] = _State(remaining[0], None, window)
        st.remaining, st.window = remaining[0], window
        st.limit = limit[0] if limit else st.limit

    def reserve(self, registry: str) -> int:
        st = self._hosts.get(registry)
        if st is None:
            return 0
        base = st.limit if st.limit else 100
        return max(1, math.ceil(base * self.reserve_fraction))

    def delay_for(self, registry: str) -> float:
        """The spacing between pulls the policy wants now (0: no slowing down)."""
        st = self._hosts.get(registry)
        if st is None or st.remaining > self.reserve(registry):
            return 0.0
        if st.remaining <= 0:
            return self.max_delay
        return min(self.max_delay, st.window / (st.remaining + 1))

    async def before(self, registry: str, method: str, path: str) -> None:
        """Wait, if needed, before sending a request that counts against the limit."""
        if not is_pull(method, path):
            return
        interval = self.delay_for(registry)
        if interval <= 0:
            return
        st = self._hosts[registry]
        now = self.clock()
        start = max(now, st.next_at)
        st.next_at = start + interval
        wait = start - now
        if not st.warned and self.log is not None:
            st.warned = True
            self.log.warning("rate limit nearly exhausted, slowing down", registry=registry,
                             remaining=st.remaining, limit=st.limit, window=st.window,
                             spacing=round(interval, 2))
        if wait > 0:
            self.delays.append(wait)
            await self.sleep(wait)
