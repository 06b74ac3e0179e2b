"""The command line without registries: image-syncer's flag syntax, the one-liners'
config documents, the image lists' formats, and one line + exit 2 for every bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from imagesync.cli import build_parser, main, parse
from imagesync.commands import build_copy_parser, failed_images, one_rule
from imagesync.config import load, load_document
from imagesync.copier import BlobLedger
from imagesync.plan import Plan, PlanError, PlanItem
from imagesync.report import (
    CONFLICT,
    FAILED,
    SKIPPED,
    SYNCED,
    Result,
    Summary,
    images_text,
    pushed_images,
)
from imagesync.session import Outcome

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


# -- image-syncer's flag syntax -------------------------------------------------------------

@pytest.mark.parametrize("argv, proc, retries, force", [
    (["-p", "6", "-r", "3"], 6, 3, False),
    (["-p6", "-r=1"], 6, 1, False),
    (["--proc=2", "--retries", "0"], 2, 0, False),
    (["--force"], 64, 3, True),
    (["--force=true"], 64, 3, True),
    (["--force=True"], 64, 3, True),
    (["--force=1"], 64, 3, True),
    (["--force=false"], 64, 3, False),
    (["--force", "--force=f"], 64, 3, False),
])
def test_image_syncer_flags(argv, proc, retries, force):
    args = parse(build_parser(), ["--config", "x.yaml", *argv])
    assert (args.proc, args.retries, args.force) == (proc, retries, force)


def test_defaults_and_image_list_flags():
    args = parse(build_parser(), ["--config", "-", "--output-success-images", "ok.yaml",
                                  "--output-failed-images", "bad.json",
                                  "--output-images-format", "json", "--records", "r",
                                  "--strict", "--dry-run=false"])
    assert args.config == "-" and args.output_images_format == "json"
    assert args.records == "r" and args.strict and not args.dry_run
    assert parse(build_parser(), []).output_images_format == "yaml"


def test_copy_booleans_take_pflag_values():
    p = build_copy_parser()
    args = parse(p, ["a", "b", "--src-tls-verify=false", "--dest-tls-verify=true",
                     "--overwrite=false", "-a", "-j", "3"])
    assert not args.src_tls_verify and args.dest_tls_verify and not args.overwrite
    assert args.all_tags and args.proc == 3
    assert parse(p, ["a", "b"]).proc == 64
    assert parse(p, ["a", "b"]).overwrite is True
    assert parse(p, ["a", "b", "-n"]).overwrite is False


@pytest.mark.parametrize("argv, words", [
    (["--force=maybe", "--config", "c.yaml"], "--force=true or --force=false"),
    (["--output-images-format", "xml", "--config", "c.yaml"], "invalid choice: 'xml'"),
    (["-p", "many"], "'many' is not a whole number"),
    (["-p", "0", "--config", "c.yaml"], "--proc must be at least 1"),
    (["--config", "c.yaml", "--images", "i.yaml"], "not both"),
    (["--config", "/nonexistent/c.yaml"], "cannot read the file"),
    (["--config", "c.yaml", "--output-success-images", "/nonexistent/dir/ok.yaml"],
     "does not exist"),
    (["--config", "c.yaml", "--output-failed-images", "/"], "is a directory"),
    (["--unknown"], "unrecognized arguments"),
    (["sync", "--config", "c.txt"], "unknown extension"),
    (["copy"], "required: SRC, DST"),
    (["copy", "a:v1", "b", "--all-tags"], "names its tags already"),
    (["copy", "a", "b", "--platform", "linux"], "not a platform"),
    (["copy", "Bad Name", "b"], "invalid repository"),
    (["copy", "a@sha256:zz", "b"], "invalid digest"),
    (["copy", "a:v1,v2", "b:x"], "renames to 1 tag(s)"),
    (["copy", "a", "b", "--src-creds", "nopassword"], "give USER:PASSWORD"),
    (["copy", "a", "b", "--src-creds", "u:${IMAGESYNC_TEST_UNSET}"], "IMAGESYNC_TEST_UNSET"),
    (["copy", "a", "b", "--overwrite=perhaps"], "--overwrite=true or --overwrite=false"),
    (["copy", "a", "b", "--output-images-format", "toml"], "invalid choice"),
    (["tags"], "required: REPO"),
    (["tags", "a:v1"], "without a tag"),
    (["tags", "a", "--include", "("], "invalid regex"),
    (["tags", "a", "--semver", "banana"], "invalid semver"),
    (["tags", "a", "--latest", "-1"], "must not be negative"),
    (["digest", "Bad Ref"], "invalid repository"),
    (["digest", "a", "--platform", "linux"], "invalid platform"),
    (["verify"], "give --config FILE"),
    (["verify", "a"], "give SRC and DST"),
    (["verify", "a", "b", "--config", "c.yaml"], "not both"),
    (["verify", "--config", "c.yaml", "--src-creds", "u:p"], "auth entries"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGESYNC_TEST_UNSET", raising=False)
    Path("c.yaml").write_text("images:\n  a.io/x: b.io/x\n")
    Path("c.txt").write_text("images: {}\n")
    code, out, err = run(*argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err
    assert err.startswith("imagesync")


def test_help_names_every_command():
    code, out, _ = run("--help")
    assert code == 0
    for word in ("copy SRC DST", "tags REPO", "digest REF", "verify", "serve", "-p N",
                 "--output-success-images", "--strict"):
        assert word in " ".join(out.split()), word
    for cmd in ("copy", "tags", "digest", "verify", "sync"):
        assert run(cmd, "--help")[0] == 0


# -- copy SRC DST as a one-rule config ---------------------------------------------------------

def _doc(*argv: str) -> dict:
    args = parse(build_copy_parser(), list(argv))
    return one_rule(args.src, args.dst, args)


@pytest.mark.parametrize("argv, images", [
    (["r.io/a", "d.io/a"], {"r.io/a:latest": "d.io/a"}),
    (["r.io/a:v1", "d.io/b:stable"], {"r.io/a:v1": "d.io/b:stable"}),
    (["r.io/a:v1,v2", "d.io/a"], {"r.io/a:v1,v2": "d.io/a"}),
    (["r.io/a", "d.io/a", "-a"], {"r.io/a": "d.io/a"}),
    (["r.io/a", "d.io/a", "--all-tags"], {"r.io/a": "d.io/a"}),
    ([f"r.io/a@{D1}", "d.io/a"], {f"r.io/a@{D1}": "d.io/a"}),
    (["r.io/team/*", "d.io/mirror"], {"r.io/team/*": "d.io/mirror"}),
    (["r.io/team/*", "d.io/mirror", "-a"], {"r.io/team/*": "d.io/mirror"}),
    (["r.io/a:/^v1/", "d.io/a"], {"r.io/a:/^v1/": "d.io/a"}),
    (["r.io:5000/a", "d.io/a"], {"r.io:5000/a:latest": "d.io/a"}),
    (["r.io/a:v1", "d.io/a", "--platform", "linux/amd64,linux/arm64", "--no-overwrite"],
     {"r.io/a:v1": {"to": "d.io/a", "platforms": ["linux/amd64", "linux/arm64"],
                    "overwrite": False}}),
])
def test_copy_document(argv, images):
    doc = _doc(*argv)
    assert doc == {"images": images}
    assert load_document(doc, "copy").rules  # valid as a config


# -- image lists ----------------------------------------------------------------------------------

def test_image_lists_are_image_syncer_formats():
    results = [
        Result("s.io/a:v1", "d.io/a:v1", SYNCED, D1),
        Result("s.io/a:v1", "e.io/a:v1", SYNCED, D1),
        Result("s.io/a:v2", "d.io/a:v2", SKIPPED, D2),
        Result(f"s.io/b@{D2}", "d.io/b", SYNCED, D2),
        Result("s.io/c:v1", "d.io/c:v1", FAILED, error="boom"),
    ]
    pushed = pushed_images(results)
    assert pushed == {"s.io/a:v1": ["d.io/a:v1", "e.io/a:v1"],
                      f"s.io/b@{D2}": [f"d.io/b@{D2}"]}
    assert images_text(pushed, "json") == (
        '{"s.io/a:v1":["d.io/a:v1","e.io/a:v1"],"s.io/b@' + D2 + '":["d.io/b@' + D2 + '"]}\n')
    assert images_text(pushed, "yaml") == (
        f"s.io/a:v1:\n- d.io/a:v1\n- e.io/a:v1\ns.io/b@{D2}:\n- d.io/b@{D2}\n")
    assert images_text({}, "yaml") == "{}\n" and images_text({}, "json") == "{}\n"


def test_success_list_reloads_as_images_file(tmp_path):
    pushed = pushed_images([Result(f"s.io/b@{D2}", "d.io/b", SYNCED, D2),
                            Result("s.io/a:v1", "d.io/x:stable", SYNCED, D1)])
    for fmt in ("yaml", "json"):
        f = tmp_path / f"ok.{fmt}"
        f.write_text(images_text(pushed, fmt))
        rules = {r.key: r for r in load(images=str(f)).rules}
        assert rules[f"s.io/b@{D2}"].selector.digest == D2
        assert rules["s.io/a:v1"].targets[0].tags == ("stable",)


def _outcome(results: list[Result], items: list[PlanItem], errors=()) -> Outcome:
    plan = Plan(items=items, errors=list(errors))
    return Outcome(results, Summary.of(results, 1.0), plan, BlobLedger())


def test_failed_images_retry_exactly_the_failures(tmp_path):
    f = tmp_path / "imagesync.yaml"
    f.write_text(yaml.safe_dump({"images": {
        "s.io/a": ["d.io/a", "e.io/a"],
        "s.io/p:v1": {"to": "d.io/p", "platforms": ["linux/arm64"], "overwrite": False},
        "s.io/r:/^v[0-9]+$/": "d.io/r",
        "s.io/team/*": {"to": "d.io/m", "tags": {"semver": ">=1"},
                        "exclude_repos": ["-test$"]},
    }}))
    cfg = load(config=str(f))
    items = [PlanItem(1, "s.io/a", "s.io/a:v1", ("d.io/a:v1", "e.io/a:v1")),
             PlanItem(2, "s.io/a", "s.io/a:v2", ("d.io/a:v2", "e.io/a:v2")),
             PlanItem(3, "s.io/p:v1", "s.io/p:v1", ("d.io/p:v1",), ("linux/arm64",),
                      overwrite=False)]
    errors = [PlanError("s.io/r:/^v[0-9]+$/", "s.io/r", "d.io/r", "listing failed"),
              PlanError("s.io/team/*", "s.io/team/*", "d.io/m", "catalog refused")]
    results = [Result("s.io/a:v1", "d.io/a:v1", SYNCED, D1),
               Result("s.io/a:v1", "e.io/a:v1", FAILED, D1, error="x"),
               Result("s.io/a:v2", "d.io/a:v2", SKIPPED, D2),
               Result("s.io/a:v2", "e.io/a:v2", SKIPPED, D2),
               Result("s.io/p:v1", "d.io/p:v1", CONFLICT, D1, error="y"),
               Result("s.io/r", "d.io/r", FAILED, error="listing failed"),
               Result("s.io/team/*", "d.io/m", FAILED, error="catalog refused")]
    doc, flags = failed_images(cfg, _outcome(results, items, errors))
    assert doc == {
        "s.io/a:v1": ["e.io/a:v1"],
        "s.io/p:v1": {"to": "d.io/p:v1", "platforms": ["linux/arm64"], "overwrite": False},
        "s.io/r:/^v[0-9]+$/": ["d.io/r"],
        "s.io/team/*": {"to": "d.io/m", "tags": {"semver": ">=1"},
                        "exclude_repos": ["-test$"]},
    }
    assert flags == set()
    for fmt in ("yaml", "json"):
        again = tmp_path / f"failed.{fmt}"
        again.write_text(images_text(doc, fmt))
        rules = {r.key: r for r in load(images=str(again)).rules}
        assert [t.name for t in rules["s.io/a:v1"].targets] == ["e.io/a"]
        assert rules["s.io/p:v1"].overwrite is False
        assert str(rules["s.io/p:v1"].platforms) == "linux/arm64"
        assert rules["s.io/r:/^v[0-9]+$/"].selector.select(["v1", "x"]) == ["v1"]
        assert rules["s.io/team/*"].selector.filter is not None


def test_failed_images_name_the_os_arch_flags_to_repeat():
    items = [PlanItem(1, "s.io/a:v1", "s.io/a:v1", ("d.io/a:v1",), oses=("linux",),
                      archs=("arm:v7",))]
    results = [Result("s.io/a:v1", "d.io/a:v1", FAILED, error="x")]
    doc, flags = failed_images(load_document({"images": {"s.io/a:v1": "d.io/a"}}, "t"),
                               _outcome(results, items))
    assert doc == {"s.io/a:v1": ["d.io/a:v1"]}
    assert flags == {"--os linux", "--arch arm:v7"}
    assert json.loads(images_text(doc, "json")) == doc
