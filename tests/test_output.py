"""What a run prints when nobody watches a terminal: log lines (console and JSON),
progress lines every N seconds, --quiet, dry runs as plans, and the summary block.
(The live terminal display is driven in a pseudo-terminal in test_progress_pty.py.)"""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest

from imagesync.log import Redactor, make_logger
from imagesync.output import Output, add_output_arguments
from imagesync.report import Result, Summary, render
from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_random_image
from tests.support.proxy import Fault, Proxy

SMALL = (3000, 500)


def _seed(api: RegistryAPI, tags=("v1", "v2")) -> None:
    for t in tags:
        push_random_image(api, "app", t, SMALL)


# -- console lines ------------------------------------------------------------------------

def test_console_lines_put_the_action_and_the_image_first(tmp_path, src_registry,
                                                          dst_registry, src_api):
    _seed(src_api)
    s, d = src_registry.host, dst_registry.host
    run = run_cli(tmp_path, {"images": {f"{s}/app": f"{d}/app"}})
    assert run.code == 0, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    synced = sorted(line for line in lines if line.startswith("synced"))
    assert len(synced) == 2, lines
    for tag, line in zip(("v1", "v2"), synced, strict=True):
        assert re.fullmatch(rf"synced +{s}/app:{tag} -> {d}/app:{tag}  [\d.]+ KiB "
                            r"[\d.]+m?s", line), line
    assert all(len(line) < 120 for line in lines), lines
    # Skips are debug-level: a re-run that changes nothing prints only its summary.
    again = run_cli(tmp_path, {"images": {f"{s}/app": f"{d}/app"}})
    assert again.stderr == "" and again.stdout.startswith("imagesync: 0 synced, 2 skipped")


def test_log_file_lines_carry_time_and_level(tmp_path, src_registry, dst_registry, src_api):
    _seed(src_api, ("v1",))
    log = tmp_path / "run.log"
    run = run_cli(tmp_path, {"images": {f"{src_registry.host}/app:v1":
                                        f"{dst_registry.host}/app"}}, "--log", str(log), "-v")
    assert run.code == 0 and run.stderr == ""
    lines = log.read_text().splitlines()
    assert any(re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z debug +request +GET http://\S+/v2/\S* "
                        r"\d{3}", line) for line in lines), lines
    assert any(re.match(r"\S+Z info +synced +\S+/app:v1 -> ", line) for line in lines), lines


# -- JSON logs ------------------------------------------------------------------------------

def test_json_logs_parse_line_by_line(tmp_path, src_registry, dst_registry, src_api):
    _seed(src_api)
    with Proxy(src_registry.host) as proxy:
        proxy.add(Fault(method="GET", path=r"/blobs/", status=503, times=1))
        run = run_cli(tmp_path, {"images": {f"{proxy.host}/app": f"{dst_registry.host}/app"}},
                      "--log-format", "json", "-v")
    assert run.code == 0, run.stdout + run.stderr
    docs = [json.loads(line) for line in run.stderr.splitlines()]  # every line parses
    assert all({"time", "level", "action"} <= doc.keys() for doc in docs)
    images = [doc for doc in docs if doc["action"] == "synced"]
    assert len(images) == 2
    for doc in images:
        assert {"source", "destination", "digest", "bytes", "seconds", "error"} <= doc.keys()
        assert doc["digest"].startswith("sha256:") and doc["bytes"] > 3000
        assert doc["error"] is None and doc["level"] == "info"
    requests = [doc for doc in docs if doc["action"] == "request"]
    assert requests and all({"method", "url", "status", "seconds"} <= d.keys()
                            for d in requests)
    retries = [doc for doc in docs if doc["action"] == "retrying"]
    assert len(retries) == 1 and retries[0]["level"] == "warning" and "503" in \
        retries[0]["error"]


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_secrets_are_masked_in_every_format(fmt):
    stream = io.StringIO()
    log = make_logger(Redactor(["s3cr3t-value"]), stream, True, fmt=fmt)
    log.debug("request", method="GET", url="http://r.example/v2/", status=401,
              seconds=0.1, error="sent Authorization: Bearer abc.def-ghi and s3cr3t-value")
    out = stream.getvalue()
    assert "abc.def-ghi" not in out and "s3cr3t-value" not in out
    assert "Bearer ***" in out
    if fmt == "json":
        json.loads(out)


# -- progress without a terminal ----------------------------------------------------------

