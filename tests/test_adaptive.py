"""Adaptive concurrency per registry (issue 13).

Units: :class:`imagesync.hostqueue.Concurrency` against simulated registries, on a fake
clock. Integration: a default run behind a latency proxy climbs to high concurrency; a
registry that answers 429 when asked too often makes it back off; ``--per-registry`` is
a fixed cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from imagesync.config import load_document
from imagesync.hostqueue import INITIAL, Concurrency, HostQueue
from imagesync.session import Session, Settings
from tests.support.images import RegistryAPI, push_random_image

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(c: Concurrency, clock: Clock, latency: Callable[[int], float], rounds: int,
             *, saturated: bool = True) -> list[int]:
    """Rounds of ``limit`` requests in flight (more waiting when ``saturated``), each
    answered after ``latency(limit)``; the limit after every round."""
    seen = []
    for _ in range(rounds):
        n = c.limit
        lat = latency(n)
        for _ in range(n):
            if saturated:
                c.saturated()
            clock.t += lat / n
            c.sample(lat)
        seen.append(c.limit)
    return seen


def test_flat_latency_climbs_to_the_upper_bound_in_a_few_round_trips():
    clock = Clock()
    c = Concurrency(64, clock=clock)
    assert c.limit == INITIAL == 8
    seen = simulate(c, clock, lambda n: 0.050, 12)
    assert seen[-1] == 64
    assert seen.index(64) <= 6  # slow start: doubling per window
    assert clock.t < 1.0


def test_a_saturated_registry_stops_the_growth_near_its_capacity():
    clock = Clock()
    c = Concurrency(256, clock=clock)
    capacity = 16  # beyond 16 requests at once, they queue in the registry

    def latency(n: int) -> float:
        return 0.020 * max(1.0, n / capacity)

    seen = simulate(c, clock, latency, 300)
    tail = seen[-100:]
    assert max(tail) <= 3 * capacity, tail
    assert min(tail) >= capacity // 2, tail
    # ... and throughput stays close to what the registry can do.
    mean = sum(n / latency(n) for n in tail) / len(tail)
    assert mean >= 0.8 * capacity / 0.020


def test_no_growth_without_demand():
    clock = Clock()
    c = Concurrency(64, clock=clock)
    simulate(c, clock, lambda n: 0.05, 20, saturated=False)
    assert c.limit == INITIAL


def test_throttling_halves_once_per_burst():
    clock = Clock()
    c = Concurrency(64, clock=clock)
    simulate(c, clock, lambda n: 0.05, 10)
    assert c.limit == 64
    for _ in range(50):  # fifty 429s at once: one event
        c.congested("429")
    assert c.limit == 32 and c.decreases == 1
    clock.t += c.cooldown + 0.01
    c.congested("429")
    assert c.limit == 16
    assert not c.slow_start
    # Recovery is additive now: a few windows give a few steps, not a doubling.
    simulate(c, clock, lambda n: 0.05, 3)
    assert 16 < c.limit < 32


def test_never_below_one_never_above_the_bound():
    clock = Clock()
    c = Concurrency(3, clock=clock)
    assert c.limit == 3  # starts at min(INITIAL, bound)
    for _ in range(20):
        clock.t += 1
        c.congested()
    assert c.limit == 1
    simulate(c, clock, lambda n: 0.01, 50)
    assert c.limit == 3


def test_a_path_that_gets_slower_for_good_does_not_pin_the_limit_down():
    clock = Clock()
    c = Concurrency(64, clock=clock)
    simulate(c, clock, lambda n: 0.010, 10)
    assert c.limit == 64
    # Every request now takes 5x longer, however many are in flight (a slower link):
    # once the old baseline is out of the controller's memory, the limit climbs again.
    seen = simulate(c, clock, lambda n: 0.050, 700)
    assert seen[-1] == 64, seen[-40:]
    assert seen.index(64) < 600  # ~20 s at the bottom (memory), then a few windows


def test_loopback_noise_keeps_a_useful_limit():
    """Latency that does not depend on the limit (noise): no collapse to 1."""
    clock = Clock()
    rng = random.Random(1)
    c = Concurrency(64, clock=clock)
    seen = simulate(c, clock, lambda n: rng.uniform(0.0005, 0.003), 400)
    assert min(seen[-100:]) >= 2


def test_host_queue_follows_its_controller_and_fixed_queues_do_not_adapt():
    fixed = HostQueue("r", 8)
    assert fixed.control is None
    for _ in range(100):
        fixed.observe(0.05)
        fixed.congested()
    assert fixed.limit == 8

    clock = Clock()
    q = HostQueue("r", 32, adaptive=True, clock=clock)
    assert q.limit == INITIAL and q.maximum == 32
    q.control.saturated()  # type: ignore[union-attr]
    for _ in range(q.control.min_window):  # type: ignore[union-attr]
        clock.t += 0.01
        q.observe(0.04)
    assert q.limit == 2 * INITIAL
    q.congested("429")
    assert q.limit == INITIAL


def test_a_smaller_limit_lets_requests_in_flight_finish_and_wakes_waiters():
    async def main() -> list[int]:
        q = HostQueue("r", 8)
        running, peak = 0, []

        async def one() -> None:
            nonlocal running
            async with q.slot():
                running += 1
                peak.append(running)
                await asyncio.sleep(0.01)
                running -= 1

        tasks = [asyncio.create_task(one()) for _ in range(40)]
        await asyncio.sleep(0.005)
        q.set_limit(2)
        await asyncio.sleep(0.02)
        later = len(peak)
        await asyncio.gather(*tasks)
        return peak[later:]

    after = asyncio.run(main())
    assert after and max(after) <= 2


# -- integration: real registries --------------------------------------------------------

def _session_run(doc: dict, settings: Settings) -> tuple[dict, dict]:
    """Sync in-process; (statuses by destination, queue controllers by registry)."""
    cfg = load_document(doc, "test.yaml")

    async def main() -> tuple[dict, dict]:
        async with Session(settings, structlog.get_logger(), entries=cfg.auth) as s:
            out = await s.sync(cfg.rules)
            return ({r.destination: r.status for r in out.results},
                    {name: q for name, q in s.client.queues.items()})
    return asyncio.run(main())


@contextlib.contextmanager
def proxy_process(upstream: str, *args: str) -> Iterator[str]:
    """``benchmarks.proxy`` in its own process (an in-process proxy would share the
    GIL with the client it measures, and add latency as the client gets busier)."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.proxy", upstream, *args],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("proxy http://"), line
        yield line.split()[1].removeprefix("http://")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def small_images(src_registry):
    api = RegistryAPI(src_registry)
    for r in range(4):
        for t in range(12):
            push_random_image(api, f"app{r}", f"v{t}", (600, 300))
    return src_registry


