"""Choose one version per skill that satisfies every requirement: the resolvelib provider.

Requirements come from the command line (``science@^2.1``), from the model's lockfile
(installed skills are pinned unless upgraded) and from each candidate's manifest
(``requires``). A candidate must be built for the model's base fingerprint. Yanked
versions are skipped unless pinned exactly (PEP 592). ``conflicts`` declared by a
candidate constrain the skills the user is installing, never pull new ones in.
Backtracking is resolvelib's (pip's resolver core); this module only describes the
problem and turns a failure into sentences that name every constraint and its source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import resolvelib
import semver

from .errors import InvalidName, ResolutionImpossible
from .fingerprint import short
from .manifest import validate_name
from .ranges import InvalidRange, Range

_TAG_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")


def validate_skill_name(name: str) -> str:
    """``skill`` or ``namespace/skill``, each part a valid name."""
    parts = name.split("/")
    if len(parts) > 2:
        raise InvalidName(f"invalid skill name {name!r}: use `skill` or `namespace/skill`.")
    for part in parts:
        validate_name(part)
    return name


@dataclass(frozen=True)
class Requirement:
    """One constraint on one skill, and who imposed it (for error messages)."""

    name: str
    spec: str = ""
    source: str = "the command line"
    exclude: bool = False
    also: str | None = None  # one more version allowed even when yanked (upgrade keeps a locked yanked version)

    @property
    def tag(self) -> str | None:
        return self.spec if self.spec and _is_tag(self.spec) else None

    @property
    def range(self) -> Range:
        return Range(self.spec if not self.tag else "*")

    @property
    def exact(self) -> str | None:
        text = self.spec.strip().lstrip("=v")
        return text if self.spec and semver.Version.is_valid(text) else None

    def allows(self, candidate: Candidate, tags: Mapping[str, str]) -> bool:
        if self.also is not None and candidate.version == self.also:
            return True
        if self.exclude:
            return not Range(self.spec).satisfies(candidate.version, include_prerelease=True)
        if self.tag:
            return tags.get(self.tag) == candidate.version
        if self.exact:
            return semver.Version.parse(self.exact).compare(candidate.version) == 0
        return self.range.satisfies(candidate.version) and not candidate.yanked

    def __str__(self) -> str:
        if self.exclude:
            return f"no {self.name}@{self.spec}"
        return f"{self.name}@{self.spec}" if self.spec else self.name


def _is_tag(spec: str) -> bool:
    if not _TAG_RE.match(spec):
        return False
    try:
        Range(spec)
        return False
    except InvalidRange:
        return True


def parse_requirement(text: str, *, source: str = "the command line") -> Requirement:
    """Parse ``name``, ``name@RANGE``, ``name@VERSION`` or ``name@TAG``.

    Example:
        >>> parse_requirement("nlp/safety@>=1.2 <2").spec
        '>=1.2 <2'
    """
    name, _, spec = text.strip().partition("@")
    validate_skill_name(name)
    spec = spec.strip()
    if spec and not _is_tag(spec):
        Range(spec)
    return Requirement(name, spec, source)


def validate_dependencies(deps: Mapping[str, str]) -> None:
    """Check a ``requires``/``conflicts`` table (``{"ns/skill": "npm range"}``) entry by entry.

    Raises:
        InvalidName: naming the first bad entry.
    """
    for dep, spec in deps.items():
        try:
            parse_requirement(f"{dep}@{spec}" if spec else dep)
        except InvalidName as exc:
            raise InvalidName(f"`{dep}`: {exc.message}", hints=exc.hints) from exc


@dataclass(frozen=True)
class Candidate:
    """One published skill version, as the resolver sees it."""

    name: str
    version: str
    base_fingerprint: str
    requires: tuple[Requirement, ...] = ()
    conflicts: tuple[Requirement, ...] = ()
    yanked: bool = False
    yanked_reason: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class Index(Protocol):
    """Where candidates come from (the registry client, or a local directory of artifacts)."""

    def candidates(self, name: str) -> Sequence[Candidate]:
        """Every version of ``name``, any base, yanked included; empty if unknown."""

    def dist_tags(self, name: str) -> Mapping[str, str]:
        """Dist-tags of ``name`` (``latest`` → version)."""


@dataclass
class Resolution:
    """The chosen version per skill, plus warnings (e.g. a yanked version pinned exactly)."""

    chosen: dict[str, Candidate]
    warnings: list[str] = field(default_factory=list)


class _Provider(resolvelib.AbstractProvider):
    def __init__(self, index: Index, base: str, lowest: bool, conflict_names: set[str]) -> None:
        self.index, self.base, self.lowest, self.conflict_names = index, base, lowest, conflict_names
        self._tags: dict[str, Mapping[str, str]] = {}

    def tags(self, name: str) -> Mapping[str, str]:
        if name not in self._tags:
            self._tags[name] = self.index.dist_tags(name)
        return self._tags[name]

    def identify(self, requirement_or_candidate):
        return requirement_or_candidate.name

    def get_preference(self, identifier, resolutions, candidates, information, backtrack_causes):
        pinned = any(r.requirement.exact for r in information[identifier])
        return (not pinned, sum(1 for _ in candidates[identifier]))

    def find_matches(self, identifier, requirements, incompatibilities):
        reqs = list(requirements[identifier])
        bad = {c.version for c in incompatibilities[identifier]}
        tags = self.tags(identifier)
        found = [
            c
            for c in self.index.candidates(identifier)
            if c.base_fingerprint == self.base
            and c.version not in bad
            and all(r.allows(c, tags) for r in reqs)
        ]
        found.sort(key=lambda c: semver.Version.parse(c.version), reverse=not self.lowest)
        return found

    def is_satisfied_by(self, requirement, candidate):
        return candidate.base_fingerprint == self.base and requirement.allows(
            candidate, self.tags(candidate.name)
        )

    def get_dependencies(self, candidate):
        deps = [Requirement(r.name, r.spec, source=str(candidate)) for r in candidate.requires]
        deps += [
            Requirement(r.name, r.spec, source=str(candidate), exclude=True)
            for r in candidate.conflicts
            if r.name in self.conflict_names
        ]
        return deps


def resolve(
    requirements: Iterable[Requirement],
    index: Index,
    *,
    base_fingerprint: str,
    resolution: str = "highest",
) -> Resolution:
    """Pick one version per required skill, built for ``base_fingerprint``.

    Args:
        requirements: what the user asked for and what the lockfile pins.
        index: where versions come from.
        base_fingerprint: the model's base; other bases are never candidates.
        resolution: ``highest`` (default) or ``lowest`` (to test lower bounds, like uv).

    Returns:
        A :class:`Resolution`.

    Raises:
        ResolutionImpossible: with one sentence per conflicting constraint in ``causes``.
    """
    reqs = list(requirements)
    provider = _Provider(index, base_fingerprint, resolution == "lowest", {r.name for r in reqs})
    try:
        result = resolvelib.Resolver(provider, resolvelib.BaseReporter()).resolve(reqs, max_rounds=500)
    except resolvelib.ResolutionImpossible as exc:
        raise _explain(exc.causes, index, base_fingerprint) from None
    except resolvelib.ResolutionTooDeep:
        raise ResolutionImpossible("No solution found: the resolver gave up after 500 rounds.") from None
    chosen = dict(result.mapping)
    warnings = [
        f"{c} is yanked{': ' + c.yanked_reason if c.yanked_reason else ''}; installing it because it is pinned exactly."
        for c in chosen.values()
        if c.yanked
    ]
    return Resolution(chosen, warnings)


def _spec_text(name: str, spec: str) -> str:
    if not spec:
        return name
    return f"{name}{spec}" if spec[0] in "<>=~^" else f"{name}@{spec}"


def _phrase(parent: Candidate | None, req: Requirement) -> str:
    if req.exclude:
        return f"{parent or req.source} conflicts with {_spec_text(req.name, req.spec)}"
    if parent is not None:
        return f"{parent} requires {_spec_text(req.name, req.spec)}"
    if req.source == "the command line":
        return f"you asked for {_spec_text(req.name, req.spec)}"
    return f"{req.source} {req.name} {req.spec}".rstrip()


def _explain(causes, index: Index, base: str) -> ResolutionImpossible:
    reasons: list[str] = []
    for name in sorted({c.requirement.name for c in causes}):
        mine = sorted(
            (c for c in causes if c.requirement.name == name),
            key=lambda c: (c.parent is None, str(c.parent or c.requirement.source), c.requirement.spec),
        )
        said = list(dict.fromkeys(_phrase(c.parent, c.requirement) for c in mine))
        available = index.candidates(name)
        fitting = [c for c in available if c.base_fingerprint == base]
        if not available:
            reasons.append(f"no skill named {name} exists")
        elif not fitting:
            examples = ", ".join(
                f"{short(b)}… ({name} {', '.join(c.version for c in available if c.base_fingerprint == b)})"
                for b in sorted({c.base_fingerprint for c in available})[:3]
            )
            reasons.append(
                f"no version of {name} is built for base {short(base)}…; versions exist for bases {examples}"
            )
        else:
            versions = ", ".join(sorted((c.version for c in fitting), key=semver.Version.parse))
            reasons.append(f"because {' and '.join(said)}, no version of {name} fits (available: {versions})")
    return ResolutionImpossible(
        "No solution found when resolving skills: " + "; ".join(reasons) + ".", causes=reasons
    )
