"""Fetch skills from the registry: resolve requirements, pick versions, download into the cache.

Why a separate step from install: install works on local artifacts and stays offline;
fetching only turns ``nlp/science`` (or ``nlp/science@^1.2``) into a verified file in
the download cache (:mod:`tvreg._registry.cache`). :func:`resolve_install` resolves requirements
with the installed set (:mod:`tvreg._registry.resolve`) against the registry, or against the
cache alone for ``--offline`` (:class:`CacheIndex`); :func:`fetch_locked` fetches what a
``tvreg.lock`` entry pins, by digest, refusing other bytes. Yanked versions are skipped
unless pinned exactly (PEP 592), with a warning that carries the yank reason.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._env.lockfile import LockedSkill, Origin, require_locked_digest
from .._format.fingerprint import short
from .._names import Requirement, Version, parse_requirement, version_key
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import (
    ConfigError,
    IncompatibleBase,
    LockMismatch,
    ModelEnvironmentError,
    NotFound,
    RegistryError,
    ResolutionImpossible,
)
from .cache import BlobCache, BlobSource
from .refs import SkillRef, parse_ref
from .resolve import Candidate, resolve

if TYPE_CHECKING:
    from .client import RegistryClient


def client_for(registry: str | None = None, token: str | None = None) -> RegistryClient:
    """:func:`tvreg._registry.client.client_for`, imported on first use: installing files needs no HTTP
    stack, and httpx with httpcore cost a process ~0.2 s to import."""
    from .client import client_for as make

    return make(registry, token)


@dataclass(frozen=True)
class FetchedSkill:
    """A skill version downloaded into the cache."""

    path: Path
    name: str
    version: str
    digest: str
    size: int
    registry: str
    yanked: bool = False
    yanked_reason: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class _RegistrySource(BlobSource):
    def __init__(self, client: RegistryClient, ref: SkillRef, version: str, digest: str) -> None:
        self.client, self.ref, self.version, self.digest = client, ref, version, digest
        self.label = f"{ref.name}@{version}"

    def open(self, start: int) -> AbstractContextManager[tuple[int, Iterator[bytes]]]:
        return self.client.open_artifact(self.ref, self.version, start=start, expected_digest=self.digest)

    @contextlib.contextmanager
    def open_range(self, start: int, end: int, *, first: bool = False) -> Iterator[Iterator[bytes]]:
        """Bytes ``[start, end)`` for a ranged download (tvreg._registry.ranged_fetch); ``first`` begins it."""
        with self.client.open_artifact(
            self.ref, self.version, start=start, end=end, expected_digest=self.digest,
            piece="first" if first else "more",
        ) as (_, chunks):
            yield chunks


def _semver(v: dict) -> Version:
    return version_key(v["version"])


def _fits(v: dict, base: str | None, general: str | None) -> bool:
    if base is None and general is None:
        return True
    if v.get("kind", "task_vector") == "delta_from_general":
        return general is not None and v.get("base_fingerprint") == general
    return v.get("base_fingerprint") == base


def select_version(
    ref: SkillRef,
    versions: Sequence[dict],
    *,
    base_fingerprint: str | None,
    general_fingerprint: str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> dict:
    """Choose the version object to install from a skill's published versions.

    Args:
        ref: the skill, with ``version`` set for an exact pin.
        versions: the registry's version objects of that skill.
        base_fingerprint: the model's θ_pre fingerprint (None: any base).
        general_fingerprint: the model's G fingerprint, for ``delta_from_general`` skills.

    Returns:
        One version object.

    Raises:
        NotFound: the skill has no versions, or not the pinned one.
        IncompatibleBase: no (non-yanked) version is built for this base.
    """
    if ref.version is not None:
        want = version_key(ref.version)
        match = [v for v in versions if _semver(v) == want]
        if not match:
            have = ", ".join(v["version"] for v in versions) or "none"
            raise NotFound(f"`{ref.name}` has no version {ref.version} (published: {have}).")
        chosen = match[0]
        if not _fits(chosen, base_fingerprint, general_fingerprint):
            want_fp = general_fingerprint if chosen.get("kind") == "delta_from_general" else base_fingerprint
            raise IncompatibleBase(
                f"`{ref}` was built for base {short(chosen['base_fingerprint'])}, but this model's base is "
                f"{short(want_fp or '')}.",
                expected=want_fp or "",
                found=chosen["base_fingerprint"],
                hints=[f"search for skills built for this model: `tvreg search {ref.skill} --into MODEL`"],
            )
        if chosen.get("yanked"):
            reason = chosen.get("yanked_reason")
            progress.warn(
                f"`{ref}` is yanked{f' ({reason})' if reason else ''}; installing it because it was pinned "
                "exactly."
            )
        return chosen
    if not versions:
        raise NotFound(f"`{ref.name}` has no published versions.")
    fitting = [v for v in versions if _fits(v, base_fingerprint, general_fingerprint)]
    usable = [v for v in fitting if not v.get("yanked")]
    if not usable:
        if fitting:
            listed = ", ".join(v["version"] for v in fitting)
            raise NotFound(
                f"every version of `{ref.name}` built for this model's base is yanked ({listed}).",
                hints=[f"pin one exactly to install it anyway: `{ref.name}@{fitting[-1]['version']}`"],
            )
        bases = sorted({v["base_fingerprint"] for v in versions})
        listed = "; ".join(
            f"{short(b)} ({', '.join(v['version'] for v in versions if v['base_fingerprint'] == b)})"
            for b in bases[:3]
        )
        raise IncompatibleBase(
            f"no version of `{ref.name}` is built for base {short(base_fingerprint or '')}; "
            f"versions exist for {listed}.",
            expected=base_fingerprint or "",
            found=bases[0],
            hints=["a task vector only applies to models fine-tuned from the base it was computed on"],
        )
    final = [v for v in usable if not _semver(v).prerelease] or usable
    return max(final, key=_semver)


def fetch(
    spec: str | SkillRef,
    *,
    base_fingerprint: str | None,
    general_fingerprint: str | None = None,
    registry: str | None = None,
    token: str | None = None,
    client: RegistryClient | None = None,
    cache: BlobCache | None = None,
    info: dict | None = None,
    progress: Progress = NULL_PROGRESS,
) -> FetchedSkill:
    """Choose a version of a registry skill and download it into the cache.

    Like :func:`fetch_skill`, but returns what was chosen as well as where it is.
    ``info`` is the skill's registry metadata when the caller already holds it.
    """
    ref = spec if isinstance(spec, SkillRef) else parse_ref(spec)
    cache = cache or BlobCache()
    own = client is None
    client = client or client_for(registry, token)
    try:
        info = info if info is not None else client.skill(ref)
        chosen = select_version(
            ref,
            info.get("versions", []),
            base_fingerprint=base_fingerprint,
            general_fingerprint=general_fingerprint,
            progress=progress,
        )
        version, digest, size = chosen["version"], chosen["digest"], int(chosen["size"])
        meta = {"name": ref.name, "version": version, "registry": client.url}
        path = cache.fetch(
            digest, size, _RegistrySource(client, ref, version, digest), meta=meta, progress=progress
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(
            f"the registry at {client.url} sent malformed metadata for `{ref}` ({type(exc).__name__}: {exc})."
        ) from exc
    finally:
        if own:
            client.close()
    return FetchedSkill(
        path,
        ref.name,
        version,
        digest,
        size,
        client.url,
        bool(chosen.get("yanked")),
        chosen.get("yanked_reason"),
    )


def fetch_skill(
    spec: str,
    *,
    base_fingerprint: str | None,
    general_fingerprint: str | None = None,
    registry: str | None = None,
    token: str | None = None,
    cache: BlobCache | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Path:
    """Download a registry skill into the cache and return the cached artifact's path.

    Args:
        spec: ``namespace/skill`` (highest non-yanked version for the base) or
            ``namespace/skill@1.2.0`` (exactly that version; a yanked one with a warning).
        base_fingerprint: the fingerprint of the model's θ_pre; versions built for other
            bases are never chosen. None accepts any base.
        general_fingerprint: the model's G, for ``delta_from_general`` skills.
        registry, token: override the configured registry and token.
        cache: the download cache (default: under ``tvreg._util.paths.cache_dir()``).

    Returns:
        The path of a verified artifact in the cache.

    Raises:
        InvalidName: ``spec`` is malformed or unsafe; checked before any request.
        NotFound / IncompatibleBase: no version fits.
        DownloadError: the bytes were short or did not match their digest (twice for a
            tampered cache entry).
        RegistryError: any other registry failure.

    Example:
        >>> fetch_skill("../etc/passwd", base_fingerprint=None)
        Traceback (most recent call last):
        tvreg.errors.InvalidName: invalid skill reference `../etc/passwd`: use `namespace/skill` or `namespace/skill@1.2.0`.
    """
    return fetch(
        spec,
        base_fingerprint=base_fingerprint,
        general_fingerprint=general_fingerprint,
        registry=registry,
        token=token,
        cache=cache,
        progress=progress,
    ).path


class RegistryIndex:
    """The resolver's view of a registry: every version of a skill as a :class:`Candidate`.

    A ``delta_from_general`` skill fits when it was built on the model's G; it is
    presented to the resolver as fitting the model's base, so one filter serves both kinds.
    """

    def __init__(
        self, client: RegistryClient, base_fingerprint: str, general_fingerprint: str | None
    ) -> None:
        self.client, self.base, self.general = client, base_fingerprint, general_fingerprint
        self._info: dict[str, dict] = {}

    def skill(self, name: str) -> dict:
        """The registry's metadata of ``name``, fetched once per install."""
        if name not in self._info:
            self._info[name] = self.client.skill(parse_ref(name, allow_version=False))
        return self._info[name]

    def candidates(self, name: str) -> list[Candidate]:
        out = []
        for v in self.skill(name).get("versions", []):
            manifest = v.get("manifest") or {}
            base = v["base_fingerprint"]
            if v.get("kind") == "delta_from_general" and self.general and base == self.general:
                base = self.base
            out.append(
                Candidate(
                    name,
                    v["version"],
                    base,
                    tuple(Requirement(n, r) for n, r in sorted((manifest.get("requires") or {}).items())),
                    tuple(Requirement(n, r) for n, r in sorted((manifest.get("conflicts") or {}).items())),
                    bool(v.get("yanked")),
                    v.get("yanked_reason"),
                    v.get("digest"),
                )
            )
        return out

    def dist_tags(self, name: str) -> dict[str, str]:
        return dict(self.skill(name).get("dist_tags") or {})


