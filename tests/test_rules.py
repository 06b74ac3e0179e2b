"""The rule language beyond image-syncer, against real registries: namespaces and whole
registries (catalog pagination, refused catalogs), tag filters and templates, platform
selection, the overwrite policy, --force, --dry-run, and config errors."""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import os
import re
import subprocess
import time
from urllib.parse import quote

import pytest
from aiohttp import web

from imagesync.config import load
from imagesync.log import Redactor, make_logger
from imagesync.manifest import (
    DOCKER_MANIFEST_LIST,
    Platform,
    PlatformSelector,
    filter_index,
    parse_manifest,
)
from imagesync.registry import _next_link
from imagesync.rules import parse_rule, render_tag
from imagesync.session import Settings, sync
from imagesync.tagfilter import TagFilter, Version, semver_range
from tests.support.cli import run_cli, write_config
from tests.support.images import RegistryAPI, push_index, push_random_image
from tests.support.registry import LocalRegistry
from tests.support.tokenserver import TEST_USER

SMALL = (512,)  # one layer of 512 bytes: these tests are about rules, not throughput



def log_mark(reg: LocalRegistry) -> int:
    return len(reg.log_file.read_text())


def requests_since(reg: LocalRegistry, mark: int) -> list[str]:
    """``"METHOD /path?query"`` of every request the registry served after ``mark``."""
    text = reg.log_file.read_text()[mark:]
    return [r for r in re.findall(r'"([A-Z]+ /v2/[^ "]*) HTTP/', text) if r != "GET /v2/"]


def writes(requests: list[str]) -> list[str]:
    return [r for r in requests if r.split()[0] in ("PUT", "POST", "PATCH", "DELETE")]


def children(api: RegistryAPI, repo: str, ref: str) -> list[str]:
    raw, _, _ = api.get_manifest(repo, ref)
    return [m["digest"] for m in json.loads(raw)["manifests"]]


