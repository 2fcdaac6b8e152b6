"""npm-style semantic version ranges: ``^1.2``, ``~1.4``, ``>=1.2 <2``, ``1.x``, ``1 - 2``, ``a || b``.

Why npm's grammar: skill authors already know it, and its rules for prereleases and
partial versions are settled. The semantics follow node-semver (non-loose mode):

- A range is a union (``||``) of comparator sets; a set is an intersection of comparators.
- Partial versions and sugar desugar to primitive comparators, e.g. ``^0.2.3`` is
  ``>=0.2.3 <0.3.0-0`` and ``<=1.2`` is ``<1.3.0-0``.
- A prerelease version (``2.0.0-beta.1``) satisfies a set only if some comparator in that
  set names a prerelease of the same ``major.minor.patch``, unless ``include_prerelease``.

Versions are parsed and compared by the ``semver`` package (SemVer 2.0; build metadata ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import semver

from .errors import InvalidName

_NUM = r"0|[1-9]\d*"
_X = r"x|X|\*"
_PART = rf"(?:{_NUM}|{_X})"
_PRE = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_PARTIAL = (
    rf"v?(?P<M>{_PART})(?:\.(?P<m>{_PART})(?:\.(?P<p>{_PART})"
    rf"(?:-(?P<pr>{_PRE}))?(?:\+(?P<b>{_PRE}))?)?)?"
)
_PARTIAL_RE = re.compile(rf"^{_PARTIAL}$")
_COMPARATOR_RE = re.compile(rf"^(?P<op><=|>=|<|>|=|~>|~|\^)?=?\s*{_PARTIAL}$")
_HYPHEN_RE = re.compile(r"^\s*(\S+)\s+-\s+(\S+)\s*$")
_OPS = ("<", "<=", ">", ">=", "=")


class InvalidRange(InvalidName):
    """A version range that does not parse."""


def _is_x(part: str | None) -> bool:
    return part is None or part in ("x", "X", "*")


@dataclass(frozen=True)
class Comparator:
    """One primitive comparison such as ``>=1.2.0`` or ``<2.0.0-0``."""

    op: str
    version: semver.Version

    def test(self, v: semver.Version) -> bool:
        c = v.compare(self.version)
        return {"<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0, "=": c == 0}[self.op]

    def __str__(self) -> str:
        return f"{'' if self.op == '=' else self.op}{self.version}"


def _v(major: int, minor: int, patch: int, pre: str | None = None) -> semver.Version:
    return semver.Version(major, minor, patch, prerelease=pre)


_NOTHING = [Comparator("<", _v(0, 0, 0, "0"))]


def _whole_major(major: int) -> list[Comparator]:
    """``major.x``: every release of one major version."""
    return [Comparator(">=", _v(major, 0, 0)), Comparator("<", _v(major + 1, 0, 0, "0"))]


def _caret(M, m, p, pr) -> list[Comparator]:
    if _is_x(M):
        return []
    M = int(M)
    if _is_x(m):
        return _whole_major(M)
    m = int(m)
    if _is_x(p):
        upper = _v(M, m + 1, 0, "0") if M == 0 else _v(M + 1, 0, 0, "0")
        return [Comparator(">=", _v(M, m, 0)), Comparator("<", upper)]
    p = int(p)
    if M == 0:
        upper = _v(M, m, p + 1, "0") if m == 0 else _v(M, m + 1, 0, "0")
    else:
        upper = _v(M + 1, 0, 0, "0")
    return [Comparator(">=", _v(M, m, p, pr)), Comparator("<", upper)]


def _tilde(M, m, p, pr) -> list[Comparator]:
    if _is_x(M):
        return []
    M = int(M)
    if _is_x(m):
        return _whole_major(M)
    m = int(m)
    low = _v(M, m, 0) if _is_x(p) else _v(M, m, int(p), pr)
    return [Comparator(">=", low), Comparator("<", _v(M, m + 1, 0, "0"))]


def _xrange(op: str, M, m, p, pr) -> list[Comparator]:
    any_x = _is_x(M) or _is_x(m) or _is_x(p)
    if op == "=" and any_x:
        op = ""
    if _is_x(M):
        return list(_NOTHING) if op in ("<", ">") else []
    M = int(M)
    if op and any_x:
        mi = 0 if _is_x(m) else int(m)
        if op == ">":
            op = ">="
            if _is_x(m):
                return [Comparator(op, _v(M + 1, 0, 0))]
            return [Comparator(op, _v(M, mi + 1, 0))]
        if op == "<=":
            upper = _v(M + 1, 0, 0, "0") if _is_x(m) else _v(M, mi + 1, 0, "0")
            return [Comparator("<", upper)]
        if op == "<":
            return [Comparator("<", _v(M, mi, 0, "0"))]
        return [Comparator(op, _v(M, mi, 0))]
    if _is_x(m):
        return _whole_major(M)
    m = int(m)
    if _is_x(p):
        return [Comparator(">=", _v(M, m, 0)), Comparator("<", _v(M, m + 1, 0, "0"))]
    return [Comparator(op or "=", _v(M, m, int(p), pr))]


def _hyphen(lo: str, hi: str, spec: str) -> list[Comparator]:
    a, b = _PARTIAL_RE.match(lo), _PARTIAL_RE.match(hi)
    if not a or not b:
        raise InvalidRange(f"invalid version range `{spec}`.")
    out: list[Comparator] = []
    if not _is_x(a["M"]):
        M = int(a["M"])
        m = 0 if _is_x(a["m"]) else int(a["m"])
        p = 0 if _is_x(a["p"]) else int(a["p"])
        out.append(Comparator(">=", _v(M, m, p, a["pr"] if not _is_x(a["p"]) else None)))
    if not _is_x(b["M"]):
        M = int(b["M"])
        if _is_x(b["m"]):
            out.append(Comparator("<", _v(M + 1, 0, 0, "0")))
        elif _is_x(b["p"]):
            out.append(Comparator("<", _v(M, int(b["m"]) + 1, 0, "0")))
        else:
            out.append(Comparator("<=", _v(M, int(b["m"]), int(b["p"]), b["pr"])))
    return out


def _parse_set(text: str, spec: str) -> list[Comparator]:
    hyphen = _HYPHEN_RE.match(text)
    if hyphen:
        return _hyphen(hyphen[1], hyphen[2], spec)
    text = re.sub(r"(<=|>=|<|>|=|~>|~|\^)\s+", r"\1", text.strip())
    out: list[Comparator] = []
    for token in text.split():
        match = _COMPARATOR_RE.match(token)
        if not match:
            raise InvalidRange(
                f"invalid version range `{spec}`: cannot read `{token}`.",
                hints=["use npm range syntax such as `^1.2`, `~1.4.0`, `>=1.2 <2` or `1.x || 2.x`"],
            )
        op = match["op"] or ""
        parts = (match["M"], match["m"], match["p"], match["pr"])
        if op == "^":
            out.extend(_caret(*parts))
        elif op in ("~", "~>"):
            out.extend(_tilde(*parts))
        else:
            out.extend(_xrange(op, *parts))
    return out


class Range:
    """A parsed npm-style range.

    Example:
        >>> Range("^1.2").satisfies("1.9.0"), Range("^1.2").satisfies("2.0.0-rc.1")
        (True, False)
        >>> Range("~1.4").max_satisfying(["1.4.0", "1.4.9", "1.5.0"])
        '1.4.9'
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        if not isinstance(spec, str) or len(spec) > 256:
            raise InvalidRange(f"invalid version range {spec!r}.")
        self.sets = [_parse_set(part, spec) for part in spec.split("||")]

    def satisfies(self, version: str | semver.Version, *, include_prerelease: bool = False) -> bool:
        v = version if isinstance(version, semver.Version) else semver.Version.parse(version)
        return any(self._test_set(s, v, include_prerelease) for s in self.sets)

    @staticmethod
    def _test_set(comparators: list[Comparator], v: semver.Version, include_prerelease: bool) -> bool:
        if not all(c.test(v) for c in comparators):
            return False
        if v.prerelease and not include_prerelease:
            base = (v.major, v.minor, v.patch)
            return any(
                c.version.prerelease and (c.version.major, c.version.minor, c.version.patch) == base
                for c in comparators
            )
        return True

    def max_satisfying(self, versions: Iterable[str]) -> str | None:
        """The highest of ``versions`` inside the range, or None."""
        ok = [v for v in versions if self.satisfies(v)]
        return max(ok, key=semver.Version.parse) if ok else None

    def min_satisfying(self, versions: Iterable[str]) -> str | None:
        ok = [v for v in versions if self.satisfies(v)]
        return min(ok, key=semver.Version.parse) if ok else None

    def __str__(self) -> str:
        return "||".join(" ".join(map(str, s)) or "*" for s in self.sets)

    def __repr__(self) -> str:
        return f"Range({self.spec!r})"
