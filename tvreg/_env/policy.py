"""An environment's install policy (``tvreg.toml`` ``[policy]``) and the install gate.

Why ``tvreg.toml`` beside ``tvreg.lock`` and not a table inside the lock: the policy is
*authored* (a team writes it, reviews it, keeps it in version control), the lock is
*generated* (every install rewrites it). uv draws the same line between ``pyproject.toml``
/ ``uv.toml`` and ``uv.lock``. A rule inside a generated file would be rewritten by the
very command it constrains; a separate file is never touched by tvreg::

    [policy]
    require-signature = true
    trusted-keys = ["nlp-safety", "sha256:…"]   # a team or user name, or a key id
    always = ["nlp/safety>=2"]                   # in every install of this model
    [policy.attested]
    "nlp/safety" = { refusal_rate = ">=0.8" }   # a trusted attestation on this G shows it

What it means, checked on the client, never taken from the registry's word:

- ``trusted-keys``: the keys this environment trusts. A ``sha256:`` id is literal (its PEM
  is fetched and must hash to the id, so nobody can pass another key off under it); a name
  is the team's (or user's) unrevoked keys as the registry lists them at install time.
  Without ``trusted-keys``, the user's trust list (``tvreg key trust``) is used. Revocation
  the registry reports only ever makes a verdict stricter.
- ``require-signature``: a version none of those keys signed, over exactly the bytes the
  registry announces, is not a candidate; the resolver says why in its chain of reasons.
  Without it, unsigned skills install with a note.
- ``always``: requirements added to every resolution; removing such a skill is refused.
- ``[policy.attested]``: per skill, metric constraints that a verified attestation must
  show; it counts only when a trusted key signed it, its subject is the artifact's digest
  and it was measured on this environment's G.

The resolver sees the policy through :meth:`PolicyCheck.admit`; the lock records the key
that verified each skill (``signed_by``) through :meth:`PolicyCheck.stamp`.

The gate (:class:`Gate`): ``install --gate module:fn --require metric>=x`` runs the user's
evaluation hook (the one ``tvreg sweep`` and ``tvreg eval`` use) on the *staged* model,
after its weights are written and before the swap; a miss raises :class:`GateFailed` and
the staged tree is removed, so the old model is left byte for byte.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._format.faults import crash_point
from .._names import Range, Requirement, parse_requirement
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import (
    GateFailed,
    InvalidName,
    NotFound,
    PolicyError,
    PolicyViolation,
    RegistryError,
    SignatureError,
)
from .evaluate import EvalHook, load_hook, run_hook

if TYPE_CHECKING:
    from .._registry.client import RegistryClient
    from .lockfile import LockedSkill

POLICY_FILE = "tvreg.toml"
_KEYS = ("require-signature", "trusted-keys", "always", "attested")
_OPS = (">=", "<=", "==", ">", "<")
_CONSTRAINT = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Constraint:
    """``metric op value``, e.g. ``refusal_rate >= 0.8``."""

    metric: str
    op: str
    value: float

    def holds(self, scores: Mapping[str, float]) -> bool:
        if self.metric not in scores:
            return False
        x = float(scores[self.metric])
        return {
            ">=": x >= self.value,
            "<=": x <= self.value,
            ">": x > self.value,
            "<": x < self.value,
            "==": x == self.value,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_constraint(text: str, *, metric: str | None = None, where: str = "`--require`") -> Constraint:
    """``metric>=0.8`` (``--require``), or ``>=0.8`` when ``metric`` is given ([policy.attested]).

    Raises:
        PolicyError: not ``METRIC OP NUMBER`` with OP one of ``>= <= > < ==``.
    """
    if not isinstance(text, str):
        raise PolicyError(
            f"{where} must be a string like \">=0.8\", not {type(text).__name__} {text!r:.40}.",
            hints=['write it quoted: `refusal_rate = ">=0.8"`'],
        )
    body = text
    if metric is None:
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(.*)$", text)
        metric, body = (match.group(1), match.group(2)) if match else ("", text)
    found = _CONSTRAINT.match(body)
    if not metric or not _METRIC.match(metric) or not found or not math.isfinite(float(found.group(2))):
        example = "refusal_rate>=0.8" if where == "`--require`" else '">=0.8"'
        raise PolicyError(
            f"{where}: `{text}` is not a metric constraint.",
            hints=[f"write it as {example} (operators: {' '.join(_OPS)})"],
        )
    return Constraint(metric, found.group(1), float(found.group(2)))


def _requirement(text: str) -> Requirement:
    """``nlp/safety>=2`` or ``nlp/safety@>=2`` (the issue's spelling and the CLI's)."""
    if "@" not in text:
        cut = next((i for i, ch in enumerate(text) if ch in "<>=~^ "), len(text))
        text = text[:cut] + ("@" + text[cut:].strip() if text[cut:].strip() else "")
    return parse_requirement(text, source="the policy requires")


@dataclass(frozen=True)
class Policy:
    """A parsed ``[policy]``; the defaults (no file) require nothing."""

    path: Path | None = None
    require_signature: bool = False
    trusted_keys: tuple[str, ...] = ()
    always: tuple[Requirement, ...] = ()
    attested: Mapping[str, tuple[Constraint, ...]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"`{self.path}`" if self.path else "the policy"


def _fail(path: Path, key: str, what: str, hint: str) -> PolicyError:
    return PolicyError(f"`{path}`: `{key}` {what}.", hints=[hint])


def _unknown(path: Path, key: str, known: Sequence[str], table: str) -> PolicyError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"the keys of `{table}` are: {', '.join(known)}"
    return PolicyError(f"`{path}`: unknown key `{table}.{key}`.", hints=[hint])


def parse_policy(text: str, *, path: Path) -> Policy:
    """Parse the text of a ``tvreg.toml``, strictly: every unknown key or bad value is an error.

    Raises:
        PolicyError: naming the file and the key, with a hint.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover (Python 3.10)
        import tomli as tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(
            f"`{path}` is not valid TOML ({exc}).", hints=["see the README section `Trust and policy`"]
        ) from exc
    for key in data:
        if key != "policy":
            raise _unknown(path, key, ["policy"], "tvreg.toml")
    table = data.get("policy", {})
    if not isinstance(table, dict):
        raise _fail(path, "policy", "must be a table", "write it as a `[policy]` table")
    for key in table:
        if key not in _KEYS:
            raise _unknown(path, key, _KEYS, "policy")
    require = table.get("require-signature", False)
    if not isinstance(require, bool):
        raise _fail(path, "policy.require-signature", f"must be true or false, not {require!r:.40}",
                    "write `require-signature = true`")  # fmt: skip
    keys = table.get("trusted-keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _fail(path, "policy.trusted-keys", "must be a list of strings",
                    'write `trusted-keys = ["nlp-safety", "sha256:…"]`')  # fmt: skip
    from .._format.signing import is_key_id

    for k in keys:
        if not (is_key_id(k) or _NAME.match(k)):
            raise _fail(path, "policy.trusted-keys", f"has `{k:.80}`, which is neither a key id nor a team or user name",
                        "a key id is `sha256:` and 64 hex digits (`tvreg key list`); a name is a team's or user's")  # fmt: skip
    always_raw = table.get("always", [])
    if not isinstance(always_raw, list) or not all(isinstance(a, str) for a in always_raw):
        raise _fail(path, "policy.always", "must be a list of requirements",
                    'write `always = ["nlp/safety>=2"]`')  # fmt: skip
    always: list[Requirement] = []
    for text_ in always_raw:
        try:
            req = _requirement(text_)
        except InvalidName as exc:
            raise _fail(path, "policy.always", f"has `{text_:.80}`, which is not a requirement ({exc.message})",
                        'write a registry skill and a range: `"nlp/safety>=2"`') from None  # fmt: skip
        if "/" not in req.name or req.tag:
            raise _fail(path, "policy.always", f"has `{text_:.80}`; it must name a registry skill in full and a range",
                        'write `"namespace/skill>=VERSION"`')  # fmt: skip
        always.append(req)
    attested_raw = table.get("attested", {})
    if not isinstance(attested_raw, dict):
        raise _fail(path, "policy.attested", "must be a table of skill → metric constraints",
                    'write `[policy.attested]` then `"nlp/safety" = { refusal_rate = ">=0.8" }`')  # fmt: skip
    attested: dict[str, tuple[Constraint, ...]] = {}
    for skill, metrics in attested_raw.items():
        try:
            parse_requirement(skill)
        except InvalidName:
            metrics = None
        if metrics is None or "/" not in skill or "@" in skill:
            raise _fail(path, f"policy.attested.{skill}", "is not a registry skill name",
                        'name the skill in full: `"nlp/safety" = { refusal_rate = ">=0.8" }`')  # fmt: skip
        if not isinstance(metrics, dict) or not metrics:
            raise _fail(path, f"policy.attested.\"{skill}\"", "must be a non-empty table of metric constraints",
                        'write `"nlp/safety" = { refusal_rate = ">=0.8" }`')  # fmt: skip
        attested[skill] = tuple(
            parse_constraint(v, metric=m, where=f"`{path}`: `policy.attested.\"{skill}\".{m}`")
            for m, v in metrics.items()
        )
    return Policy(path, require, tuple(keys), tuple(always), attested)