def one_line_error(run) -> str:
    """A config error: exit 2 and exactly one line on stderr, no traceback."""
    assert run.code == 2, (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("imagesync: "), run.stderr
    return run.stderr


# -- unit: rule parsing, tag filters, templates, platforms, Link headers -----------------

TAGS = ["v1.0.0", "v1.3.9", "v1.4.0", "v1.5.0-rc1", "v2.0.0", "v2.1.0", "v2.4", "v3.0.0",
        "latest", "1.1-stable", "stable", "release-2024", "nightly"]


@pytest.mark.parametrize(("spec", "expected"), [
    # include: full match (an unanchored pattern does not match part of a tag)
    ({"include": [r"^v\d+\.\d+\.\d+$"]},
     ["v1.0.0", "v1.3.9", "v1.4.0", "v2.0.0", "v2.1.0", "v3.0.0"]),
    ({"include": "v1"}, []),
    ({"include": ["v1.*", "stable"]}, ["v1.0.0", "v1.3.9", "v1.4.0", "v1.5.0-rc1", "stable"]),
    # exclude: found anywhere
    ({"exclude": [r"-rc\d*$", "stable"]},
     ["v1.0.0", "v1.3.9", "v1.4.0", "v2.0.0", "v2.1.0", "v2.4", "v3.0.0", "latest",
      "release-2024", "nightly"]),
    # the DTR mirroring-policy tests on the tag name
    ({"equals": "stable"}, ["stable"]),
    ({"starts_with": "release-"}, ["release-2024"]),
    ({"starts_with": ["v3.", "release-"]}, ["v3.0.0", "release-2024"]),
    ({"ends_with": "stable"}, ["1.1-stable", "stable"]),
    ({"contains": "rc"}, ["v1.5.0-rc1"]),
    ({"contains": ["rc", "night"]}, ["v1.5.0-rc1", "nightly"]),
    ({"one_of": ["nightly", "latest", "absent"]}, ["latest", "nightly"]),
    ({"not_one_of": ["latest", "nightly", "stable"]},
     ["v1.0.0", "v1.3.9", "v1.4.0", "v1.5.0-rc1", "v2.0.0", "v2.1.0", "v2.4", "v3.0.0",
      "1.1-stable", "release-2024"]),
    # semver ranges; tags that are not versions never match
    ({"semver": ">=1.4 <3"}, ["v1.4.0", "v1.5.0-rc1", "v2.0.0", "v2.1.0", "v2.4"]),
    ({"semver": "^2.1"}, ["v2.1.0", "v2.4"]),
    ({"semver": "~1.3"}, ["v1.3.9"]),
    ({"semver": "<1.0.1 || >=3"}, ["v1.0.0", "v3.0.0"]),
    ({"semver": "2.1.0"}, ["v2.1.0"]),
    # latest: the newest N by semver, newest first
    ({"latest": 2}, ["v3.0.0", "v2.4"]),
    # every condition must hold
    ({"starts_with": "v1", "ends_with": "0"}, ["v1.0.0", "v1.4.0"]),
    # the issue's example
    ({"include": [r"^v\d+\.\d+\.\d+$"], "exclude": [r"-rc\d*$"], "semver": ">=1.4 <3",
      "latest": 5}, ["v2.1.0", "v2.0.0", "v1.4.0"]),
    ({"include": [r"^v\d+\.\d+\.\d+$"], "latest": 5},
     ["v3.0.0", "v2.1.0", "v2.0.0", "v1.4.0", "v1.3.9"]),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_tag_filter(spec, expected):
    assert TagFilter.from_config(spec).apply(TAGS) == expected


def test_latest_orders_pre_releases_by_semver_precedence():
    tags = ["1.0.0-beta", "1.0.0-rc.2", "0.9.0", "1.0.0", "1.0.0-rc.10", "1.0.0-alpha.1",
            "1.0.0-alpha.beta"]
    assert TagFilter.from_config({"latest": 4}).apply(tags) == [
        "1.0.0", "1.0.0-rc.10", "1.0.0-rc.2", "1.0.0-beta"]
    assert Version.parse("1.0.0-alpha.1") < Version.parse("1.0.0-alpha.beta")
    assert Version.parse("v1.2") == Version.parse("1.2.0")
    assert Version.parse("latest") is None


@pytest.mark.parametrize("bad", [">=1.x", "~>1.2", ">=1 ||", "1.2.3.4"])
def test_invalid_semver_range(bad):
    with pytest.raises(ValueError, match="semver"):
        semver_range(bad)


def test_invalid_regex_names_the_filter():
    with pytest.raises(ValueError, match=r"tags\.exclude"):
        TagFilter.from_config({"exclude": ["(unclosed"]})


def test_render_tag_placeholders():
    now = calendar.timegm((2024, 5, 6, 7, 8, 9, 0, 0, 0))
    assert render_tag("{timestamp}", "v1", "team/web", now) == "20240506070809"
    assert render_tag("{tag}-{date}", "1.1-stable", "team/web", now) == "1.1-stable-20240506"
    assert render_tag("{repo}-{tag}", "v1", "team/sub/web", now) == "web-v1"
    assert render_tag("{tag}-mirrored", "v2.0.0", "app", now) == "v2.0.0-mirrored"
    with pytest.raises(ValueError, match="not a valid tag"):
        render_tag("{tag}/x", "v1", "app", now)
    with pytest.raises(ValueError, match="not a valid tag"):
        render_tag("-{tag}", "v1", "app", now)


def test_namespace_and_registry_keys():
    ns = parse_rule("src.example.com/team/*", "dst.example.com/mirror")
    assert (ns.registry, ns.repository, ns.namespace) == ("src.example.com", "team", True)
    assert ns.wants_repository("team/app") and ns.wants_repository("team/a/b/c")
    assert not ns.wants_repository("teamster/app") and not ns.wants_repository("x/team/app")
    deep = ns.for_repository("team/a/b/c")
    assert (deep.repository, deep.namespace) == ("team/a/b/c", False)
    assert [t.name for t in deep.targets] == ["dst.example.com/mirror/a/b/c"]

    whole = parse_rule("src.example.com/*", ["dst.example.com/backup", "b.example.com/x"])
    assert (whole.registry, whole.repository, whole.namespace) == ("src.example.com", "", True)
    assert [t.name for t in whole.for_repository("team/app").targets] == [
        "dst.example.com/backup/team/app", "b.example.com/x/team/app"]
    assert parse_rule("127.0.0.1:5000/*", "d.example.com/b").registry == "127.0.0.1:5000"

    excl = parse_rule("src.example.com/team/*", {
        "to": "dst.example.com/m", "exclude_repos": ["(^|/)legacy(/|$)", "-tmp$"]})
    assert excl.wants_repository("team/app")
    assert not excl.wants_repository("team/legacy/app")
    assert not excl.wants_repository("team/app-tmp")
    assert excl.wants_repository("team/legacyish")


def test_extended_form_defaults_and_string_forms_unchanged():
    key = "src.example.com/team/app"
    for short, long in [("dst.example.com/app", {"to": "dst.example.com/app"}),
                        (["a.example.com/app", "b.example.com/app"],
                         {"to": ["a.example.com/app", "b.example.com/app"]})]:
        a, b = parse_rule(key, short), parse_rule(key, long)
        assert a == b
        assert a.overwrite is True and not a.platforms and a.tag_template is None
    rule = parse_rule(key, {"to": "dst.example.com/app", "tags": ["v1", "v2"],
                            "overwrite": False, "platforms": ["linux/arm/v7"],
                            "tag_template": "{tag}-m"})
    assert rule.selector.tags == ("v1", "v2") and rule.overwrite is False
    assert rule.platforms.matches(Platform("linux", "arm", "v7"))
    assert not rule.platforms.matches(Platform("linux", "arm", "v6"))


def test_platform_selector():
    amd64, arm64 = Platform("linux", "amd64"), Platform("linux", "arm64", "v8")
    armv7, win = Platform("linux", "arm", "v7"), Platform("windows", "amd64")
    assert PlatformSelector.parse().matches(None)  # no selection: everything
    by_spec = PlatformSelector.parse(("linux/amd64", "linux/arm64"))
    assert [by_spec.matches(p) for p in (amd64, arm64, armv7, win, None)] == [
        True, True, False, False, False]
    flags = PlatformSelector.parse((), ("linux",), ("arm:v7",))
    assert [flags.matches(p) for p in (amd64, armv7, Platform("linux", "arm", "v6"))] == [
        False, True, False]
    any_arm = PlatformSelector.parse((), (), ("arm",))
    assert any_arm.matches(armv7) and any_arm.matches(Platform("linux", "arm", "v6"))
    assert PlatformSelector.parse((), ("windows",)).matches(win)
    with pytest.raises(ValueError, match="os/arch"):
        PlatformSelector.parse(("linux",))


def test_filter_index_keeps_bytes_when_all_selected():
    entries = [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": "sha256:" + c * 64, "size": 100 + i,
                "platform": {"os": "linux", "architecture": arch}}
               for i, (c, arch) in enumerate([("a", "amd64"), ("b", "arm64"), ("c", "s390x")])]
    raw = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST,
                      "manifests": entries}).encode()
    index = parse_manifest(raw)
    assert filter_index(index, PlatformSelector.parse((), ("linux",))) is index
    subset = filter_index(index, PlatformSelector.parse(("linux/amd64", "linux/s390x")))
    assert subset.digest != index.digest and subset.media_type == DOCKER_MANIFEST_LIST
    assert [c.digest for c in subset.children] == [entries[0]["digest"], entries[2]["digest"]]
    assert json.loads(subset.raw)["manifests"] == [entries[0], entries[2]]


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("", None),
    ('</v2/_catalog?last=team%2Fb&n=2>; rel="next"', "/v2/_catalog?last=team%2Fb&n=2"),
    ("</v2/_catalog?last=b&n=2>;rel=next", "/v2/_catalog?last=b&n=2"),
    ('<https://r.example.com/v2/x/tags/list?last=v9&n=50>; rel="next"',
     "https://r.example.com/v2/x/tags/list?last=v9&n=50"),
    ('</v2/_catalog?last=a&n=2>; rel="prev", </v2/_catalog?last=c&n=2>; rel="next"',
     "/v2/_catalog?last=c&n=2"),
    ('</v2/_catalog?last=a&n=2>; rel="prev"', None),
])
def test_next_link(header, expected):
    assert _next_link(header) == expected


