"""npm range semantics, table by table (cases follow node-semver's documented behaviour)."""

from __future__ import annotations

import pytest

from tvreg._names import InvalidRange, Range

# (range, version, reason)
INCLUDE = [
    ("1.0.0 - 2.0.0", "1.2.3", "hyphen range is inclusive"),
    ("1.0.0 - 2.0.0", "2.0.0", "hyphen upper bound is inclusive"),
    ("1.2 - 3.4", "3.4.9", "partial upper bound covers the whole minor"),
    ("^1.2.3+build", "1.3.0", "build metadata is ignored"),
    ("1.2.3-pre+asdf - 2.4.3-pre+asdf", "1.2.3", "prerelease bounds still admit releases"),
    ("1.2.3-pre+asdf - 2.4.3-pre+asdf", "1.2.3-pre.2", "same-tuple prerelease allowed"),
    ("*", "1.2.3", "star is anything released"),
    ("", "1.0.0", "empty is star"),
    (">=1.0.0", "1.0.0", ">= includes its bound"),
    (">1.0.0", "1.1.0", "> excludes only its bound"),
    ("<=2.0.0", "2.0.0", "<= includes its bound"),
    ("<2.0.0", "0.2.9", "< anything below"),
    (">= 1.0.0", "1.0.1", "space after operator"),
    ("0.1.20 || 1.2.4", "1.2.4", "union"),
    (">=0.2.3 || <0.0.1", "0.0.0", "union with lower branch"),
    ("2.x.x", "2.1.3", "x-range"),
    ("1.2.x || 2.x", "2.1.3", "x-range union"),
    ("2.*.*", "2.1.3", "star components"),
    ("2", "2.1.2", "bare major"),
    ("2.3", "2.3.1", "bare minor"),
    ("~2.4", "2.4.5", "tilde keeps minor"),
    ("~>3.2.1", "3.2.2", "~> is tilde"),
    ("~1", "1.2.3", "tilde major only"),
    ("~1.0", "1.0.2", "tilde minor"),
    ("~1.2.3-beta.2", "1.2.3-beta.4", "tilde prerelease same tuple"),
    ("^1.2.3", "1.8.1", "caret keeps major"),
    ("^0.1.2", "0.1.2", "caret on 0.x keeps minor"),
    ("^0.1", "0.1.2", "caret partial on 0.x"),
    ("^1.2", "1.4.2", "caret partial"),
    ("^1.2 ^1", "1.4.2", "intersection"),
    ("^1.2.3-alpha", "1.2.3-pre", "prerelease allowed for same tuple"),
    ("^0.0.1-alpha", "0.0.1-beta", "0.0.x caret prerelease"),
    ("^0.0.1", "0.0.1", "caret on 0.0.x is exact patch"),
    ("<1", "0.9.9", "partial less-than"),
    (">=1", "1.0.0", "partial greater-equal"),
    ("<1.2", "1.1.1", "partial less-than minor"),
    ("<=1.2", "1.2.9", "partial <= covers the minor"),
    ("=0.7.x", "0.7.2", "= with x is an x-range"),
    (">=0.7.x", "0.7.2", ">= with x"),
    ("<=0.7.x", "0.7.2", "<= with x covers the minor"),
]

