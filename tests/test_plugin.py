"""CI-plugin mode: PLUGIN_* settings -> config document, and copies driven by it.

Unit tests cover every example of the Image Migration plugin's documentation (the seed)
plus the edge cases; end-to-end tests write the document to a JSON file and run
``imagesync --config FILE`` between loopback registries; one test runs ``imagesync``
with no arguments, once the CLI has a plugin mode (``imagesync.cli.PLUGIN_MODE``).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

import imagesync.cli
from imagesync.config import load, load_schema, validate
from imagesync.errors import ConfigError
from imagesync.plugin import plugin_document, redact_document, unknown_settings
from tests.support.cli import run_cli
from tests.support.images import RegistryAPI, push_random_image

ECR = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
GAR = "us-central1-docker.pkg.dev"
SMALL = (512, 256)


def env(**settings: str) -> dict[str, str]:
    """``env(source=..., aws_region=...)`` -> ``{"PLUGIN_SOURCE": ..., ...}``."""
    return {f"PLUGIN_{k.upper()}": v for k, v in settings.items()}


def entry_for(doc: dict, tmp_path: Path, image: str) -> dict | None:
    """The auth entry imagesync's loader picks for ``image`` (longest prefix), as a dict
    of the fields set in the document, via the real loader and AuthEntry.matches."""
    path = tmp_path / "plugin.json"
    path.write_text(json.dumps(doc))
    cfg = load(str(path), environ={})
    from imagesync.plugin import Reference
    ref = Reference.parse(image)
    best = max(cfg.auth, key=lambda e: e.matches(ref.registry, ref.repository), default=None)
    if best is None or best.matches(ref.registry, ref.repository) == 0:
        return None
    return doc["auth"][next(k for k in doc["auth"] if k.rstrip("/") == best.prefix)]


def assert_valid(doc: dict) -> None:
    validate(doc, load_schema(), "plugin")


# -- the seed's examples -------------------------------------------------------------------

def test_none_without_source_and_destination():
    assert plugin_document({}) is None
    assert plugin_document({"PLUGIN_USERNAME": "u", "HOME": "/root"}) is None
    assert plugin_document({"PLUGIN_SOURCE": "", "PLUGIN_DESTINATION": ""}) is None


@pytest.mark.parametrize("given,missing", [("source", "PLUGIN_DESTINATION"),
                                           ("destination", "PLUGIN_SOURCE")])
def test_only_one_of_source_destination_names_the_missing_one(given, missing):
    with pytest.raises(ConfigError) as e:
        plugin_document(env(**{given: "reg.example.com/image:latest"}))
    assert e.value.key == missing and e.value.file == "PLUGIN_* settings"
    assert missing in str(e.value)


def test_basic_auth_destination_only(tmp_path):
    """Seed, basic auth, example 1: only the destination needs credentials."""
    doc = plugin_document(env(source="some-registry/image:latest",
                              destination="my-target-registry/image:latest",
                              username="YOUR_USERNAME", password="registry-token"))
    assert_valid(doc)
    # Both names are Docker Hub repositories (no dot, no port: a namespace, not a host).
    assert doc == {
        "auth": {"docker.io": {"username": "YOUR_USERNAME", "password": "registry-token"}},
        "images": {"some-registry/image:latest": {"to": "my-target-registry/image:latest",
                                                  "overwrite": False}},
    }


def test_basic_auth_both_sides_overwrite_true(tmp_path):
    """Seed, basic auth, example 2: source and destination credentials, overwrite: true."""
    doc = plugin_document(env(
        source="registry-1.example.com/image:latest",
        destination="registry-2.example.com/image:latest",
        source_username="USERNAME_FOR_SOURCE_REGISTRY", source_password="source-token",
        username="YOUR_USERNAME", password="registry-token", overwrite="true"))
    assert_valid(doc)
    assert doc == {
        "auth": {
            "registry-2.example.com": {"username": "YOUR_USERNAME", "password": "registry-token"},
            "registry-1.example.com": {"username": "USERNAME_FOR_SOURCE_REGISTRY",
                                       "password": "source-token"},
        },
        "images": {"registry-1.example.com/image:latest": {
            "to": "registry-2.example.com/image:latest", "overwrite": True}},
    }
    assert entry_for(doc, tmp_path, "registry-1.example.com/image")["password"] == "source-token"


def test_gar_destination_token():
    """Seed, GAR: basic-auth source, GAR destination with oauth2accesstoken + token."""
    dest = f"{GAR}/project-id/repo-name/image-name:tag"
    doc = plugin_document(env(
        source="registry-1.example.com/image:latest", destination=dest,
        source_username="USERNAME_FOR_SOURCE_REGISTRY", source_password="source-token",
        username="oauth2accesstoken", password="ya29.gar-token", overwrite="true"))
    assert_valid(doc)
    assert doc["auth"][GAR] == {"username": "oauth2accesstoken", "password": "ya29.gar-token"}
    assert doc["auth"]["registry-1.example.com"]["username"] == "USERNAME_FOR_SOURCE_REGISTRY"
    assert doc["images"] == {"registry-1.example.com/image:latest": {"to": dest,
                                                                     "overwrite": True}}


def test_gar_token_without_username_is_oauth2accesstoken():
    doc = plugin_document(env(source="alpine:3.19", destination=f"{GAR}/p/r/alpine:3.19",
                              password="ya29.token"))
    assert doc["auth"] == {GAR: {"username": "oauth2accesstoken", "password": "ya29.token"}}


def test_ecr_same_account_one_entry(tmp_path):
    """Seed, ECR example 1: both images in one ECR registry, keys + region, username AWS:
    one auth entry with the aws_* fields, used for the source and the destination."""
    doc = plugin_document(env(
        source=f"{ECR}/image-dev:1.2.3", destination=f"{ECR}/image-prod:1.2.3",
        username="AWS", aws_access_key_id="012345678901",
        aws_secret_access_key="aws-secret-key", aws_region="us-west-2", overwrite="true"))
    assert_valid(doc)
    assert doc == {
        "auth": {ECR: {"aws_access_key_id": "012345678901",
                       "aws_secret_access_key": "aws-secret-key", "aws_region": "us-west-2"}},
        "images": {f"{ECR}/image-dev:1.2.3": {"to": f"{ECR}/image-prod:1.2.3",
                                              "overwrite": True}},
    }
    for image in (f"{ECR}/image-dev", f"{ECR}/image-prod"):
        assert entry_for(doc, tmp_path, image)["aws_access_key_id"] == "012345678901"


def test_ecr_destination_only():
    """Seed, ECR example 2: a public source, an ECR destination."""
    doc = plugin_document(env(
        source="registry-2.example.com/image:latest", destination=f"{ECR}/image:latest",
        username="AWS", aws_access_key_id="012345678900",
        aws_secret_access_key="aws-secret-key", aws_region="us-west-2", overwrite="true"))
    assert_valid(doc)
    assert doc["auth"] == {ECR: {"aws_access_key_id": "012345678900",
                                 "aws_secret_access_key": "aws-secret-key",
                                 "aws_region": "us-west-2"}}


def test_ecr_source_with_token_password():
    """Seed, the commented-out ECR example: an ECR source with an `aws ecr
    get-login-password` token as source_password, basic-auth destination."""
    doc = plugin_document(env(
        source=f"{ECR}/image:latest", destination="registry-2.example.com/image:latest",
        source_username="AWS", source_password="ecr-login-password", aws_region="us-west-2",
        username="DESTINATION_USERNAME", password="DESTINATION_PASSWORD", overwrite="true"))
    assert_valid(doc)
    assert doc["auth"] == {
        "registry-2.example.com": {"username": "DESTINATION_USERNAME",
                                   "password": "DESTINATION_PASSWORD"},
        ECR: {"username": "AWS", "password": "ecr-login-password"},
    }


def test_ecr_username_aws_without_keys_uses_region_from_name():
    """username AWS, no password, no keys: imagesync's ECR support with the step's AWS
    environment (AWS_ACCESS_KEY_ID, instance role...), region from the registry name."""
    doc = plugin_document(env(source="alpine", destination=f"{ECR}/alpine",
                              username="AWS"))
    assert doc["auth"] == {ECR: {"aws_region": "us-west-2"}}


def test_ecr_source_username_aws_gets_the_keys():
    doc = plugin_document(env(
        source=f"{ECR}/app:v1", destination="registry-2.example.com/app:v1",
        source_username="AWS", aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret", username="u", password="p"))
    assert doc["auth"][ECR] == {"aws_access_key_id": "AKIDEXAMPLE",
                                "aws_secret_access_key": "secret", "aws_region": "us-west-2"}
    assert doc["auth"]["registry-2.example.com"] == {"username": "u", "password": "p"}


def test_aws_keys_for_no_ecr_registry_are_an_error():
    with pytest.raises(ConfigError) as e:
        plugin_document(env(source="a.example.com/x:1", destination="b.example.com/x:1",
                            username="u", password="p", aws_access_key_id="AKID",
                            aws_secret_access_key="never-shown"))
    assert e.value.key == "PLUGIN_AWS_ACCESS_KEY_ID"
    assert "never-shown" not in str(e.value)


def test_username_aws_on_non_ecr_host_needs_a_region():
    settings = env(source="a.example.com/x:1", destination="127.0.0.1:5000/x:1",
                   username="AWS", aws_access_key_id="AKID", aws_secret_access_key="s")
    with pytest.raises(ConfigError) as e:
        plugin_document(settings)
    assert e.value.key == "PLUGIN_AWS_REGION"
    doc = plugin_document({**settings, "PLUGIN_AWS_REGION": "eu-north-1"})
    assert doc["auth"]["127.0.0.1:5000"]["aws_region"] == "eu-north-1"
    # The step's own AWS_REGION is enough too.
    assert plugin_document({**settings, "AWS_REGION": "eu-west-1"}
                           )["auth"]["127.0.0.1:5000"]["aws_region"] == "eu-west-1"


@pytest.mark.parametrize("missing", ["aws_access_key_id", "aws_secret_access_key"])
def test_half_an_aws_key_pair_is_an_error(missing):
    settings = {"aws_access_key_id": "AKID", "aws_secret_access_key": "s3cr3t"}
    del settings[missing]
    with pytest.raises(ConfigError) as e:
        plugin_document(env(source="alpine", destination=f"{ECR}/alpine", username="AWS",
                            **settings))
    assert e.value.key == f"PLUGIN_{missing.upper()}"
    assert "s3cr3t" not in str(e.value)


def test_bad_aws_region():
    with pytest.raises(ConfigError) as e:
        plugin_document(env(source="alpine", destination=f"{ECR}/alpine", username="AWS",
                            aws_region="Oregon"))
    assert e.value.key == "PLUGIN_AWS_REGION"


# -- settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("true", True), ("True", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("off", False),
    (" true\n", True), ("", False),
])
def test_boolean_strings(value, expected):
    doc = plugin_document(env(source="a.example.com/x:1", destination="b.example.com/x:1",
                              overwrite=value, insecure=value))
    rule = doc["images"]["a.example.com/x:1"]
    assert rule["overwrite"] is expected
    assert ("auth" in doc) is expected
    if expected:
        assert doc["auth"] == {"b.example.com": {"insecure": True},
                               "a.example.com": {"insecure": True}}


def test_overwrite_defaults_to_false():
    doc = plugin_document(env(source="a.example.com/x:1", destination="b.example.com/x:1"))
    assert doc == {"images": {"a.example.com/x:1": {"to": "b.example.com/x:1",
                                                    "overwrite": False}}}
    assert_valid(doc)


@pytest.mark.parametrize("name", ["overwrite", "insecure"])
def test_invalid_boolean_names_the_variable_and_the_fix(name):
    with pytest.raises(ConfigError) as e:
        plugin_document(env(source="a.example.com/x:1", destination="b.example.com/x:1",
                            **{name: "maybe"}))
    var = f"PLUGIN_{name.upper()}"
    assert e.value.key == var
    assert str(e.value) == (f"PLUGIN_* settings: {var}: 'maybe' is not a boolean: set it to "
                            "true or false")


def test_insecure_applies_to_both_registries_with_credentials():
    doc = plugin_document(env(source="127.0.0.1:5001/a:v1", destination="127.0.0.1:5002/b:v1",
                              username="u", password="p", insecure="true"))
    assert doc["auth"] == {"127.0.0.1:5002": {"username": "u", "password": "p",
                                              "insecure": True},
                           "127.0.0.1:5001": {"insecure": True}}


def test_source_without_tag_means_latest_destination_keeps_the_tag():
    doc = plugin_document(env(source="reg.example.com/app", destination="mirror.example.com/app"))
    assert doc["images"] == {"reg.example.com/app:latest": {"to": "mirror.example.com/app",
                                                            "overwrite": False}}
    digest = "sha256:" + "a" * 64
    doc = plugin_document(env(source=f"reg.example.com/app@{digest}",
                              destination="mirror.example.com/app:pinned"))
    assert list(doc["images"]) == [f"reg.example.com/app@{digest}"]


@pytest.mark.parametrize("var,value", [
    ("source", "reg.example.com/team/*"), ("source", "reg.example.com/app:v1,v2"),
    ("source", "Reg.example.com/UPPER:v1"), ("destination", "mirror.example.com/app@sha256:"
                                              + "b" * 64),
    ("destination", "mirror.example.com/a b"),
])
def test_not_one_image_is_an_error(var, value):
    settings = {"source": "reg.example.com/app:v1", "destination": "mirror.example.com/app"}
    settings[var] = value
    with pytest.raises(ConfigError) as e:
        plugin_document(env(**settings))
    assert e.value.key == f"PLUGIN_{var.upper()}"


@pytest.mark.parametrize("given,missing", [
    ({"username": "u"}, "PLUGIN_PASSWORD"), ({"password": "pw-never-shown"}, "PLUGIN_USERNAME"),
    ({"source_username": "u"}, "PLUGIN_SOURCE_PASSWORD"),
    ({"source_password": "pw-never-shown"}, "PLUGIN_SOURCE_USERNAME"),
])
def test_half_a_credential_is_an_error(given, missing):
    with pytest.raises(ConfigError) as e:
        plugin_document(env(source="a.example.com/x:1", destination="b.example.com/x:1",
                            **given))
    assert e.value.key == missing
    assert "pw-never-shown" not in str(e.value)


def test_secrets_are_kept_verbatim_but_a_trailing_newline_dropped():
    doc = plugin_document(env(source="a.example.com/x:1", destination="b.example.com/x:1",
                              username=" bot ", password=" p@ss ${NOT_EXPANDED} \n"))
    assert doc["auth"]["b.example.com"] == {"username": "bot",
                                            "password": " p@ss ${NOT_EXPANDED} "}
    shown = json.dumps(redact_document(doc))
    assert "p@ss" not in shown and "***" in shown


def test_unknown_settings_are_reported_with_suggestions():
    environ = {**env(source="a.example.com/x:1", destination="b.example.com/x:1",
                     overwrites="true", log_level="debug", colour="red"), "HOME": "/"}
    assert unknown_settings(environ) == ["PLUGIN_COLOUR: not a setting",
                                         "PLUGIN_OVERWRITES: did you mean PLUGIN_OVERWRITE?"]


# -- one registry for source and destination -----------------------------------------------

def test_same_registry_source_credentials_go_to_a_repository_entry(tmp_path):
    doc = plugin_document(env(source="reg.example.com/dev/app:v1",
                              destination="reg.example.com/prod/app:v1",
                              source_username="reader", source_password="r-pw",
                              username="pusher", password="p-pw", insecure="true"))
    assert_valid(doc)
    assert doc["auth"] == {
        "reg.example.com": {"username": "pusher", "password": "p-pw", "insecure": True},
        "reg.example.com/dev/app": {"username": "reader", "password": "r-pw",
                                    "insecure": True},
    }
    assert entry_for(doc, tmp_path, "reg.example.com/dev/app")["username"] == "reader"
    assert entry_for(doc, tmp_path, "reg.example.com/prod/app")["username"] == "pusher"
    assert entry_for(doc, tmp_path, "reg.example.com/dev/app2")["username"] == "pusher"


def test_same_registry_destination_below_the_source_repository(tmp_path):
    doc = plugin_document(env(source="reg.example.com/app:v1",
                              destination="reg.example.com/app/mirror:v1",
                              source_username="reader", source_password="r-pw",
                              username="pusher", password="p-pw"))
    assert_valid(doc)
    assert entry_for(doc, tmp_path, "reg.example.com/app")["username"] == "reader"
    assert entry_for(doc, tmp_path, "reg.example.com/app/mirror")["username"] == "pusher"


def test_same_registry_source_below_the_destination_repository(tmp_path):
    doc = plugin_document(env(source="reg.example.com/app/dev:v1",
                              destination="reg.example.com/app:v1",
                              source_username="reader", source_password="r-pw",
                              username="pusher", password="p-pw"))
    assert entry_for(doc, tmp_path, "reg.example.com/app/dev")["username"] == "reader"
    assert entry_for(doc, tmp_path, "reg.example.com/app")["username"] == "pusher"


def test_same_repository_destination_credentials_win():
    doc = plugin_document(env(source="reg.example.com/app:v1", destination="reg.example.com/app:v2",
                              source_username="reader", source_password="r-pw",
                              username="pusher", password="p-pw"))
    assert doc["auth"] == {"reg.example.com": {"username": "pusher", "password": "p-pw"}}


def test_same_registry_only_source_credentials():
    """The source's credentials serve the source repository only; the destination keeps
    Docker's config.json (or anonymous), as with two registries."""
    doc = plugin_document(env(source="docker.io/team/app:v1", destination="team/app-mirror:v1",
                              source_username="reader", source_password="r-pw"))
    assert doc["auth"] == {"docker.io/team/app": {"username": "reader", "password": "r-pw"}}
    doc = plugin_document(env(source="team/app:v1", destination="team/app:v2",
                              source_username="reader", source_password="r-pw"))
    assert doc["auth"] == {"docker.io": {"username": "reader", "password": "r-pw"}}


