"""CI-plugin mode: the Drone / Harness / Woodpecker settings -> a config document.

A plugin step's ``settings:`` reach the container as environment variables: ``foo_bar``
becomes ``PLUGIN_FOO_BAR``. The settings are those of the Image Migration plugin
(``plugins/image-migration``): ``source``, ``destination``, ``username``/``password``
(destination), ``source_username``/``source_password``, ``overwrite`` (default false),
``insecure``, ``aws_access_key_id``/``aws_secret_access_key``/``aws_region`` (ECR), and a
GAR access token as ``password`` with ``username: oauth2accesstoken``.

:func:`plugin_document` turns them into imagesync's single-file config form
(``{"auth": {...}, "images": {...}}``). It only builds data: nothing is printed, and no
error message quotes a secret. Feed the document to the loader *without* ``${VAR}``
expansion: a password may well contain ``${``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError
from .names import InvalidReference, Reference

#: What the names module raises for a malformed name.
_BAD_NAME: tuple[type[Exception], ...] = (InvalidReference, ValueError)

#: ``file`` of the ConfigErrors raised here: the settings have no file.
WHERE = "PLUGIN_* settings"
PREFIX = "PLUGIN_"

#: Every setting, as its variable, with what it means (docs and ``unknown_settings``).
SETTINGS: dict[str, str] = {
    "PLUGIN_SOURCE": "image to copy: registry/repository[:tag|@digest] (tag defaults to latest)",
    "PLUGIN_DESTINATION": "where it goes: registry/repository[:tag] (no tag: the source's)",
    "PLUGIN_USERNAME": "destination user (AWS for ECR, oauth2accesstoken for GAR)",
    "PLUGIN_PASSWORD": "destination password or access token (secret)",
    "PLUGIN_SOURCE_USERNAME": "source user",
    "PLUGIN_SOURCE_PASSWORD": "source password or access token (secret)",
    "PLUGIN_OVERWRITE": "true: move a destination tag that holds another image (default false)",
    "PLUGIN_INSECURE": "true: plain HTTP or unverified HTTPS for both registries (default false)",
    "PLUGIN_AWS_ACCESS_KEY_ID": "ECR: access key for GetAuthorizationToken",
    "PLUGIN_AWS_SECRET_ACCESS_KEY": "ECR: its secret key (secret)",
    "PLUGIN_AWS_REGION": "ECR: region (default: from the registry name)",
}
#: Read by the original plugin; accepted and ignored, so not reported as unknown.
IGNORED = frozenset({"PLUGIN_LOG_LEVEL"})

_TRUE = frozenset({"true", "1", "yes", "on", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "off", "n", "f"})
#: ``<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]``
_ECR_HOST = re.compile(
    r"^\d{12}\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
#: Artifact Registry (``LOCATION-docker.pkg.dev``) and Container Registry hosts.
_GOOGLE_HOST = re.compile(r"^(?:[a-z0-9-]+-docker\.pkg\.dev|(?:[a-z]+\.)?gcr\.io)$")
GAR_USERNAME = "oauth2accesstoken"
ECR_USERNAME = "AWS"


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """The setting's value, stripped; unset and empty are the same (Drone sends "")."""
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _secret(environ: Mapping[str, str], name: str) -> str | None:
    """A secret as given (only a trailing newline dropped: secrets are often files)."""
    value = environ.get(name)
    if value is None:
        return None
    value = value.rstrip("\r\n")
    return value if value.strip() else None


def parse_bool(value: str | None, name: str, default: bool = False) -> bool:
    v = (value or "").strip().lower()
    if not v:  # unset or empty (Drone sends "" for a setting left blank)
        return default
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(WHERE, name, f"{value!r} is not a boolean: set it to true or false")


def _reference(value: str, name: str) -> Any:
    """Parse one image name; a name without tag or digest means ``:latest``."""
    if any(c in value for c in " \t,*") or value.endswith("/"):
        raise ConfigError(WHERE, name, f"{value!r} is not one image: give "
                          "registry/repository[:tag] (one tag, no wildcard)")
    try:
        ref = Reference.parse(value)
    except _BAD_NAME as e:
        raise ConfigError(WHERE, name, f"{e}: give registry/repository[:tag]") from None
    return ref


