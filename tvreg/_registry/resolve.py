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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import resolvelib

from .._format.fingerprint import short
from .._names import Requirement, parse_requirement, version_key  # noqa: F401 (parse_requirement: re-exported)
from ..errors import ResolutionImpossible


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
    def __init__(
        self,
        index: Index,
        base: str,
        lowest: bool,
        conflict_names: set[str],
        admit: Callable[[Candidate], str | None] | None = None,
    ) -> None:
        self.index, self.base, self.lowest, self.conflict_names = index, base, lowest, conflict_names
        self._tags: dict[str, Mapping[str, str]] = {}
        self.admit = admit
        self.refused: dict[str, dict[str, str]] = {}

    def admitted(self, candidate: Candidate) -> bool:
        if self.admit is None:
            return True
        why = self.admit(candidate)
        if why is not None:
            self.refused.setdefault(candidate.name, {})[candidate.version] = why
        return why is None

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
        found = [c for c in found if self.admitted(c)]
        found.sort(key=lambda c: version_key(c.version), reverse=not self.lowest)
        return found

    def is_satisfied_by(self, requirement, candidate):
        return (
            candidate.base_fingerprint == self.base
            and requirement.allows(candidate, self.tags(candidate.name))
            and self.admitted(candidate)
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
    admit: Callable[[Candidate], str | None] | None = None,
) -> Resolution:
    """Pick one version per required skill, built for ``base_fingerprint``.

    Args:
        requirements: what the user asked for and what the lockfile pins.
        index: where versions come from.
        base_fingerprint: the model's base; other bases are never candidates.
        resolution: ``highest`` (default) or ``lowest`` (to test lower bounds, like uv).
        admit: the environment's policy (:meth:`tvreg._env.policy.PolicyCheck.admit`): None when a
            candidate may be chosen, else why not; a refused candidate is not a candidate, and
            the reason joins the chain of reasons of a failed resolution.

    Returns:
        A :class:`Resolution`.

    Raises:
        ResolutionImpossible: with one sentence per conflicting constraint in ``causes``.
    """
    reqs = list(requirements)
    provider = _Provider(index, base_fingerprint, resolution == "lowest", {r.name for r in reqs}, admit)
    try:
        result = resolvelib.Resolver(provider, resolvelib.BaseReporter()).resolve(reqs, max_rounds=500)
    except resolvelib.ResolutionImpossible as exc:
        raise _explain(exc.causes, index, base_fingerprint, provider.refused) from None
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


def _explain(
    causes, index: Index, base: str, refused: Mapping[str, Mapping[str, str]] | None = None
) -> ResolutionImpossible:
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
            versions = ", ".join(sorted((c.version for c in fitting), key=version_key))
            said += [why for _, why in sorted((refused or {}).get(name, {}).items(), key=lambda kv: version_key(kv[0]))]
            reasons.append(f"because {' and '.join(said)}, no version of {name} fits (available: {versions})")
    return ResolutionImpossible(
        "No solution found when resolving skills: " + "; ".join(reasons) + ".", causes=reasons
    )
