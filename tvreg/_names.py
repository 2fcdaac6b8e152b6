"""The one home of names: skill names, versions, ranges, requirements, dist-tags, dependencies.

Why one module: these strings become URL path segments, database keys and file names,
and a requirement such as ``science@v2`` must mean the same thing to ``tvreg tag add``,
to ``tvreg install`` and to the registry. Client and server both validate through
here, so a tag the registry accepts always installs, and a string one side refuses the
other side refuses too.

The rules (documented for users in docs/format.md, "Names, versions, ranges and tags"):

- **Names** (namespaces, skills): lowercase ASCII letters, digits, ``-``, ``_`` and
  ``.``, starting and ending with a letter or digit, no ``..``, at most
  :data:`MAX_LENGTH` characters. The whole string must match: a trailing newline or any
  other control character is refused, never trimmed.
- **Versions**: SemVer 2.0 exactly as node-semver's strict parser reads it (no leading
  zeros in numeric identifiers, ``1.2.3-01`` refused, every number at most 2**53 - 1),
  written without a leading ``v``, at most :data:`MAX_LENGTH` characters. Build
  metadata is allowed but ignored for precedence, so ``1.0.0+b`` *is* ``1.0.0``.
- **Ranges**: npm's range grammar with node-semver's semantics in strict mode (v7.8),
  including ``include_prerelease``. Only printable ASCII, spaces and tabs.
- **Dist-tags**: a name (same characters, same length limit) that does not parse as a
  version or range, as ``npm dist-tag add`` requires: ``latest``, ``beta``, ``1x`` are
  tags; ``2``, ``v2``, ``1.x``, ``x`` are ranges and refused as tags.
- **Requirements**: ``name``, ``name@RANGE``, ``name@VERSION`` or ``name@TAG``; the name
  is ``skill`` or ``namespace/skill``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import InvalidName, InvalidRange

MAX_LENGTH = 100
"""Longest name, tag or published version, in characters (the registry's columns hold it)."""

MAX_RANGE_LENGTH = 1024
"""Longest range or requirement spec, in characters."""

_NPM_MAX_VERSION_LENGTH = 256
_MAX_SAFE_INTEGER = 2**53 - 1

_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?", re.ASCII)
_SEPARATORS = re.compile(r"[-_.]+")

_NUM = r"0|[1-9][0-9]*"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_PRE = rf"{_PRE_ID}(?:\.{_PRE_ID})*"
_BUILD = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_CORE = rf"(?P<M>{_NUM})\.(?P<m>{_NUM})\.(?P<p>{_NUM})(?:-(?P<pre>{_PRE}))?(?:\+(?P<build>{_BUILD}))?"
_VERSION_RE = re.compile(_CORE, re.ASCII)
_LOOSE_VERSION_RE = re.compile(rf"v?{_CORE}", re.ASCII)
_PRIMITIVE_RE = re.compile(rf"(?P<op>[<>]?=?)v?{_CORE}", re.ASCII)

_XID = rf"{_NUM}|[xX*]"
_XPLAIN = rf"[v=\s]*(?P<M>{_XID})(?:\.(?P<m>{_XID})(?:\.(?P<p>{_XID})(?:-(?P<pre>{_PRE}))?(?:\+{_BUILD})?)?)?"
_CARET_RE = re.compile(rf"\^{_XPLAIN}", re.ASCII)
_TILDE_RE = re.compile(rf"~>?{_XPLAIN}", re.ASCII)
_XRANGE_RE = re.compile(rf"(?P<op>[<>]?=?){_XPLAIN}", re.ASCII)
_HYPHEN_RE = re.compile(
    r"(?P<from>{f})\s+-\s+(?P<to>{t})".format(
        f=_XPLAIN.replace("(?P<", "(?P<f"), t=_XPLAIN.replace("(?P<", "(?P<t")
    ),
    re.ASCII,
)
_BUILD_ANYWHERE = re.compile(rf"\+{_BUILD}", re.ASCII)
_OP_SPACE = re.compile(r"(<=|>=|<|>|=)\s+|(~>?)\s+|(\^)\s+")
_RANGE_CHARS = re.compile(r"[\x20-\x7e\t]*")

NAME_HINT = "use lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
RANGE_HINT = (
    "use npm range syntax such as `^1.2`, `~1.4.0`, `>=1.2 <2`, `1.x || 2.x`, or a dist-tag such as `latest`"
)


def show(text: object, limit: int = 60) -> str:
    """``text`` for an error message: control and non-ASCII characters escaped, long strings cut.

    Why: a name or tag that arrives with ``\\n`` or an escape sequence must not reach the
    terminal raw, and the message must show *which* character was refused.
    """
    if not isinstance(text, str):
        return repr(text)
    out = text.encode("unicode_escape").decode("ascii").replace("`", "\\x60")
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _control(text: str) -> str | None:
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)