def is_ecr_host(host: str) -> bool:
    return _ECR_HOST.match(host) is not None


def is_google_host(host: str) -> bool:
    return _GOOGLE_HOST.match(host) is not None


def _side(environ: Mapping[str, str], user_var: str, pass_var: str, host: str,
          aws: dict[str, str], *, destination: bool) -> dict[str, Any]:
    """Credential fields of one side's auth entry (possibly empty)."""
    username, password = _get(environ, user_var), _secret(environ, pass_var)
    ecr_host = _ECR_HOST.match(host)
    if (username == ECR_USERNAME and password is None) or (
            username is None and password is None and ecr_host and aws):
        # ECR: imagesync calls GetAuthorizationToken itself (and renews the password),
        # with the step's keys or, without them, AWS_ACCESS_KEY_ID / the default AWS chain.
        fields: dict[str, Any] = dict(aws)
        if "aws_region" not in fields:
            region = (ecr_host.group("region") if ecr_host else None) or _get(
                environ, "AWS_REGION") or _get(environ, "AWS_DEFAULT_REGION")
            if region is None:
                raise ConfigError(WHERE, "PLUGIN_AWS_REGION",
                                  f"is not set: {host} is not an ECR registry name "
                                  "(<account>.dkr.ecr.<region>.amazonaws.com), so give the "
                                  "region")
            fields["aws_region"] = region
        return fields
    if password is not None and username is None:
        if is_google_host(host):
            username = GAR_USERNAME  # a GAR/GCR access token
        else:
            raise ConfigError(WHERE, user_var, f"is not set but {pass_var} is: give the user "
                              f"name for {host} (oauth2accesstoken for a GAR token, AWS for an "
                              "ECR password)")
    if username is not None and password is None:
        hint = (" (or, for ECR, username AWS with PLUGIN_AWS_ACCESS_KEY_ID/"
                "PLUGIN_AWS_SECRET_ACCESS_KEY)") if destination else ""
        raise ConfigError(WHERE, pass_var, f"is not set but {user_var} is: give the password "
                          f"or access token for {host}{hint}")
    if username is None:
        return {}
    return {"username": username, "password": password}


