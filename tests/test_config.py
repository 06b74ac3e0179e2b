"""Config loading and rule parsing: every form, and a one-line error for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesync.config import load
from imagesync.errors import ConfigError
from imagesync.reference import Reference, ReferenceError
from imagesync.rules import Defaults, parse_rule
from tests.support.cli import run_cli


@pytest.mark.parametrize("ref, want", [
    ("ubuntu", ("docker.io", "library/ubuntu", None, None)),
    ("ubuntu:22.04", ("docker.io", "library/ubuntu", "22.04", None)),
    ("user/app", ("docker.io", "user/app", None, None)),
    ("registry.hub.docker.com/user/app:v1", ("docker.io", "user/app", "v1", None)),
    ("localhost:5000/a/b/c:v1", ("localhost:5000", "a/b/c", "v1", None)),
    ("127.0.0.1:5000/x@sha256:" + "a" * 64, ("127.0.0.1:5000", "x", None, "sha256:" + "a" * 64)),
    ("quay.io/coreos/kube-rbac-proxy", ("quay.io", "coreos/kube-rbac-proxy", None, None)),
])
def test_reference_parsing(ref, want):
    r = Reference.parse(ref)
    assert (r.registry, r.repository, r.tag, r.digest) == want


@pytest.mark.parametrize("bad", ["", "UPPER/case", "a.io/x:bad tag", "a.io/x@sha256:zz",
                                 "a.io//x"])
def test_reference_rejects(bad):
    with pytest.raises(ReferenceError):
        Reference.parse(bad)


def test_rule_forms():
    r = parse_rule("src.io/team/app", "dst.io/m/app")
    assert (r.registry, r.repository, r.selector.needs_listing) == ("src.io", "team/app", True)
    assert parse_rule("src.io/a:v1,v2", "dst.io/a").selector.tags == ("v1", "v2")
    renamed = parse_rule("src.io/a:v1", "dst.io/a:stable")
    assert renamed.targets[0].tags == ("stable",)
    regex = parse_rule("src.io:5000/job:/^v1\\.[0-9]+$/", "dst.io/job")
    assert regex.selector.select(["v1.2", "v1.x", "v2.0", "v1.10"]) == ["v1.2", "v1.10"]
    assert regex.registry == "src.io:5000"
    many = parse_rule("src.io/cli", ["a.io/cli", "b.io/cli"])
    assert [t.name for t in many.targets] == ["a.io/cli", "b.io/cli"]
    hub = parse_rule("nginx:1.25", "dst.io/nginx")
    assert (hub.registry, hub.repository) == ("docker.io", "library/nginx")
    default = parse_rule("src.io/team/tool", "", Defaults("dst.io", "ns"))
    assert default.targets[0].name == "dst.io/ns/tool"


@pytest.mark.parametrize("key, value, message", [
    ("src.io/a:v1,v2", "dst.io/a:stable", "renames to 1 tag(s) but the source names 2"),
    ("src.io/a", "dst.io/a:stable", "list the same number of tags"),
    ("src.io/a", "", "needs --registry and --namespace"),
    ("src.io/a:/([/", "dst.io/a", "invalid tag regex"),
    ("src.io/a", "dst.io/a@sha256:" + "b" * 64, "has a digest"),
    ("", "dst.io/a", "the source is empty"),
    ("src.io/a:v1", "dst.io/UPPER", "invalid repository"),
])
def test_rule_errors(key, value, message):
    with pytest.raises(ConfigError) as e:
        parse_rule(key, value, file="f.yaml")
    assert message in str(e.value) and str(e.value).startswith("f.yaml: images[")


def _write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("name, text, expected", [
    ("c.yaml", "images:\n  a.io/x: [1, 2]\n", 'images["a.io/x"][0]: must be a string'),
    ("c.yaml", "auth:\n  a.io: {usernme: x}\nimages: {a.io/x: b.io/x}\n",
     "auth[\"a.io\"]: unknown key 'usernme': did you mean 'username'?"),
    ("c.yaml", "auth:\n  a.io: {insecure: 'yes'}\nimages: {a.io/x: b.io/x}\n",
     'auth["a.io"].insecure: must be a boolean'),
    ("c.yaml", "imags: {a.io/x: b.io/x}\n", "unknown key 'imags': did you mean 'images'?"),
    ("c.yaml", "images: {}\n", "images: is empty"),
    ("c.yaml", "images: [a\n", "line 2: invalid YAML"),
    ("c.json", '{"images": {"a.io/x": "b.io/x",}}', "invalid JSON"),
    ("c.toml", "images = 1", "unknown extension"),
    ("c.yaml", "images: {a.io/x: '${IMAGESYNC_SURELY_UNSET}'}\n",
     "environment variable IMAGESYNC_SURELY_UNSET is not set"),
    ("c.yaml", "images: {'a.io/x:v1,v2': 'b.io/x:one'}\n", "renames to 1 tag(s)"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, name, text, expected):
    path = _write(tmp_path, name, text)
    run = run_cli(tmp_path, None, "--config", path)
    assert run.code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"imagesync: {path}: ")
    assert expected in lines[0]
    assert "Traceback" not in run.stderr and run.report is None


def test_missing_file_and_bad_arguments(tmp_path):
    run = run_cli(tmp_path, None, "--config", str(tmp_path / "nope.yaml"))
    assert run.code == 2 and "cannot read the file" in run.stderr
    run = run_cli(tmp_path, None, "--config", "x.yaml", "--proc", "many")
    assert run.code == 2 and "'many' is not a whole number" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    run = run_cli(tmp_path, None)
    assert run.code == 2 and "give --config FILE" in run.stderr


def test_image_syncer_files_and_env_expansion(tmp_path):
    auth = _write(tmp_path, "auth.json",
                  '{"quay.io": {"username": "u", "password": "${PW}", "insecure": true},'
                  ' "registry.hub.docker.com": {"username": "d", "password": "p"}}')
    images = _write(tmp_path, "images.json",
                    '{"quay.io/coreos/kube-rbac-proxy": "quay.io/ruohe/kube-rbac-proxy",'
                    ' "xxx/xxx/xx:tag1,tag2,tag3": "yyy.io/xxx/xx"}')
    cfg = load(auth=auth, images=images, environ={"PW": "secret"})
    assert [e.password for e in cfg.auth] == ["secret", "p"]
    assert cfg.auth[1].registry == "docker.io"
    assert cfg.rules[1].registry == "docker.io" and cfg.rules[1].repository == "xxx/xxx/xx"
    assert cfg.rules[1].selector.tags == ("tag1", "tag2", "tag3")


def test_longest_prefix_auth_match(tmp_path):
    from imagesync.auth import CredentialStore
    cfg = load(_write(tmp_path, "c.yaml",
                      "auth:\n  reg.io: {username: all}\n  reg.io/team: {username: team}\n"
                      "  reg.io/team/special: {username: special}\n"
                      "images: {reg.io/a: reg.io/b}\n"))
    store = CredentialStore(cfg.auth)
    assert store.lookup("reg.io", "other/x").username == "all"
    assert store.lookup("reg.io", "team/x").username == "team"
    assert store.lookup("reg.io", "team/special/x").username == "special"
    assert store.lookup("reg.io", "teamster/x").username == "all"
    assert store.lookup("other.io", "team/x") is None
