"""Config loading: files -> validated :class:`Config` (auth entries and rules).

Every problem becomes a :class:`ConfigError` that names the file, the key as a JSON path
and the fix, so the CLI can print one line and exit 2. Things that are accepted but do
nothing (keys image-syncer ignored) become :attr:`Config.warnings`.

The steps, for each document: read the bytes (UTF-8, a UTF-8 BOM is dropped) -> parse
(JSON or YAML; a key repeated in one mapping is an error naming both lines) -> normalise
image-syncer's leniencies (Go-style key case, numeric YAML user names, ignored keys) ->
expand ``${VAR}`` (and ``$VAR`` where image-syncer expanded it) -> coerce a boolean or
integer that came from one variable -> validate against the schema -> build rules.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError
from .keychain import AuthEntry
from .rules import NO_DEFAULTS, Defaults, Rule, parse_rule

STDIN = "-"
STDIN_LABEL = "<stdin>"

# ${VAR} and ${VAR:-default}: everywhere, keys too.
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Where image-syncer expanded with Go's os.ExpandEnv, $VAR too; '$$' is a literal '$'.
_SHELL_VAR_RE = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_WHOLE_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")

_TOP_KEYS = ("auth", "images", "serve")  # serve: read by `imagesync serve` only
# Auth keys image-syncer users have in their files that mean nothing to either tool
# (Docker's config.json fields, mostly). Any other key that is not a near-miss of a
# known one is ignored with a warning too, as Go's decoders ignored it.
_AUTH_FIELDS = tuple(f for f in AuthEntry.__dataclass_fields__ if f not in ("prefix", "source"))
_STRING_AUTH_FIELDS = ("username", "password")
_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")

Path_ = tuple  # a JSON path as a tuple of keys / indexes


@dataclass
class Config:
    auth: list[AuthEntry] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    # One line each, "file: key: what was ignored": for the CLI to print; not errors.
    warnings: list[str] = field(default_factory=list)


def load_schema() -> dict:
    return json.loads(resources.files("imagesync").joinpath("config.schema.json").read_text())


def _schema_keys() -> frozenset[str]:
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            keys.update((node.get("properties") or {}).keys())
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(load_schema())
    return frozenset(keys)


_KEYWORDS: frozenset[str] | None = None


def json_path(parts: Any) -> str:
    """``['auth', 'reg.io', 'insecure']`` -> ``auth["reg.io"].insecure``. Names the user
    chose (image keys, auth prefixes) are always in brackets: ``images["a"].overwrite``."""
    global _KEYWORDS
    if _KEYWORDS is None:
        _KEYWORDS = _schema_keys()
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in _KEYWORDS:
            out += f".{p}" if out else str(p)
        else:
            out += f"[{json.dumps(p)}]"
    return out or "(top level)"


# -- reading ------------------------------------------------------------------------------

def _decode(data: bytes, file: str) -> str:
    """UTF-8 (a BOM is dropped); anything else is one error naming the fix."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and b"\x00" in data[:64]):
        raise ConfigError(file, None, "the file is UTF-16 (as PowerShell's Out-File and '>' "
                          "write it), not UTF-8: save it as UTF-8, e.g. "
                          "Set-Content -Encoding utf8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(file, f"line {line}",
                          f"the file is not UTF-8 (byte 0x{data[e.start]:02x}, perhaps Latin-1 "
                          "or Windows-1252): save it as UTF-8") from None


def _read_bytes(path: str) -> tuple[bytes, str]:
    if path == STDIN:
        return sys.stdin.buffer.read(), STDIN_LABEL
    try:
        return Path(path).read_bytes(), path
    except OSError as e:
        raise ConfigError(path, None, f"cannot read the file: {e.strerror or e}") from None


def read_document(path: str, kind: str = "config") -> Any:
    """Parse a JSON or YAML file, chosen by its extension (``-``: standard input, JSON
    tried first, then YAML). ``kind`` (``config``, ``auth`` or ``images``) says where
    auth entries are, so numeric YAML user names keep their text."""
    ext = ".stdin" if path == STDIN else Path(path).suffix.lower()
    if ext not in (".json", ".yaml", ".yml", ".stdin"):
        raise ConfigError(path, None, "unknown extension: name the file .json, .yaml or .yml")
    data, label = _read_bytes(path)
    text = _decode(data, label)
    if ext == ".stdin":
        try:
            return _parse_json(text, label)
        except ConfigError as e:
            if "invalid JSON" not in e.message:
                raise
        return _parse_yaml(text, label, kind)
    return _parse_json(text, label) if ext == ".json" else _parse_yaml(text, label, kind)