class CacheIndex:
    """The resolver's view of the download cache alone, for ``--offline``.

    Every cached artifact that records what it was fetched as (``ns/skill@version``) is a
    candidate; its base, ``requires`` and ``conflicts`` come from the artifact's own header.
    Dist-tags are unknown offline.
    """

    def __init__(self, cache: BlobCache) -> None:
        self.cache = cache
        self._by_name: dict[str, list[Candidate]] | None = None
        self.sizes: dict[str, int] = {}

    def _scan(self) -> dict[str, list[Candidate]]:
        if self._by_name is None:
            from .._format.artifact import Artifact
            from ..errors import TvregError

            self._by_name = {}
            for entry in self.cache.entries():
                if entry.label is None:
                    continue
                try:
                    with Artifact(entry.path) as art:
                        m = art.manifest
                except TvregError:
                    continue
                name = entry.label.rpartition("@")[0]
                self.sizes[entry.digest] = entry.size
                self._by_name.setdefault(name, []).append(
                    Candidate(
                        name,
                        m.version,
                        m.base_fingerprint,
                        tuple(Requirement(n, r) for n, r in sorted(m.requires.items())),
                        tuple(Requirement(n, r) for n, r in sorted(m.conflicts.items())),
                        digest=entry.digest,
                    )
                )
        return self._by_name

    def candidates(self, name: str) -> list[Candidate]:
        return list(self._scan().get(name, []))

    def dist_tags(self, name: str) -> dict[str, str]:
        return {}

    def cached(self) -> list[str]:
        return sorted(f"{c.name}@{c.version}" for cands in self._scan().values() for c in cands)


