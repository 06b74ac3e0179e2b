"""One plan split across shards with no coordinator: every destination image written
exactly once in total, counted from the destination registry's own access log."""

from __future__ import annotations

import asyncio
import io
import re

import pytest

from imagesync.config import load_document
from imagesync.log import Redactor, make_logger
from imagesync.plan import Shard
from imagesync.report import merge
from imagesync.session import Session, Settings
from tests.support.images import push_random_image


def _manifest_puts(log_text: str) -> list[str]:
    return re.findall(r'"PUT (/v2/[^ ]+/manifests/[^ "]+) HTTP/', log_text)


@pytest.fixture
def source(src_registry, src_api):
    for repo in ("team/a", "team/b", "team/c", "team/d", "team/e", "other/x"):
        for tag in ("v1", "v2", "v3"):
            push_random_image(src_api, repo, tag, (500,))
    return src_registry


@pytest.mark.parametrize("count", [1, 3, 7])
async def test_shards_copy_the_plan_exactly_once(source, dst_registry, count):
    cfg = load_document({"images": {
        f"{source.host}/team/*": f"{dst_registry.host}/mirror",
        f"{source.host}/other/x:v1,v2": f"{dst_registry.host}/single/x",
        f"{source.host}/team/a:v1": {"to": f"{dst_registry.host}/renamed/a",
                                     "tag_template": "{tag}-{timestamp}"},
    }}, "shards.yaml")
    mark = len(dst_registry.log_file.read_text())

    async def shard(i: int):
        log = make_logger(Redactor(), io.StringIO())
        async with Session(Settings(), log, entries=cfg.auth) as session:
            return await session.sync(cfg.rules, now=1_700_000_000.0,
                                      shard=Shard(i, count))

    outcomes = await asyncio.gather(*(shard(i) for i in range(count)))
    puts = _manifest_puts(dst_registry.log_file.read_text()[mark:])
    expected = 5 * 3 + 2 + 1
    assert len(puts) == expected and len(set(puts)) == expected  # each exactly once
    results, summary = merge([(o.results, o.summary) for o in outcomes])
    assert summary.synced == expected and summary.failed == 0
    assert sorted(r.destination for r in results) == sorted(
        f"{dst_registry.host}{p.split('/manifests/')[0][3:]}:{p.rsplit('/', 1)[1]}"
        for p in puts)
    assert "/v2/renamed/a/manifests/v1-20231114221320" in puts
    # Each destination repository was written by one shard only.
    owners: dict[str, set[int]] = {}
    for i, o in enumerate(outcomes):
        for r in o.results:
            owners.setdefault(r.destination.rsplit(":", 1)[0], set()).add(i)
    assert all(len(s) == 1 for s in owners.values())
    if count > 1:
        assert sum(1 for o in outcomes if o.summary.synced) > 1  # the work was shared


def test_shard_parsing_and_the_kubernetes_environment():
    assert Shard.parse("2/7") == Shard(2, 7)
    for bad in ("7/7", "-1/3", "a/3", "3", "1/0"):
        with pytest.raises(Exception, match="--shard"):
            Shard.parse(bad)
    assert Shard.from_environment({"JOB_COMPLETION_INDEX": "3",
                                   "IMAGESYNC_SHARDS": "4"}) == Shard(3, 4)
    assert Shard.from_environment({"JOB_COMPLETION_INDEX": "3"}) is None