# -- namespaces and whole registries -------------------------------------------------------

def test_namespace_any_depth_whole_registry_and_exclude_repos(tmp_path, src_registry,
                                                              dst_registry, src_api, dst_api):
    pushed = {}
    for repo, tags in {"team/app": ["v1", "v2"], "team/sub/deep/tool": ["v1"],
                       "team/legacy/old": ["v1"], "team/app-tmp": ["v1"],
                       "teamster/x": ["v1"], "other/y": ["v1"]}.items():
        for tag in tags:
            pushed[repo, tag] = push_random_image(src_api, repo, tag, SMALL)
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {
        f"{s}/team/*": {"to": f"{d}/mirror", "exclude_repos": ["(^|/)legacy(/|$)", "-tmp$"]},
        f"{s}/*": f"{d}/backup",
    }}
    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout + run.stderr
    assert sorted(dst_api.catalog()) == [
        "backup/other/y", "backup/team/app", "backup/team/app-tmp", "backup/team/legacy/old",
        "backup/team/sub/deep/tool", "backup/teamster/x",
        "mirror/app", "mirror/sub/deep/tool"]
    assert sorted(dst_api.tags("mirror/app")) == ["v1", "v2"]
    assert dst_api.head_manifest("mirror/sub/deep/tool", "v1") == pushed[
        "team/sub/deep/tool", "v1"].digest
    assert dst_api.head_manifest("backup/teamster/x", "v1") == pushed["teamster/x", "v1"].digest
    assert run.report["summary"]["synced"] == 3 + 7
    # The report names each concrete source repository.
    assert run.by_destination()[f"{d}/mirror/app:v2"]["source"] == f"{s}/team/app:v2"


