"""Every ``examples/*.yaml`` (but the demo's) run against local registries.

The examples are written for the real registries of the seed scenarios; environment
variables (``${VAR:-default}`` in their keys and values) point them at loopback registries
here, so what is tested is the file a user copies.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from imagesync.config import load
from tests.support.cli import CliRun, run_cli
from tests.support.images import RegistryAPI, push_index, push_random_image, seed_many

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL = (256,)

# example file -> the test functions below that run it
COVERED = {
    "ecr-cross-account.yaml": "test_ecr_cross_account",
    "gcp-promote.yaml": "test_gcp_promote_list_all_tags_and_region",
    "gcp-copy-repository.yaml": "test_gcp_copy_entire_repository",
    "dtr-mirror-policy.yaml": "test_dtr_mirror_policy",
    "dtr-tag-filters.yaml": "test_dtr_tag_filters",
    "ci-image-migration.yaml": "test_ci_image_migration_plugin",
    "extended-rule.yaml": "test_extended_rule",
    "namespaces.yaml": "test_namespaces",
}


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``example(name, env, *args)``: run ``imagesync --config examples/<name>`` with only
    ``env`` among the variables the file mentions (none leaks in from the shell)."""
    def run(name: str, env: dict[str, str], *args: str) -> CliRun:
        path = EXAMPLES / name
        for var in set(re.findall(r"\$\{([A-Za-z_]\w*)", path.read_text())):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        return run_cli(tmp_path, None, "--config", str(path), *args)
    return run


def unchanged(run: CliRun) -> bool:
    return run.code == 0 and set(run.statuses().values()) == {"skipped"}


def test_every_example_is_tested_and_documented():
    names = {p.name for p in EXAMPLES.glob("*.yaml")} - {"demo.yaml"}
    assert names == set(COVERED)
    for name, test in COVERED.items():
        assert test in globals(), test
        text = (EXAMPLES / name).read_text()
        assert text.startswith("# "), name  # a comment header: scenario, how to run
        assert f"imagesync --config examples/{name}" in text, name


@pytest.mark.parametrize(("name", "secrets", "sources", "destinations"), [
    ("ecr-cross-account.yaml", ["SRC_ECR_PASSWORD", "DST_ECR_PASSWORD"],
     "111111111111.dkr.ecr.us-east-1.amazonaws.com",
     "222222222222.dkr.ecr.eu-west-1.amazonaws.com"),
    ("gcp-promote.yaml", ["GAR_TOKEN"], "us-central1-docker.pkg.dev",
     "us-central1-docker.pkg.dev europe-west1-docker.pkg.dev"),
    ("gcp-copy-repository.yaml", ["GAR_TOKEN"], "us-central1-docker.pkg.dev",
     "us-central1-docker.pkg.dev"),
    ("dtr-mirror-policy.yaml", ["QA_MIRROR_TOKEN"], "dtr-example.com", "qa-example.com"),
    ("dtr-tag-filters.yaml", ["QA_MIRROR_TOKEN"], "dtr-example.com", "qa-example.com"),
    ("ci-image-migration.yaml", ["PLUGIN_USERNAME", "PLUGIN_PASSWORD"],
     "registry-1.example.com", "registry-2.example.com"),
    ("extended-rule.yaml", [], "src.example.com", "dst.example.com backup.example.com"),
    ("namespaces.yaml", [], "src.example.com", "dst.example.com backup.example.com"),
])
def test_examples_default_to_the_seed_registries(name, secrets, sources, destinations,
                                                 monkeypatch):
    """Without overrides, each example names the registries of its seed; only the secrets
    must be given, and a missing one is a one-line error naming it."""
    path = EXAMPLES / name
    env = {var: "secret" for var in secrets}
    cfg = load(str(path), environ=env)
    assert {r.registry for r in cfg.rules} == set(sources.split())
    assert {t.registry for r in cfg.rules for t in r.targets} == set(destinations.split())
    for var in secrets:
        rest = {k: v for k, v in env.items() if k != var}
        with pytest.raises(Exception, match=f"environment variable {var} is not set"):
            load(str(path), environ=rest)


