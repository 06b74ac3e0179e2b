"""image-syncer's config files, written exactly as each version family wrote them
(tests/fixtures/imagesyncer/), load into the rules image-syncer would have run.

Config level only: which source, which tags (and how a regex selects them), which
destinations and which credentials. End-to-end runs against registries live elsewhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagesync.config import load
from imagesync.errors import ConfigError
from imagesync.keychain import EntryIndex
from imagesync.rules import Defaults, Rule

FIXTURES = Path(__file__).parent / "fixtures" / "imagesyncer"
DIGEST = "sha256:" + "d" * 64
TAGS = ["v1.0", "v1.1", "v2.0", "v3.0", "latest", "alpha", "banana", "v10.0"]
ENV = {"SRC_USER": "alice", "SRC_PASSWORD": "alice-secret", "DST_USER": "writer",
       "DST_PASSWORD": "writer-secret", "DST_REGISTRY": "dest.test:5000"}


def fixture(tmp_path: Path, name: str) -> str:
    """A copy of the fixture with the digest placeholder filled in."""
    src = FIXTURES / name
    dst = tmp_path / name.replace("/", "-")
    dst.write_text(src.read_text().replace("sha256:DIGEST", DIGEST))
    return str(dst)


def by_key(rules: list[Rule]) -> dict[str, Rule]:
    return {r.key: r for r in rules}


def plan(rule: Rule, available: list[str] = TAGS) -> list[tuple[str, str]]:
    """(source ref, destination ref) pairs, as image-syncer would copy them."""
    out = []
    if rule.selector.digest:
        for t in rule.targets:
            tag = rule.destination_tag(t, None, 0)
            out.append((f"{rule.source_name}@{rule.selector.digest}",
                        f"{t.name}:{tag}" if tag else f"{t.name}@{rule.selector.digest}"))
        return out
    for i, tag in enumerate(rule.selector.select(available)):
        for t in rule.targets:
            out.append((f"{rule.source_name}:{tag}",
                        f"{t.name}:{rule.destination_tag(t, tag, i)}"))
    return out


def creds(cfg, registry: str, repository: str) -> tuple[str | None, str | None, bool]:
    e = EntryIndex(cfg.auth).lookup(registry, repository)
    assert e is not None
    return e.username, e.password, e.insecure


def test_v1_0_single_json_config(tmp_path):
    cfg = load(config=fixture(tmp_path, "v1.0/config.json"),
               defaults=Defaults("dest.test:5000", "defaults"))
    assert cfg.warnings == []
    r = by_key(cfg.rules)
    assert plan(r["source.test:5000/team/app"], ["v1", "v2"]) == [
        ("source.test:5000/team/app:v1", "dest.test:5000/mirror/app:v1"),
        ("source.test:5000/team/app:v2", "dest.test:5000/mirror/app:v2")]
    assert plan(r["source.test:5000/team/api:v1"]) == [
        ("source.test:5000/team/api:v1", "dest.test:5000/mirror/api:v1")]
    assert plan(r["source.test:5000/team/web:v1"]) == [
        ("source.test:5000/team/web:v1", "dest.test:5000/mirror/web:stable")]
    assert [d for _, d in plan(r["source.test:5000/team/cli:v1,v2,v3"])] == [
        f"dest.test:5000/mirror/cli:{t}" for t in ("v1", "v2", "v3")]
    # v1.0-v1.4 allowed destination tags on a tag list only when equal to the source's
    assert [d for _, d in plan(r["source.test:5000/team/job:v1,v2"])] == [
        "dest.test:5000/mirror/job:v1", "dest.test:5000/mirror/job:v2"]
    # "" -> --registry/--namespace + the source path without its first component
    assert plan(r["source.test:5000/team/tool:v1"]) == [
        ("source.test:5000/team/tool:v1", "dest.test:5000/defaults/tool:v1")]
    # registry/namespace auth keys (v1.0.4+) win over the registry's
    assert creds(cfg, "source.test:5000", "private/db") == ("bob", "bob-secret", True)
    assert creds(cfg, "source.test:5000", "team/app") == ("alice", "alice-secret", True)
    assert creds(cfg, "dest.test:5000", "mirror/app") == ("writer", "writer-secret", True)


@pytest.mark.parametrize("auth, images", [("v1.2/auth.yaml", "v1.2/images.yaml"),
                                          ("v1.2/auth.json", "v1.2/images.json")])
def test_v1_2_auth_and_images_files(tmp_path, auth, images):
    cfg = load(auth=fixture(tmp_path, auth), images=fixture(tmp_path, images))
    r = by_key(cfg.rules)
    assert r["source.test:5000/team/app"].selector.needs_listing
    assert plan(r["source.test:5000/team/api:v1"]) == [
        ("source.test:5000/team/api:v1", "dest.test:5000/mirror/api:v1")]
    assert creds(cfg, "source.test:5000", "team/app") == ("alice", "alice-secret", True)
    assert creds(cfg, "dest.test:5000", "mirror/x") == ("writer", "writer-secret", True)


def test_v1_2_single_yaml_config(tmp_path):
    cfg = load(config=fixture(tmp_path, "v1.2/config.yaml"))
    assert [r.key for r in cfg.rules] == ["source.test:5000/team/app",
                                          "source.test:5000/team/web:v1"]
    assert plan(cfg.rules[1]) == [("source.test:5000/team/web:v1",
                                   "dest.test:5000/mirror/web:stable")]


def test_v1_3_dollar_var_in_auth_file(tmp_path):
    cfg = load(auth=fixture(tmp_path, "v1.3/auth.json"),
               images=fixture(tmp_path, "v1.3/images.json"), environ=ENV)
    assert creds(cfg, "source.test:5000", "team/app") == ("alice", "alice-secret", True)
    assert creds(cfg, "dest.test:5000", "mirror/app") == ("writer", "writer-secret", True)
    r = by_key(cfg.rules)
    assert r["source.test:5000/team/app:v1,v2"].selector.tags == ("v1", "v2")


def test_v1_3_unset_dollar_var_is_an_error_naming_it(tmp_path):
    env = dict(ENV)
    del env["SRC_USER"]
    with pytest.raises(ConfigError) as e:
        load(auth=fixture(tmp_path, "v1.3/auth.json"),
             images=fixture(tmp_path, "v1.3/images.json"), environ=env)
    assert 'auth.json: ["source.test:5000"].username: environment variable SRC_USER' in str(e.value)
    assert "$$" in str(e.value)


def test_v1_5_images_yaml_every_form(tmp_path):
    cfg = load(auth=fixture(tmp_path, "v1.5/auth.yaml"),
               images=fixture(tmp_path, "v1.5/images.yaml"), environ=ENV)
    r = by_key(cfg.rules)
    app = "source.test:5000/team/app"
    assert plan(r[app], ["v1.0", "v2.0"]) == [
        (f"{app}:v1.0", "dest.test:5000/mirror/app:v1.0"),
        (f"{app}:v2.0", "dest.test:5000/mirror/app:v2.0")]
    assert plan(r[f"{app}:v1.0"]) == [(f"{app}:v1.0", "dest.test:5000/mirror/app-one:v1.0")]
    assert [d for _, d in plan(r[f"{app}:v1.0,v2.0"])] == [
        "dest.test:5000/mirror/app-two:v1.0", "dest.test:5000/mirror/app-two:v2.0"]
    # v1.5: destination tags on a tag list rename pairwise
    assert [d for _, d in plan(r[f"{app}:v1.0,v2.0,v3.0"])] == [
        "dest.test:5000/mirror/app-renamed:a", "dest.test:5000/mirror/app-renamed:b",
        "dest.test:5000/mirror/app-renamed:c"]
    # a digest source without a destination tag is pushed by digest
    assert plan(r[f"{app}@{DIGEST}"]) == [
        (f"{app}@{DIGEST}", f"dest.test:5000/mirror/app-digest@{DIGEST}")]
    # a destination list, its duplicate copied once (v1.5.3+)
    assert [t.name for t in r[f"{app}:v1.1"].targets] == [
        "dest.test:5000/mirror/app-list1", "dest.test:5000/mirror/app-list2"]
    # /a+/ is searched, as Go's MatchString: every tag containing an 'a'
    assert r[f"{app}:/a+/"].selector.select(TAGS) == ["latest", "alpha", "banana"]
    assert r[f"{app}:/a+/"].selector.narrows
    # $VAR in a destination (v1.5.3+)
    assert plan(r["source.test:5000/private/db:v1"]) == [
        ("source.test:5000/private/db:v1", "dest.test:5000/mirror/db:v1")]
    # numeric YAML username / password keep their text, as yaml.v2 gave them
    assert creds(cfg, "source.test:5000", "private/db") == ("123456789012", "0123", True)
    assert creds(cfg, "dest.test:5000", "mirror/db") == ("writer", "writer-secret", True)


def test_v1_5_json_go_style_keys_and_ignored_keys(tmp_path):
    cfg = load(auth=fixture(tmp_path, "v1.5/auth.json"),
               images=fixture(tmp_path, "v1.5/images.json"))
    assert creds(cfg, "source.test:5000", "team/app") == ("alice", "alice-secret", True)
    assert creds(cfg, "dest.test:5000", "mirror/a") == ("writer", "writer-secret", True)
    assert len(cfg.warnings) == 2
    assert "'email' ignored" in cfg.warnings[0] and '["source.test:5000"]' in cfg.warnings[0]
    assert "'auth' ignored" in cfg.warnings[1]
    r = by_key(cfg.rules)
    app = "source.test:5000/team/app"
    assert [t.name for t in r[f"{app}:v1.0"].targets] == ["dest.test:5000/mirror/a",
                                                          "dest.test:5000/mirror/b"]
    # destination digest equal to the source's: by digest
    assert plan(r[f"{app}@{DIGEST}"]) == [
        (f"{app}@{DIGEST}", f"dest.test:5000/mirror/by-digest@{DIGEST}")]
    assert r[f"{app}:/^v[0-9]+\\.0$/"].selector.select(TAGS) == ["v1.0", "v2.0", "v3.0",
                                                               "v10.0"]


def test_v1_5_single_yaml_config(tmp_path):
    cfg = load(config=fixture(tmp_path, "v1.5/config.yaml"))
    r = by_key(cfg.rules)
    assert [t.name for t in r["source.test:5000/team/app:v1.1"].targets] == [
        "dest.test:5000/mirror/app1", "dest.test:5000/mirror/app2"]


def test_v1_5_0_registry_alone_for_empty_destination():
    from imagesync.rules import parse_rule
    rule = parse_rule("src.io/team/sub/app:v1", "", Defaults("dst.io"))
    assert rule.targets[0].name == "dst.io/team/sub/app"
    rule = parse_rule("nginx:1.25", "", Defaults("dst.io"))
    assert rule.targets[0].name == "dst.io/library/nginx"
    # v1.0-v1.4: --registry + --namespace, the first path component dropped
    rule = parse_rule("src.io/team/sub/app:v1", "", Defaults("dst.io", "ns"))
    assert rule.targets[0].name == "dst.io/ns/sub/app"
    rule = parse_rule("nginx:1.25", "", Defaults("dst.io", "ns"))
    assert rule.targets[0].name == "dst.io/ns/nginx"


def test_examples_of_image_syncer_readme(tmp_path):
    """The README/examples of v1.5.5, host names and all."""
    images = tmp_path / "images.yaml"
    images.write_text(
        "quay.io/coreos/kube-rbac-proxy: quay.io/ruohe/kube-rbac-proxy\n"
        "quay.io/coreos/kube-rbac-proxy:v1.0: quay.io/ruohe/kube-rbac-proxy\n"
        "quay.io/coreos/kube-rbac-proxy:v1.0,v2.0: quay.io/ruohe/kube-rbac-proxy\n"
        "quay.io/coreos/kube-rbac-proxy@sha256:14b267eb38aa85fd12d0e168fffa2d8a6187ac53a14a0"
        "212b0d4fce8d729598c: quay.io/ruohe/kube-rbac-proxy\n"
        "quay.io/coreos/kube-rbac-proxy:v1.1:\n"
        "  - quay.io/ruohe/kube-rbac-proxy1\n"
        "  - quay.io/ruohe/kube-rbac-proxy2\n"
        "quay.io/coreos/kube-rbac-proxy:/a+/: quay.io/ruohe/kube-rbac-proxy\n")
    auth = tmp_path / "auth.yaml"
    shutil.copy(FIXTURES / "v1.2" / "auth.yaml", auth)
    cfg = load(auth=str(auth), images=str(images))
    assert len(cfg.rules) == 6
    assert cfg.rules[5].selector.select(["v0.4.1", "latest", "v0.3"]) == ["latest"]