class PagedRegistry:
    """A read-only registry mock whose listings come in pages of ``page`` entries at most,
    whatever ``n`` the client asks for (as Docker Hub, ECR or Harbor cap it), linked by
    ``Link: <...>; rel="next"`` headers, alternately relative and absolute. Every tag of
    every repository is the same small image, served for real."""

    def __init__(self, repos: dict[str, list[str]], page: int = 2,
                 catalog_status: int | None = None):
        self.repos, self.page, self.catalog_status = repos, page, catalog_status
        self.listing_requests: list[str] = []
        layer = os.urandom(512)
        config = json.dumps({"os": "linux", "architecture": "amd64",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        self.blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b for b in (layer, config)}
        ((layer_digest, _), (config_digest, _)) = self.blobs.items()
        self.manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "digest": layer_digest, "size": len(layer)}],
        }).encode()
        self.digest = "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self.ping)
        app.router.add_get("/v2/_catalog", self.catalog)
        app.router.add_get(r"/v2/{name:.+}/tags/list", self.tags)
        app.router.add_get(r"/v2/{name:.+}/manifests/{ref}", self.get_manifest)
        app.router.add_get(r"/v2/{name:.+}/blobs/{digest}", self.get_blob)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    def _paged(self, request: web.Request, key: str, items: list[str],
               extra: dict) -> web.Response:
        self.listing_requests.append(str(request.rel_url))
        n = min(int(request.query.get("n", self.page)), self.page)
        last = request.query.get("last")
        items = sorted(items)
        start = items.index(last) + 1 if last else 0
        chunk = items[start : start + n]
        headers = {}
        if start + n < len(items):
            target = f"{request.path}?last={quote(chunk[-1], safe='')}&n={n}"
            if len(self.listing_requests) % 2:
                target = f"http://{request.host}{target}"
            headers["Link"] = f'<{target}>; rel="next"'
        return web.json_response({**extra, key: chunk}, headers=headers)

    async def catalog(self, request: web.Request) -> web.Response:
        if self.catalog_status:
            return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "busy"}]},
                                     status=self.catalog_status)
        return self._paged(request, "repositories", list(self.repos), {})

    async def tags(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return self._paged(request, "tags", self.repos[name], {"name": name})

    async def get_manifest(self, request: web.Request) -> web.Response:
        name, ref = request.match_info["name"], request.match_info["ref"]
        if ref not in self.repos.get(name, ()) and ref != self.digest:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        return web.Response(body=self.manifest, headers={
            "Content-Type": "application/vnd.docker.distribution.manifest.v2+json",
            "Docker-Content-Digest": self.digest})

    async def get_blob(self, request: web.Request) -> web.Response:
        body = self.blobs.get(request.match_info["digest"])
        if body is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(body=body, content_type="application/octet-stream")


async def test_catalog_and_tags_follow_link_pagination(aiohttp_server, tmp_path, dst_registry,
                                                       dst_api):
    repos = {f"team/r{i}": [f"v{j}" for j in range(5)] for i in range(5)}
    repos["team/sub/deep"] = ["only"]
    repos["other/x"] = ["v1"]
    mock = PagedRegistry(repos, page=2)
    server = await aiohttp_server(mock.app())
    src = f"127.0.0.1:{server.port}"
    cfg = load(str(write_config(tmp_path / "c.yaml", {
        "images": {f"{src}/team/*": f"{dst_registry.host}/mirror"}})))
    stream = io.StringIO()
    outcome = await sync(cfg, Settings(proc=4, backoff_initial=0.01),
                         make_logger(Redactor(), stream))
    assert outcome.summary.failed == 0, [r.error for r in outcome.results]
    assert outcome.summary.synced == 5 * 5 + 1, stream.getvalue()
    catalog_pages = [r for r in mock.listing_requests if r.startswith("/v2/_catalog")]
    assert len(catalog_pages) == 4  # 7 repositories, 2 per page
    assert sum("/team/r0/tags/list" in r for r in mock.listing_requests) == 3  # 5 tags
    assert sorted(dst_api.catalog()) == ["mirror/r0", "mirror/r1", "mirror/r2", "mirror/r3",
                                         "mirror/r4", "mirror/sub/deep"]
    for i in range(5):
        assert sorted(dst_api.tags(f"mirror/r{i}")) == [f"v{j}" for j in range(5)]
    assert dst_api.head_manifest("mirror/sub/deep", "only") == mock.digest


def _catalog_policy(account, typ, name, actions):
    """An ECR-like account: pull and push repositories, but no catalog."""
    if typ != "repository":
        return []
    return list(actions) if account else [a for a in actions if a == "pull"]


@pytest.mark.parametrize("who", ["anonymous", "account-without-catalog"])
def test_refused_catalog_fails_the_rule_by_name(tmp_path, token_issuer_factory,
                                                registry_factory, dst_registry, dst_api, who):
    issuer = token_issuer_factory(policy=_catalog_policy)
    reg = registry_factory(token=issuer, name="no-catalog")
    user, password = TEST_USER
    push_random_image(RegistryAPI(reg, username=user, password=password), "team/app", "v1",
                      SMALL)
    key = f"{reg.host}/team/*"
    cfg = {"images": {key: f"{dst_registry.host}/mirror",
                      f"{reg.host}/team/app:v1": f"{dst_registry.host}/named/app"}}
    if who != "anonymous":
        cfg["auth"] = {reg.host: {"username": user, "password": password}}
    run = run_cli(tmp_path, cfg)
    assert run.code == 1, run.stdout + run.stderr
    failed = [r for r in run.report["images"] if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["source"] == key
    assert key in failed[0]["error"] and "catalog" in failed[0]["error"]
    assert key in run.stdout and "Traceback" not in run.stderr
    # The other rule, naming its repository, still ran.
    assert dst_api.tags("named/app") == ["v1"]


async def test_unavailable_catalog_is_not_called_a_refusal(aiohttp_server, tmp_path,
                                                           dst_registry):
    server = await aiohttp_server(PagedRegistry({"team/a": ["v1"]}, catalog_status=503).app())
    key = f"127.0.0.1:{server.port}/team/*"
    cfg = load(str(write_config(tmp_path / "c.yaml",
                                {"images": {key: f"{dst_registry.host}/mirror"}})))
    outcome = await sync(cfg, Settings(retries=0), make_logger(Redactor(), io.StringIO()))
    (result,) = outcome.results
    assert result.status == "failed" and key in result.error and "503" in result.error
    assert "refuses" not in result.error


# -- tag filters, lists and templates end to end -------------------------------------------

def test_extended_form_of_the_issue(tmp_path, src_registry, dst_registry, registry_factory,
                                    src_api, dst_api):
    backup = registry_factory(name="backup")
    tags = ["v1.0.0", "v1.3.9", "v1.4.0", "v1.5.0-rc1", "v2.0.0", "v2.1.0", "v2.2.0",
            "v2.3.0", "v2.4.0", "v2.4", "v3.0.0", "latest"]
    pushed = {t: push_random_image(src_api, "team/app", t, SMALL) for t in tags}
    cfg = {"images": {f"{src_registry.host}/team/app": {
        "to": [f"{dst_registry.host}/app", f"{backup.host}/app"],
        "tags": {"include": [r"^v\d+\.\d+\.\d+$"], "exclude": [r"-rc\d*$"],
                 "semver": ">=1.4 <3", "latest": 5},
        "platforms": ["linux/amd64", "linux/arm64"],
        "overwrite": False,
        "tag_template": "{tag}-mirrored",
    }}}
    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout + run.stderr
    newest = ["v2.0.0", "v2.1.0", "v2.2.0", "v2.3.0", "v2.4.0"]
    for api in (dst_api, RegistryAPI(backup)):
        assert sorted(api.tags("app")) == [f"{t}-mirrored" for t in newest]
        for t in newest:
            assert api.head_manifest("app", f"{t}-mirrored") == pushed[t].digest
    assert run.report["summary"]["synced"] == 10
    # A re-run has nothing to do: same digests, no conflict despite overwrite: false.
    again = run_cli(tmp_path, cfg)
    assert again.code == 0 and again.report["summary"]["skipped"] == 10


def test_tags_list_and_timestamp_template(tmp_path, src_registry, dst_registry, src_api,
                                          dst_api):
    for t in ("v1", "v2", "v3"):
        push_random_image(src_api, "team/web", t, SMALL)
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {
        f"{s}/team/web": {"to": f"{d}/listed/web", "tags": ["v1", "v3"]},
        f"{s}/team/web:v2": {"to": f"{d}/promoted/web",
                             "tag_template": "{repo}-{tag}-{timestamp}"},
    }}
    before = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    run = run_cli(tmp_path, cfg)
    after = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    assert run.code == 0, run.stdout + run.stderr
    assert sorted(dst_api.tags("listed/web")) == ["v1", "v3"]
    (promoted,) = dst_api.tags("promoted/web")
    m = re.fullmatch(r"web-v2-(\d{14})", promoted)
    assert m and before <= m.group(1) <= after


def test_template_collision_is_reported(tmp_path, src_registry, dst_registry, src_api):
    for t in ("1.0-stable", "1.1-stable"):
        push_random_image(src_api, "dev/website", t, SMALL)
    cfg = {"images": {f"{src_registry.host}/dev/website": {
        "to": f"{dst_registry.host}/qa/website", "tags": {"ends_with": "stable"},
        "tag_template": "promoted-{date}"}}}
    run = run_cli(tmp_path, cfg)
    statuses = [r["status"] for r in run.report["images"]]
    assert statuses.count("synced") <= 1 and run.code != 0, statuses


def test_template_too_long_for_one_tag_fails_that_image_only(tmp_path, src_registry,
                                                             dst_registry, src_api, dst_api):
    push_random_image(src_api, "app", "v" * 125, SMALL)
    push_random_image(src_api, "app", "ok", SMALL)
    cfg = {"images": {f"{src_registry.host}/app": {
        "to": f"{dst_registry.host}/app", "tag_template": "{tag}-mirrored"}}}
    try:
        run = run_cli(tmp_path, cfg)
    except ValueError as e:
        pytest.fail(f"traceback: {e}")
    assert run.code == 1 and "not a valid tag" in run.stdout
    assert dst_api.tags("app") == ["ok-mirrored"]


# -- platforms ----------------------------------------------------------------------------

def test_platforms_whole_index_verbatim_subset_new_index(tmp_path, src_registry, dst_registry,
                                                         src_api, dst_api, skopeo):
    index = push_index(src_api, "multi", "v1", layer_sizes=SMALL)
    amd64, arm64, armv7 = index.children
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {
        f"{s}/multi:v1": {"to": f"{d}/all/multi",
                          "platforms": ["linux/amd64", "linux/arm64", "linux/arm/v7"]},
        f"{s}/multi": {"to": f"{d}/subset/multi", "platforms": ["linux/amd64", "linux/arm64"]},
    }}
    run = run_cli(tmp_path, cfg)
    assert run.code == 0, run.stdout + run.stderr
    # The whole selection: the index as it was, digest preserved, no note.
    raw, _, digest = dst_api.get_manifest("all/multi", "v1")
    assert digest == index.digest and raw == index.manifest
    assert run.by_destination()[f"{d}/all/multi:v1"]["note"] is None
    # A subset: a new index holding only the selected children, and the report says so.
    entry = run.by_destination()[f"{d}/subset/multi:v1"]
    new_digest = dst_api.head_manifest("subset/multi", "v1")
    assert entry["status"] == "synced" and entry["digest"] == new_digest != index.digest
    assert "index digest changed" in entry["note"] and index.digest in entry["note"]
    assert f"note: {d}/subset/multi:v1" in run.stdout and "digest changed" in run.stdout
    assert children(dst_api, "subset/multi", "v1") == [amd64.digest, arm64.digest]
    assert dst_api.head_manifest("subset/multi", armv7.digest) is None
    assert not dst_api.blob_exists("subset/multi", armv7.blobs[0])
    # An independent client resolves the new index to its children.
    def inspect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([skopeo, "inspect", "--tls-verify=false", *args,
                               f"docker://{d}/subset/multi:v1"], capture_output=True)
    got = json.loads(inspect("--override-arch", "arm64").stdout)
    assert got["Architecture"] == "arm64"
    assert inspect("--override-arch", "arm", "--override-variant", "v7").returncode != 0
    # The subset is made the same way every time: a re-run is a no-op.
    again = run_cli(tmp_path, cfg)
    assert set(again.statuses().values()) == {"skipped"}, again.report


