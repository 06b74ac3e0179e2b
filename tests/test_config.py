"""Config loading and rule parsing: every form, and a one-line error for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesync.config import load
from imagesync.errors import ConfigError
from imagesync.names import InvalidReference, Reference
from imagesync.rules import Defaults, parse_rule


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
    with pytest.raises(InvalidReference):
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
    ("src.io/a", "", "needs --registry (and --namespace)"),
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
    from tests.support.cli import run_cli
    path = _write(tmp_path, name, text)
    run = run_cli(tmp_path, None, "--config", path)
    assert run.code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"imagesync: {path}: ")
    assert expected in lines[0]
    assert "Traceback" not in run.stderr and run.report is None


def test_missing_file_and_bad_arguments(tmp_path):
    from tests.support.cli import run_cli
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
    from imagesync.keychain import EntryIndex
    cfg = load(_write(tmp_path, "c.yaml",
                      "auth:\n  reg.io: {username: all}\n  reg.io/team: {username: team}\n"
                      "  reg.io/team/special: {username: special}\n"
                      "images: {reg.io/a: reg.io/b}\n"))
    store = EntryIndex(cfg.auth)
    assert store.lookup("reg.io", "other/x").username == "all"
    assert store.lookup("reg.io", "team/x").username == "team"
    assert store.lookup("reg.io", "team/special/x").username == "special"
    assert store.lookup("reg.io", "teamster/x").username == "all"
    assert store.lookup("other.io", "team/x") is None


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
    # a repeated key: the later rule would silently replace the earlier one
    ("c.yaml", "images:\n  a.io/x:v1: b.io/x\n  a.io/y: b.io/y\n\n  a.io/x:v1: c.io/x\n",
     'images["a.io/x:v1"]: defined twice, on lines 2 and 5'),
    ("c.json", '{"images": {\n  "a/b:v1": "b.io/x",\n  "a/c": "b.io/c",\n  "a/b:v1": "c.io/x"\n}}',
     'images["a/b:v1"]: defined twice, on lines 2 and 4'),
    ("c.json", '{"auth": {"a.io": {"username": "u", "password": "{\\"p\\"", "Username": "v"}},'
     ' "images": {"a/b": "c.io/b"}}', "auth[\"a.io\"].username: defined twice, as 'username' "
     "and 'Username'"),
    ("c.yaml", "auth:\n  a.io:\n    username: a\n    username: b\nimages: {a/b: c.io/b}\n",
     'auth["a.io"].username: defined twice, on lines 3 and 4'),
    ("c.yaml", "images: {a.io/x: b.io/x}\nimages: {a.io/y: b.io/y}\n",
     "images: defined twice, on lines 1 and 2"),
])
def test_config_errors_name_file_key_and_fix(tmp_path, name, text, expected):
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as e:
        load(config=path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert expected in str(e.value), str(e.value)


def test_json_duplicate_in_nested_arrays_and_strings_with_braces(tmp_path):
    text = ('{"images": {"a/x": ["b.io/x", "c.io/{x}"],\n'
            ' "a/y": {"to": "b.io/y", "tags": {"include": ["[{]"], "include": ["x"]}}}}')
    with pytest.raises(ConfigError) as e:
        load(config=_write(tmp_path, "c.json", text))
    assert 'images["a/y"].tags.include: defined twice, on lines 2 and 2' in str(e.value)


@pytest.mark.parametrize("name, data", [
    ("bom.json", b'\xef\xbb\xbf{"images": {"a.io/x": "b.io/x"}}'),
    ("bom.yaml", b"\xef\xbb\xbfimages:\n  a.io/x: b.io/x\n"),
])
def test_utf8_bom_is_accepted(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    assert [r.key for r in load(config=str(p)).rules] == ["a.io/x"]


@pytest.mark.parametrize("name, data, expected", [
    ("latin1.yaml", "images:\n  a.io/x: b.io/x # café\n".encode("latin-1"),
     "line 2: the file is not UTF-8 (byte 0xe9"),
    ("ps.json", '{"images": {"a.io/x": "b.io/x"}}'.encode("utf-16"), "the file is UTF-16"),
    ("ps.yaml", "images:\n  a.io/x: b.io/x\n".encode("utf-16-le"), "the file is UTF-16"),
])
def test_non_utf8_config_is_one_line_naming_the_fix(tmp_path, name, data, expected):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        load(config=str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and expected in msg and "save it as UTF-8" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("value, want", [("false", False), ("no", False), ("0", False),
                                         ("true", True), ("YES", True), ("1", True)])
def test_boolean_from_one_variable_is_coerced(tmp_path, value, want):
    path = _write(tmp_path, "sync.yaml", "images:\n  a:\n    to: b.io/a\n"
                                         "    overwrite: ${OVERWRITE}\n")
    assert load(config=path, environ={"OVERWRITE": value}).rules[0].overwrite is want


def test_bad_boolean_from_a_variable_names_the_variable(tmp_path):
    path = _write(tmp_path, "sync.yaml", "images:\n  a:\n    to: b.io/a\n"
                                         "    overwrite: ${OVERWRITE}\n")
    with pytest.raises(ConfigError) as e:
        load(config=path, environ={"OVERWRITE": "maybe"})
    assert str(e.value) == (f"{path}: images[\"a\"].overwrite: ${{OVERWRITE}} is 'maybe': "
                            "must be true or false")


def test_integer_and_auth_boolean_from_variables(tmp_path):
    path = _write(tmp_path, "c.json",
                  '{"auth": {"reg.io": {"insecure": "${INSECURE:-false}"}},'
                  ' "images": {"reg.io/a": {"to": "b.io/a", "tags": {"latest": "${N}"}}}}')
    cfg = load(config=path, environ={"N": "3"})
    assert cfg.auth[0].insecure is False and cfg.rules[0].selector.filter.latest == 3
    with pytest.raises(ConfigError) as e:
        load(config=path, environ={"N": "three"})
    assert 'tags.latest: ${N} is \'three\': must be a whole number' in str(e.value)
    # a variable inside a longer string is not coerced: the schema error stands
    path = _write(tmp_path, "d.yaml", "images:\n  a:\n    to: b.io/a\n    overwrite: x${B}\n")
    with pytest.raises(ConfigError, match="must be a boolean"):
        load(config=path, environ={"B": "true"})


def test_config_from_stdin_json_then_yaml(monkeypatch):
    import io
    import sys

    class In:
        def __init__(self, data: bytes):
            self.buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", In(b'{"images": {"a.io/x": "b.io/x"}}'))
    assert load(config="-").rules[0].key == "a.io/x"
    monkeypatch.setattr(sys, "stdin", In(b"images:\n  a.io/y: b.io/y\n"))
    assert load(config="-").rules[0].key == "a.io/y"
    monkeypatch.setattr(sys, "stdin", In(b"images:\n  a.io/y: b.io/y\n  a.io/y: c\n"))
    with pytest.raises(ConfigError, match=r"^<stdin>: images\[\"a.io/y\"\]: defined twice"):
        load(config="-")


def test_load_document_for_an_already_parsed_mapping():
    from imagesync.config import load_document
    cfg = load_document({"auth": {"r.io": {"username": "${U}"}},
                         "images": {"r.io/a:v1": {"to": "d.io/a", "overwrite": "${OW}"}}},
                        "plugin settings", environ={"U": "me", "OW": "no"})
    assert cfg.auth[0].username == "me" and cfg.rules[0].overwrite is False
    with pytest.raises(ConfigError) as e:
        load_document({"images": {"r.io/a": 3}}, "plugin settings")
    assert str(e.value).startswith('plugin settings: images["r.io/a"]')


def test_go_style_keys_numeric_credentials_and_ignored_keys(tmp_path):
    path = _write(tmp_path, "c.json",
                  '{"Auth": {"r.io": {"Username": 42, "PassWord": "p", "email": "a@b",'
                  ' "Insecure": true}}, "Images": {"r.io/a": "d.io/a"}, "version": 2}')
    cfg = load(config=path)
    e = cfg.auth[0]
    assert (e.username, e.password, e.insecure) == ("42", "p", True)
    assert cfg.warnings == [
        f"{path}: unknown top-level key 'version' ignored, as image-syncer ignored it",
        f"{path}: auth[\"r.io\"]: unknown auth key 'email' ignored, as image-syncer ignored it"]
    path = _write(tmp_path, "c.yaml", "auth:\n  r.io:\n    username: 0x1F\n    password: 1e3\n"
                                      "    token: ~\nimages: {r.io/a: d.io/a}\n")
    e = load(config=path).auth[0]
    assert (e.username, e.password, e.token) == ("0x1F", "1e3", None)


def test_dollar_var_only_where_image_syncer_expanded_it(tmp_path):
    env = {"U": "me", "P": "pw", "REG": "d.io"}
    auth = _write(tmp_path, "auth.yaml", "r.io:\n  username: $U\n  password: a$$b${P}\n")
    images = _write(tmp_path, "images.yaml", "r.io/a: $REG/a\nr.io/b: [$REG/b]\n"
                                             "'r.io/c:/^v1$/': d.io/c\n")
    cfg = load(auth=auth, images=images, environ=env)
    assert (cfg.auth[0].username, cfg.auth[0].password) == ("me", "a$bpw")
    assert [r.targets[0].name for r in cfg.rules] == ["d.io/a", "d.io/b", "d.io/c"]
    assert cfg.rules[2].selector.pattern.pattern == "^v1$"
    # the single-file form's auth was never $VAR-expanded by image-syncer
    cfg = load(config=_write(tmp_path, "c.yaml", "auth:\n  r.io: {password: a$b}\n"
                                                 "images: {r.io/a: d.io/a}\n"), environ=env)
    assert cfg.auth[0].password == "a$b"


def test_key_regex_is_searched_like_go_matchstring():
    tags = ["v1", "v1.2", "av1", "latest", "1.0-alpine"]
    assert parse_rule("r.io/a:/a+/", "d.io/a").selector.select(tags) == [
        "av1", "latest", "1.0-alpine"]
    assert parse_rule("r.io/a:/^v1/", "d.io/a").selector.select(tags) == ["v1", "v1.2"]
    assert parse_rule("r.io/a://", "d.io/a").selector.select(tags) == tags
    # the extended form's tags.include keeps its full match
    rule = parse_rule("r.io/a", {"to": "d.io/a", "tags": {"include": "v1"}})
    assert rule.selector.select(tags) == ["v1"]
    assert rule.selector.describe() == "tags include /v1/"


def test_digest_forms():
    d = "sha256:" + "a" * 64
    rule = parse_rule(f"r.io/a:v1@{d}", "d.io/a")
    assert rule.selector.digest == d and rule.repository == "a"
    rule = parse_rule(f"r.io/a@{d}", f"d.io/a@{d}")
    assert rule.targets[0].tags == () and rule.targets[0].name == "d.io/a"
    with pytest.raises(ConfigError, match="only allowed when it is the source's digest"):
        parse_rule(f"r.io/a@{d}", "d.io/a@sha256:" + "b" * 64)
    with pytest.raises(ConfigError, match="has a digest"):
        parse_rule("r.io/a:v1", f"d.io/a@{d}")