# -- end to end: the document as a --config file -------------------------------------------

def run_document(tmp_path: Path, settings: dict[str, str]):
    doc = plugin_document(settings)
    assert doc is not None
    return run_cli(tmp_path, doc, name="plugin.json")


@pytest.fixture
def basic_pair(registry_factory):
    src = registry_factory(htpasswd=("ci-reader", "source-token-1"), name="registry-1")
    dst = registry_factory(htpasswd=("ci-pusher", "destination-token-2"), name="registry-2")
    return src, dst


def basic_settings(src, dst, **extra: str) -> dict[str, str]:
    return env(source=f"{src.host}/image:latest", destination=f"{dst.host}/mirror/image:latest",
               source_username="ci-reader", source_password="source-token-1",
               username="ci-pusher", password="destination-token-2", **extra)


def test_e2e_copy_with_htpasswd_on_both_sides(tmp_path, basic_pair, skopeo):
    src, dst = basic_pair
    img = push_random_image(RegistryAPI(src), "image", "latest", SMALL)
    run = run_document(tmp_path, basic_settings(src, dst))
    assert run.code == 0, run.stdout + run.stderr
    assert RegistryAPI(dst).head_manifest("mirror/image", "latest") == img.digest
    assert run.statuses() == {f"{dst.host}/mirror/image:latest": "synced"}
    again = run_document(tmp_path, basic_settings(src, dst))
    assert again.code == 0 and again.statuses() == {f"{dst.host}/mirror/image:latest":
                                                    "skipped"}
    out = run.stdout + run.stderr + again.stdout + again.stderr
    assert "source-token-1" not in out and "destination-token-2" not in out