def load_policy(model_dir: str | os.PathLike[str]) -> Policy | None:
    """The policy in ``model_dir/tvreg.toml``; None when there is no such file.

    Raises:
        PolicyError: the file cannot be read or does not parse.
    """
    path = Path(model_dir) / POLICY_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read `{path}`: {exc}.", hints=["make it a UTF-8 TOML file"]) from exc
    return parse_policy(text, path=path)


@dataclass
class Verdict:
    """What the policy says about one skill version (``refused`` None: admitted)."""

    name: str
    version: str
    digest: str
    signed_by: str | None = None
    signer: str = ""
    refused: str | None = None
    note: str | None = None
    attested: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def _owner(key: Mapping[str, Any]) -> str:
    owner = key.get("owner") or {}
    return f"team {owner['team']}" if owner.get("team") else str(owner.get("user") or "")


class PolicyCheck:
    """A policy bound to one model environment (its name and G) and, when needed, a registry.

    Verdicts are cached per version and digest, so the resolver and the lock stamp ask the
    registry once per version.
    """

    def __init__(
        self, policy: Policy, *, model: str, general_fingerprint: str, token: str | None = None
    ) -> None:
        self.policy, self.model, self.general = policy, model, general_fingerprint
        self.token = token
        self._client: RegistryClient | None = None
        self._trusted: dict[str, Any] | None = None
        self._revoked: dict[str, str] = {}
        self._verdicts: dict[tuple[str, str, str], Verdict] = {}

    @property
    def needs_registry(self) -> bool:
        return self.policy.require_signature or bool(self.policy.attested)

    def attach(self, client) -> None:
        """Use ``client`` (the resolver's) for signature and key look-ups."""
        if self._client is None:
            self._client = client

    def detach(self) -> None:
        """Forget the attached client (it is about to close)."""
        self._client = None

    @contextmanager
    def _using(self, registry: str | None) -> Iterator[Any]:
        if self._client is not None:
            yield self._client
            return
        from .._registry.client import client_for

        with client_for(registry or None, self.token) as client:
            self._client = client
            try:
                yield client
            finally:
                self._client = None

    def _keys(self, client) -> tuple[list[Any], dict[str, Any]]:
        """(usable keys, revoked key id → key), resolved once."""
        from .._format.signing import is_key_id, load_public_key

        if self._trusted is None:
            trusted: dict[str, Any] = {}
            if not self.policy.trusted_keys:
                from .._registry.trust import trusted_keys

                trusted = {k.id: k.public for k in trusted_keys()}
            local = {}
            if any(is_key_id(s) for s in self.policy.trusted_keys):
                from .._registry.trust import trusted_keys

                local = {k.id: k.public for k in trusted_keys()}
            for spec in self.policy.trusted_keys:
                if is_key_id(spec):
                    try:
                        info = client.request("GET", f"/keys/{spec}", what=f"key `{spec}`").json()
                    except NotFound:
                        info = None
                    if info is None and spec not in local:
                        raise PolicyViolation(
                            f"{self.policy.where} trusts the key {spec}, which {client.url} does not know and "
                            "the local trust list does not hold.",
                            hints=["check the id (`tvreg key list`), or trust its file: `tvreg key trust PUBFILE`"],
                        )
                    public = local.get(spec) or load_public_key(str(info.get("public_key", "")))
                    if public.id != spec:
                        raise SignatureError(
                            f"the registry at {client.url} sent a key whose id is {public.id}, not {spec}.",
                            hints=["the registry or a proxy is tampering with keys: trust nothing from it"],
                        )
                    trusted[spec] = public
                    if info is not None and info.get("revoked_at"):
                        self._revoked[spec] = str(info.get("revoked_reason") or "revoked")
                    continue
                listed: list[dict] = []
                found = False
                for kind in ("team", "user"):
                    try:
                        listed += client.request(
                            "GET", "/keys", params={kind: spec}, what=f"{kind} `{spec}`"
                        ).json()["keys"]
                        found = True
                    except NotFound:
                        continue
                if not found:
                    raise PolicyViolation(
                        f"{self.policy.where} trusts `{spec}`, which is no team or user on {client.url}.",
                        hints=["fix `trusted-keys`, or name the key by its id (`sha256:…`)"],
                    )
                for entry in listed:
                    public = load_public_key(str(entry.get("public_key", "")))
                    if public.id != entry.get("key_id"):
                        raise SignatureError(
                            f"the registry at {client.url} sent a key whose id is {public.id}, not "
                            f"{entry.get('key_id')}.",
                            hints=["the registry or a proxy is tampering with keys: trust nothing from it"],
                        )
                    trusted[public.id] = public
                    if entry.get("revoked_at"):
                        self._revoked[public.id] = str(entry.get("revoked_reason") or "revoked")
            self._trusted = trusted
        usable = [k for i, k in self._trusted.items() if i not in self._revoked]
        revoked = {i: k for i, k in self._trusted.items() if i in self._revoked}
        return usable, revoked

    def admit(self, candidate) -> str | None:
        """The resolver's hook: None when ``candidate`` may be chosen, else why not (one clause)."""
        if candidate.digest is None:
            return None
        return self.judge(candidate.name, candidate.version, candidate.digest).refused

    def judge(self, name: str, version: str, digest: str, *, registry: str | None = None) -> Verdict:
        """Judge a registry version whose artifact is ``digest`` (the bytes the client will check)."""
        cache_key = (name, version, digest)
        if cache_key in self._verdicts:
            return self._verdicts[cache_key]
        from ..errors import RegistryUnavailable

        try:
            with self._using(registry) as client:
                verdict = self._judge(client, name, version, digest)
        except RegistryUnavailable as exc:
            if self.needs_registry:
                raise
            # Only notes depend on it: an unreachable registry (or --offline) must not block the install.
            verdict = Verdict(name, version, digest, note=f"{name} {version}: signature not checked ({exc.message})")
        self._verdicts[cache_key] = verdict
        return verdict

    def _judge(self, client, name: str, version: str, digest: str) -> Verdict:
        from .._format.signing import artifact_digests, read_bundle, verify_bundle

        usable, revoked = self._keys(client)
        verdict = Verdict(name, version, digest)
        seg = f"/skills/{name}/versions/{version}"
        try:
            sigs = client.request("GET", f"{seg}/signatures", what=f"`{name}@{version}`").json()["signatures"]
        except (RegistryError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"cannot list the signatures of `{name}@{version}`: {exc}.") from exc
        reasons: list[str] = []
        for entry in sigs:
            key = entry.get("key") or {}
            if key.get("revoked_at") and key.get("key_id") and key["key_id"] not in self._revoked:
                self._revoked[key["key_id"]] = str(key.get("revoked_reason") or "revoked")
                usable = [k for k in usable if k.id != key["key_id"]]
                revoked = {**revoked, **{k.id: k for k in (self._trusted or {}).values() if k.id == key["key_id"]}}
            data = str(entry.get("bundle", "")).encode("utf-8")
            try:
                statement, _, _ = read_bundle(data)
            except SignatureError:
                reasons.append("malformed")
                continue
            if digest not in artifact_digests(statement):
                reasons.append("cover")
                continue
            try:
                verdict.signed_by = verify_bundle(data, usable).key_id
                verdict.signer = _owner(key)
                break
            except SignatureError:
                pass
            try:
                verify_bundle(data, list(revoked.values()))
                reasons.append("revoked")
            except SignatureError:
                reasons.append("untrusted")
        if verdict.signed_by is None:
            if "revoked" in reasons:
                why = f"{name} {version} is signed by a key that was revoked"
            elif "untrusted" in reasons:
                why = f"{name} {version} is signed by a key {self.model} does not trust"
            elif "cover" in reasons:
                why = f"{name} {version}'s signature does not cover the artifact the registry serves ({digest[:19]}…)"
            elif reasons:
                why = f"{name} {version}'s signature is malformed"
            else:
                why = f"{name} {version} is not signed"
            if self.policy.require_signature:
                verdict.refused = why
            else:
                verdict.note = why + "; installing it because the policy does not require signatures"
        constraints = self.policy.attested.get(name)
        if constraints and verdict.refused is None:
            self._judge_attested(client, verdict, constraints, usable)
        return verdict

    def _judge_attested(self, client, verdict: Verdict, constraints, usable) -> None:
        from .._format.signing import verify_bundle
        from .._registry.attest import attestation_applies

        name, version = verdict.name, verdict.version
        atts = client.request(
            "GET", f"/skills/{name}/versions/{version}/attestations", what=f"`{name}@{version}`"
        ).json()["attestations"]
        seen: list[str] = []
        for entry in atts:
            data = str(entry.get("bundle", "")).encode("utf-8")
            try:
                statement = verify_bundle(data, usable).statement
            except SignatureError:
                seen.append("not by a trusted key")
                continue
            why = attestation_applies(statement, digest=verdict.digest, general_fingerprint=self.general)
            if why is not None:
                seen.append(why)
                continue
            metrics = (statement.get("predicate") or {}).get("metrics") or {}
            scores = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            if all(c.holds(scores) for c in constraints):
                verdict.attested = scores
                return
            seen.append("it measured " + ", ".join(f"{c.metric}={scores.get(c.metric, 'none')}" for c in constraints))
        shown = " and ".join(str(c) for c in constraints)
        detail = f" ({'; '.join(dict.fromkeys(seen))})" if seen else " (it has no attestations)"
        verdict.refused = (
            f"{name} {version} has no attestation by a key {self.model} trusts, on this G, showing {shown}{detail}"
        )

    def judge_file(self, name: str, version: str, digest: str) -> Verdict:
        """A skill installed from a file: no registry signature to check."""
        verdict = Verdict(name, version, digest)
        if self.policy.require_signature or name in self.policy.attested:
            verdict.refused = (
                f"`{name}` {version} is installed from a file, which carries no signature or attestation "
                f"{self.model}'s policy can check"
            )
        else:
            verdict.note = f"`{name}` {version} is installed from a file, unsigned"
        return verdict

    def verdicts(self, skills: Sequence[Any]) -> list[Verdict]:
        """Judge locked skills (:class:`~tvreg._env.lockfile.LockedSkill`) by their pinned digests."""
        out = []
        for s in skills:
            if s.from_registry:
                out.append(self.judge(s.id, s.version, s.digest, registry=s.registry))
            else:
                out.append(self.judge_file(s.name, s.version, s.digest))
        return out

    def missing_always(self, skills: Sequence[Any]) -> list[str]:
        """The ``always`` requirements the set ``skills`` does not satisfy, as sentences."""
        out = []
        for req in self.policy.always:
            have = next((s for s in skills if s.id == req.name), None)
            if have is None:
                out.append(f"{self.policy.where} requires {req.name}{' ' + req.spec if req.spec else ''} in every "
                           f"install, and {self.model} would not have it")  # fmt: skip
            elif req.spec and not Range(req.spec).satisfies(have.version, include_prerelease=True):
                out.append(f"{self.policy.where} requires {req.name} {req.spec}, and {self.model} would have "
                           f"{have.version}")  # fmt: skip
        return out

    def stamp(self, skills: Sequence[Any], progress: Progress = NULL_PROGRESS) -> tuple[Any, ...]:
        """The locked skills with ``signed_by`` set; refuses a set the policy does not allow.

        Raises:
            PolicyViolation: a skill the policy refuses (named, with why), or a missing ``always`` skill.
        """
        verdicts = self.verdicts(skills)
        refused = [v.refused for v in verdicts if v.refused] + self.missing_always(skills)
        if refused:
            raise PolicyViolation(
                f"the policy of {self.model} refuses this install: " + "; ".join(refused) + ".",
                hints=[f"see `tvreg check --policy --into {self.model}`; the policy is {self.policy.where}"],
            )
        for v in verdicts:
            if v.note:
                progress.note(v.note + ".")
        return tuple(replace(s, signed_by=v.signed_by) for s, v in zip(skills, verdicts, strict=True))