# --------------------------------------------------------------------------- names


def validate_name(name: str, *, what: str = "skill name") -> str:
    """Return ``name`` if it is a safe namespace, skill or tag name, else raise :class:`InvalidName`.

    Example:
        >>> validate_name("science-v2")
        'science-v2'
    """
    if not isinstance(name, str):
        raise InvalidName(f"invalid {what} {show(name)}: a {what} is a string.")
    bad = _control(name)
    if bad is not None:
        raise InvalidName(
            f"invalid {what} `{show(name)}`: it contains the control character {show(bad)}.",
            hints=[NAME_HINT],
        )
    if len(name) > MAX_LENGTH:
        raise InvalidName(
            f"invalid {what} `{show(name)}`: it has {len(name)} characters, more than the limit of {MAX_LENGTH}.",
        )
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(f"invalid {what} `{show(name)}`: {NAME_HINT}.")
    if ".." in name:
        raise InvalidName(f"invalid {what} `{name}`: it may not contain '..'.")
    return name


RESERVED_NAMES = frozenset(
    {
        "about", "account", "admin", "administrator", "api", "assets", "bases", "blog", "datasets",
        "docs", "download", "downloads", "explore", "health", "help", "hf", "huggingface", "join",
        "login", "logout", "me", "metrics", "models", "new", "openapi", "org", "orgs", "organizations",
        "pricing", "redoc", "register", "registry", "root", "search", "security", "settings",
        "sign-in", "sign-out", "sign-up", "signin", "signout", "signup", "spaces", "static",
        "status", "support", "system", "team", "teams", "tvreg", "user", "users", "www",
    }
)  # fmt: skip
"""Names no user or team may take, compared ultranormalized (``sign_in`` is ``sign-in``).

Why: a namespace is the first segment of its web page's path (``/<namespace>``) and of
the Hub-compatible paths, so a user named ``api``, ``docs``, ``static`` or ``login``
would shadow the registry's own pages (or be shadowed by them), and ``admin`` or ``hf``
would impersonate the operators. One list, used by every place that creates a
namespace (``tvreg-server admin create-user`` / ``create-team``) and by the web routes.
"""


def validate_namespace_name(name: str, *, what: str = "namespace") -> str:
    """Return ``name`` if it may become a new user, team or namespace, else raise :class:`InvalidName`.

    Example:
        >>> validate_namespace_name("alice")
        'alice'
    """
    validate_name(name, what=what)
    if ultranormalize(name) in _RESERVED_NORMALIZED:
        raise InvalidName(
            f"{what} `{name}` is reserved: `/{name}` is a path of the registry's own pages or API.",
            hints=[f"choose another name, such as `{name}-team` or your organisation's name"],
        )
    return name


def ultranormalize(name: str) -> str:
    """NFKC, case fold, and collapse runs of ``-``, ``_`` and ``.`` to ``-``, on the whole string.

    Two names with the same ultranormalized form would fool a reader into installing
    the wrong skill (warehouse's check), so the registry lets only one of them exist.

    Example:
        >>> ultranormalize("Safe_.Ty")
        'safe-ty'
    """
    return _SEPARATORS.sub("-", unicodedata.normalize("NFKC", name).casefold())


_RESERVED_NORMALIZED = frozenset(ultranormalize(n) for n in RESERVED_NAMES)