def parse_text(text: str, label: str, fmt: str, kind: str = "config") -> Any:
    """Parse a document given as text (``fmt``: ``json`` or ``yaml``)."""
    return _parse_json(text, label) if fmt == "json" else _parse_yaml(text, label, kind)


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _parse_json(text: str, file: str) -> Any:
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(file, f"line {e.lineno}", f"invalid JSON: {e.msg}") from None
    except _Duplicate:
        path, first, second = _json_duplicate(text)
        raise ConfigError(file, json_path(path),
                          f"defined twice, on lines {first} and {second}") from None
    return {} if doc is None else doc


def _json_duplicate(text: str) -> tuple[Path_, int, int]:
    """Find the first key repeated in one object of (valid) JSON ``text``: its path and
    both line numbers. A small scanner: strings via the json module's own scanstring."""
    scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
    # Each frame: [is_object, keys seen {key: line}, current key or index, expecting_key]
    stack: list[list[Any]] = []
    path: list[Any] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            s, end = scanstring(text, i + 1)
            frame = stack[-1] if stack else None
            if frame is not None and frame[0] and frame[3]:
                line = text.count("\n", 0, i) + 1
                if s in frame[1]:
                    return (*path, s), frame[1][s], line
                frame[1][s] = line
                frame[2] = s
                frame[3] = False
            i = end
            continue
        if c in "{[":
            if stack:
                path.append(stack[-1][2])
            stack.append([c == "{", {}, 0, c == "{"])
        elif c in "}]":
            stack.pop()
            if path and stack:
                path.pop()
        elif c == "," and stack:
            frame = stack[-1]
            if frame[0]:
                frame[3] = True
            else:
                frame[2] += 1
        i += 1
    raise AssertionError("no duplicate found")  # pragma: no cover - json said there was one


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


class _Loader(yaml.SafeLoader):
    """SafeLoader; keys are checked and retagged on the node tree before construction."""


def _parse_yaml(text: str, file: str, kind: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_yaml_nodes(node, file, kind)
        doc = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(file, where, f"invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    return {} if doc is None else doc


def _check_yaml_nodes(root: yaml.Node, file: str, kind: str) -> None:
    """Repeated keys are errors; keys are strings, as Go's map[string] made them; a
    numeric or boolean user name / password keeps its text, as yaml.v2 did."""
    seen: set[int] = set()

    def auth_field(path: Path_) -> bool:
        depth = 2 if kind == "auth" else 3 if kind == "config" else 0
        if len(path) != depth or (kind == "config" and str(path[0]).lower() != "auth"):
            return False
        return str(path[-1]).lower() in _STRING_AUTH_FIELDS

    def walk(node: yaml.Node, path: Path_) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], tuple[int, str]] = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG:
                    continue
                if isinstance(key, yaml.ScalarNode):
                    if key.tag != _STR_TAG:
                        key.tag = _STR_TAG
                    ident = (key.tag, key.value)
                    line = key.start_mark.line + 1
                    if ident in lines:
                        raise ConfigError(file, json_path((*path, key.value)),
                                          f"defined twice, on lines {lines[ident][0]} and {line}")
                    lines[ident] = (line, key.value)
                    child = (*path, key.value)
                    if (isinstance(value, yaml.ScalarNode)
                            and value.tag not in (_STR_TAG, _NULL_TAG) and auth_field(child)):
                        value.tag = _STR_TAG
                    walk(value, child)
                else:
                    walk(value, (*path, "?"))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    walk(root, ())


# -- image-syncer's leniencies ----------------------------------------------------------------

def _fold_keys(doc: dict, known: tuple[str, ...], file: str, path: Path_,
               warnings: list[str], what: str) -> dict:
    """Match keys to ``known`` case-insensitively (Go's encoding/json did); a key that is
    a near-miss of a known one stays, so the schema says "did you mean"; any other key is
    dropped with a warning (Go's decoders ignored unknown keys)."""
    out: dict = {}
    origin: dict[str, str] = {}
    for key, value in doc.items():
        k = str(key)
        canonical = next((c for c in known if c == k.lower()), None)
        if canonical is None:
            if difflib.get_close_matches(k.lower(), known, n=1):
                out[k] = value  # a typo: validation explains it
                continue
            warnings.append(f"{file}: {json_path(path) + ': ' if path else ''}"
                            f"unknown {what} key {k!r} ignored, as image-syncer ignored it")
            continue
        if canonical in out:
            raise ConfigError(file, json_path((*path, canonical)),
                              f"defined twice, as {origin[canonical]!r} and {k!r}")
        out[canonical] = value
        origin[canonical] = k
    return out