def policy_check(
    model_dir: Path, lock, *, token: str | None = None
) -> PolicyCheck | None:
    """The :class:`PolicyCheck` of ``model_dir`` (None when it has no ``tvreg.toml``)."""
    policy = load_policy(model_dir)
    if policy is None:
        return None
    return PolicyCheck(policy, model=Path(model_dir).name, general_fingerprint=lock.general_fingerprint, token=token)


@dataclass(frozen=True)
class PolicyRow:
    """One skill in ``tvreg check --policy``: its verdict and whether it is installed or planned."""

    verdict: Verdict
    planned: bool = False


@dataclass(frozen=True)
class PolicyReport:
    """``tvreg check --policy``: each skill's verdict, and the problems (empty: the policy is met)."""

    model_dir: Path
    policy: Policy
    rows: tuple[PolicyRow, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_policy(
    skills: Sequence[str] = (),
    *,
    into: str | os.PathLike[str],
    registry: str | None = None,
    token: str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> PolicyReport:
    """Judge the installed skills, plus ``skills`` resolved as ``tvreg install`` would, against the policy.

    Nothing is downloaded or written.

    Raises:
        PolicyError: there is no ``tvreg.toml`` beside the lock, or it does not parse.
    """
    from .._registry.fetch import resolve_install
    from ..errors import ResolutionImpossible
    from .environment import require_lock

    model_dir = Path(into).resolve()
    lock = require_lock(model_dir)
    guard = policy_check(model_dir, lock, token=token)
    if guard is None:
        raise PolicyError(
            f"`{model_dir}` has no policy (`{POLICY_FILE}` beside `tvreg.lock`).",
            hints=["write one: see the README section `Trust and policy`"],
        )
    problems: list[str] = []
    rows = [PolicyRow(v) for v in guard.verdicts(lock.skills)]
    final: list[LockedSkill | _Planned] = list(lock.skills)
    if skills:
        try:
            resolved = resolve_install(
                list(skills), lock=lock, into=model_dir, registry=registry, token=token, download=False,
                policy=guard, progress=progress,
            )  # fmt: skip
        except ResolutionImpossible as exc:
            problems.append(exc.message)
            resolved = []
        from .._format.artifact import Artifact, file_digest

        for r in resolved:
            if r.origin is not None and r.origin.registry is not None and r.digest:
                v = guard.judge(str(r.name), str(r.version), r.digest, registry=r.origin.registry)
                name, version = str(r.name), str(r.version)
            else:
                assert r.path is not None  # only a registry version (it has a digest) may lack its file
                with Artifact(r.path) as art:
                    name, version = art.manifest.name, art.manifest.version
                v = guard.judge_file(name, version, file_digest(r.path))
            rows.append(PolicyRow(v, planned=True))
            final = [s for s in final if s.id != name] + [_Planned(name, version)]
    problems += [r.verdict.refused for r in rows if r.verdict.refused]
    problems += guard.missing_always(final)
    return PolicyReport(model_dir, guard.policy, tuple(rows), tuple(dict.fromkeys(problems)))


@dataclass(frozen=True)
class _Planned:
    id: str
    version: str


_DONE = {"install": "installed", "upgrade": "upgraded", "sync": "synced"}


@dataclass(frozen=True)
class Gate:
    """``install --gate HOOK --require metric>=x``: the staged model must meet every requirement."""

    hook: EvalHook
    requires: tuple[Constraint, ...]

    def check(self, staged: Path, progress: Progress = NULL_PROGRESS, *, action: str = "install") -> dict[str, float]:
        """Evaluate the staged model; return its scores, or raise :class:`GateFailed`.

        ``action`` (install, upgrade, sync) only words the message.

        The hook must only read ``staged``: its non-weight files are hard links of the
        live model's.
        """
        crash_point("install:gate")
        scores = run_hook(self.hook, staged)
        failed = [c for c in self.requires if not c.holds(scores)]
        measured = ", ".join(f"{k}={v:g}" for k, v in sorted(scores.items()))
        if failed:
            missing = [c.metric for c in failed if c.metric not in scores]
            hints = [f"the hook returned no metric `{missing[0]}`"] if missing else []
            hints.append("the model is unchanged; fix the skill set or the weights, or relax `--require`")
            raise GateFailed(
                f"the gate `{self.hook.spec}` failed: " + ", ".join(f"`{c}`" for c in failed)
                + f" not met (measured {measured}); nothing was {_DONE.get(action, 'changed')}.",
                metrics=scores,
                failed=[str(c) for c in failed],
                hints=hints,
            )  # fmt: skip
        progress.note(f"gate `{self.hook.spec}` passed: {measured}.")
        return scores


def make_gate(spec: str, requires: Sequence[str]) -> Gate:
    """Load the hook ``spec`` and parse each ``--require`` (``metric>=x``).

    Raises:
        EvaluationError: the hook cannot be loaded.
        PolicyError: a requirement does not parse, or none was given.
    """
    if not requires:
        raise PolicyError(
            f"`--gate {spec}` needs at least one `--require METRIC>=X`.",
            hints=["e.g. `--require refusal_rate>=0.8` (repeatable)"],
        )
    constraints = tuple(parse_constraint(r) for r in requires)
    return Gate(load_hook(spec), constraints)


__all__ = [
    "POLICY_FILE",
    "Constraint",
    "Gate",
    "Policy",
    "PolicyCheck",
    "PolicyReport",
    "Verdict",
    "check_policy",
    "load_policy",
    "make_gate",
    "parse_constraint",
    "parse_policy",
    "policy_check",
]