def plugin_document(environ: Mapping[str, str]) -> dict | None:
    """The config document for the plugin settings in ``environ``, or None when
    neither ``PLUGIN_SOURCE`` nor ``PLUGIN_DESTINATION`` is set.

    Raises :class:`ConfigError` (file ``"PLUGIN_* settings"``, key the variable) for a
    missing or invalid setting; messages never quote a secret.
    """
    source, destination = _get(environ, "PLUGIN_SOURCE"), _get(environ, "PLUGIN_DESTINATION")
    if source is None and destination is None:
        return None
    if source is None or destination is None:
        missing, given = (("PLUGIN_SOURCE", "PLUGIN_DESTINATION") if source is None
                          else ("PLUGIN_DESTINATION", "PLUGIN_SOURCE"))
        what = "the image to copy" if source is None else "where to copy it"
        raise ConfigError(WHERE, missing, f"is not set but {given} is: give {what} "
                          "(settings: source, destination)")
    src = _reference(source, "PLUGIN_SOURCE")
    dst = _reference(destination, "PLUGIN_DESTINATION")
    if dst.digest:
        raise ConfigError(WHERE, "PLUGIN_DESTINATION", "must not have a digest: the copy "
                          "keeps the source's digest; give registry/repository[:tag]")
    if src.tag is None and src.digest is None:
        source += ":latest"  # like docker pull / crane: no tag means latest
    overwrite = parse_bool(environ.get("PLUGIN_OVERWRITE"), "PLUGIN_OVERWRITE")
    insecure = parse_bool(environ.get("PLUGIN_INSECURE"), "PLUGIN_INSECURE")

    aws: dict[str, str] = {}
    key_id = _get(environ, "PLUGIN_AWS_ACCESS_KEY_ID")
    secret = _secret(environ, "PLUGIN_AWS_SECRET_ACCESS_KEY")
    region = _get(environ, "PLUGIN_AWS_REGION")
    if (key_id is None) != (secret is None):
        missing = "PLUGIN_AWS_SECRET_ACCESS_KEY" if secret is None else "PLUGIN_AWS_ACCESS_KEY_ID"
        other = "PLUGIN_AWS_ACCESS_KEY_ID" if secret is None else "PLUGIN_AWS_SECRET_ACCESS_KEY"
        raise ConfigError(WHERE, missing, f"is not set but {other} is: give both AWS keys")
    if key_id is not None and secret is not None:
        aws.update(aws_access_key_id=key_id, aws_secret_access_key=secret)
    if region is not None:
        if not re.fullmatch(r"[a-z]{2}(?:-[a-z]+)+-\d+", region):
            raise ConfigError(WHERE, "PLUGIN_AWS_REGION",
                              f"{region!r} is not an AWS region: e.g. us-west-2")
        aws["aws_region"] = region

    dst_fields = _side(environ, "PLUGIN_USERNAME", "PLUGIN_PASSWORD", dst.registry, aws,
                       destination=True)
    src_fields = _side(environ, "PLUGIN_SOURCE_USERNAME", "PLUGIN_SOURCE_PASSWORD",
                       src.registry, aws, destination=False)
    if aws.get("aws_access_key_id") and not any(
            "aws_access_key_id" in f for f in (dst_fields, src_fields)) and not any(
            f.get("username") == ECR_USERNAME for f in (dst_fields, src_fields)):
        raise ConfigError(WHERE, "PLUGIN_AWS_ACCESS_KEY_ID",
                          "no registry to use the AWS keys for: neither registry is an ECR "
                          "name, and neither username nor source_username is AWS")

    tls: dict[str, Any] = {"insecure": True} if insecure else {}
    auth: dict[str, dict[str, Any]] = {}
    if src.registry != dst.registry:
        if dst_fields or tls:
            auth[dst.registry] = {**dst_fields, **tls}
        if src_fields or tls:
            auth[src.registry] = {**src_fields, **tls}
    else:
        # One registry: the host entry (TLS settings, and the destination's credentials)
        # plus, when the source has its own, an entry for the source repository, which
        # wins there by the longest-prefix rule.
        host = dst.registry
        if dst_fields or tls:
            auth[host] = {**dst_fields, **tls}
        if src_fields and src_fields != dst_fields and src.repository != dst.repository:
            auth[f"{host}/{src.repository}"] = {**src_fields, **tls}
            if dst_fields and _below(dst.repository, src.repository):
                # The source prefix would also cover the destination: give it its own.
                auth[f"{host}/{dst.repository}"] = {**dst_fields, **tls}
        elif src_fields and not dst_fields:
            auth[host] = {**src_fields, **tls}
        # else: same repository, or same credentials: the destination's serve both.
    images = {source: {"to": destination, "overwrite": overwrite}}
    return {"auth": auth, "images": images} if auth else {"images": images}


def _below(repo: str, prefix: str) -> bool:
    return repo == prefix or repo.startswith(prefix + "/")


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """``PLUGIN_*`` variables this mode does not know, each with a suggestion when one is
    close (``PLUGIN_OVERWRITES: did you mean PLUGIN_OVERWRITE?``), for a warning."""
    out = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in SETTINGS or name in IGNORED:
            continue
        close = difflib.get_close_matches(name, list(SETTINGS), n=1, cutoff=0.8)
        out.append(f"{name}: did you mean {close[0]}?" if close else f"{name}: not a setting")
    return out


def redact_document(doc: Mapping[str, Any]) -> dict:
    """A copy with every secret replaced by ``***`` (for --dry-run style displays)."""
    secret_keys = {"password", "aws_secret_access_key", "token", "identity_token"}
    auth = {k: {f: ("***" if f in secret_keys else v) for f, v in e.items()}
            for k, e in (doc.get("auth") or {}).items()}
    return {**doc, "auth": auth} if "auth" in doc else dict(doc)