EXCLUDE = [
    ("1.0.0 - 2.0.0", "2.2.3", "above hyphen range"),
    ("^1.2.3", "1.2.3-pre", "prerelease below the bound"),
    ("^1.2", "1.2.0-pre", "prerelease of the lower bound tuple without pre comparator"),
    (">1.2", "1.3.0-beta", "prerelease of a release the range does not name"),
    ("<=1.2.3", "1.2.3-beta", "prerelease excluded without a prerelease comparator"),
    ("=0.7.x", "0.7.0-asdf", "x-range never admits prereleases"),
    ("1.0.0", "1.0.1", "exact"),
    (">=1.0.0", "0.1.0", "below"),
    ("<2.0.0", "2.2.9", "above"),
    ("0.1.20 || 1.2.4", "1.2.3", "neither branch"),
    ("2.x.x", "3.1.3", "other major"),
    ("1.2.x", "1.3.3", "other minor"),
    ("~0.0.1", "0.1.0", "tilde on 0.0"),
    ("~2.4", "2.5.0", "tilde upper bound"),
    ("~>3.2.1", "3.2.0", "tilde lower bound"),
    ("~1.0", "1.1.0", "tilde minor bound"),
    ("<1", "1.0.0", "partial less-than excludes the bound"),
    (">=1.2", "1.1.1", "partial lower bound"),
    ("~v0.5.4-beta", "0.5.4-alpha", "alpha < beta"),
    ("<1.2.3", "1.2.3-beta", "prerelease of the bound itself"),
    ("=1.2.3", "1.2.3-beta", "exact excludes prerelease"),
    (">1.2", "1.2.8", "partial greater-than skips the minor"),
    ("^0.0.1", "0.0.2", "caret on 0.0.x"),
    ("^1.2.3", "2.0.0-alpha", "prerelease of next major"),
    ("^1.2.3", "1.2.2", "below caret"),
    ("^1.0.0", "2.0.0-rc1", "prerelease past the range"),
    ("^1.0.0-0", "1.0.1-rc1", "a prerelease of another major.minor.patch than the range names"),
    (">X", "1.0.0", "greater than everything"),
    ("<x <* || >* 2.x", "2.0.0", "every branch empty"),
]


@pytest.mark.parametrize(("spec", "version", "reason"), INCLUDE, ids=[f"{c[0]}∋{c[1]}" for c in INCLUDE])
def test_range_includes(spec, version, reason):
    assert Range(spec).satisfies(version), reason


@pytest.mark.parametrize(("spec", "version", "reason"), EXCLUDE, ids=[f"{c[0]}∌{c[1]}" for c in EXCLUDE])
def test_range_excludes(spec, version, reason):
    assert not Range(spec).satisfies(version), reason


PARSE = [
    ("1.0.0 - 2.0.0", ">=1.0.0 <=2.0.0"),
    ("1 - 2", ">=1.0.0 <3.0.0-0"),
    ("1.0 - 2.0", ">=1.0.0 <2.1.0-0"),
    ("*", "*"),
    (">=*", "*"),
    ("1", ">=1.0.0 <2.0.0-0"),
    ("~> 1", ">=1.0.0 <2.0.0-0"),
    ("^0.0.1-beta", ">=0.0.1-beta <0.0.2-0"),
    ("^1.2.3-beta.4", ">=1.2.3-beta.4 <2.0.0-0"),
    ("<1.2", "<1.2.0-0"),
    (">1", ">=2.0.0"),
    (">1.2", ">=1.3.0"),
    ("<=1.2", "<1.3.0-0"),
    ("1.2.x || 2.x", ">=1.2.0 <1.3.0-0||>=2.0.0 <3.0.0-0"),
    ("1.2.3 - 3.4", ">=1.2.3 <3.5.0-0"),
    ("0.1.20 || 1.2.4", "0.1.20||1.2.4"),
]


@pytest.mark.parametrize(("spec", "canonical"), PARSE)
def test_desugaring(spec, canonical):
    assert str(Range(spec)) == canonical


def test_include_prerelease_option():
    assert Range("^1.0.0").satisfies("1.5.0-rc.1", include_prerelease=True)
    assert not Range("^1.0.0").satisfies("1.5.0-rc.1")


def test_max_and_min_satisfying():
    versions = ["1.0.0", "1.4.0", "1.4.9", "1.5.0", "2.0.0", "2.1.0-beta.1"]
    assert Range("~1.4").max_satisfying(versions) == "1.4.9"
    assert Range("^1").min_satisfying(versions) == "1.0.0"
    assert Range(">=2").max_satisfying(versions) == "2.0.0"
    assert Range("^3").max_satisfying(versions) is None


@pytest.mark.parametrize(
    "bad", ["1.2.3.4", ">=01.2.3", "~1.2.3beta", "abc", ">=1.2 <", "1.2.3 -", "^1.2.3 || garbage"]
)
def test_invalid_ranges_are_refused(bad):
    with pytest.raises(InvalidRange):
        Range(bad)
