"""The core's parts on their own: the per-registry queue, the plan, the scheduler and the
HTTP client's layers (against small real HTTP servers on loopback)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from imagesync.errors import AuthError, RegistryDown, TransientError
from imagesync.events import Observer
from imagesync.hostqueue import HostQueue, priority
from imagesync.plan import Plan, PlanItem, Planner
from imagesync.report import INTERRUPTED, SYNCED, Result
from imagesync.retry import RetryPolicy
from imagesync.rules import parse_rule
from imagesync.scheduler import Scheduler
from imagesync.session import default_keychain
from imagesync.transport import Client

# -- the per-registry queue ---------------------------------------------------------------


async def test_free_slots_go_to_the_lowest_priority_number_first():
    q = HostQueue("r", limit=1)
    order: list[int] = []
    release = asyncio.Event()

    async def user(prio: int, hold: bool = False) -> None:
        priority.set(prio)
        async with q.slot():
            order.append(prio)
            if hold:
                await release.wait()

    first = asyncio.create_task(user(0, hold=True))
    await asyncio.sleep(0.01)
    waiters = [asyncio.create_task(user(p)) for p in (5, 1, 3)]
    await asyncio.sleep(0.01)
    assert q.in_use == 1 and order == [0]
    release.set()
    await asyncio.gather(first, *waiters)
    assert order == [0, 1, 3, 5]


async def test_a_held_registry_holds_no_slot_while_it_waits():
    q = HostQueue("r", limit=2)
    q.hold(0.3)
    started = time.monotonic()
    in_use_while_waiting: list[int] = []

    async def user() -> float:
        async with q.slot():
            return time.monotonic() - started

    tasks = [asyncio.create_task(user()) for _ in range(3)]
    await asyncio.sleep(0.1)
    in_use_while_waiting.append(q.in_use)
    waited = await asyncio.gather(*tasks)
    assert in_use_while_waiting == [0]  # waiting out the backoff, not sitting on slots
    assert min(waited) >= 0.29


def test_many_requests_failing_together_are_one_failure_cycle():
    q = HostQueue("r", limit=4)
    epoch = q.epoch
    for _ in range(10):  # ten requests sent in the same cycle all saw the failure
        q.unreachable(epoch, 0.0, retries=2, reason="cannot connect")
    assert (q.failures, q.down) == (1, None)
    q.unreachable(q.epoch, 0.0, retries=2, reason="cannot connect")
    q.unreachable(q.epoch, 0.0, retries=2, reason="cannot connect")
    assert q.failures == 3 and q.down == "cannot connect; gave up after 3 attempts"


def test_an_answer_resets_the_failure_count():
    q = HostQueue("r", limit=1)
    q.unreachable(q.epoch, 0.0, retries=1, reason="x")
    q.reachable()
    q.unreachable(q.epoch, 0.0, retries=1, reason="x")
    assert q.down is None


# -- the plan -----------------------------------------------------------------------------


async def test_plan_is_plain_data_and_reads_the_clock_once():
    rules = [parse_rule("src.io/a:v1,v2", {"to": "dst.io/a", "tag_template": "{tag}-{timestamp}",
                                           "platforms": ["linux/arm/v7"], "overwrite": False}),
             parse_rule("src.io/b:v1", {"to": ["dst.io/b", "dst2.io/b"],
                                        "tag_template": "{timestamp}"})]

    def no_listing(name: str):
        raise AssertionError("explicit tags need no listing")

    plan = await Planner(no_listing, now=0.0).collect(rules)
    assert [i.source for i in plan.items] == ["src.io/a:v1", "src.io/a:v2", "src.io/b:v1"]
    assert plan.items[0].destinations == ("dst.io/a:v1-19700101000000",)
    assert plan.items[2].destinations == ("dst.io/b:19700101000000", "dst2.io/b:19700101000000")
    assert plan.items[0].platforms == ("linux/arm/v7",) and not plan.items[0].overwrite
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
    assert str(again.items[0].platform_selector) == "linux/arm/v7"


async def test_two_sources_for_one_destination_tag_is_a_plan_error():
    rules = [parse_rule("src.io/a:v1,v2", {"to": "dst.io/a", "tag_template": "fixed"})]
    plan = await Planner(lambda n: None, now=0.0).collect(rules)  # type: ignore[arg-type,return-value]
    assert [i.destinations for i in plan.items] == [("dst.io/a:fixed",)]
    (err,) = plan.errors
    assert err.source == "src.io/a:v2" and "two sources for one destination tag" in err.error


def test_plan_item_round_trips_through_json():
    item = PlanItem(7, "k", "oci:/data/app:v1", ("r.io/a:v1", "r.io/b"), ("linux/amd64",),
                    ("linux",), ("arm:v7",), False)
    assert PlanItem.from_json(json.loads(json.dumps(item.to_json()))) == item
    assert [str(r) for r in item.destination_refs] == ["r.io/a:v1", "r.io/b"]


# -- the scheduler ------------------------------------------------------------------------


class Collect(Observer):
    def __init__(self) -> None:
        self.results: list[Result] = []

    def image_finished(self, result: Result) -> None:
        self.results.append(result)


def _item(seq: int, src: str, dst: str) -> PlanItem:
    return PlanItem(seq, "rule", f"{src}/app:v{seq}", (f"{dst}/app:v{seq}",))


async def _items(items: list[PlanItem]):
    for i in items:
        yield i


async def test_a_stuck_route_does_not_keep_another_route_from_starting():
    stuck = asyncio.Event()
    done: list[int] = []

    async def copy(item: PlanItem) -> list[Result]:
        if item.source.startswith("slow.io"):
            await stuck.wait()  # never set: this registry never answers
        done.append(item.seq)
        return []

    sched = Scheduler(copy, per_route=2)
    items = [_item(i, "slow.io", "dst.io") for i in range(5)]
    items += [_item(i, "fast.io", "dst.io") for i in range(5, 10)]
    run = asyncio.create_task(sched.run(_items(items)))
    for _ in range(100):
        if len(done) == 5:
            break
        await asyncio.sleep(0.01)
    assert done == [5, 6, 7, 8, 9]
    sched.stop()
    await asyncio.wait_for(run, 5)


async def test_stop_interrupts_what_runs_and_starts_nothing_new():
    seen = Collect()
    started: list[int] = []

    async def copy(item: PlanItem) -> list[Result]:
        started.append(item.seq)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.image_finished(Result(item.source, item.destinations[0], INTERRUPTED))
            raise
        return [Result(item.source, item.destinations[0], SYNCED)]

    sched = Scheduler(copy, seen, per_route=2)
    never = asyncio.Event()

    async def items():
        for i in range(3):
            yield _item(i, "a.io", "b.io")
        await never.wait()  # the planner is still listing when the stop comes

    run = asyncio.create_task(sched.run(items()))
    await asyncio.sleep(0.05)
    sched.stop()
    await asyncio.wait_for(run, 5)
    assert started == [0, 1]  # the third waited for a slot of its route
    assert sorted(r.source for r in seen.results) == [f"a.io/app:v{i}" for i in range(3)]
    assert {r.status for r in seen.results} == {INTERRUPTED}


# -- the HTTP client's layers -------------------------------------------------------------


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


async def test_401_without_a_challenge_is_an_auth_error_not_a_retry():
    hits: list[str] = []

    async def v2(request: web.Request) -> web.Response:
        return web.json_response({})

    async def refuse(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)

    app = web.Application()
    app.router.add_get("/v2/", v2)
    app.router.add_get("/v2/x/tags/list", refuse)
    runner, host = await _serve(app)
    try:
        async with Client(default_keychain(), RetryPolicy(retries=3, initial=0.01)) as c:
            with pytest.raises(AuthError, match=r"authentication failed \(401\)"):
                await c.request("GET", host, "/v2/x/tags/list")
        assert len(hits) == 1
    finally:
        await runner.cleanup()


async def test_a_response_cut_in_its_headers_reads_as_a_sentence():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: app")  # and hang up mid-header
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with Client(default_keychain(), RetryPolicy(retries=1, initial=0.01)) as c:
            with pytest.raises((TransientError, RegistryDown)) as info:
                await c.request("GET", host, "/v2/x/tags/list")
        text = str(info.value)
        assert "RawResponseMessage" not in text and "closed" in text, text
    finally:
        server.close()
        await server.wait_closed()


async def test_requests_to_a_throttled_host_wait_for_it_without_blocking_another():
    async def v2(request: web.Request) -> web.Response:
        return web.json_response({})

    calls = {"n": 0}

    async def busy(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.json_response({}, status=429, headers={"Retry-After": "1"})
        return web.json_response({"tags": []})

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"tags": ["t"]})

    busy_app, ok_app = web.Application(), web.Application()
    busy_app.router.add_get("/v2/", v2)
    busy_app.router.add_get("/v2/x/tags/list", busy)
    ok_app.router.add_get("/v2/", v2)
    ok_app.router.add_get("/v2/x/tags/list", ok)
    r1, busy_host = await _serve(busy_app)
    r2, ok_host = await _serve(ok_app)
    try:
        async with Client(default_keychain(), RetryPolicy(retries=2, initial=0.01),
                          concurrency=1) as c:
            slow = asyncio.create_task(c.request("GET", busy_host, "/v2/x/tags/list"))
            await asyncio.sleep(0.2)  # the 429 has come back; its Retry-After runs
            started = time.monotonic()
            await c.request("GET", ok_host, "/v2/x/tags/list")
            other = time.monotonic() - started
            await slow
            assert c.queue(busy_host).holds == 1
        assert other < 0.5  # did not wait out the other registry's Retry-After
    finally:
        await r1.cleanup()
        await r2.cleanup()