def test_e2e_overwrite_false_is_a_conflict(tmp_path, basic_pair):
    src, dst = basic_pair
    src_api, dst_api = RegistryAPI(src), RegistryAPI(dst)
    first = push_random_image(src_api, "image", "latest", SMALL)
    assert run_document(tmp_path, basic_settings(src, dst)).code == 0
    push_random_image(src_api, "image", "latest", SMALL)  # a new build, same tag
    run = run_document(tmp_path, basic_settings(src, dst))  # overwrite unset: false
    assert run.code == 1, run.stdout + run.stderr
    assert run.statuses() == {f"{dst.host}/mirror/image:latest": "conflict"}
    assert dst_api.head_manifest("mirror/image", "latest") == first.digest
    run = run_document(tmp_path, basic_settings(src, dst, overwrite="false"))
    assert run.code == 1


def test_e2e_overwrite_true_moves_the_tag(tmp_path, basic_pair):
    src, dst = basic_pair
    src_api, dst_api = RegistryAPI(src), RegistryAPI(dst)
    push_random_image(src_api, "image", "latest", SMALL)
    assert run_document(tmp_path, basic_settings(src, dst)).code == 0
    second = push_random_image(src_api, "image", "latest", SMALL)
    run = run_document(tmp_path, basic_settings(src, dst, overwrite="true"))
    assert run.code == 0, run.stdout + run.stderr
    assert run.statuses() == {f"{dst.host}/mirror/image:latest": "synced"}
    assert dst_api.head_manifest("mirror/image", "latest") == second.digest