@dataclass(frozen=True)
class Resolved:
    """One skill an install will add: a local file, or a registry version (downloaded or not yet).

    ``path`` is None only for a registry version that is not in the cache and was not
    downloaded (``download=False``, for ``--dry-run``); ``origin`` is None for a local file.
    """

    path: Path | None
    origin: Origin | None
    name: str | None = None
    version: str | None = None
    digest: str | None = None
    size: int | None = None
    dataset_size: int | None = None
    dataset_unit: str = "examples"
    cached: bool = True
    yanked_reason: str | None = None


def is_file_arg(arg: str) -> bool:
    """Whether an install argument names a file: ``*.tvskill``, ``./``, ``../``, ``/``, ``~/`` or an existing file."""
    return (
        arg.endswith(".tvskill")
        or arg.startswith(("./", "../", "/", "~"))
        or os.path.isfile(arg)
        or (os.sep != "/" and os.sep in arg)
    )


def _file_origin(path: Path, cache: BlobCache) -> Origin | None:
    """A file inside the download cache is the registry version it was fetched as (``fetch_skill`` output)."""
    try:
        inside = path.resolve().is_relative_to(cache.root.resolve())
    except OSError:
        inside = False
    meta = _cached_meta(path) if inside else {}
    if meta.get("name") and meta.get("version") and meta.get("registry"):
        return Origin(f"{meta['name']}@{meta['version']}", meta["registry"], meta["name"])
    return None