def test_ecr_cross_account(example, registry_factory):
    """Every tag of each listed repository, same names, both accounts behind passwords; an
    empty repository is reported and skipped, as the seed's script does."""
    src = registry_factory(htpasswd=("AWS", "source-account-pw"), name="ecr-src")
    dst = registry_factory(htpasswd=("AWS", "destination-account-pw"), name="ecr-dst")
    src_api, dst_api = RegistryAPI(src), RegistryAPI(dst)
    web = {t: push_random_image(src_api, "web-frontend", t, SMALL) for t in ("1.0.0", "1.1.0")}
    src_api.push_manifest("web-frontend", "latest", web["1.1.0"].manifest,
                          web["1.1.0"].media_type)
    payments = {"2.3.1": push_random_image(src_api, "payments-api", "2.3.1", SMALL),
                "2.4.0": push_index(src_api, "payments-api", "2.4.0", layer_sizes=SMALL)}
    gone = push_random_image(src_api, "batch/report-generator", "old", SMALL)
    src_api.delete_manifest("batch/report-generator", gone.digest)  # no images left
    env = {"SRC_REGISTRY": src.host, "DST_REGISTRY": dst.host,
           "SRC_ECR_PASSWORD": "source-account-pw", "DST_ECR_PASSWORD": "destination-account-pw"}

    run = example("ecr-cross-account.yaml", env)
    assert run.code == 0, run.stdout + run.stderr
    assert sorted(dst_api.tags("web-frontend")) == ["1.0.0", "1.1.0", "latest"]
    assert dst_api.head_manifest("web-frontend", "latest") == web["1.1.0"].digest
    for tag, img in payments.items():
        assert dst_api.head_manifest("payments-api", tag) == img.digest
    assert "rule matched nothing" in run.stderr and "batch/report-generator" in run.stderr
    assert "batch/report-generator' matched nothing" in run.stdout  # and in the summary
    assert run.report["summary"]["synced"] == 5
    assert "source-account-pw" not in run.stderr + run.stdout
    assert unchanged(example("ecr-cross-account.yaml", env))

    env["DST_ECR_PASSWORD"] = "expired"
    denied = example("ecr-cross-account.yaml", env)
    assert denied.code == 1 and "authentication failed" in denied.stdout


def test_gcp_promote_list_all_tags_and_region(example, src_registry, dst_registry):
    """One Artifact Registry host holds both projects; Europe is another registry."""
    api, eu = RegistryAPI(src_registry), RegistryAPI(dst_registry)
    dev = "project-dev/dev-repo"
    pushed = {(image, tag): push_random_image(api, f"{dev}/{image}", tag, SMALL)
              for image in ("api", "web", "worker", "scheduler", "my-app")
              for tag in ("v0.9.0", "v1.0.0")}
    pushed["my-app", "latest"] = push_index(api, f"{dev}/my-app", "latest", layer_sizes=SMALL)
    host = src_registry.host
    env = {"GAR_HOST": host, "EU_GAR_HOST": dst_registry.host, "GAR_TOKEN": "ya29.token",
           "DEV_REPO": f"{host}/{dev}", "PROD_REPO": f"{host}/project-prod/prod-repo",
           "EU_REPO": f"{dst_registry.host}/project-prod/eu-prod-repo"}

    plan = example("gcp-promote.yaml", env, "--dry-run")
    assert plan.code == 0 and plan.report["summary"]["synced"] == 4 + 3 + 1, plan.stdout
    run = example("gcp-promote.yaml", env)
    assert run.code == 0, run.stdout + run.stderr
    prod = "project-prod/prod-repo"
    for image in ("api", "web", "worker", "scheduler"):
        assert api.tags(f"{prod}/{image}") == ["v1.0.0"]
        assert api.head_manifest(f"{prod}/{image}", "v1.0.0") == pushed[image, "v1.0.0"].digest
    assert sorted(api.tags(f"{prod}/my-app")) == ["latest", "v0.9.0", "v1.0.0"]
    assert api.head_manifest(f"{prod}/my-app", "latest") == pushed["my-app", "latest"].digest
    assert eu.catalog() == ["project-prod/eu-prod-repo/my-app"]
    assert eu.tags("project-prod/eu-prod-repo/my-app") == ["v1.0.0"]
    # `crane digest` on both sides agrees
    assert (eu.head_manifest("project-prod/eu-prod-repo/my-app", "v1.0.0")
            == pushed["my-app", "v1.0.0"].digest)

    # Promote another release by its tag.
    older = example("gcp-promote.yaml", {**env, "IMAGE_TAG": "v0.9.0"})
    assert older.code == 0, older.stdout
    assert sorted(api.tags(f"{prod}/api")) == ["v0.9.0", "v1.0.0"]