@pytest.mark.parametrize(("flags", "kept"), [
    (["--arch", "arm:v7"], [2]),
    (["--os", "linux", "--arch", "arm64", "--arch", "amd64"], [0, 1]),
    (["--arch", "arm"], [2]),
    (["--os", "linux"], None),  # everything: the index verbatim
])
def test_os_and_arch_flags(tmp_path, src_registry, dst_registry, src_api, dst_api, flags, kept):
    index = push_index(src_api, "multi", "v1", layer_sizes=SMALL)
    cfg = {"images": {f"{src_registry.host}/multi": f"{dst_registry.host}/multi"}}
    run = run_cli(tmp_path, cfg, *flags)
    assert run.code == 0, run.stdout + run.stderr
    if kept is None:
        assert dst_api.head_manifest("multi", "v1") == index.digest
        return
    assert children(dst_api, "multi", "v1") == [index.children[i].digest for i in kept]
    assert "index digest changed" in run.report["images"][0]["note"]


def test_unselected_single_platform_image_and_index_are_skipped(tmp_path, src_registry,
                                                                dst_registry, src_api,
                                                                dst_api):
    push_random_image(src_api, "single", "v1", SMALL, platform=("linux", "amd64"))
    push_random_image(src_api, "single", "v2", SMALL, platform=("linux", "arm64"))
    push_index(src_api, "multi", "v1", layer_sizes=SMALL)
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {
        f"{s}/single": f"{d}/single",
        f"{s}/multi": {"to": f"{d}/multi", "platforms": ["windows/amd64"]},
    }}
    run = run_cli(tmp_path, cfg, "--arch", "arm64")
    assert run.code == 0, run.stdout + run.stderr
    by = run.by_destination()
    assert by[f"{d}/single:v1"]["status"] == "skipped"
    assert "platform linux/amd64 not selected" in by[f"{d}/single:v1"]["note"]
    assert by[f"{d}/single:v2"]["status"] == "synced"
    assert by[f"{d}/multi:v1"]["status"] == "skipped"
    assert "no platform" in by[f"{d}/multi:v1"]["note"]
    assert dst_api.catalog() == ["single"] and dst_api.tags("single") == ["v2"]