def own_namespaces(client: RegistryClient) -> list[str]:
    """The logged-in user's own namespace, then their teams' (anonymous: none)."""
    from ..errors import AuthError

    try:
        me = client.whoami()
    except AuthError:
        return []
    names = [me.get("user")] + list(me.get("namespaces") or []) + [t.get("team") for t in me.get("teams") or []]
    return [n for n in dict.fromkeys(names) if isinstance(n, str) and n]


def configured_namespaces() -> list[str]:
    """``namespaces = [...]`` from ``config.toml`` (empty when unset)."""
    from .config import load_config

    found = load_config().get("namespaces", [])
    if not isinstance(found, list) or not all(isinstance(n, str) for n in found):
        raise ConfigError(
            "`namespaces` in the tvreg configuration must be a list of names.",
            hints=['write it as `namespaces = ["alice", "nlp"]`'],
        )
    return found


def qualify(
    name: str, client: RegistryClient, namespaces: Sequence[str] | None
) -> str:
    """``ns/name`` for a bare skill name, looked up in the ordered ``namespaces``.

    Raises:
        ResolutionImpossible: the name exists in two of them (both full names are listed).
        NotFound: in none of them; the message says where it exists, if anywhere.
    """
    from ..errors import InvalidName

    order = list(namespaces) if namespaces else (configured_namespaces() or own_namespaces(client))
    found: list[str] = []
    for ns in order:
        try:
            client.skill(SkillRef(ns, name, None))
        except NotFound:
            continue
        except InvalidName:
            continue
        found.append(f"{ns}/{name}")
    if len(found) > 1:
        raise ResolutionImpossible(
            f"`{name}` is ambiguous: it exists as {' and '.join(f'`{f}`' for f in found)}.",
            hints=[f"name the one you mean in full, e.g. `{found[0]}`"],
        )
    if found:
        return found[0]
    elsewhere: list[str] = []
    try:
        items = client.search(name, per_page=50).get("items", [])
        elsewhere = sorted(
            {full for full in map(_full_name, items) if full and full.rpartition("/")[2] == name}
        )
    except RegistryError:
        pass
    where = f" (searched: {', '.join(f'`{n}`' for n in order)})" if order else " (no namespaces to search)"
    close = [] if elsewhere else _close_names(name, client, order)
    if elsewhere:
        hints = [f"it exists as {', '.join(f'`{e}`' for e in elsewhere)}: name it in full"]
    elif close:
        hints = [f"did you mean {' or '.join(f'`{c}`' for c in close)}?"]
    else:
        hints = ["name the skill in full (`namespace/skill`), or give a file path (`./skill.tvskill`)"]
    if not order:
        hints.append('set `namespaces = [...]` in the tvreg configuration, pass `--namespace NS`, or log in')
    raise NotFound(f"no skill named `{name}` in your namespaces{where}.", hints=hints)


