"""The one home of names (tvreg/_names.py): node-semver's own fixtures, and tvreg's name and tag rules.

The fixture tables under ``tests/data/node_semver`` are node-semver's (ISC), ported as
data: npm's parser is the peer whose behaviour tvreg promises, so its spec is the test.
Loose-mode cases and non-string inputs do not apply (tvreg parses in strict mode, from
strings) and are counted out by :func:`_applies`, never skipped silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tvreg._names import (
    MAX_LENGTH,
    Range,
    Version,
    exact_version,
    parse_requirement,
    ultranormalize,
    valid_range,
    validate_name,
    validate_skill_name,
    validate_tag,
    validate_version,
)
from tvreg.errors import InvalidName, InvalidRange, TvregError

DATA = Path(__file__).parent / "data" / "node_semver"


def _cases(name: str, key: str = "cases") -> list[dict]:
    return json.loads((DATA / name).read_text())[key]


def _applies(case: dict) -> bool:
    return not case.get("loose") and all(
        isinstance(case[k], str) for k in ("version", "a", "b", "greater", "lesser") if k in case
    )


def _ids(cases: list[dict], *keys: str) -> list[str]:
    return [
        " ".join(repr(c[k])[:60] for k in keys) + (" +pre" if c.get("include_prerelease") else "")
        for c in cases
    ]


INCLUDE = [c for c in _cases("range_include.json") + _cases("recent.json", "include") if _applies(c)]
EXCLUDE = [c for c in _cases("range_exclude.json") + _cases("recent.json", "exclude") if _applies(c)]
PARSE = [c for c in _cases("range_parse.json") + _cases("recent.json", "parse") if _applies(c)]
COMPARISONS = [c for c in _cases("comparisons.json") if _applies(c)]
EQUALITY = [c for c in _cases("equality.json") if _applies(c)]
VALID = _cases("valid_versions.json")
INVALID = [c["version"] for c in _cases("invalid_versions.json") if _applies(c)] + _cases(
    "recent.json", "invalid_versions"
)


def test_the_fixture_tables_are_all_there():
    """Guards the counts the report quotes: a truncated data file must not pass quietly."""
    counts = [
        len(INCLUDE),
        len(EXCLUDE),
        len(PARSE),
        len(COMPARISONS),
        len(EQUALITY),
        len(VALID),
        len(INVALID),
    ]
    assert counts == [126, 94, 111, 19, 3, 22, 13]


@pytest.mark.parametrize("case", INCLUDE, ids=_ids(INCLUDE, "range", "version"))
def test_node_semver_range_include(case):
    assert Range(case["range"]).satisfies(case["version"], include_prerelease=case["include_prerelease"])


@pytest.mark.parametrize("case", EXCLUDE, ids=_ids(EXCLUDE, "range", "version"))
def test_node_semver_range_exclude(case):
    assert not Range(case["range"]).satisfies(case["version"], include_prerelease=case["include_prerelease"])


@pytest.mark.parametrize("case", PARSE, ids=_ids(PARSE, "range"))
def test_node_semver_range_parse(case):
    assert valid_range(case["range"], include_prerelease=case["include_prerelease"]) == case["expected"]
    if case["expected"] is None:
        with pytest.raises(InvalidRange):
            Range(case["range"])


@pytest.mark.parametrize("case", COMPARISONS, ids=_ids(COMPARISONS, "greater", "lesser"))
def test_node_semver_comparisons(case):
    greater, lesser = Version.parse(case["greater"], npm=True), Version.parse(case["lesser"], npm=True)
    assert greater > lesser and lesser < greater and greater != lesser


@pytest.mark.parametrize("case", EQUALITY, ids=_ids(EQUALITY, "a", "b"))
def test_node_semver_equality(case):
    assert Version.parse(case["a"], npm=True) == Version.parse(case["b"], npm=True)


@pytest.mark.parametrize("case", VALID, ids=[c["version"] for c in VALID])
def test_node_semver_valid_versions(case):
    v = Version.parse(case["version"], npm=True)
    assert (v.major, v.minor, v.patch) == (case["major"], case["minor"], case["patch"])
    assert list(v.prerelease) == case["prerelease"] and list(v.build) == case["build"]


@pytest.mark.parametrize("text", INVALID, ids=[t[:40] for t in INVALID])
def test_node_semver_invalid_versions(text):
    with pytest.raises(InvalidName):
        Version.parse(text, npm=True)
    with pytest.raises(InvalidName):
        validate_version(text)


# ---------------------------------------------------------------- tvreg's own rules

NAMES = [
    ("science", None, "plain"),
    ("a", None, "one character"),
    ("x" * MAX_LENGTH, None, "exactly the limit"),
    ("x" * (MAX_LENGTH + 1), "more than the limit of 100", "one past the limit"),
    ("science\n", "control character \\n", "a `$` anchor let a trailing newline through (class 8)"),
    ("sci\x1bence", "control character \\x1b", "an escape sequence inside"),
    ("sci\u200bence", "control character \\u200b", "a zero-width space (format character)"),
    ("science\u2028", "control character \\u2028", "a line separator"),
    ("ѕcience", "use lowercase letters", "a Cyrillic look-alike letter"),
    ("１science", "use lowercase letters", "a fullwidth digit"),
    ("Science", "use lowercase letters", "upper case"),
    ("-science", "use lowercase letters", "leading separator"),
    ("a..b", "may not contain '..'", "dot-dot"),
    ("a/b", "use lowercase letters", "a slash"),
    ("", "use lowercase letters", "empty"),
]


@pytest.mark.parametrize(("name", "error", "why"), NAMES, ids=[n[2] for n in NAMES])
def test_name_rules(name, error, why):
    if error is None:
        assert validate_name(name) == name
        return
    with pytest.raises(InvalidName) as info:
        validate_name(name)
    assert error in info.value.message
    assert not any(ord(c) < 32 or c in "\u2028\u200b" for c in info.value.message), "culprit shown escaped"


def test_lookalikes_compare_on_the_whole_normalized_string():
    assert ultranormalize("Safe_.Ty") == ultranormalize("safe-ty")
    assert ultranormalize("science\n") != ultranormalize("science")  # and `science\n` is refused anyway


VERSIONS = [
    ("1.0.0", True, "release"),
    ("2.0.0-beta.1", True, "prerelease"),
    ("1.0.0+build.7", True, "build metadata"),
    ("9007199254740991.0.0", True, "2**53 - 1"),
    ("9007199254740992.0.0", False, "2**53"),
    ("v1.0.0", False, "a published version is written without `v`"),
    ("1.2.3-01", False, "leading zero in a numeric prerelease identifier (npm refuses it)"),
    ("==1.2.3", False, "not a version"),
    ("1.0.0\n", False, "trailing newline"),
    (" 1.0.0", False, "leading space"),
    ("1.0.0-" + "a" * 94, True, "100 characters"),
    ("1.0.0-" + "a" * 95, False, "101 characters (the 206-character 500 of class 10)"),
    ("١.0.0", False, "an Arabic-Indic digit"),
]


@pytest.mark.parametrize(("text", "ok", "why"), VERSIONS, ids=[v[2] for v in VERSIONS])
def test_publishable_versions(text, ok, why):
    if ok:
        assert validate_version(text) == text
    else:
        with pytest.raises(InvalidName):
            validate_version(text)


def test_build_metadata_does_not_make_another_version():
    assert Version.parse("1.0.0+evil") == Version.parse("1.0.0")
    assert len({Version.parse("1.0.0+a"), Version.parse("1.0.0+b"), Version.parse("1.0.0")}) == 1
    assert Version.parse("1.0.0+evil").core == "1.0.0"


# Every tag: (tag, what `skill@tag` means, why). A tag must install as that tag; a string that
# parses as a version or range must be refused as a tag on both sides (npm refuses it too).
TAGS = [
    ("latest", "tag", "the default tag"),
    ("beta", "tag", "a word"),
    ("1x", "tag", "accepted by `tag add` and the server, so `install …@1x` must work"),
    ("stable-2", "tag", "a word with a number"),
    ("1.2.3.4", "tag", "four numbers are not a version or range"),
    ("x-beta", "tag", "starts with x but is no x-range"),
    ("2", "range", "`2` is `>=2.0.0 <3.0.0-0`"),
    ("v2", "range", "`install science@v2` would silently mean the range"),
    ("1.x", "range", "an x-range"),
    ("x", "range", "`x` is any version"),
    ("1.2.3", "range", "an exact version"),
    ("v1.2.3-beta.1", "range", "a version with `v`"),
    ("1.2", "range", "a partial version"),
]


@pytest.mark.parametrize(("tag", "meaning", "why"), TAGS, ids=[t[0] for t in TAGS])
def test_tag_and_range_table(tag, meaning, why):
    req = parse_requirement(f"alice/science@{tag}")
    if meaning == "tag":
        assert validate_tag(tag) == tag
        assert req.tag == tag and req.exact is None
    else:
        with pytest.raises(InvalidName, match="parses as the version range"):
            validate_tag(tag)
        assert req.tag is None
        assert valid_range(tag) is not None


@pytest.mark.parametrize("tag", ["latest\n", "Beta", "a" * (MAX_LENGTH + 1), "be ta", "beta/x", "b\x00"])
def test_tags_follow_the_name_rules(tag):
    with pytest.raises(InvalidName):
        validate_tag(tag)


def test_exact_pins():
    assert exact_version("1.2.3") == "1.2.3"
    assert exact_version("=1.2.3") == exact_version("v1.2.3") == "1.2.3"
    assert exact_version("==1.2.3") is None
    assert exact_version("^1.2.3") is None


@pytest.mark.parametrize(
    "spec", ["^1\n", "^1\x1b[2J", ">=1.0.0 <2 ||| x", ">=1.x.5", "<x.1", "^1.2.3 \u00a0", ">=" + "1" * 1100]
)
def test_bad_requirement_specs_are_refused(spec):
    with pytest.raises(InvalidRange) as info:
        parse_requirement(f"alice/science@{spec}")
    assert info.value.hints, "a refused range says what a range looks like"
    assert "\x1b" not in info.value.message and "\n" not in info.value.message


def test_invalid_range_is_in_the_error_tree():
    assert issubclass(InvalidRange, InvalidName) and issubclass(InvalidName, TvregError)
    import tvreg.errors

    assert "InvalidRange" in tvreg.errors.__all__


def test_skill_names_in_requirements():
    assert validate_skill_name("nlp/safety") == "nlp/safety"
    with pytest.raises(InvalidName, match="invalid namespace"):
        validate_skill_name("NLP/safety")
    with pytest.raises(InvalidName, match="use `skill` or `namespace/skill`"):
        validate_skill_name("a/b/c")