def test_gcp_copy_entire_repository(example, src_registry):
    api = RegistryAPI(src_registry)
    dev, prod = "project-dev/dev-repo", "project-prod/prod-repo"
    pushed = {}
    for repo, tags in {f"{dev}/api": ["v1", "v2"], f"{dev}/web": ["v1"],
                       f"{dev}/tools/cli": ["v1"], "project-dev/other-repo/x": ["v1"],
                       "project-dev/dev-repo-old/y": ["v1"]}.items():
        for tag in tags:
            pushed[repo, tag] = push_random_image(api, repo, tag, SMALL)
    host = src_registry.host
    env = {"GAR_HOST": host, "GAR_TOKEN": "ya29.token", "DEV_REPO": f"{host}/{dev}",
           "PROD_REPO": f"{host}/{prod}"}
    plan = example("gcp-copy-repository.yaml", env, "--dry-run")
    assert plan.code == 0 and plan.report["summary"]["synced"] == 4, plan.stdout
    assert "would move" in plan.stdout
    assert not [r for r in api.catalog() if r.startswith("project-prod/")]

    run = example("gcp-copy-repository.yaml", env)
    assert run.code == 0, run.stdout + run.stderr
    assert sorted(r for r in api.catalog() if r.startswith("project-prod/")) == [
        f"{prod}/api", f"{prod}/tools/cli", f"{prod}/web"]
    for (repo, tag), img in pushed.items():
        if repo.startswith(f"{dev}/"):
            assert api.head_manifest(prod + repo[len(dev):], tag) == img.digest
    assert unchanged(example("gcp-copy-repository.yaml", env))


def test_dtr_mirror_policy(example, src_registry, registry_factory):
    """Tags ending in "stable" go to qa/website, renamed to the promotion timestamp."""
    qa = registry_factory(htpasswd=("mirror-bot", "qa-token"), name="qa")
    dev = RegistryAPI(src_registry)
    pushed = {t: push_random_image(dev, "dev/website", t, SMALL)
              for t in ("1.0", "1.1-beta", "1.1-stable")}
    env = {"DEV_DTR": src_registry.host, "QA_DTR": qa.host, "QA_MIRROR_TOKEN": "qa-token"}
    before = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    run = example("dtr-mirror-policy.yaml", env)
    after = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    assert run.code == 0, run.stdout + run.stderr
    qa_api = RegistryAPI(qa)
    (tag,) = qa_api.tags("qa/website")
    assert re.fullmatch(r"\d{14}", tag) and before <= tag <= after
    assert qa_api.head_manifest("qa/website", tag) == pushed["1.1-stable"].digest
    assert qa_api.catalog() == ["qa/website"]


def test_dtr_tag_filters(example, src_registry, dst_registry):
    """Each tag-name test of a DTR mirroring policy, and three tag templates."""
    dev, qa = RegistryAPI(src_registry), RegistryAPI(dst_registry)
    tags = ["release", "release-1", "release-2", "1.0", "1.1", "2.0-hotfix1", "1.1-stable",
            "latest", "nightly"]
    repos = ["website", "api", "worker", "web", "scheduler", "cli"]
    seed_many(dev, [f"dev/{r}" for r in repos], tags, SMALL, workers=4)
    env = {"DEV_DTR": src_registry.host, "QA_DTR": dst_registry.host,
           "QA_MIRROR_TOKEN": "token"}
    days = {time.strftime("%Y%m%d", time.gmtime())}
    run = example("dtr-tag-filters.yaml", env)
    days.add(time.strftime("%Y%m%d", time.gmtime()))
    assert run.code == 0, run.stdout + run.stderr
    got = {r: sorted(qa.tags(f"qa/{r}")) for r in repos}
    assert got["website"] in [[f"1.1-stable-{day}"] for day in days]
    assert len(got["api"]) == 1 and re.fullmatch(r"promoted-\d{14}", got["api"][0])
    assert got["worker"] == ["release-1", "release-2"]
    assert got["web"] == ["web-2.0-hotfix1"]
    assert got["scheduler"] == ["1.0", "1.1"]
    assert got["cli"] == sorted(set(tags) - {"latest", "nightly"})
    # Renamed tags point at their source images.
    assert (qa.head_manifest("qa/web", "web-2.0-hotfix1")
            == dev.head_manifest("dev/web", "2.0-hotfix1"))
    assert qa.head_manifest("qa/api", got["api"][0]) == dev.head_manifest("dev/api", "release")