def _full_name(item: object) -> str | None:
    """``ns/skill`` of one search result (the registry sends the full name as ``name``)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    name = item["name"]
    if "/" not in name and isinstance(item.get("namespace"), str):
        name = f"{item['namespace']}/{name}"
    return name if "/" in name else None


def _close_names(name: str, client: RegistryClient, order: Sequence[str]) -> list[str]:
    """Up to three skills whose short name is close to ``name`` (a typo), own namespaces first."""
    import difflib

    seen: list[str] = []
    queries: list[dict] = [{"namespace": ns} for ns in order] + [{"query": name}, {"query": name[:3]}]
    for params in queries:
        try:
            items = client.search(per_page=100, **params).get("items", [])
        except RegistryError:
            continue
        for item in items:
            full = _full_name(item)
            if full and full not in seen:
                seen.append(full)
    near = set(difflib.get_close_matches(name.lower(), sorted({f.rpartition("/")[2] for f in seen}), n=3, cutoff=0.75))
    close = [full for full in seen if full.rpartition("/")[2] in near]
    mine = [full for full in close if full.partition("/")[0] in order]
    return (mine or close)[:3]


@dataclass(frozen=True)
class _Arg:
    text: str
    path: Path | None = None
    origin: Origin | None = None
    req: Requirement | None = None
    requested: str | None = None


def resolve_install(
    args: Sequence[str],
    *,
    into: str | os.PathLike[str] | None = None,
    lock=None,
    base: str | os.PathLike[str] | None = None,
    registry: str | None = None,
    token: str | None = None,
    resolution: str = "highest",
    upgrade: Sequence[str] | None = None,
    offline: bool = False,
    download: bool = True,
    namespaces: Sequence[str] | None = None,
    sources: Sequence[Origin | None] | None = None,
    policy=None,
    dry_run: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> list[Resolved]:
    """Resolve ``tvreg install``/``upgrade`` arguments to skills to add (once per command).

    An argument ending in ``.tvskill`` or starting with ``./``, ``../``, ``/`` or ``~`` is a
    file (missing: "no such file"); a file in the download cache is the registry version it
    was fetched as. ``ns/skill[@range|@version|@tag]`` is a requirement; a bare ``skill`` is
    looked up in ``namespaces`` (default: the configuration's, else the logged-in user's own
    and their teams'). All requirements, the model's locked registry skills (pinned) and every
    candidate's ``requires``/``conflicts`` are resolved together (:func:`tvreg._registry.resolve.resolve`)
    for the model's base. Yanked versions chosen (exact pins, or a locked version kept by an
    upgrade) are reported through ``progress.warn`` with their reason.

    Args:
        lock: the model's lock (in memory; an environment initialised on the fly has no file yet).
        upgrade: locked registry skills to re-resolve within their recorded requirement.
        download: False to resolve only: registry versions not cached come back with ``path=None``.
        sources: origins parallel to ``args`` (the library's ``install(paths, sources=...)``).
        policy: the environment's :class:`~tvreg._env.policy.PolicyCheck`: its ``always`` skills
            join the requirements and its verdicts filter the candidates.
        dry_run: a Hub argument (``hf://``) is planned from its small files and ranged reads
            of its weights' headers (``path=None``), never downloaded or converted.

    Raises:
        ResolutionImpossible: no set of versions satisfies every requirement, or a bare name is ambiguous.
        NotFound: a skill or a bare name exists nowhere it was looked for.
        ArtifactError: a file argument does not exist.
    """
    from ..errors import ArtifactError

    cache = BlobCache()
    if lock is None and into is not None:
        from .._env.environment import require_lock
        from .._env.lockfile import read_lock

        lock = read_lock(Path(into)) if Path(into).is_dir() else None
        if lock is None and base is None:
            lock = require_lock(Path(into))
    model = Path(into).name if into is not None else "the model"
    given = list(sources) if sources is not None else [None] * len(args)
    parsed: list[_Arg] = []
    planned: list[Resolved] = []  # Hub arguments of a dry run
    bare: list[int] = []
    for i, (arg, source) in enumerate(zip(args, given, strict=True)):
        arg = str(arg)
        if source is None and arg.startswith("hf://"):
            from .hub import fetch_for_lock, plan_only

            if dry_run and not offline and lock is not None:
                planned.append(plan_only(arg, lock, base=base, progress=progress))
                continue
            path, hub_origin = fetch_for_lock(arg, lock, base=base, offline=offline, progress=progress)
            parsed.append(_Arg(arg, path, hub_origin))
            continue
        if source is not None or is_file_arg(arg):
            path = Path(arg).expanduser()
            if not path.is_file():
                raise ArtifactError(
                    f"no such file: `{arg}`.",
                    hints=["check the path; a registry skill is named `namespace/skill` or `skill`"],
                )
            parsed.append(_Arg(arg, path, source or _file_origin(path, cache)))
            continue
        if "/" not in arg.partition("@")[0]:
            parse_requirement(arg)
            bare.append(i)
            parsed.append(_Arg(arg))
            continue
        parse_ref(arg.partition("@")[0], allow_version=False)
        parsed.append(_Arg(arg, req=parse_requirement(arg), requested=arg))
    upgrading: dict[str, LockedSkill] = {}
    for name in upgrade or ():
        locked = lock.skill(name) if lock is not None else None
        if locked is None or not locked.from_registry or locked.artifact.startswith("hf://"):
            continue
        upgrading[locked.id] = locked
        text = locked.requested or locked.id
        req = parse_requirement(text, source=f"{model} requires")
        # Upgrade never moves below the locked version: a yanked one stays allowed (PEP 592 keeps it valid).
        req = Requirement(req.name, req.spec, req.source, also=locked.version)
        parsed.append(_Arg(text, req=req, requested=locked.requested))
    if policy is not None:
        pinned_ids = {s.id for s in (lock.skills if lock is not None else ()) if s.from_registry}
        named = {a.req.name for a in parsed if a.req is not None}
        for req in policy.policy.always:
            if req.name not in pinned_ids and req.name not in named:
                text = f"{req.name}@{req.spec}" if req.spec else req.name
                parsed.append(_Arg(text, req=req, requested=text))
    if not any(a.req for a in parsed) and not bare:
        return [Resolved(a.path, a.origin) for a in parsed] + planned
    if lock is None:
        from .._format.fingerprint import fingerprint

        if base is None:
            raise ModelEnvironmentError(
                f"resolving `{next(a.text for a in parsed if a.path is None)}` needs the model it is for.",
                hints=["give `into` (a model environment), `lock` or `base`"],
            )
        base_fp, general_fp = fingerprint(base, progress=progress), None
    else:
        base_fp, general_fp = lock.base_fingerprint, lock.general_fingerprint
    out: list[Resolved] = []
    with contextlib.ExitStack() as stack:
        if offline:
            if bare:
                raise ModelEnvironmentError(
                    f"`--offline`: the bare name `{parsed[bare[0]].text}` cannot be looked up without the registry.",
                    hints=["name it in full (`namespace/skill`)"],
                )
            index: RegistryIndex | CacheIndex = CacheIndex(cache)
            client = None
            if policy is not None and policy.needs_registry:
                raise ModelEnvironmentError(
                    f"`--offline`: the policy of {model} needs the registry to verify signatures and attestations.",
                    hints=["run without `--offline`"],
                )
        else:
            try:
                client = stack.enter_context(client_for(registry, token))
            except ConfigError as exc:
                first = next(a.text for a in parsed if a.path is None)
                exc.hints.append(f"no file `{first}` exists either")
                raise
            index = RegistryIndex(client, base_fp, general_fp)
            if policy is not None:
                policy.attach(client)
                stack.callback(policy.detach)
            for i in bare:
                text = parsed[i].text
                name, at, spec = text.partition("@")
                full = qualify(name, client, namespaces) + at + spec
                parsed[i] = _Arg(text, req=parse_requirement(full), requested=full)
        requested = [a.req for a in parsed if a.req is not None]
        asked = {r.name for r in requested}
        pins = [
            Requirement(s.id, s.version, source=f"{model} pins")
            for s in (lock.skills if lock is not None else ())
            if s.from_registry and s.id not in asked and s.id not in upgrading and not s.id.startswith("hf://")
        ]
        if policy is not None:  # an `always` skill already pinned keeps its pin and must satisfy the policy too
            requested += [r for r in policy.policy.always if r.name not in asked and r.name in {p.name for p in pins}]
        try:
            result = resolve(
                requested + pins, index, base_fingerprint=base_fp, resolution=resolution,
                admit=policy.admit if policy is not None and client is not None else None,
            )  # fmt: skip
        except NotFound as exc:
            missing = [a.text for a in parsed if a.req is not None and f"`{a.req.name}`" in exc.message]
            if missing:
                exc.hints.append(f"no file `{missing[0]}` exists either")
            raise
        except ResolutionImpossible as exc:
            if offline:
                assert isinstance(index, CacheIndex)
                cached = ", ".join(index.cached()) or "nothing"
                exc.hints.append(f"`--offline` searched only the local cache, which holds: {cached}")
                exc.hints.append("run without `--offline` to ask the registry")
            raise
        chosen = result.chosen
        for name, cand in sorted(chosen.items()):
            if cand.yanked and name in upgrading and upgrading[name].version == cand.version:
                reason = f": {cand.yanked_reason}" if cand.yanked_reason else ""
                progress.warn(
                    f"the locked version `{name}@{cand.version}` is yanked{reason}; upgrade kept it, because "
                    f"no version allowed by `{upgrading[name].requested or name}` is higher."
                )
            elif cand.yanked:
                reason = f" ({cand.yanked_reason})" if cand.yanked_reason else ""
                progress.warn(f"`{name}@{cand.version}` is yanked{reason}; installing it because it was pinned exactly.")
        pinned = {p.name for p in pins}
        extra = [n for n in chosen if n not in asked and n not in pinned]
        order = list(parsed) + [_Arg(n, req=Requirement(n)) for n in extra]
        for a in order:
            if a.req is None:
                out.append(Resolved(a.path, a.origin))
                continue
            cand = chosen[a.req.name]
            ns, _, skill = a.req.name.partition("/")
            ref = SkillRef(ns, skill, cand.version)
            if client is None:
                path = cache.get(cand.digest or "", progress=progress)
                if path is None:
                    raise ModelEnvironmentError(
                        f"`--offline`: the artifact of `{ref}` ({cand.digest}) is not in the local cache.",
                        hints=["run without `--offline` to download it"],
                    )
                meta = _cached_meta(path)
                out.append(
                    _resolved_from(
                        path, Origin(str(ref), meta.get("registry"), a.requested), cand, path.stat().st_size
                    )
                )
                continue
            assert isinstance(index, RegistryIndex)  # a client, so the registry's index
            version = next(v for v in index.skill(a.req.name)["versions"] if v["version"] == cand.version)
            manifest = version.get("manifest") or {}
            hit = cache.path(version["digest"])
            r = Resolved(
                hit if hit.is_file() else None,
                Origin(str(ref), client.url, a.requested),
                a.req.name,
                cand.version,
                version["digest"],
                int(version["size"]),
                manifest.get("dataset_size"),
                manifest.get("dataset_unit", "examples"),
                cached=hit.is_file(),
                yanked_reason=cand.yanked_reason if cand.yanked else None,
            )
            out.append(download_resolved(r, client=client, progress=progress) if download else r)
    return out + planned


def download_resolved(
    r: Resolved, *, client: RegistryClient | None = None, token: str | None = None, progress: Progress = NULL_PROGRESS
) -> Resolved:
    """``r`` with its artifact in the verified cache (downloaded by digest unless already there)."""
    from dataclasses import replace

    if r.path is not None or r.origin is None or r.digest is None:
        return r
    cache = BlobCache()
    hit = cache.get(r.digest, progress=progress)
    if hit is not None:
        return replace(r, path=hit, cached=True)
    ref = parse_ref(r.origin.label)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(client_for(r.origin.registry or None, token))
        meta = {"name": ref.name, "version": ref.version, "registry": client.url}
        source = _RegistrySource(client, ref, str(ref.version), r.digest)
        path = cache.fetch(r.digest, int(r.size or 0), source, meta=meta, progress=progress)
    return replace(r, path=path, cached=True)


def _cached_meta(path: Path) -> dict:
    import json

    try:
        return json.loads(path.with_name(path.name + ".json").read_text())
    except (OSError, ValueError):
        return {}


def _resolved_from(path: Path, origin: Origin, cand: Candidate, size: int) -> Resolved:
    return Resolved(path, origin, cand.name, cand.version, cand.digest, size)


def fetch_for_install(
    args: Sequence[str],
    *,
    into: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    registry: str | None = None,
    token: str | None = None,
    resolution: str = "highest",
    offline: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> tuple[list[str], list[Origin | None]]:
    """Turn ``tvreg install`` arguments into local paths: files stay, registry names are resolved and fetched.

    See :func:`resolve_install`.

    Returns:
        ``(paths, sources)``, parallel lists for :func:`tvreg._env.operations.install`; a source
        is an :class:`~tvreg._env.lockfile.Origin` (label ``ns/skill@version``, the registry URL,
        the requirement asked for) for a fetched skill and None for a local file.
    """
    got = resolve_install(
        args,
        into=into,
        base=base,
        registry=registry,
        token=token,
        resolution=resolution,
        offline=offline,
        progress=progress,
    )
    return [str(r.path) for r in got], [r.origin for r in got]


def fetch_locked(
    skill: LockedSkill,
    *,
    offline: bool = False,
    cache: BlobCache | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Path:
    """The artifact a lock entry pins, by digest: from the local store, the cache, or its registry.

    A lock is trusted only with the bytes it names (like pip's ``--require-hashes``):
    an artifact that hashes to anything else is never used, and a registry that now
    serves other bytes for the locked version is refused, with no fallback.

    Raises:
        LockMismatch: the store, the cache or the registry has other bytes than the lock's digest.
        ModelEnvironmentError: the artifact is nowhere local and ``offline`` (or the skill
            was a local file).
    """
    from .._env.store import artifact_path

    stored = artifact_path(skill.digest)
    if stored.is_file():
        return require_locked_digest(
            skill,
            stored,
            what="the stored artifact",
            hint="delete the damaged file and run the command again to fetch it by digest",
        )
    cache = cache or BlobCache()
    hit = cache.get(skill.digest, progress=progress)
    if hit is not None:
        return hit
    if skill.registry is None:
        hint = f"install it again from its file: `tvreg install {skill.artifact} --into MODEL`"
        if os.path.isfile(skill.artifact):
            return require_locked_digest(
                skill,
                Path(skill.artifact),
                what="its file",
                hint="restore the file, or install it again to lock its new bytes",
            )
        raise ModelEnvironmentError(
            f"the artifact of `{skill.label}` ({skill.digest}) is not in the local store or cache, and it was "
            "installed from a file, not a registry.",
            hints=[hint],
        )
    if offline:
        raise ModelEnvironmentError(
            f"`--offline`: the artifact of `{skill.label}` ({skill.digest}) is not in the local store or cache.",
            hints=[f"run without `--offline` to download it from {skill.registry}"],
        )
    ref = parse_ref(skill.label)
    with client_for(skill.registry or None) as client:
        version = client.version(ref, skill.version)
        if version.get("digest") != skill.digest:
            raise LockMismatch(
                f"tvreg.lock pins `{skill.label}` to {skill.digest}, but {client.url} serves it as "
                f"{version.get('digest')}; refusing to install other bytes than the lock names.",
                expected=skill.digest,
                found=str(version.get("digest")),
                hints=[
                    "if the lock was edited, restore it; to accept the registry's bytes, run `tvreg lock`"
                ],
            )
        meta = {"name": ref.name, "version": skill.version, "registry": client.url}
        source = _RegistrySource(client, ref, skill.version, skill.digest)
        return cache.fetch(skill.digest, int(version["size"]), source, meta=meta, progress=progress)