def test_default_run_behind_latency_climbs_high(tmp_path, small_images, dst_registry):
    with proxy_process(small_images.host, "--latency", "0.02") as host:
        doc = {"images": {f"{host}/app{r}": f"{dst_registry.host}/app{r}"
                          for r in range(4)}}
        statuses, queues = _session_run(doc, Settings(backoff_initial=0.05))
    assert set(statuses.values()) == {"synced"} and len(statuses) == 48
    src = queues[host]
    assert src.control is not None and src.maximum == 64
    assert src.control.highest >= 32, list(src.control.changes)
    assert src.peak >= 24


def test_a_throttling_registry_shrinks_the_limit(tmp_path, small_images, dst_registry):
    with proxy_process(small_images.host, "--latency", "0.02", "--rate", "80") as host:
        doc = {"images": {f"{host}/app{r}": f"{dst_registry.host}/app{r}"
                          for r in range(4)}}
        statuses, queues = _session_run(doc, Settings(backoff_initial=0.05, retries=10))
    assert set(statuses.values()) == {"synced"}, statuses
    c = queues[host].control
    assert c is not None and c.decreases >= 1
    assert c.lowest <= 16, list(c.changes)
    assert any(why == "429" for _, _, why in c.changes), list(c.changes)


def test_per_registry_is_a_fixed_cap(tmp_path, small_images, dst_registry):
    with proxy_process(small_images.host, "--latency", "0.01") as host:
        doc = {"images": {f"{host}/app{r}": f"{dst_registry.host}/app{r}"
                          for r in range(2)}}
        statuses, queues = _session_run(doc, Settings(per_registry=3))
    assert set(statuses.values()) == {"synced"}
    q = queues[host]
    assert q.control is None and q.limit == 3 and q.peak <= 3