def test_e2e_same_registry_separate_source_and_destination_accounts(tmp_path,
                                                                   token_issuer_factory,
                                                                   registry_factory):
    """One token-auth registry: `reader` may only pull dev/app, `pusher` may only touch
    prod/app; the copy works only if each side gets its own credentials."""
    users = {"reader": "reader-pw", "pusher": "pusher-pw", "seeder": "seeder-pw"}

    def policy(account, typ, name, actions):
        if account == "seeder":
            return actions
        if typ == "repository" and (account, name) in (("reader", "dev/app"),
                                                        ("pusher", "prod/app")):
            return actions if account == "pusher" else [a for a in actions if a == "pull"]
        return []

    issuer = token_issuer_factory(users=users, policy=policy)
    reg = registry_factory(token=issuer, name="one")
    img = push_random_image(RegistryAPI(reg, "seeder", "seeder-pw"), "dev/app", "v1", SMALL)
    settings = env(source=f"{reg.host}/dev/app:v1", destination=f"{reg.host}/prod/app:v1",
                   source_username="reader", source_password="reader-pw",
                   username="pusher", password="pusher-pw")
    run = run_document(tmp_path, settings)
    assert run.code == 0, run.stdout + run.stderr
    assert RegistryAPI(reg, "seeder", "seeder-pw").head_manifest("prod/app", "v1") == img.digest
    accounts = {r.get("account") for r in issuer.requests}
    assert {"reader", "pusher"} <= accounts