def _normalise_auth(doc: Any, file: str, root: Path_, warnings: list[str]) -> Any:
    if not isinstance(doc, dict):
        return doc
    out = {}
    for prefix, entry in doc.items():
        path = (*root, prefix)
        if isinstance(entry, dict):
            entry = _fold_keys(entry, _AUTH_FIELDS, file, path, warnings, "auth")
            for k in list(entry):
                v = entry[k]
                if v is None:
                    del entry[k]  # 'password:' with no value: not set, as in yaml.v2
                elif k in _STRING_AUTH_FIELDS and isinstance(v, int) and not isinstance(v, bool):
                    entry[k] = str(v)  # a numeric account id in JSON
        out[str(prefix)] = entry
    return out


def _normalise_config(doc: dict, file: str, warnings: list[str]) -> dict:
    doc = _fold_keys(doc, _TOP_KEYS, file, (), warnings, "top-level")
    if "auth" in doc:
        doc["auth"] = _normalise_auth(doc["auth"], file, ("auth",), warnings)
    return doc


# -- environment ---------------------------------------------------------------------------

def _shell_style(kind: str, path: Path_) -> bool:
    """Where image-syncer's os.ExpandEnv ran: user name and password of the --auth file,
    and destination strings (string or list values of the images map, v1.5.3+)."""
    if kind == "auth":
        return len(path) == 2 and path[1] in _STRING_AUTH_FIELDS
    rules = path[1:] if kind == "config" and path[:1] == ("images",) else \
        path if kind == "images" else None
    if rules is None:
        return False
    return len(rules) == 1 or (len(rules) == 2 and isinstance(rules[1], int))


def expand_env(doc: Any, file: str, parts: tuple = (), environ: Mapping[str, str] | None = None,
               *, kind: str = "config", whole: dict | None = None) -> Any:
    """Replace ``${VAR}`` (and ``${VAR:-default}``) in every string, keys included; an
    unset variable without a default is an error, not ''. Where image-syncer expanded
    ``$VAR`` (see :func:`_shell_style`) that form works too, and ``$$`` is a ``$``.

    ``whole`` (if given) collects ``{path: variable}`` for strings that were exactly one
    variable, so a boolean or integer can be coerced from them."""
    env = os.environ if environ is None else environ

    def expand(s: str, path: Path_) -> str:
        shell = _shell_style(kind, path)

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(3)
            default = m.group(2)
            if name not in env and default is not None:
                return default
            if name not in env:
                hint = ", or write $$ for a literal $" if shell else ""
                raise ConfigError(file, json_path(path),
                                  f"environment variable {name} is not set: export it, "
                                  f"or write the value in the file{hint}")
            return env[name]

        if whole is not None and (m := _WHOLE_VAR_RE.fullmatch(s)) and (shell or m.group(1)):
            whole[path] = s
        return (_SHELL_VAR_RE if shell else _VAR_RE).sub(sub, s)

    def walk(node: Any, path: Path_) -> Any:
        if isinstance(node, dict):
            out: dict = {}
            for k, v in node.items():
                key = expand(k, path) if isinstance(k, str) else k
                if key in out:
                    raise ConfigError(file, json_path((*path, key)),
                                      "defined twice (after ${VAR} expansion)")
                out[key] = walk(v, (*path, key))
            return out
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        if isinstance(node, str):
            return expand(node, path)
        return node

    return walk(doc, tuple(parts))


def _coerce(value: str, want: str) -> Any:
    v = value.strip().lower()
    if want == "boolean":
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        return None
    if re.fullmatch(r"[+-]?\d+", v):
        return int(v)
    return None


# -- validation ----------------------------------------------------------------------------