def validate_skill_name(name: str) -> str:
    """``skill`` or ``namespace/skill``, each part a valid name."""
    if not isinstance(name, str):
        raise InvalidName(f"invalid skill name {show(name)}.")
    parts = name.split("/")
    if len(parts) > 2:
        raise InvalidName(f"invalid skill name `{show(name)}`: use `skill` or `namespace/skill`.")
    whats = ("namespace", "skill name") if len(parts) == 2 else ("skill name",)
    for part, what in zip(parts, whats, strict=True):
        validate_name(part, what=what)
    return name


# ------------------------------------------------------------------------ versions


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A semantic version; equality and order are SemVer precedence (build metadata ignored).

    Example:
        >>> Version.parse("1.0.0+evil") == Version.parse("1.0.0")
        True
        >>> sorted(["1.10.0", "1.9.0", "1.9.0-rc.1"], key=Version.parse)
        ['1.9.0-rc.1', '1.9.0', '1.10.0']
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, *, npm: bool = False) -> Version:
        """Parse a version; ``npm=True`` also accepts node-semver's ``v1.2.3`` and surrounding spaces.

        Raises:
            InvalidName: not a strict semantic version.
        """
        if not isinstance(text, str):
            raise InvalidName(f"invalid version {show(text)}: a version is a string.")
        if npm:
            match = len(text) <= _NPM_MAX_VERSION_LENGTH and _LOOSE_VERSION_RE.fullmatch(text.strip(" \t"))
        else:
            match = _VERSION_RE.fullmatch(text)
        if not match:
            raise InvalidName(
                f"invalid version `{show(text)}`: use semantic versioning such as `1.0.0` or `2.1.0-beta.1`.",
            )
        return cls._from_match(match, text)

    @classmethod
    def _from_match(cls, match: re.Match[str], text: str) -> Version:
        major, minor, patch = nums = tuple(int(match[k]) for k in ("M", "m", "p"))
        if max(nums) > _MAX_SAFE_INTEGER:
            raise InvalidName(f"invalid version `{show(text)}`: a number is larger than 2**53 - 1.")
        pre = tuple(int(x) if x.isdigit() else x for x in match["pre"].split(".")) if match["pre"] else ()
        build = tuple(match["build"].split(".")) if match["build"] else ()
        return cls(major, minor, patch, pre, build)

    @property
    def core(self) -> str:
        """``M.m.p[-pre]``: the version without build metadata (node-semver's ``.version``)."""
        text = f"{self.major}.{self.minor}.{self.patch}"
        return f"{text}-{'.'.join(map(str, self.prerelease))}" if self.prerelease else text

    def __str__(self) -> str:
        return f"{self.core}+{'.'.join(self.build)}" if self.build else self.core

    def _key(self) -> tuple:
        pre = tuple((0, x, "") if isinstance(x, int) else (1, 0, x) for x in self.prerelease)
        return (self.major, self.minor, self.patch, (0, pre) if pre else (1, ()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def validate_version(version: str) -> str:
    """Return ``version`` if it can be published: strict SemVer, no ``v``, at most :data:`MAX_LENGTH`.

    Example:
        >>> validate_version("2.0.0-beta.1")
        '2.0.0-beta.1'
    """
    if isinstance(version, str) and len(version) > MAX_LENGTH:
        raise InvalidName(
            f"invalid version `{show(version)}`: it has {len(version)} characters, "
            f"more than the limit of {MAX_LENGTH}."
        )
    if isinstance(version, str) and (bad := _control(version)) is not None:
        raise InvalidName(
            f"invalid version `{show(version)}`: it contains the control character {show(bad)}."
        )
    Version.parse(version)
    return version


def version_key(version: str) -> Version:
    """Sort key for published versions (``1.10.0`` after ``1.9.0``, prereleases first)."""
    return Version.parse(version, npm=True)


def is_prerelease(version: str) -> bool:
    return bool(Version.parse(version, npm=True).prerelease)


def precedence_core(version: str) -> str:
    """``version`` without build metadata: two published versions with the same core are one version."""
    return Version.parse(version).core


# -------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Comparator:
    """One primitive comparison such as ``>=1.2.0`` or ``<2.0.0-0``; ``op == ""`` with no version is "any"."""

    op: str
    version: Version | None

    def test(self, v: Version) -> bool:
        if self.version is None:
            return True
        if self.op in ("", "="):
            return v == self.version
        return {
            "<": v < self.version,
            "<=": v <= self.version,
            ">": v > self.version,
            ">=": v >= self.version,
        }[self.op]

    def __str__(self) -> str:
        return "" if self.version is None else f"{'' if self.op == '=' else self.op}{self.version.core}"


_ANY = Comparator("", None)

# A match's groups, as typeshed types them (`str | MaybeNone`): whether a group can be None depends on
# the regex, which the checker cannot see; `_is_x` guards the optional ones.
_Groups = Mapping[str, "str | Any"]


def _is_x(part: str | None) -> bool:
    return part is None or part in ("x", "X", "*")


def _v(major: int, minor: int, patch: int, pre: str = "") -> str:
    return f"{major}.{minor}.{patch}{pre}"


def _caret(g: _Groups, ip: bool) -> str:
    z = "-0" if ip else ""
    if _is_x(g["M"]):
        return ""
    M = int(g["M"])  # noqa: N806
    if _is_x(g["m"]):
        return f">={_v(M, 0, 0, z)} <{_v(M + 1, 0, 0, '-0')}"
    m = int(g["m"])
    if _is_x(g["p"]):
        upper = _v(0, m + 1, 0, "-0") if M == 0 else _v(M + 1, 0, 0, "-0")
        return f">={_v(M, m, 0, z)} <{upper}"
    p = int(g["p"])
    pre = f"-{g['pre']}" if g["pre"] else ""
    if M == 0:
        upper = _v(0, 0, p + 1, "-0") if m == 0 else _v(0, m + 1, 0, "-0")
    else:
        upper = _v(M + 1, 0, 0, "-0")
    return f">={_v(M, m, p, pre)} <{upper}"


def _tilde(g: _Groups, ip: bool) -> str:
    z = "-0" if ip else ""
    if _is_x(g["M"]):
        return ""
    M = int(g["M"])  # noqa: N806
    if _is_x(g["m"]):
        return f">={_v(M, 0, 0, z)} <{_v(M + 1, 0, 0, '-0')}"
    m = int(g["m"])
    low = _v(M, m, 0, z) if _is_x(g["p"]) else _v(M, m, int(g["p"]), f"-{g['pre']}" if g["pre"] else "")
    return f">={low} <{_v(M, m + 1, 0, '-0')}"


def _xrange(g: _Groups, ip: bool) -> str | None:
    """Desugar an x-range token; None when it has no ``x`` (then it is a primitive comparator)."""
    Mx, mx, px = _is_x(g["M"]), _is_x(g["m"]), _is_x(g["p"])  # noqa: N806
    if (Mx and not mx) or (mx and g["p"] is not None and not px):
        raise ValueError("a number after an x")  # `x.1`, `1.x.5`: refused since node-semver 7.8
    xm, xp = Mx or mx, Mx or mx or px
    if not xp:
        return None
    op = "" if g["op"] == "=" else g["op"]
    pr = "-0" if ip else ""
    if Mx:
        return "<0.0.0-0" if op in ("<", ">") else ""
    M = int(g["M"])  # noqa: N806
    if op:
        m = 0 if xm else int(g["m"])
        if op == ">":
            op, (M, m) = ">=", (M + 1, 0) if xm else (M, m + 1)  # noqa: N806
        elif op == "<=":
            op, (M, m) = "<", (M + 1, m) if xm else (M, m + 1)  # noqa: N806
        return f"{op}{_v(M, m, 0, '-0' if op == '<' else pr)}"
    if xm:
        return f">={_v(M, 0, 0, pr)} <{_v(M + 1, 0, 0, '-0')}"
    m = int(g["m"])
    return f">={_v(M, m, 0, pr)} <{_v(M, m + 1, 0, '-0')}"


def _hyphen(match: re.Match[str], ip: bool) -> str:
    z = "-0" if ip else ""
    fM, fm, fp, fpre = match["fM"], match["fm"], match["fp"], match["fpre"]  # noqa: N806
    if _is_x(fM):
        low = ""
    elif _is_x(fm):
        low = f">={fM}.0.0{z}"
    elif _is_x(fp):
        low = f">={fM}.{fm}.0{z}"
    else:
        low = f">={match['from']}" + ("" if fpre else z)
    tM, tm, tp, tpre = match["tM"], match["tm"], match["tp"], match["tpre"]  # noqa: N806
    if _is_x(tM):
        high = ""
    elif _is_x(tm):
        high = f"<{int(tM) + 1}.0.0-0"
    elif _is_x(tp):
        high = f"<{tM}.{int(tm) + 1}.0-0"
    elif tpre:
        high = f"<={tM}.{tm}.{tp}-{tpre}"
    elif ip:
        high = f"<{tM}.{tm}.{int(tp) + 1}-0"
    else:
        high = f"<={match['to']}"
    return f"{low} {high}".strip()


def _primitive(token: str, ip: bool) -> Comparator:
    if token == "":
        return _ANY
    match = _PRIMITIVE_RE.fullmatch(token)
    if not match:
        raise ValueError(token)
    v = Version._from_match(match, token)
    op = match["op"] if match["op"] != "=" else ""
    if op == ">=" and v == Version(0, 0, 0, (0,) if ip else ()) and (bool(v.prerelease) == ip):
        return _ANY  # `>=0.0.0` is `*`
    return Comparator(op, v)


def _token(token: str, ip: bool) -> list[Comparator]:
    for pattern, desugar in ((_CARET_RE, _caret), (_TILDE_RE, _tilde)):
        if (match := pattern.fullmatch(token)) is not None:
            return [_primitive(t, ip) for t in desugar(match.groupdict(), ip).split(" ")]
    if (match := _XRANGE_RE.fullmatch(token)) is not None:
        text = _xrange(match.groupdict(), ip)
        if text is not None:
            return [_primitive(t, ip) for t in text.split(" ")]
    return [_primitive(token, ip)]


def _parse_set(text: str, ip: bool) -> list[Comparator]:
    text = text.strip()
    hyphen = _HYPHEN_RE.fullmatch(text)
    if hyphen:
        text = _hyphen(hyphen, ip)
    text = _OP_SPACE.sub(lambda m: m[1] or ("~" if m[2] else "^"), text)
    comparators: dict[str, Comparator] = {}
    for token in text.split():
        for c in _token(token, ip):
            if str(c) == "<0.0.0-0":
                return [c]
            comparators.setdefault(str(c), c)
    if not comparators:
        return [_ANY]
    if len(comparators) > 1:
        comparators.pop("", None)
    return list(comparators.values())


def _parse_range(spec: str, ip: bool) -> list[list[Comparator]]:
    if not isinstance(spec, str):
        raise InvalidRange(f"invalid version range {show(spec)}: a range is a string.")
    if len(spec) > MAX_RANGE_LENGTH:
        raise InvalidRange(
            f"invalid version range `{show(spec)}`: it has {len(spec)} characters, "
            f"more than the limit of {MAX_RANGE_LENGTH}.",
            hints=[RANGE_HINT],
        )
    if not _RANGE_CHARS.fullmatch(spec):
        bad = next(c for c in spec if not _RANGE_CHARS.fullmatch(c))
        raise InvalidRange(
            f"invalid version range `{show(spec)}`: it contains the character {show(bad)}.",
            hints=[RANGE_HINT],
        )
    stripped = _BUILD_ANYWHERE.sub("", spec)
    try:
        sets = [_parse_set(part, ip) for part in re.split(r"\s*\|\|\s*", stripped)]
    except (ValueError, InvalidName):
        raise InvalidRange(f"invalid version range `{show(spec)}`.", hints=[RANGE_HINT]) from None
    if len(sets) > 1:
        real = [s for s in sets if str(s[0]) != "<0.0.0-0"]
        sets = real or sets[:1]
        anything = next((s for s in sets if len(s) == 1 and s[0].version is None), None)
        if anything is not None:
            sets = [anything]
    return sets


class Range:
    """A parsed npm range; ``include_prerelease`` is node-semver's option of the same name.

    Example:
        >>> Range("^1.2").satisfies("1.9.0"), Range("^1.2").satisfies("2.0.0-rc.1")
        (True, False)
        >>> str(Range("~1.4"))
        '>=1.4.0 <1.5.0-0'
        >>> Range("~1.4").max_satisfying(["1.4.0", "1.4.9", "1.5.0"])
        '1.4.9'

    Raises:
        InvalidRange: ``spec`` is not a range (naming it, with a hint).
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.sets = _parse_range(spec, False)
        self._with_prereleases: list[list[Comparator]] | None = None

    def comparator_sets(self, *, include_prerelease: bool = False) -> list[list[Comparator]]:
        if not include_prerelease:
            return self.sets
        if self._with_prereleases is None:
            self._with_prereleases = _parse_range(self.spec, True)
        return self._with_prereleases

    def satisfies(self, version: str | Version, *, include_prerelease: bool = False) -> bool:
        """Whether ``version`` is in the range; a string that is not a version never is."""
        if isinstance(version, str):
            try:
                version = Version.parse(version, npm=True)
            except InvalidName:
                return False
        return any(
            _test_set(s, version, include_prerelease)
            for s in self.comparator_sets(include_prerelease=include_prerelease)
        )

    def max_satisfying(self, versions: Iterable[str]) -> str | None:
        """The highest of ``versions`` inside the range, or None."""
        ok = [v for v in versions if self.satisfies(v)]
        return max(ok, key=version_key) if ok else None

    def min_satisfying(self, versions: Iterable[str]) -> str | None:
        ok = [v for v in versions if self.satisfies(v)]
        return min(ok, key=version_key) if ok else None

    def format(self, *, include_prerelease: bool = False) -> str:
        """node-semver's ``new Range(spec).range``: ``>=1.2.0 <2.0.0-0||...``, ``""`` for any."""
        return "||".join(
            " ".join(map(str, s)).strip() for s in self.comparator_sets(include_prerelease=include_prerelease)
        ).strip()

    def __str__(self) -> str:
        return self.format() or "*"

    def __repr__(self) -> str:
        return f"Range({self.spec!r})"


def _test_set(comparators: list[Comparator], v: Version, include_prerelease: bool) -> bool:
    if not all(c.test(v) for c in comparators):
        return False
    if v.prerelease and not include_prerelease:
        # A prerelease passes only if a comparator names a prerelease of the same M.m.p.
        return any(
            c.version is not None
            and c.version.prerelease
            and (c.version.major, c.version.minor, c.version.patch) == (v.major, v.minor, v.patch)
            for c in comparators
        )
    return True


def valid_range(spec: str, *, include_prerelease: bool = False) -> str | None:
    """node-semver's ``validRange``: the canonical range (``*`` for any), or None when invalid."""
    try:
        return Range(spec).format(include_prerelease=include_prerelease) or "*"
    except InvalidRange:
        return None


# ---------------------------------------------------------------------------- tags


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it can be a dist-tag: a valid name that does not parse as a version or range.

    npm refuses such tags (``npm dist-tag add``) because ``install skill@2`` would be
    ambiguous between the tag and the range; tvreg refuses them on both sides.

    Example:
        >>> validate_tag("beta"), validate_tag("1x")
        ('beta', '1x')
    """
    validate_name(tag, what="tag")
    meaning = valid_range(tag)
    if meaning is not None:
        raise InvalidName(
            f"invalid tag `{tag}`: it parses as the version range `{meaning}`, so `skill@{tag}` would not name the tag.",
            hints=[
                "pick a tag that starts with a letter and is not `v` followed by a version, e.g. `stable` or `next`"
            ],
        )
    return tag


def is_tag(spec: str) -> bool:
    try:
        validate_tag(spec)
    except InvalidName:
        return False
    return True


# -------------------------------------------------------------------- requirements


class _Candidate(Protocol):
    version: str
    yanked: bool


def exact_version(spec: str) -> str | None:
    """The version ``spec`` pins exactly (``1.2.3``, ``=1.2.3``, ``v1.2.3``), else None."""
    match = _PRIMITIVE_RE.fullmatch(spec.strip(" \t")) if isinstance(spec, str) else None
    if match is None or match["op"] not in ("", "="):
        return None
    try:
        return Version._from_match(match, spec).core
    except InvalidName:
        return None


@dataclass(frozen=True)
class Requirement:
    """One constraint on one skill (``name@spec``), and who imposed it (for error messages)."""

    name: str
    spec: str = ""
    source: str = "the command line"
    exclude: bool = False
    also: str | None = None  # one more version allowed even when yanked (upgrade keeps a locked yanked version)

    @property
    def tag(self) -> str | None:
        return self.spec if self.spec and is_tag(self.spec) else None

    @property
    def range(self) -> Range:
        return Range(self.spec if not self.tag else "*")

    @property
    def exact(self) -> str | None:
        return exact_version(self.spec) if self.spec else None

    def allows(self, candidate: _Candidate, tags: Mapping[str, str]) -> bool:
        if self.also is not None and candidate.version == self.also:
            return True
        if self.exclude:
            return not Range(self.spec).satisfies(candidate.version, include_prerelease=True)
        if self.tag:
            return tags.get(self.tag) == candidate.version
        if self.exact:
            return Version.parse(self.exact) == Version.parse(candidate.version, npm=True)
        return self.range.satisfies(candidate.version) and not candidate.yanked

    def __str__(self) -> str:
        if self.exclude:
            return f"no {self.name}@{self.spec}"
        return f"{self.name}@{self.spec}" if self.spec else self.name


def parse_spec(spec: str) -> str:
    """Check the part after ``@``: a range (a version is one) or a dist-tag; return it stripped.

    Raises:
        InvalidRange: neither a range nor a tag.
    """
    spec = spec.strip(" \t")
    if not spec or valid_range(spec) is not None or is_tag(spec):
        return spec
    Range(spec)  # raises with the range's own reason (a control character, a length)
    raise InvalidRange(f"invalid version range or tag `{show(spec)}`.", hints=[RANGE_HINT])


def parse_requirement(text: str, *, source: str = "the command line") -> Requirement:
    """Parse ``name``, ``name@RANGE``, ``name@VERSION`` or ``name@TAG``.

    Example:
        >>> parse_requirement("nlp/safety@>=1.2 <2").spec
        '>=1.2 <2'
        >>> parse_requirement("nlp/safety@beta").tag
        'beta'
    """
    if not isinstance(text, str):
        raise InvalidName(f"invalid requirement {show(text)}.")
    name, _, spec = text.strip(" \t").partition("@")
    validate_skill_name(name)
    return Requirement(name, parse_spec(spec), source)


def validate_dependencies(deps: Mapping[str, str]) -> None:
    """Check a ``requires``/``conflicts`` table (``{"ns/skill": "npm range"}``) entry by entry.

    Raises:
        InvalidName: naming the first bad entry.
    """
    for dep, spec in deps.items():
        try:
            parse_requirement(f"{dep}@{spec}" if spec else dep)
        except InvalidName as exc:
            raise type(exc)(f"`{show(dep)}`: {exc.message}", hints=exc.hints) from exc


__all__ = [
    "MAX_LENGTH",
    "MAX_RANGE_LENGTH",
    "RESERVED_NAMES",
    "Comparator",
    "Range",
    "Requirement",
    "Version",
    "exact_version",
    "is_prerelease",
    "is_tag",
    "parse_requirement",
    "parse_spec",
    "precedence_core",
    "show",
    "ultranormalize",
    "valid_range",
    "validate_dependencies",
    "validate_name",
    "validate_namespace_name",
    "validate_skill_name",
    "validate_tag",
    "validate_version",
    "version_key",
]