def test_skip_reasons_and_subset_digest_change_are_printed(tmp_path, src_registry,
                                                           dst_registry, src_api):
    push_random_image(src_api, "single", "v1", SMALL, platform=("linux", "amd64"))
    push_index(src_api, "multi", "v1", layer_sizes=SMALL)
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {f"{s}/single": f"{d}/single", f"{s}/multi": f"{d}/multi"}}
    plan = run_cli(tmp_path, cfg, "--dry-run", "--arch", "arm64")
    assert "digest changed" in plan.stdout or "new index" in plan.stdout, plan.stdout
    run = run_cli(tmp_path, cfg, "--arch", "arm64")
    assert "platform linux/amd64 not selected" in run.stdout, run.stdout


# -- overwrite policy and --force -----------------------------------------------------------

def test_overwrite_false_conflicts_default_moves_the_tag(tmp_path, src_registry, dst_registry,
                                                         src_api, dst_api):
    old = push_random_image(dst_api, "app", "v1", SMALL)
    new = push_random_image(src_api, "app", "v1", SMALL)
    v2 = push_random_image(src_api, "app", "v2", SMALL)
    s, d = src_registry.host, dst_registry.host
    strict = {"images": {f"{s}/app": {"to": f"{d}/app", "overwrite": False}}}
    run = run_cli(tmp_path, strict)
    assert run.code == 1, run.stdout + run.stderr
    conflict = run.by_destination()[f"{d}/app:v1"]
    assert conflict["status"] == "conflict"
    assert old.digest in conflict["error"] and "overwrite" in conflict["error"]
    assert run.by_destination()[f"{d}/app:v2"]["status"] == "synced"
    assert "1 conflicts" in run.stdout and f"{d}/app:v1" in run.stdout
    assert dst_api.head_manifest("app", "v1") == old.digest  # untouched
    assert dst_api.head_manifest("app", "v2") == v2.digest

    # The default (image-syncer's behaviour): the tag moves to the source's digest.
    run = run_cli(tmp_path, {"images": {f"{s}/app": f"{d}/app"}})
    assert run.code == 0, run.stdout
    assert run.statuses() == {f"{d}/app:v1": "synced", f"{d}/app:v2": "skipped"}
    assert dst_api.head_manifest("app", "v1") == new.digest