def test_progress_lines_every_interval_off_a_terminal(tmp_path, src_registry, dst_registry,
                                                      src_api):
    push_random_image(src_api, "big", "v1", (6 << 20,))
    with Proxy(src_registry.host, bandwidth=3 << 20) as proxy:  # about 2 s
        cfg = {"images": {f"{proxy.host}/big:v1": f"{dst_registry.host}/big"}}
        run = run_cli(tmp_path, cfg, "--progress-interval", "0.4")
        as_json = run_cli(tmp_path, {"images": {f"{proxy.host}/big:v1":
                                                f"{dst_registry.host}/copy"}},
                          "--progress-interval", "0.4", "--log-format", "json")
    assert run.code == 0 and as_json.code == 0, run.stderr + as_json.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("progress")]
    assert len(lines) >= 3, run.stderr
    assert "\x1b" not in run.stderr + run.stdout  # nothing animated
    assert re.fullmatch(r"progress \d+:\d\d  0/1\+? images done, [\d.]+ \w?i?B moved, "
                        r"[\d.]+ \w?i?B/s(, ETA >?\d+:\d\d)?, 1 blob in flight",
                        lines[len(lines) // 2]), lines
    moved = [re.search(r"([\d.]+ \w?i?B) moved", line).group(1) for line in lines]
    assert len(set(moved)) >= 2, moved  # the figure moves during the one blob
    docs = [json.loads(line) for line in as_json.stderr.splitlines()]
    progress = [d for d in docs if d["action"] == "progress"]
    assert len(progress) >= 3 and progress[-1]["images_total"] == 1, as_json.stderr


def test_quiet_prints_the_summary_and_failures_only(tmp_path, src_registry, dst_registry,
                                                    src_api):
    _seed(src_api, ("v1",))
    s, d = src_registry.host, dst_registry.host
    run = run_cli(tmp_path, {"images": {f"{s}/app:v1": f"{d}/app",
                                        f"{s}/app:nope": f"{d}/app"}},
                  "--quiet", "--progress-interval", "0.1")
    assert run.code == 1
    assert all(line.startswith("failed ") for line in run.stderr.splitlines()), run.stderr
    assert "progress" not in run.stderr
    assert run.stdout.startswith("imagesync: 1 synced, 0 skipped, 1 failed;")
    assert f"{s}/app:nope -> {d}/app:nope" in run.stdout


def test_progress_mode_follows_the_terminal_and_the_flags():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    p = argparse.ArgumentParser()
    add_output_arguments(p)

    def mode(*argv: str, stderr: io.StringIO | None = None, **kw: object) -> str | None:
        return Output.from_args(p.parse_args(list(argv)), Redactor(),
                                stderr=stderr or Tty(), **kw).mode

    assert mode() == "live"
    assert mode(stderr=io.StringIO()) == "lines"
    assert mode("--quiet") is None and mode("--no-progress") is None
    assert mode(display=False) is None  # imagesync serve: logs and summaries only
    args = p.parse_args(["--progress-interval", "2.5", "--log-format", "json", "-v"])
    assert (args.progress_interval, args.log_format, args.verbose) == (2.5, "json", True)
    with pytest.raises(SystemExit):
        p.parse_args(["--progress-interval", "0"])


# -- dry runs -------------------------------------------------------------------------------

def test_dry_run_is_reported_as_a_plan(tmp_path, src_registry, dst_registry, src_api):
    _seed(src_api)
    s, d = src_registry.host, dst_registry.host
    assert run_cli(tmp_path, {"images": {f"{s}/app:v1": f"{d}/app"}}).code == 0
    plan = run_cli(tmp_path, {"images": {f"{s}/app": f"{d}/app"}}, "--dry-run", "-v")
    assert plan.code == 0, plan.stdout + plan.stderr
    assert plan.statuses() == {f"{d}/app:v1": "would-skip", f"{d}/app:v2": "would-copy"}
    summary = plan.report["summary"]
    assert summary["dry_run"] is True
    assert (summary["would_copy"], summary["would_skip"]) == (1, 1)
    assert "synced" not in plan.stdout and "skipped" not in plan.stdout
    assert re.search(rf"^would-copy +{s}/app:v2 -> {d}/app:v2", plan.stderr, re.M)
    assert re.search(rf"^would-skip +{s}/app:v1 -> {d}/app:v1", plan.stderr, re.M)
    assert not re.search(r"^(synced|skipped) ", plan.stderr, re.M), plan.stderr
    assert plan.stdout.splitlines()[-1].startswith("dry run: 1 to copy, 1 to skip")


# -- the summary block ----------------------------------------------------------------------

def _r(n: int, status: str = "failed", error: str | None = None, **kw: object) -> Result:
    return Result(f"src.io/team/app{n}:v{n}", f"dst.io/mirror/app{n}:v{n}", status,
                  error=error, **kw)  # type: ignore[arg-type]


def test_summary_groups_failures_by_cause():
    results = [_r(i, error=f"src.io/team/app{i}:v{i} not found: manifest unknown "
                  f"(sha256:{i:064x})") for i in range(5)]
    results.append(_r(7, error="dst.io: authentication failed (401)"))
    results.append(_r(8, "synced", bytes=2048, note="index digest changed: pushed a subset"))
    results.append(_r(9, "skipped", note="destination has the same digest"))
    results.append(_r(10, "skipped", note="index digest changed: pushed the subset"))
    results.append(_r(11, "skipped", note="platform linux/amd64 not selected (arm64)"))
    out = io.StringIO()
    render(results, Summary.of(results, 12.0), out)
    text = out.getvalue()
    assert text.splitlines()[0] == ("imagesync: 1 synced, 3 skipped, 6 failed; 2.0 KiB moved "
                                    "in 12.0s (171 B/s)")
    assert "failed (6, 2 causes):\n" in text
    assert "  5 images: <image> not found: manifest unknown (<digest>)\n" in text
    assert text.count("      src.io/team/app") == 3 and "... and 2 more" in text
    assert "  src.io/team/app7:v7 -> dst.io/mirror/app7:v7: dst.io: authentication " \
        "failed (401)\n" in text
    # Notes only for images this run touched; unusual skips once, with their reason.
    assert "note: dst.io/mirror/app8:v8: index digest changed" in text
    assert "app9" not in text and "app10" not in text
    assert "skipped: dst.io/mirror/app11:v11: platform linux/amd64 not selected" in text
    assert len(text.splitlines()) == 10, text


def test_summary_lines_never_say_synced_for_a_dry_run(tmp_path: Path):
    results = [_r(1, "synced", bytes=10), _r(2, "skipped", note="destination has the same "
                                                               "digest")]
    out = io.StringIO()
    render(results, Summary.of(results, 1.0, dry_run=True), out)
    assert "synced" not in out.getvalue() and out.getvalue().startswith("copy ")
