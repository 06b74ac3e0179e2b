"""Tag filters of the extended rule form: regexes, string tests, semver ranges, newest N.

Every condition given must hold (AND); ``latest`` then keeps the newest N by semver.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_SEMVER_RE = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)(?:\.(?P<minor>0|[1-9]\d*))?(?:\.(?P<patch>0|[1-9]\d*))?"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)
_COMPARATOR_RE = re.compile(r"^(>=|<=|>|<|==|=|!=|\^|~)?\s*(v?\d+(?:\.\d+){0,2}(?:-[\w.-]+)?)$")


@dataclass(frozen=True, order=True)
class Version:
    """A semantic version; a pre-release sorts before its release."""

    major: int
    minor: int
    patch: int
    release: int  # 1 for releases, 0 for pre-releases
    pre: tuple = ()

    @classmethod
    def parse(cls, tag: str) -> Version | None:
        m = _SEMVER_RE.match(tag)
        if not m:
            return None
        pre = m.group("pre")
        pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                        for p in pre.split(".")) if pre else ()
        return cls(int(m.group("major")), int(m.group("minor") or 0),
                   int(m.group("patch") or 0), 0 if pre else 1, pre_key)


def _comparator(text: str) -> Callable[[Version], bool]:
    m = _COMPARATOR_RE.match(text)
    if not m:
        raise ValueError(f"invalid semver comparator {text!r}: use e.g. '>=1.4 <3' or '^2.1'")
    op, ver = m.group(1) or "=", Version.parse(m.group(2))
    assert ver is not None
    if op == "^":
        upper = Version(ver.major + 1, 0, 0, 0, ()) if ver.major else Version(
            0, ver.minor + 1, 0, 0, ())
        return lambda v: ver <= v < upper
    if op == "~":
        upper = Version(ver.major, ver.minor + 1, 0, 0, ())
        return lambda v: ver <= v < upper
    ops: dict[str, Callable[[Version], bool]] = {
        ">=": lambda v: v >= ver, "<=": lambda v: v <= ver, ">": lambda v: v > ver,
        "<": lambda v: v < ver, "=": lambda v: v == ver, "==": lambda v: v == ver,
        "!=": lambda v: v != ver,
    }
    return ops[op]


def semver_range(expr: str) -> Callable[[Version], bool]:
    """``'>=1.4 <3'`` (AND, space-separated) with ``||`` for alternatives."""
    alternatives = []
    for alt in expr.split("||"):
        parts = alt.replace(", ", " ").split()
        if not parts:
            raise ValueError(f"empty semver range in {expr!r}")
        checks = [_comparator(p) for p in parts]
        alternatives.append(lambda v, checks=checks: all(c(v) for c in checks))
    return lambda v: any(a(v) for a in alternatives)


def _compile_all(patterns: Sequence[str], what: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"invalid regex in {what}: {p!r}: {e}") from None
    return tuple(out)


@dataclass(frozen=True)
class TagFilter:
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()
    equals: str | None = None
    starts_with: tuple[str, ...] = ()
    ends_with: tuple[str, ...] = ()
    contains: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    not_one_of: tuple[str, ...] = ()
    semver: Callable[[Version], bool] | None = None
    semver_expr: str | None = None
    latest: int | None = None

    @classmethod
    def from_config(cls, doc: dict) -> TagFilter:
        def strings(key: str) -> tuple[str, ...]:
            v = doc.get(key)
            return () if v is None else (v,) if isinstance(v, str) else tuple(v)

        expr = doc.get("semver")
        return cls(
            include=_compile_all(strings("include"), "tags.include"),
            exclude=_compile_all(strings("exclude"), "tags.exclude"),
            equals=doc.get("equals"),
            starts_with=strings("starts_with"), ends_with=strings("ends_with"),
            contains=strings("contains"), one_of=strings("one_of"),
            not_one_of=strings("not_one_of"),
            semver=semver_range(expr) if expr else None, semver_expr=expr,
            latest=doc.get("latest"),
        )

    def matches(self, tag: str) -> bool:
        if self.include and not any(p.fullmatch(tag) for p in self.include):
            return False
        if any(p.search(tag) for p in self.exclude):
            return False
        if self.equals is not None and tag != self.equals:
            return False
        if self.starts_with and not tag.startswith(self.starts_with):
            return False
        if self.ends_with and not tag.endswith(self.ends_with):
            return False
        if self.contains and not any(c in tag for c in self.contains):
            return False
        if self.one_of and tag not in self.one_of:
            return False
        if tag in self.not_one_of:
            return False
        if self.semver is not None:
            v = Version.parse(tag)
            if v is None or not self.semver(v):
                return False
        return True

    def describe(self) -> str:
        """The conditions, as a user would read them: ``include /^v1/, latest 3``."""
        out: list[str] = []

        def add(name: str, values: Sequence[str] | str | None) -> None:
            if values:
                vals = [values] if isinstance(values, str) else list(values)
                out.append(f"{name} {', '.join(vals)}")

        add("include", [f"/{p.pattern}/" for p in self.include])
        add("exclude", [f"/{p.pattern}/" for p in self.exclude])
        add("equals", self.equals)
        add("starts_with", self.starts_with)
        add("ends_with", self.ends_with)
        add("contains", self.contains)
        add("one_of", self.one_of)
        add("not_one_of", self.not_one_of)
        add("semver", self.semver_expr)
        if self.latest is not None:
            out.append(f"latest {self.latest}")
        return "; ".join(out) or "any tag"

    def apply(self, tags: Sequence[str]) -> list[str]:
        kept = [t for t in tags if self.matches(t)]
        if self.latest is not None:
            versioned = [(v, t) for t in kept if (v := Version.parse(t)) is not None]
            versioned.sort(reverse=True)
            kept = [t for _, t in versioned[: self.latest]]
        return kept