def test_force_repushes_identical_but_never_overrides_overwrite_false(tmp_path, src_registry,
                                                                      dst_registry, src_api,
                                                                      dst_api):
    push_random_image(src_api, "app", "same", SMALL)
    push_random_image(src_api, "app", "moved", SMALL)
    old = push_random_image(dst_api, "app", "moved", SMALL)
    s, d = src_registry.host, dst_registry.host
    assert run_cli(tmp_path, {"images": {f"{s}/app:same": f"{d}/app"}}).code == 0
    cfg = {"images": {f"{s}/app": {"to": f"{d}/app", "overwrite": False}}}
    mark = log_mark(dst_registry)
    run = run_cli(tmp_path, cfg, "--force")
    assert run.code == 1
    assert run.statuses() == {f"{d}/app:same": "synced", f"{d}/app:moved": "conflict"}
    assert writes(requests_since(dst_registry, mark)) == ["PUT /v2/app/manifests/same"]
    assert run.by_destination()[f"{d}/app:same"]["bytes"] < 1024  # the manifest only
    assert dst_api.head_manifest("app", "moved") == old.digest


# -- dry run --------------------------------------------------------------------------------

def test_dry_run_writes_nothing_and_predicts_the_bytes(tmp_path, src_registry, dst_registry,
                                                       src_api, dst_api):
    base = [os.urandom(2048)]
    push_random_image(src_api, "app", "v1", SMALL, base_layers=base)
    push_random_image(src_api, "app", "v2", SMALL, base_layers=base)
    push_random_image(src_api, "tools/cli", "v1", SMALL)
    push_index(src_api, "multi", "v1", layer_sizes=SMALL)
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {
        f"{s}/app": f"{d}/app",
        f"{s}/multi": {"to": f"{d}/multi", "platforms": ["linux/amd64", "linux/arm64"]},
        f"{s}/*": {"to": f"{d}/backup", "exclude_repos": ["^(app|multi)$"]},
    }}
    src_mark, dst_mark = log_mark(src_registry), log_mark(dst_registry)
    plan = run_cli(tmp_path, cfg, "--dry-run")
    assert plan.code == 0, plan.stdout + plan.stderr
    assert writes(requests_since(dst_registry, dst_mark)) == []
    assert writes(requests_since(src_registry, src_mark)) == []
    assert dst_api.catalog() == []
    lines = plan.stdout.splitlines()
    assert sorted(line.split()[:4] for line in lines[:-1]) == sorted([
        ["copy", f"{s}/app:v1", "->", f"{d}/app:v1"],
        ["copy", f"{s}/app:v2", "->", f"{d}/app:v2"],
        ["copy", f"{s}/multi:v1", "->", f"{d}/multi:v1"],
        ["copy", f"{s}/tools/cli:v1", "->", f"{d}/backup/tools/cli:v1"]])
    assert all(re.search(r"\d+(\.\d)? (B|KiB)(; .*)?$", line) for line in lines[:-1]), lines
    assert re.match(r"dry run: 4 to copy, 0 to skip, 0 conflicts, 0 errors; "
                    r"[\d.]+ KiB would move; nothing was written$", lines[-1]), lines[-1]
    summary = plan.report["summary"]
    assert summary["dry_run"] is True and summary["synced"] == 4
    assert summary["bytes"] > 2048 + 5 * 512

    # The plan's bytes are what the copy then moves (the shared base layer once).
    real = run_cli(tmp_path, cfg)
    assert real.code == 0 and real.report["summary"]["dry_run"] is False
    assert real.report["summary"]["bytes"] == summary["bytes"]


def test_dry_run_bytes_account_for_mounts(tmp_path, src_registry, dst_registry, src_api):
    push_random_image(src_api, "app", "v1", (4096,))
    s, d = src_registry.host, dst_registry.host
    cfg = {"images": {f"{s}/app": [f"{d}/app", f"{d}/backup/app"]}}
    plan = run_cli(tmp_path, cfg, "--dry-run")
    real = run_cli(tmp_path, cfg)
    assert real.code == 0 and plan.code == 0
    assert plan.report["summary"]["bytes"] == real.report["summary"]["bytes"]


def test_dry_run_plans_skip_copy_conflict_and_error(tmp_path, src_registry, dst_registry,
                                                    src_api, dst_api):
    for t in ("v1", "v2", "v3"):
        push_random_image(src_api, "app", t, SMALL)
    s, d = src_registry.host, dst_registry.host
    assert run_cli(tmp_path, {"images": {f"{s}/app:v1": f"{d}/app"}}).code == 0
    old = push_random_image(dst_api, "app", "v3", SMALL)
    cfg = {"images": {f"{s}/app": {"to": f"{d}/app", "overwrite": False},
                      f"{s}/app:nope": f"{d}/other"}}
    mark = log_mark(dst_registry)
    plan = run_cli(tmp_path, cfg, "--dry-run")
    assert plan.code == 1  # the plan has a conflict and an error
    assert writes(requests_since(dst_registry, mark)) == []
    words = {line.split()[3]: line.split()[0] for line in plan.stdout.splitlines()[:-1]}
    assert words == {f"{d}/app:v1": "skip", f"{d}/app:v2": "copy", f"{d}/app:v3": "conflict",
                     f"{d}/other:nope": "error"}
    assert plan.stdout.splitlines()[-1].startswith(
        "dry run: 1 to copy, 1 to skip, 1 conflicts, 1 errors;")
    assert sorted(dst_api.tags("app")) == ["v1", "v3"]
    assert dst_api.head_manifest("app", "v3") == old.digest


