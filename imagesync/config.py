"""Config loading: files -> validated :class:`Config` (auth entries and rules).

Every problem becomes a :class:`ConfigError` that names the file, the key as a JSON path
and the fix, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .auth import AuthEntry
from .errors import ConfigError
from .rules import NO_DEFAULTS, Defaults, Rule, parse_rule

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Config:
    auth: list[AuthEntry] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)


def load_schema() -> dict:
    return json.loads(resources.files("imagesync").joinpath("config.schema.json").read_text())


def json_path(parts: Any) -> str:
    """``['auth', 'reg.io', 'insecure']`` -> ``auth["reg.io"].insecure``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p)):
            out += f".{p}" if out else str(p)
        else:
            out += f"[{json.dumps(p)}]"
    return out or "(top level)"


def read_document(path: str) -> Any:
    """Parse a JSON or YAML file, chosen by its extension."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".json", ".yaml", ".yml"):
        raise ConfigError(path, None, "unknown extension: name the file .json, .yaml or .yml")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, None, f"cannot read the file: {e.strerror or e}") from None
    try:
        doc = json.loads(text) if ext == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(path, f"line {e.lineno}", f"invalid JSON: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(path, where, f"invalid YAML: {problem}") from None
    return {} if doc is None else doc


def expand_env(doc: Any, file: str, parts: tuple = (), environ: dict | None = None) -> Any:
    """Replace ``${VAR}`` (and ``${VAR:-default}``) in every string, keys included; an
    unset variable without a default is an error, not ''."""
    env = os.environ if environ is None else environ
    if isinstance(doc, dict):
        return {expand_env(k, file, parts, env): expand_env(v, file, (*parts, k), env)
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [expand_env(v, file, (*parts, i), env) for i, v in enumerate(doc)]
    if isinstance(doc, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name not in env and default is not None:
                return default
            if name not in env:
                raise ConfigError(file, json_path(parts),
                                  f"environment variable {name} is not set: export it, "
                                  "or write the value in the file")
            return env[name]
        return _VAR_RE.sub(sub, doc)
    return doc


def _friendly(err: jsonschema.ValidationError) -> str:
    v = err.validator
    if v == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list((err.schema.get("properties") or {}).keys())
        extra = [k for k in err.instance if k not in allowed]
        if extra and allowed:
            key = extra[0]
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(allowed)
            return f"unknown key {key!r}: {hint}"
    if v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"must be {'an' if want[0] in 'aeiou' else 'a'} {want}, not {err.instance!r}"
    if v == "required":
        return err.message.replace("is a required property", "is required")
    if v == "oneOf":
        return "must be a destination string or a list of destination strings"
    if v == "dependentRequired":
        return err.message
    if v == "minProperties":
        if list(err.absolute_path)[-1:] == ["tags"]:
            return "is empty: give at least one filter (include, exclude, equals, starts_with, " \
                   "ends_with, contains, one_of, not_one_of, semver, latest)"
        return "is empty: add at least one rule"
    if v == "pattern" and "platforms" in list(err.absolute_path):
        return f"{err.instance!r} is not a platform: use os/arch[/variant], e.g. linux/arm64"
    return err.message


def validate(doc: Any, schema: dict, file: str, root: tuple = ()) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(doc))
    if not errors:
        return
    # Prefer the deepest error: it names the exact key the user has to fix. For a
    # oneOf (string | list | mapping), explain the branch of the type the user wrote.
    # A misspelt key explains a missing one, so it wins at the same depth.
    err = max(errors, key=lambda e: (len(e.absolute_path), e.validator != "oneOf",
                                     e.validator == "additionalProperties"))
    while err.validator == "oneOf" and err.context:
        relevant = [e for e in err.context if e.validator != "type"] or err.context
        err = max(relevant, key=lambda e: (len(e.absolute_path), e.validator != "oneOf",
                                           e.validator == "additionalProperties"))
    raise ConfigError(file, json_path((*root, *err.absolute_path)), _friendly(err))


def _sub_schema(schema: dict, name: str) -> dict:
    return {"$ref": f"#/$defs/{name}", "$defs": schema["$defs"]}


def _auth_entries(doc: dict, file: str) -> list[AuthEntry]:
    out = []
    for prefix, fields in doc.items():
        out.append(AuthEntry(prefix=prefix.rstrip("/"), source=f"config ({file})", **fields))
    return out


def load(config: str | None = None, auth: str | None = None, images: str | None = None,
         defaults: Defaults = NO_DEFAULTS, environ: dict | None = None) -> Config:
    """Load ``--config FILE`` or image-syncer's ``--auth FILE --images FILE``."""
    schema = load_schema()
    cfg = Config()
    if config:
        doc = read_document(config)
        if not isinstance(doc, dict):
            raise ConfigError(config, None, "must be a mapping with 'auth' and 'images'")
        validate(doc, schema, config)
        doc = expand_env(doc, config, environ=environ)
        cfg.auth = _auth_entries(doc.get("auth") or {}, config)
        rules_doc, rules_file = doc["images"], config
    else:
        if not images:
            raise ConfigError(None, None, "give --config FILE, or --images FILE [--auth FILE]")
        if auth:
            adoc = read_document(auth)
            validate(adoc, _sub_schema(schema, "auth"), auth)
            cfg.auth = _auth_entries(expand_env(adoc, auth, environ=environ), auth)
        rules_doc = read_document(images)
        validate(rules_doc, _sub_schema(schema, "images"), images)
        rules_doc = expand_env(rules_doc, images, environ=environ)
        rules_file = images
    prefix = "images" if config else ""
    for key, value in rules_doc.items():
        path = f"{prefix}[{json.dumps(key)}]"
        cfg.rules.append(parse_rule(key, value, defaults, file=rules_file, path=path))
    return cfg