def _friendly(err: jsonschema.ValidationError) -> str:
    v = err.validator
    if (v == "additionalProperties" and isinstance(err.instance, dict)
            and isinstance(err.schema, dict)):
        allowed = list((err.schema.get("properties") or {}).keys())
        extra = [k for k in err.instance if k not in allowed]
        if extra and allowed:
            key = extra[0]
            close = difflib.get_close_matches(key.lower(), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(allowed)
            return f"unknown key {key!r}: {hint}"
    if v == "type":
        value = err.validator_value
        want = " or ".join(value) if isinstance(value, list) else str(value)
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


def _all_errors(errors: Iterator[jsonschema.ValidationError],
                ) -> Iterator[jsonschema.ValidationError]:
    for e in errors:
        yield e
        yield from _all_errors(iter(e.context or ()))


def _set(doc: Any, path: Path_, value: Any) -> None:
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value


def validate(doc: Any, schema: dict, file: str, root: tuple = (),
             whole: dict | None = None) -> None:
    """Raise a :class:`ConfigError` for the most helpful schema error. A string that was
    exactly one ``${VAR}`` where a boolean or integer belongs is coerced first
    (true/false/yes/no/1/0; digits), in place; ``whole`` maps paths (below ``root``) to
    the variable text, from :func:`expand_env`."""
    validator = jsonschema.Draft202012Validator(schema)
    if whole:
        for e in list(_all_errors(validator.iter_errors(doc))):
            path = (*root, *e.absolute_path)
            if e.validator != "type" or path not in whole or not isinstance(e.instance, str):
                continue
            wants = e.validator_value if isinstance(e.validator_value, list) \
                else [e.validator_value]
            want = next((w for w in wants if w in ("boolean", "integer")), None)
            if want is None:
                continue
            value = _coerce(e.instance, want)
            if value is None:
                need = "true or false" if want == "boolean" else "a whole number"
                raise ConfigError(file, json_path(path),
                                  f"{whole[path]} is {e.instance!r}: must be {need}")
            _set(doc, tuple(e.absolute_path), value)
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


# -- building ------------------------------------------------------------------------------

def _auth_entries(doc: dict, file: str) -> list[AuthEntry]:
    out = []
    for prefix, fields in doc.items():
        out.append(AuthEntry(prefix=prefix.rstrip("/"), source=f"config ({file})", **fields))
    return out


def _rules(doc: dict, file: str, prefix: str, defaults: Defaults) -> list[Rule]:
    out = []
    for key, value in doc.items():
        path = f"{prefix}[{json.dumps(key)}]"
        out.append(parse_rule(key, value, defaults, file=file, path=path))
    return out


def _single(doc: Any, file: str, defaults: Defaults, environ: Mapping[str, str] | None,
            schema: dict, expand: bool = True) -> Config:
    cfg = Config()
    if not isinstance(doc, dict):
        raise ConfigError(file, None, "must be a mapping with 'auth' and 'images'")
    doc = _normalise_config(doc, file, cfg.warnings)
    whole: dict = {}
    if expand:
        doc = expand_env(doc, file, environ=environ, kind="config", whole=whole)
    validate(doc, schema, file, whole=whole)
    cfg.auth = _auth_entries(doc.get("auth") or {}, file)
    cfg.rules = _rules(doc["images"], file, "images", defaults)
    return cfg


def load_document(doc: Any, label: str, defaults: Defaults = NO_DEFAULTS,
                  environ: Mapping[str, str] | None = None, *, expand: bool = True) -> Config:
    """A :class:`Config` from an already-parsed mapping in the single-file form
    (``auth`` + ``images``); ``label`` stands for the file name in errors.
    ``expand=False``: values are literal (settings from the environment, where a
    password may well contain ``${``)."""
    return _single(doc, label, defaults, environ, load_schema(), expand)


def load(config: str | None = None, auth: str | None = None, images: str | None = None,
         defaults: Defaults = NO_DEFAULTS, environ: Mapping[str, str] | None = None) -> Config:
    """Load ``--config FILE`` (``-``: standard input) or image-syncer's
    ``--auth FILE --images FILE``."""
    schema = load_schema()
    if config:
        label = STDIN_LABEL if config == STDIN else config
        return _single(read_document(config, "config"), label, defaults, environ, schema)
    if not images:
        raise ConfigError(None, None, "give --config FILE, or --images FILE [--auth FILE]")
    if auth == STDIN and images == STDIN:
        raise ConfigError(None, None, "only one of --auth and --images can be '-' (stdin)")
    cfg = Config()
    if auth:
        alabel = STDIN_LABEL if auth == STDIN else auth
        adoc = _normalise_auth(read_document(auth, "auth"), alabel, (), cfg.warnings)
        whole: dict = {}
        adoc = expand_env(adoc, alabel, environ=environ, kind="auth", whole=whole)
        validate(adoc, _sub_schema(schema, "auth"), alabel, whole=whole)
        cfg.auth = _auth_entries(adoc, alabel)
    ilabel = STDIN_LABEL if images == STDIN else images
    rules_doc = read_document(images, "images")
    whole = {}
    rules_doc = expand_env(rules_doc, ilabel, environ=environ, kind="images", whole=whole)
    validate(rules_doc, _sub_schema(schema, "images"), ilabel, whole=whole)
    cfg.rules = _rules(rules_doc, ilabel, "", defaults)
    return cfg