# -- config errors ----------------------------------------------------------------------------

RULE = "src.example.com/team/app"
NS = "src.example.com/team/*"


@pytest.mark.parametrize(("images", "path", "suggestion"), [
    ({RULE: {"to": "d.example.com/a", "ovewrite": False}}, f'images["{RULE}"]', "'overwrite'"),
    ({RULE: {"to": "d.example.com/a", "tags": {"startswith": "x"}}}, f'images["{RULE}"].tags',
     "'starts_with'"),
    ({RULE: {"to": "d.example.com/a", "tags": {"endswith": "stable"}}},
     f'images["{RULE}"].tags', "'ends_with'"),
    ({RULE: {"to": "d.example.com/a", "tags": {"notoneof": ["x"]}}}, f'images["{RULE}"].tags',
     "'not_one_of'"),
    ({RULE: {"to": "d.example.com/a", "platfroms": ["linux/amd64"]}}, f'images["{RULE}"]',
     "'platforms'"),
    ({RULE: {"to": "d.example.com/a", "tag_tempate": "{tag}"}}, f'images["{RULE}"]',
     "'tag_template'"),
    ({NS: {"to": "d.example.com/a", "exclude_repo": ["x"]}}, f'images["{NS}"]',
     "'exclude_repos'"),
], ids=["ovewrite", "startswith", "endswith", "notoneof", "platfroms", "tag_tempate",
        "exclude_repo"])
def test_schema_rejects_misspelt_keys(tmp_path, images, path, suggestion):
    run = run_cli(tmp_path, {"images": images})
    err = one_line_error(run)
    assert str(tmp_path / "imagesync.yaml") in err
    assert f"{path}: unknown key" in err and f"did you mean {suggestion}?" in err


def test_schema_misspelt_to(tmp_path):
    err = one_line_error(run_cli(tmp_path, {"images": {RULE: {"too": "d.example.com/a"}}}))
    assert "'too'" in err and "did you mean 'to'?" in err


@pytest.mark.parametrize(("value", "fragment"), [
    ({"tags": {"include": ["(v"]}}, "tags.include"),
    ({"tags": {"exclude": ["[a-"]}}, "tags.exclude"),
    ({"tags": {"semver": ">=1.x"}}, "invalid semver"),
    ({"tags": {"semver": ">=1 ||"}}, "semver"),
    ({"tags": {"latest": 0}}, "latest"),
    ({"tags": {"equals": ["a"]}}, "equals"),
    ({"platforms": ["linux"]}, "platforms[0]"),
    ({"platforms": ["linux/arm/v7/x"]}, "platforms[0]"),
    ({"overwrite": "no"}, "must be a boolean"),
    ({"tag_template": "{tag}/x"}, "not a valid tag"),
    ({"tag_template": "-{tag}"}, "not a valid tag"),
    ({"to": "d.example.com/a:stable", "tag_template": "{tag}-x"}, "not both"),
    ({"tags": ["v1", "v2"], "to": "d.example.com/a:one"}, "same number"),
    ({"to": []}, ".to"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_bad_values_are_one_line_errors(tmp_path, value, fragment):
    rule = {"to": "d.example.com/a", **value}
    err = one_line_error(run_cli(tmp_path, {"images": {RULE: rule}}))
    assert f'images["{RULE}"]' in err and fragment in err, err


@pytest.mark.parametrize(("key", "value", "fragment"), [
    (NS, {"to": "d.example.com/a", "exclude_repos": ["(a"]}, "missing )"),
    (NS, "d.example.com/a:v1", "without tags"),
    ("src.example.com/te*m/x/*", "d.example.com/a", "'*'"),
    (f"{RULE}:v1", {"to": "d.example.com/a", "tags": ["v2"]}, "both in the key"),
])
def test_bad_rules_are_one_line_errors(tmp_path, key, value, fragment):
    err = one_line_error(run_cli(tmp_path, {"images": {key: value}}))
    assert fragment in err, err


@pytest.mark.parametrize("template", ["{foo}", "{0}", "{tag}-{Timestamp}"])
def test_unknown_template_placeholder_is_a_config_error(tmp_path, template):
    rule = {"to": "d.example.com/a", "tag_template": template}
    try:
        run = run_cli(tmp_path, {"images": {RULE: rule}})
    except (KeyError, IndexError) as e:
        pytest.fail(f"traceback: {type(e).__name__}: {e}")
    err = one_line_error(run)
    assert "tag_template" in err and "{tag}" in err  # names the placeholders allowed


@pytest.mark.parametrize(("key", "value", "fragment"), [
    (RULE, {"to": "d.example.com/a", "platforms": ["linux"]}, "os/arch"),
    (NS, {"to": "d.example.com/a", "exclude_repos": ["(a"]}, "exclude_repos"),
    (RULE, {"to": "d.example.com/a", "tags": {}}, "filter"),
], ids=["platform", "exclude_repos-regex", "empty-tags"])
def test_bad_value_messages_say_what_is_expected(tmp_path, key, value, fragment):
    err = one_line_error(run_cli(tmp_path, {"images": {key: value}}))
    assert fragment in err, err
