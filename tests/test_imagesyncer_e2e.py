"""image-syncer's own config files (tests/fixtures/imagesyncer/, one directory per version
family), run end to end with image-syncer's flags against live registries that require
the fixtures' credentials, leave what image-syncer would leave in the destination
(docs/imagesyncer-compat.md); a second run skips everything and pushes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from imagesync.cli import main
from tests.support.images import RegistryAPI, push_random_image
from tests.support.registry import LocalRegistry, bcrypt_htpasswd_line

FIXTURES = Path(__file__).parent / "fixtures" / "imagesyncer"
SRC_USERS = {"alice": "alice-secret", "bob": "bob-secret", "123456789012": "0123"}
ENV = {"SRC_USER": "alice", "SRC_PASSWORD": "alice-secret", "DST_USER": "writer",
       "DST_PASSWORD": "writer-secret"}
SOURCE = {  # repository -> tags
    "team/app": ["v1", "v2", "v1.0", "v1.1", "v2.0", "v3.0", "latest", "alpha", "banana"],
    "team/api": ["v1"], "team/web": ["v1"], "team/cli": ["v1", "v2", "v3"],
    "team/job": ["v1", "v2"], "team/tool": ["v1"], "private/db": ["v1"],
}
APP = SOURCE["team/app"]

# What image-syncer leaves in the destination: repository -> {tag: source repo:tag};
# "@" -> the source digest pushed without a tag.
EXPECTED: dict[str, dict[str, dict[str, str]]] = {
    "v1.0": {
        "mirror/app": {t: f"team/app:{t}" for t in APP},
        "mirror/api": {"v1": "team/api:v1"},
        "mirror/web": {"stable": "team/web:v1"},
        "mirror/cli": {t: f"team/cli:{t}" for t in ("v1", "v2", "v3")},
        "mirror/job": {"v1": "team/job:v1", "v2": "team/job:v2"},
        "mirror/db": {"v1": "private/db:v1"},
        "defaults/tool": {"v1": "team/tool:v1"},  # "" -> --registry/--namespace/tool
    },
    "v1.2-yaml": {
        "mirror/app": {t: f"team/app:{t}" for t in APP},
        "mirror/api": {"v1": "team/api:v1"},
        "mirror/cli": {"v1": "team/cli:v1", "v2": "team/cli:v2"},
    },
    "v1.2-json": {
        "mirror/app": {t: f"team/app:{t}" for t in APP},
        "mirror/api": {"v1": "team/api:v1"},
    },
    "v1.2-config": {
        "mirror/app": {t: f"team/app:{t}" for t in APP},
        "mirror/web": {"stable": "team/web:v1"},
    },
    "v1.3": {
        "mirror/app": {"v1": "team/app:v1", "v2": "team/app:v2"},
        "mirror/api": {"v1": "team/api:v1"},
    },
    "v1.5-yaml": {
        "mirror/app": {t: f"team/app:{t}" for t in APP},
        "mirror/app-one": {"v1.0": "team/app:v1.0"},
        "mirror/app-two": {"v1.0": "team/app:v1.0", "v2.0": "team/app:v2.0"},
        "mirror/app-renamed": {"a": "team/app:v1.0", "b": "team/app:v2.0",
                               "c": "team/app:v3.0"},
        "mirror/app-digest": {"@": "team/app:v1.0"},
        "mirror/app-list1": {"v1.1": "team/app:v1.1"},
        "mirror/app-list2": {"v1.1": "team/app:v1.1"},
        # /a+/ is searched in each tag, as Go's MatchString did
        "mirror/app-regex": {t: f"team/app:{t}" for t in ("latest", "alpha", "banana")},
        "mirror/db": {"v1": "private/db:v1"},  # numeric YAML credentials, $DST_REGISTRY
    },
    "v1.5-json": {
        "mirror/a": {"v1.0": "team/app:v1.0"},
        "mirror/b": {"v1.0": "team/app:v1.0"},
        "mirror/by-digest": {"@": "team/app:v1.0"},
        "mirror/regex": {t: f"team/app:{t}" for t in ("v1.0", "v2.0", "v3.0")},
    },
    "v1.5-config": {
        "mirror/app": {"v1.0": "team/app:v1.0"},
        "mirror/app1": {"v1.1": "team/app:v1.1"},
        "mirror/app2": {"v1.1": "team/app:v1.1"},
    },
}

# How each family was run: files (``--flag fixture``) and the other flags.
RUNS: dict[str, list[str]] = {
    "v1.0": ["--config", "v1.0/config.json", "--registry", "DST", "--namespace", "defaults",
             "--records", "./records", "-p", "5", "-r", "2"],
    "v1.2-yaml": ["--auth", "v1.2/auth.yaml", "--images", "v1.2/images.yaml", "--proc", "5"],
    "v1.2-json": ["--auth", "v1.2/auth.json", "--images", "v1.2/images.json"],
    "v1.2-config": ["--config", "v1.2/config.yaml"],
    "v1.3": ["--auth", "v1.3/auth.json", "--images", "v1.3/images.json", "--os", "linux",
             "--arch", "amd64"],
    "v1.5-yaml": ["--auth", "v1.5/auth.yaml", "--images", "v1.5/images.yaml", "--force=false",
                  "--output-success-images", "OUT"],
    "v1.5-json": ["--auth", "v1.5/auth.json", "--images", "v1.5/images.json",
                  "--output-success-images", "OUT", "--output-images-format", "json"],
    "v1.5-config": ["--config", "v1.5/config.yaml", "-p=3"],
}


def _registry(factory, name: str, users: dict[str, str]) -> LocalRegistry:
    (first, pw), *rest = users.items()
    reg = factory(htpasswd=(first, pw), name=name)
    with open(reg.root / "htpasswd", "a") as f:  # the registry re-reads it when changed
        for user, password in rest:
            f.write(bcrypt_htpasswd_line(user, password) + "\n")
    return reg


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--no-progress", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("family", list(RUNS))
def test_image_syncer_fixture_end_to_end(family, tmp_path, registry_factory, monkeypatch):
    src = _registry(registry_factory, "src", SRC_USERS)
    dst = _registry(registry_factory, "dst", {"writer": "writer-secret"})
    src_api = RegistryAPI(src, "alice", "alice-secret")
    digests = {f"{repo}:{t}": push_random_image(src_api, repo, t, (256,)).digest
               for repo, tags in SOURCE.items() for t in tags}

    # A temp copy of the fixtures with the live registries' addresses.
    work = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, work)
    for f in work.glob("*/*.*"):
        f.write_text(f.read_text().replace("source.test:5000", src.host)
                     .replace("dest.test:5000", dst.host)
                     .replace("sha256:DIGEST", digests["team/app:v1.0"]))
    for k, v in {**ENV, "DST_REGISTRY": dst.host}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    out_file = tmp_path / "success.out"
    argv = []
    for i, arg in enumerate(RUNS[family]):
        prev = RUNS[family][i - 1] if i else ""
        argv.append(str(work / arg) if prev in ("--config", "--auth", "--images")
                    else dst.host if arg == "DST" else str(out_file) if arg == "OUT" else arg)

    code, out, err = _cli(*argv)
    assert code == 0, out + err
    assert "matched nothing" not in out

    dst_api = RegistryAPI(dst, "writer", "writer-secret")
    expected = EXPECTED[family]
    assert sorted(dst_api.catalog()) == sorted(expected)
    pushed = 0
    for repo, tags in expected.items():
        want = {t for t in tags if t != "@"}
        if want:  # (a repository with no tag has no tag list: 404)
            assert set(dst_api.tags(repo)) == want, repo
        for tag, source in tags.items():
            digest = digests[source]
            assert dst_api.head_manifest(repo, digest if tag == "@" else tag) == digest, (
                repo, tag)
            pushed += 1
    assert f"{pushed} synced, 0 skipped, 0 failed" in out

    if "OUT" in RUNS[family]:  # image-syncer's success list: every image pushed
        text = out_file.read_text()
        listed = json.loads(text) if "json" in RUNS[family] else yaml.safe_load(text)
        assert sum(len(v) for v in listed.values()) == pushed
        for source, dests in listed.items():
            for d in dests:
                assert d.startswith(f"{dst.host}/mirror/")
                assert (d.split("@")[1] if "@" in d else dst_api.head_manifest(
                    *d.split("/", 1)[1].rsplit(":", 1))) == (
                    source.split("@")[1] if "@" in source else digests[
                        source.split("/", 1)[1]])

    # v1.5: a second run skips every image and pushes nothing
    code, out, err = _cli(*argv)
    assert code == 0, out + err
    assert f"0 synced, {pushed} skipped, 0 failed" in out
    if "OUT" in RUNS[family]:
        assert out_file.read_text() == "{}\n"
    if family == "v1.0":
        assert "--records ./records ignored" in err
