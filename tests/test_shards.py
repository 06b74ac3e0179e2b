"""One plan split across shards with no coordinator: every destination image written
exactly once in total, counted from the destination registry's own access log."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagesync.config import load_document
from imagesync.log import Redactor, make_logger
from imagesync.plan import Shard
from imagesync.report import merge
from imagesync.session import Session, Settings
from tests.support.cli import run_cli
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


def _cfg(src: str, dst: str) -> dict:
    return {"images": {f"{src}/team/*": f"{dst}/mirror",
                       f"{src}/other/x": f"{dst}/single/x"}}


def test_workers_give_the_same_result_as_one_process(tmp_path, source, dst_registry,
                                                     registry_factory):
    one_dst = registry_factory(name="one")
    (tmp_path / "one").mkdir()
    single = run_cli(tmp_path / "one", _cfg(source.host, one_dst.host))
    assert single.code == 0, single.stdout + single.stderr
    mark = len(dst_registry.log_file.read_text())
    (tmp_path / "many").mkdir()
    many = run_cli(tmp_path / "many", _cfg(source.host, dst_registry.host), "--workers", "3")
    assert many.code == 0, many.stdout + many.stderr
    puts = _manifest_puts(dst_registry.log_file.read_text()[mark:])
    assert len(puts) == len(set(puts)) == 6 * 3  # every image once, by one of the workers

    def shape(run, host):
        return sorted((r["destination"].replace(host, "DST"), r["status"], r["digest"])
                      for r in run.report["images"])

    assert shape(many, dst_registry.host) == shape(single, one_dst.host)
    assert "18 synced" in many.stdout


def test_report_merge_of_shard_reports(tmp_path, source, dst_registry):
    reports = []
    for i in range(2):
        work = tmp_path / f"shard{i}"
        work.mkdir()
        run = run_cli(work, _cfg(source.host, dst_registry.host), "--shard", f"{i}/2",
                      "--timestamp", "1700000000")
        assert run.code == 0, run.stdout + run.stderr
        reports.append(str(work / "report.json"))
    out = tmp_path / "all.json"
    merged = subprocess.run([sys.executable, "-m", "imagesync", "report", "merge", *reports,
                             "-o", str(out)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert merged.returncode == 0, merged.stderr
    doc = json.loads(out.read_text())
    assert doc["summary"]["synced"] == 18 and len(doc["images"]) == 18
    assert "18 synced" in merged.stderr
