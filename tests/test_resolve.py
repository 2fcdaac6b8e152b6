"""Resolver behaviour, case by case: each case is an index, a request and the expected outcome, with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tvreg._registry.resolve import Candidate, Requirement, parse_requirement, resolve
from tvreg.errors import InvalidName, ResolutionImpossible

BASE = "a" * 64
OTHER = "b" * 64


@dataclass
class TableIndex:
    """An index given as data: name → candidates, name → dist-tags."""

    rows: dict[str, list[Candidate]]
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def candidates(self, name):
        return self.rows.get(name, [])

    def dist_tags(self, name):
        return self.tags.get(name, {})


def C(name, version, *, base=BASE, requires=(), conflicts=(), yanked=False, reason=None):  # noqa: N802
    return Candidate(
        name,
        version,
        base,
        tuple(parse_requirement(r) for r in requires),
        tuple(parse_requirement(r) for r in conflicts),
        yanked,
        reason,
    )


INDEX = TableIndex(
    {
        "science": [C("science", v) for v in ("1.0.0", "2.0.0", "2.1.0", "2.3.1", "3.0.0-beta.1")],
        "safety": [
            C("safety", "1.2.0"),
            C("safety", "1.3.0"),
            C("safety", "1.4.0", yanked=True, reason="refuses everything"),
            C("safety", "2.0.0"),
            C("safety", "2.1.0"),
        ],
        "coding": [
            C("coding", "1.3.0", requires=["safety@>=1.2"]),
            C("coding", "1.4.0", requires=["safety@>=2"]),
            C("coding", "1.4.2", requires=["safety@>=2"], base=OTHER),
        ],
        "nlp/translate": [C("nlp/translate", "0.1.0", base=OTHER), C("nlp/translate", "0.2.0", base=OTHER)],
        "legacy": [C("legacy", "1.0.0", conflicts=["safety@>=2"])],
        "suite": [C("suite", "1.0.0", requires=["left@^1", "right@^1"])],
        "left": [C("left", "1.0.0", requires=["shared@>=1.1"]), C("left", "1.1.0", requires=["shared@>=1.4"])],
        "right": [C("right", "1.0.0", requires=["shared@<1.3"])],
        "shared": [C("shared", v) for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0")],
    },
    tags={"science": {"latest": "2.3.1", "beta": "3.0.0-beta.1"}},
)

# (requests, expected {name: version}, reason)
CASES = [
    (["science"], {"science": "2.3.1"}, "highest release wins; prereleases need opting in"),
    (["science@^2.1"], {"science": "2.3.1"}, "caret"),
    (["science@~2.0"], {"science": "2.0.0"}, "tilde"),
    (["science@beta"], {"science": "3.0.0-beta.1"}, "dist-tag"),
    (["science@3.0.0-beta.1"], {"science": "3.0.0-beta.1"}, "exact prerelease pin"),
    (["safety@^1"], {"safety": "1.3.0"}, "yanked 1.4.0 is skipped by ranges"),
    (["safety@1.4.0"], {"safety": "1.4.0"}, "yanked version installs when pinned exactly"),
    (["coding"], {"coding": "1.4.0", "safety": "2.1.0"}, "dependency pulled in; other-base 1.4.2 ignored"),
    (["coding", "safety@<2"], {"coding": "1.3.0", "safety": "1.3.0"}, "backtracks to an older coding"),
    (["legacy", "safety"], {"legacy": "1.0.0", "safety": "1.3.0"}, "conflicts constrain requested skills"),
    (["legacy"], {"legacy": "1.0.0"}, "conflicts never pull a skill in"),
    (
        ["suite"],
        {"suite": "1.0.0", "left": "1.0.0", "right": "1.0.0", "shared": "1.2.0"},
        "diamond: both sides' ranges met by one shared version; left backtracks from 1.1.0",
    ),
]


@pytest.mark.parametrize(("requests", "expected", "reason"), CASES, ids=[c[2] for c in CASES])
def test_resolves(requests, expected, reason):
    res = resolve([parse_requirement(r) for r in requests], INDEX, base_fingerprint=BASE)
    assert {n: c.version for n, c in res.chosen.items()} == expected, reason


def test_lowest_resolution_for_testing_lower_bounds():
    res = resolve([parse_requirement("coding")], INDEX, base_fingerprint=BASE, resolution="lowest")
    assert {n: c.version for n, c in res.chosen.items()} == {"coding": "1.3.0", "safety": "1.2.0"}


def test_yanked_exact_pin_warns_with_the_reason():
    res = resolve([parse_requirement("safety@1.4.0")], INDEX, base_fingerprint=BASE)
    assert res.warnings == [
        "safety 1.4.0 is yanked: refuses everything; installing it because it is pinned exactly."
    ]


def test_conflict_with_a_pin_explains_both_sides():
    reqs = [parse_requirement("coding@1.4.0"), Requirement("safety", "1.3.0", source="mymodel pins")]
    with pytest.raises(ResolutionImpossible) as exc:
        resolve(reqs, INDEX, base_fingerprint=BASE)
    msg = str(exc.value)
    assert msg.startswith("No solution found when resolving skills: because ")
    assert "coding 1.4.0 requires safety>=2" in msg and "mymodel pins safety 1.3.0" in msg
    assert "(available: 1.2.0, 1.3.0, 1.4.0, 2.0.0, 2.1.0)" in msg


def test_no_version_for_this_base_names_the_bases_that_exist():
    with pytest.raises(ResolutionImpossible) as exc:
        resolve([parse_requirement("nlp/translate")], INDEX, base_fingerprint=BASE)
    assert str(exc.value) == (
        "No solution found when resolving skills: no version of nlp/translate is built for base aaaaaaaaaaaa…; "
        "versions exist for bases bbbbbbbbbbbb… (nlp/translate 0.1.0, 0.2.0)."
    )


def test_unknown_skill():
    with pytest.raises(ResolutionImpossible, match="no skill named ghost exists"):
        resolve([parse_requirement("ghost")], INDEX, base_fingerprint=BASE)


# `x@1.2.3.4` and `x@1.2.3-01` are tags by npm's rules (tag-shaped, neither a version nor a range).
@pytest.mark.parametrize("bad", ["../x", "a/b/c", "x@>=1.2 <", "Safety", "x@==1.2.3", "x@>=1.2.3-01", "x@>=1.x.5"])
def test_bad_requirements_are_refused(bad):
    with pytest.raises(InvalidName):
        parse_requirement(bad)


def test_requirement_syntax():
    r = parse_requirement("nlp/safety@>=1.2 <2")
    assert (r.name, r.spec, r.tag, r.exact) == ("nlp/safety", ">=1.2 <2", None, None)
    assert parse_requirement("safety@beta").tag == "beta"
    assert parse_requirement("safety@1.2.3").exact == "1.2.3"