# -- imagesync with no arguments (CLI wiring by the lead) ------------------------------------

@pytest.mark.skipif(not hasattr(imagesync.cli, "PLUGIN_MODE"), reason="CLI wiring pending")
def test_no_arguments_runs_the_plugin(tmp_path, registry_factory, monkeypatch):
    # A password with "${" in it: plugin settings are data, never ${VAR}-expanded.
    password = "dst-pw-${NOT_A_VAR}-$HOME"
    src = registry_factory(htpasswd=("ci-reader", "source-token-1"), name="registry-1")
    dst = registry_factory(htpasswd=("ci-pusher", password), name="registry-2")
    img = push_random_image(RegistryAPI(src), "image", "v1", SMALL)
    settings = env(source=f"{src.host}/image:v1", destination=f"{dst.host}/image:v1",
                   source_username="ci-reader", source_password="source-token-1",
                   username="ci-pusher", password=password)
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = imagesync.cli.main([])
    assert code == 0, out.getvalue() + err.getvalue()
    assert RegistryAPI(dst).head_manifest("image", "v1") == img.digest
    assert "dst-pw" not in out.getvalue() + err.getvalue()

    # The plugin's default overwrite: false -> a new build under the same tag conflicts.
    push_random_image(RegistryAPI(src), "image", "v1", SMALL)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert imagesync.cli.main([]) == 1
    assert RegistryAPI(dst).head_manifest("image", "v1") == img.digest

    # A bad setting: exit 2, one line naming the variable.
    monkeypatch.setenv("PLUGIN_OVERWRITE", "maybe")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert imagesync.cli.main([]) == 2
    assert "PLUGIN_OVERWRITE" in err.getvalue()