def test_ci_image_migration_plugin(example, registry_factory):
    """source -> destination with basic auth on both sides; overwrite: false, the plugin's
    default, refuses to replace a destination tag that holds another image."""
    src = registry_factory(htpasswd=("ci-reader", "source-token"), name="registry-1")
    dst = registry_factory(htpasswd=("ci-pusher", "destination-token"), name="registry-2")
    src_api, dst_api = RegistryAPI(src), RegistryAPI(dst)
    first = push_random_image(src_api, "image", "latest", SMALL)
    env = {"PLUGIN_SOURCE": f"{src.host}/image:latest",
           "PLUGIN_DESTINATION": f"{dst.host}/image:latest",
           "SOURCE_REGISTRY": src.host, "DESTINATION_REGISTRY": dst.host,
           "PLUGIN_SOURCE_USERNAME": "ci-reader", "PLUGIN_SOURCE_PASSWORD": "source-token",
           "PLUGIN_USERNAME": "ci-pusher", "PLUGIN_PASSWORD": "destination-token"}
    run = example("ci-image-migration.yaml", env)
    assert run.code == 0, run.stdout + run.stderr
    assert dst_api.head_manifest("image", "latest") == first.digest
    assert unchanged(example("ci-image-migration.yaml", env))

    push_random_image(src_api, "image", "latest", SMALL)  # a new build under the same tag
    conflict = example("ci-image-migration.yaml", env)
    assert conflict.code == 1
    assert conflict.statuses() == {f"{dst.host}/image:latest": "conflict"}
    assert "overwrite" in conflict.stdout
    assert dst_api.head_manifest("image", "latest") == first.digest
    out = run.stdout + run.stderr + conflict.stdout + conflict.stderr
    assert "destination-token" not in out and "source-token" not in out


def test_extended_rule(example, src_registry, dst_registry, registry_factory):
    backup = registry_factory(name="backup")
    src, dst, bak = RegistryAPI(src_registry), RegistryAPI(dst_registry), RegistryAPI(backup)
    pushed = {}
    for tag in ("v1.3.0", "v1.4.0", "v2.0.0", "v2.1.0-rc1", "v2.3.0", "v2.4.0", "v3.0.0",
                "latest"):
        pushed[tag] = push_random_image(src, "team/app", tag, SMALL)
    pushed["v2.1.0"] = push_index(src, "team/app", "v2.1.0", layer_sizes=SMALL)
    pushed["v2.2.0"] = push_random_image(src, "team/app", "v2.2.0", SMALL,
                                         platform=("linux", "s390x"))
    taken = push_random_image(dst, "app", "v2.3.0-mirrored", SMALL)  # someone else's image
    env = {"SRC_REGISTRY": src_registry.host, "DST_REGISTRY": dst_registry.host,
           "BACKUP_REGISTRY": backup.host}

    run = example("extended-rule.yaml", env)
    assert run.code == 1, run.stdout + run.stderr  # the conflict on dst
    by = run.by_destination()
    d, b = dst_registry.host, backup.host
    assert by[f"{d}/app:v2.3.0-mirrored"]["status"] == "conflict"
    assert dst.head_manifest("app", "v2.3.0-mirrored") == taken.digest
    for api in (dst, bak):  # the newest 5 in range; v2.2.0 is s390x only
        assert sorted(api.tags("app")) == [
            "v2.0.0-mirrored", "v2.1.0-mirrored", "v2.3.0-mirrored", "v2.4.0-mirrored"]
    assert by[f"{b}/app:v2.2.0-mirrored"]["status"] == "skipped"
    assert "s390x" in by[f"{b}/app:v2.2.0-mirrored"]["note"]
    assert bak.head_manifest("app", "v2.3.0-mirrored") == pushed["v2.3.0"].digest
    # The multi-platform v2.1.0 keeps linux/amd64 and linux/arm64 only: a new index.
    amd64, arm64, _ = pushed["v2.1.0"].children
    for api in (dst, bak):
        raw, _, digest = api.get_manifest("app", "v2.1.0-mirrored")
        assert digest != pushed["v2.1.0"].digest
        assert [m["digest"] for m in json.loads(raw)["manifests"]] == [
            amd64.digest, arm64.digest]
    assert "index digest changed" in by[f"{b}/app:v2.1.0-mirrored"]["note"]


def test_namespaces(example, src_registry, dst_registry):
    src, dst = RegistryAPI(src_registry), RegistryAPI(dst_registry)
    for repo in ("team/app", "team/tools/cli", "team/legacy/api", "team/web-tmp", "base/debian"):
        push_random_image(src, repo, "v1", SMALL)
    env = {"SRC_REGISTRY": src_registry.host, "DST_REGISTRY": dst_registry.host,
           "BACKUP_REGISTRY": dst_registry.host}
    run = example("namespaces.yaml", env)
    assert run.code == 0, run.stdout + run.stderr
    assert sorted(dst.catalog()) == [
        "backup/base/debian", "backup/team/app", "backup/team/legacy/api",
        "backup/team/tools/cli", "backup/team/web-tmp", "mirror/app", "mirror/tools/cli"]
    assert unchanged(example("namespaces.yaml", env))
