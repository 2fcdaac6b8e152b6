"""Install from Hugging Face Hub repos: ``hf://org/repo[@revision]`` becomes a skill in the local store.

Users' fine-tunes already live on the Hub, so tvreg reads them where they are instead of asking for a
re-upload. Every byte comes through ``huggingface_hub``'s own download code (its cache, its
``HF_HUB_OFFLINE``, its token handling); this module only decides what a repo holds and converts it:

* a ``.tvskill`` file: used as it is (its manifest's base fingerprint is checked like any skill's);
* a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``): τ = scaling · B @ A per
  target module, via :mod:`tvreg._build.adapter`;
* a full fine-tuned checkpoint (``config.json`` + ``*.safetensors``): τ = θ_ft − θ_pre.

Conversions need θ_pre. An adapter's ``base_model_name_or_path`` (or a card's ``base_model``) is only a
hint: the model it names is opened (a local directory or a cached Hub id) and used only if its
fingerprint is the one the model environment records; that check runs before any tensor of the repo is
downloaded. A converted artifact's bytes depend only on the repo's commit and θ_pre, so the lock pins its
digest and ``sync --locked`` on another machine downloads the same commit, converts again and verifies
that digest.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.progress import NULL_PROGRESS, Progress
from ..errors import (
    AuthError,
    CheckpointError,
    IncompatibleBase,
    ModelEnvironmentError,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    TvregError,
)

if TYPE_CHECKING:
    from .fetch import Resolved

HUB_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_ENDPOINT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tvreg_hub_endpoint", default=None)
_FIRST_READ = 64 * 1024  # one ranged GET holds most safetensors headers of adapters and small models


@dataclass(frozen=True)
class HubSnapshot:
    """One downloaded Hub revision: what it holds (``kind``) and where the HF cache put it."""

    repo: str
    revision: str | None
    sha: str
    endpoint: str
    kind: str  # "tvskill" | "adapter" | "checkpoint"
    path: Path
    base_hint: str | None = None
    files: tuple[str, ...] = ()  # the repo's files tvreg reads for ``kind`` (weights included)

    @property
    def origin(self) -> str:
        """``hf://org/repo@<commit sha>``: what the lock records."""
        return f"{HUB_SCHEME}{self.repo}@{self.sha}"


@dataclass(frozen=True)
class HubReport:
    """``tvreg check hf://…``: what the repo holds and whether it fits the model, nothing installed."""

    origin: str
    kind: str
    base_verified: str | None
    base_hint: str | None
    tensors: int
    compatible: bool
    reason: str | None = None


def is_hub_arg(arg: object) -> bool:
    """Whether an install argument names a Hub repo (``hf://org/repo[@revision]``)."""
    return isinstance(arg, str) and arg.startswith(HUB_SCHEME)


def parse_hub_arg(arg: str) -> tuple[str, str | None]:
    """``hf://org/repo@rev`` → (``org/repo``, ``rev`` or None); refuses a malformed repo id.

    Raises:
        InvalidName: the repo id is not ``org/repo`` of the Hub's characters.
    """
    from ..errors import InvalidName

    body = arg[len(HUB_SCHEME) :] if arg.startswith(HUB_SCHEME) else arg
    repo, at, revision = body.partition("@")
    if not _REPO.match(repo) or ".." in repo or (at and not revision):
        raise InvalidName(
            f"`{arg}` is not a Hub repo reference.",
            hints=["write it as `hf://org/repo` or `hf://org/repo@revision` (a branch, tag or commit sha)"],
        )
    return repo, revision or None


@contextlib.contextmanager
def using_endpoint(url: str | None) -> Iterator[None]:
    """Within the block, ``hf://`` arguments use the Hub at ``url`` (``--hub-endpoint``); None changes nothing.

    Why a scope and not a parameter: a Hub argument is met deep in the one install pipeline
    (resolution, ``sync``'s fetch of a locked commit); the scope reaches it there without
    every layer between the CLI and :func:`download` growing an ``endpoint`` argument.
    """
    if not url:
        yield
        return
    if not re.match(r"^https?://[^/\s]+", url):
        raise ModelEnvironmentError(
            f"`--hub-endpoint {url}` is not an http(s) URL.", hints=["e.g. `--hub-endpoint https://hf-mirror.example`"]
        )
    token = _ENDPOINT.set(url.rstrip("/"))
    try:
        yield
    finally:
        _ENDPOINT.reset(token)


def hub_endpoint(explicit: str | None = None) -> str:
    """The Hub to talk to: ``explicit``, else ``--hub-endpoint`` (:func:`using_endpoint`), else ``HF_ENDPOINT``,
    else ``hub_endpoint`` in config.toml, else huggingface.co."""
    if explicit:
        return explicit.rstrip("/")
    if _ENDPOINT.get():
        return str(_ENDPOINT.get())
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    from .config import load_config

    found = load_config().get("hub_endpoint")
    return str(found).rstrip("/") if isinstance(found, str) and found else DEFAULT_ENDPOINT


def _hf_cache() -> str | None:
    """The HF cache as the environment names it now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _offline(offline: bool) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _translated(arg: str, endpoint: str, *, offline: bool) -> Iterator[None]:
    """huggingface_hub's exceptions become tvreg errors here, once (one sentence, a hint, no traceback)."""
    import httpx
    from huggingface_hub import errors as hf

    transport: tuple[type[Exception], ...] = (OSError, ValueError, httpx.HTTPError)
    with contextlib.suppress(ImportError):  # huggingface_hub 2.x sends through its own `httpx2`
        import httpx2

        transport += (httpx2.HTTPError,)
    repo, revision = parse_hub_arg(arg)
    try:
        yield
    except hf.GatedRepoError as exc:
        raise AuthError(
            f"`{arg}` is a gated repo on {endpoint}, and this token has not been granted access.",
            status=_status(exc),
            hints=[f"accept its conditions on {endpoint}/{repo}, then log in (`hf auth login`) or set `HF_TOKEN`"],
        ) from exc
    except hf.RevisionNotFoundError as exc:
        raise NotFound(
            f"`{repo}` on {endpoint} has no revision `{revision}`.",
            status=404,
            hints=["give a branch, a tag or a commit sha that exists (`hf://org/repo@main`)"],
        ) from exc
    except hf.RepositoryNotFoundError as exc:
        if _status(exc) == 401 and "Invalid" in str(exc):
            raise AuthError(
                f"{endpoint} refused the token sent for `{repo}` (401).",
                status=401,
                hints=["log in again (`hf auth login`) or set a valid `HF_TOKEN`"],
            ) from exc
        raise NotFound(
            f"no Hub repo `{repo}` on {endpoint}.",
            status=404,
            hints=["check the name; a private repo needs a token (`hf auth login` or `HF_TOKEN`)"],
        ) from exc
    except (hf.EntryNotFoundError, hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled) as exc:
        if offline:
            raise ModelEnvironmentError(
                f"`--offline`: `{arg}` is not in the Hugging Face cache.",
                hints=["run once without `--offline` (and without `HF_HUB_OFFLINE=1`) to download it"],
            ) from exc
        raise RegistryUnavailable(
            f"could not download `{arg}` from {endpoint}.",
            hints=["check the network and `HF_ENDPOINT`; retry"],
        ) from exc
    except hf.HfHubHTTPError as exc:
        status = _status(exc)
        if status == 401:
            raise AuthError(
                f"{endpoint} refused the token sent for `{repo}` (401).",
                status=401,
                hints=["log in again (`hf auth login`) or set a valid `HF_TOKEN`"],
            ) from exc
        if status == 403:
            raise AuthError(
                f"{endpoint} refused access to `{repo}` ({status}).",
                status=status,
                hints=["log in (`hf auth login`) or set `HF_TOKEN` to a token that can read it"],
            ) from exc
        raise RegistryError(
            f"{endpoint} answered {status} for `{arg}`.", status=status, hints=["retry later"]
        ) from exc
    except transport as exc:
        if isinstance(exc, TvregError):
            raise
        raise RegistryUnavailable(
            f"could not reach {endpoint} for `{arg}` ({type(exc).__name__}).",
            hints=["check the network and `HF_ENDPOINT`; `--offline` uses the Hugging Face cache only"],
        ) from exc


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _classify(arg: str, files: Sequence[str]) -> tuple[str, list[str]]:
    """What a repo holds, and the files to download for it (never a pickle)."""
    skills = sorted(f for f in files if f.endswith(".tvskill") and "/" not in f)
    if len(skills) == 1:
        return "tvskill", skills
    if len(skills) > 1:
        raise CheckpointError(
            f"`{arg}` holds {len(skills)} `.tvskill` files ({', '.join(skills)}); tvreg installs one per repo.",
            hints=["publish each skill in its own repo, or pick a revision that holds one"],
        )
    if all(f in files for f in _ADAPTER_FILES):
        return "adapter", list(_ADAPTER_FILES)
    weights = sorted(f for f in files if f.endswith(".safetensors") and "/" not in f)
    if "config.json" in files and weights:
        extra = ["model.safetensors.index.json"] if "model.safetensors.index.json" in files else []
        return "checkpoint", ["config.json", *extra, *weights]
    pickles = [f for f in files if f.endswith(_PICKLES)]
    hint = (
        "its weights are pickles, which tvreg never loads: re-save them with safetensors"
        if pickles
        else "a repo must hold a `.tvskill`, a PEFT LoRA adapter (adapter_config.json + "
        "adapter_model.safetensors) or a fine-tuned model (config.json + *.safetensors)"
    )
    raise CheckpointError(f"`{arg}` holds neither a skill, a LoRA adapter nor a safetensors checkpoint.", hints=[hint])


def _locate(
    arg: str, *, endpoint: str, token: str | bool | None, offline: bool
) -> tuple[str, str | None, str, list[str], Path | None]:
    """(repo, revision, commit sha, file names, cached snapshot when offline) without downloading files."""
    repo, revision = parse_hub_arg(arg)
    if offline:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(
                repo, revision=revision, endpoint=endpoint, token=token, local_files_only=True, cache_dir=_hf_cache()
            )
        )
        files = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        return repo, revision, path.name, files, path
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision)
    files = [s.rfilename for s in info.siblings or []]
    return repo, revision, str(info.sha), files, None


def download(
    arg: str,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool = False,
    tensors: bool = True,
    progress: Progress = NULL_PROGRESS,
) -> HubSnapshot:
    """Download what tvreg needs of a Hub revision into the HF cache (pinned to its commit sha).

    ``tensors=False`` fetches only the small files (configs, card), so the base can be checked
    before any weights are downloaded.

    Raises:
        NotFound: no such repo or revision. AuthError: gated, private without a token, or a bad token.
        CheckpointError: the repo holds no skill, adapter or safetensors checkpoint.
        ModelEnvironmentError: offline and not cached. RegistryUnavailable: the Hub cannot be reached.
    """
    endpoint = hub_endpoint(endpoint)
    offline = _offline(offline)
    with _translated(arg, endpoint, offline=offline):
        repo, revision, sha, files, cached = _locate(arg, endpoint=endpoint, token=token, offline=offline)
        kind, wanted = _classify(arg, files)
        from huggingface_hub import snapshot_download

        patterns = [*wanted, "README.md"]
        if not tensors:
            patterns = [p for p in patterns if not p.endswith((".safetensors", ".tvskill"))]
        else:
            progress.note(f"downloading {kind} `{HUB_SCHEME}{repo}@{sha[:12]}` from {endpoint}")
        # By the revision asked for (not the sha just seen), so the HF cache records the ref too
        # and `--offline` finds `@main` later; the snapshot directory's name is the commit fetched.
        path = cached or Path(
            snapshot_download(
                repo, revision=revision, endpoint=endpoint, token=token, allow_patterns=patterns,
                local_files_only=offline, cache_dir=_hf_cache(),
            )
        )  # fmt: skip
        sha = path.name
    return HubSnapshot(repo, revision, sha, endpoint, kind, path, _base_hint(path, kind), tuple(wanted))


def download_adapter(arg: str, *, progress: Progress = NULL_PROGRESS) -> tuple[Path, str]:
    """``tvreg build --adapter hf://org/repo``: the adapter's snapshot directory and ``hf://org/repo@sha``.

    Raises:
        CheckpointError: the repo holds something other than a PEFT LoRA adapter.
    """
    snap = download(arg, progress=progress)
    if snap.kind != "adapter":
        raise CheckpointError(
            f"`{snap.origin}` holds a {snap.kind}, not a PEFT LoRA adapter.",
            hints=[f"install it directly: `tvreg install {arg} --into MODEL`"],
        )
    return snap.path, snap.origin


def _base_hint(path: Path, kind: str) -> str | None:
    """The base the repo says it was trained on: adapter_config.json, else the card's ``base_model``."""
    import json

    if kind == "adapter":
        try:
            found = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = {}
        hint = found.get("base_model_name_or_path") if isinstance(found, dict) else None
        if isinstance(hint, str) and hint:
            return hint
    card = path / "README.md"
    if card.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            m = re.search(r"^base_model:\s*['\"]?([^'\"\s]+)", card.read_text(encoding="utf-8"), re.M)
            if m:
                return m.group(1)
    return None


def find_base(base_fingerprint: str, candidates: Sequence[str | os.PathLike[str] | None], *, origin: str) -> str:
    """The first candidate θ_pre whose fingerprint is ``base_fingerprint`` (a directory or cached Hub id).

    Raises:
        IncompatibleBase: none is at hand or none matches (each candidate tried is named with its fingerprint).
    """
    from .._format.fingerprint import fingerprint, short

    tried: list[str] = []
    for cand in dict.fromkeys(str(c) for c in candidates if c):
        try:
            found = fingerprint(cand)
        except CheckpointError:
            tried.append(f"`{cand}` (not found here)")
            continue
        if found == base_fingerprint:
            return cand
        tried.append(f"`{cand}` (base {short(found)})")
    what = "; tried " + ", ".join(tried) if tried else ""
    raise IncompatibleBase(
        f"converting `{origin}` needs the pretrained model with fingerprint {short(base_fingerprint)}, "
        f"which is not at hand{what}.",
        expected=base_fingerprint,
        found=", ".join(tried) or "nothing",
        hints=["pass θ_pre with `--base PRE` (a model directory or cached Hub id)"],
    )


def _skill_name(repo: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", repo.rsplit("/", 1)[-1].lower()).strip("-")
    return name[:60] or "hub-skill"


def converted_path(snap: HubSnapshot, base_fingerprint: str) -> Path:
    """Where the skill converted from ``snap`` for θ_pre ``base_fingerprint`` is kept (tvreg's cache)."""
    from .._util.paths import cache_dir

    return cache_dir() / "hub" / f"{snap.sha}-{base_fingerprint[:16]}" / f"{_skill_name(snap.repo)}.tvskill"


def to_skill(
    snap: HubSnapshot, *, base_fingerprint: str, base: Sequence[str | os.PathLike[str] | None] = (),
    progress: Progress = NULL_PROGRESS,
) -> Path:  # fmt: skip
    """The ``.tvskill`` of a downloaded revision: the repo's own, or one converted (deterministically).

    Raises:
        IncompatibleBase: no θ_pre with ``base_fingerprint`` is at hand, or a ``.tvskill`` is for another base.
        TensorMismatch: the adapter or checkpoint changes tensors θ_pre does not have, or other shapes.
        CheckpointError: not a LoRA adapter tvreg can read (DoRA, pickles, …).
    """
    if snap.kind == "tvskill":
        return next(snap.path.glob("*.tvskill"))
    out = converted_path(snap, base_fingerprint)
    if out.is_file():
        return out
    pre = find_base(base_fingerprint, [*base, snap.base_hint], origin=snap.origin)
    from .._build.build import build_skill

    out.parent.mkdir(parents=True, exist_ok=True)
    args: dict[str, Any] = {"adapter": snap.path} if snap.kind == "adapter" else {"finetuned": snap.path}
    with _other_base_hint(snap):
        build_skill(
            pre, output=out, name=_skill_name(snap.repo), version=f"0.0.0+hf.{snap.sha[:12]}",
            description=f"Converted from {snap.origin}.", source_label=snap.origin, progress=progress, **args,
        )  # fmt: skip
    return out


@contextlib.contextmanager
def _other_base_hint(snap: HubSnapshot) -> Iterator[None]:
    """A TensorMismatch converting ``snap`` gets the hint that the repo was trained elsewhere (real and dry runs)."""
    from ..errors import TensorMismatch

    try:
        yield
    except TensorMismatch as exc:
        exc.hints.append(f"`{snap.origin}` was not trained on this model's base (its own hint: {snap.base_hint})")
        raise


def fetch(
    arg: str,
    *,
    base_fingerprint: str,
    base: Sequence[str | os.PathLike[str] | None] = (),
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> tuple[Path, HubSnapshot]:
    """Download ``hf://org/repo[@rev]`` and return its skill file (converted when needed) and the snapshot.

    θ_pre is found and its fingerprint checked between the two downloads: the small files
    (which name the base) first, the tensors only once the base is known to be at hand.
    """
    from dataclasses import replace

    first = download(arg, endpoint=endpoint, token=token, offline=offline, tensors=False, progress=progress)
    pre: str | None = None
    if first.kind != "tvskill":
        done = converted_path(first, base_fingerprint)
        if done.is_file():
            return done, first
        pre = find_base(base_fingerprint, [*base, first.base_hint], origin=first.origin)
    pinned = f"{HUB_SCHEME}{first.repo}@{first.sha}"
    snap = download(pinned, endpoint=first.endpoint, token=token, offline=offline, progress=progress)
    snap = replace(snap, revision=first.revision, base_hint=first.base_hint)
    return to_skill(snap, base_fingerprint=base_fingerprint, base=[pre], progress=progress), snap


def fetch_for_lock(arg: str, lock, *, base=None, offline: bool = False, progress: Progress = NULL_PROGRESS):
    """The install hook: ``(path, Origin)`` of a Hub argument, the origin naming the resolved commit."""
    from .._env.lockfile import Origin

    bases = [base, (lock.method_params or {}).get("base_weights")]
    path, snap = fetch(arg, base_fingerprint=lock.base_fingerprint, base=bases, offline=offline, progress=progress)
    return path, Origin(snap.origin, snap.endpoint, arg)


def fetch_locked(
    skill, lock, *, base: str | os.PathLike[str] | None = None, offline: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> Path:  # fmt: skip
    """A locked Hub skill's artifact on this machine: the locked commit, converted, checked against the digest.

    ``--hub-endpoint`` or ``HF_ENDPOINT`` (a mirror) wins over the endpoint the lock records.
    ``base`` (``sync --base PRE``) is θ_pre on this machine, for a repo that names no base
    (or one not at hand here); its fingerprint must be the lock's.

    Raises:
        LockMismatch: the conversion gives other bytes than the lock pins (another tvreg or θ_pre).
    """
    from .._env.lockfile import require_locked_digest

    endpoint = _ENDPOINT.get() or os.environ.get("HF_ENDPOINT") or skill.registry or None
    bases = [base, (lock.method_params or {}).get("base_weights")]
    path, _ = fetch(
        skill.artifact, base_fingerprint=lock.base_fingerprint, base=bases, endpoint=endpoint, offline=offline,
        progress=progress,
    )  # fmt: skip
    return require_locked_digest(
        skill, path, what="the skill converted from the Hub",
        hint="the repo or the converter changed; reinstall it to lock its new bytes",
    )  # fmt: skip


def _remote_header(snap: HubSnapshot, filename: str, *, token: str | bool | None) -> tuple[dict, int]:
    """A remote safetensors file's header (JSON object) and the file's size, from ranged reads only.

    Why: ``install --dry-run hf://…`` must plan (sizes, the base, tensor names and shapes)
    without downloading weights. One ``Range`` GET of the first 64 KiB usually holds the
    whole header; a longer one (at most 100 MB, as for a local file) takes one more. A
    server that ignores ``Range`` is read only up to the header's end, then dropped.
    """
    import httpx
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    from .._format.safetensors_io import MAX_HEADER_BYTES

    url = hf_hub_url(snap.repo, filename, revision=snap.sha, endpoint=snap.endpoint)
    where = f"`{filename}` of `{snap.origin}`"

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where} is not a valid safetensors file: {what}.")

    def get(client: httpx.Client, start: int, length: int) -> tuple[bytes, int | None]:
        with client.stream("GET", url, headers={"Range": f"bytes={start}-{start + length - 1}"}) as r:
            if r.status_code >= 400:
                raise RegistryError(f"{snap.endpoint} answered {r.status_code} for {where}.", status=r.status_code)
            total = r.headers.get("Content-Range", "").rpartition("/")[2]
            size = int(total) if total.isdigit() else None
            if r.status_code != 206:  # the whole file comes: keep what was asked for, drop the rest
                size = int(r.headers["Content-Length"]) if r.headers.get("Content-Length", "").isdigit() else None
                start_skip, data = start, bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) >= start_skip + length:
                        break
                return bytes(data[start_skip : start_skip + length]), size
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) >= length:
                    break
            return bytes(data[:length]), size

    headers = build_hf_headers(token=token)
    try:
        with httpx.Client(headers=headers, follow_redirects=True, timeout=60) as client:
            first, size = get(client, 0, _FIRST_READ)
            if len(first) < 8:
                raise bad(f"it is {len(first)} bytes long, shorter than the 8-byte header length")
            n = int.from_bytes(first[:8], "little")
            if n > MAX_HEADER_BYTES:
                raise bad(f"the header claims {n} bytes, over the {MAX_HEADER_BYTES} byte limit")
            raw = first[8 : 8 + n] if len(first) >= 8 + n else get(client, 8, n)[0]
    except httpx.HTTPError as exc:
        raise RegistryUnavailable(
            f"could not read {where} from {snap.endpoint} ({type(exc).__name__}).",
            hints=["check the network and the Hub endpoint; retry"],
        ) from exc
    if len(raw) < n:
        raise bad(f"the header claims {n} bytes but only {len(raw)} came")
    from .._format._json import strict_json_loads

    try:
        header = strict_json_loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"its header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    return header, size if size is not None else 8 + n


def plan_only(
    arg: str, lock, *, base: str | os.PathLike[str] | None = None, token: str | bool | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Resolved:  # fmt: skip
    """``install --dry-run hf://…``: the skill's plan row, downloading only the repo's small files.

    Into the HF cache go the configs, ``adapter_config.json`` and the card; no weight file
    is downloaded and nothing is converted into tvreg's cache. What it verifies: θ_pre by
    fingerprint (as the real install does, before any tensor); a ``.tvskill``'s base from
    its manifest; a checkpoint's tensor names and shapes against θ_pre, from each weight
    file's header read by ``Range``; an adapter's config and factor shapes against θ_pre
    (:func:`tvreg._build.adapter.check_shapes`, from its header), with the conversion's words.

    Returns:
        A :class:`tvreg._registry.fetch.Resolved` with ``path=None`` and the download size.
    """
    from .._env.lockfile import Origin
    from .._format.fingerprint import short
    from .fetch import Resolved

    snap = download(arg, token=token, tensors=False, progress=progress)
    origin = Origin(snap.origin, snap.endpoint, arg)
    weights = [f for f in snap.files if f.endswith((".safetensors", ".tvskill"))]
    if snap.kind != "tvskill":
        done = converted_path(snap, lock.base_fingerprint)
        if done.is_file():
            return Resolved(done, origin)
    with _translated(arg, snap.endpoint, offline=False):
        headers = {f: _remote_header(snap, f, token=token) for f in weights}
    size = sum(total for _, total in headers.values())
    ident = f"{HUB_SCHEME}{snap.repo}"
    if snap.kind == "tvskill":
        from .._format.manifest import Manifest

        (name,) = weights
        meta = headers[name][0].get("__metadata__") or {}
        text = meta.get("tvreg.manifest") if isinstance(meta, dict) else None
        if not isinstance(text, str):
            raise CheckpointError(f"`{name}` of `{snap.origin}` is not a tvreg skill: its header has no manifest.")
        m = Manifest.from_json(text, where=f"{snap.origin}/{name}")
        if m.base_fingerprint != lock.base_fingerprint:
            raise IncompatibleBase(
                f"`{snap.origin}` was built for base {short(m.base_fingerprint)}, not {short(lock.base_fingerprint)}.",
                expected=lock.base_fingerprint, found=m.base_fingerprint,
                hints=["install a revision built for this model's base"],
            )  # fmt: skip
        return Resolved(
            None, origin, name=ident, version=m.version, size=size, dataset_size=m.dataset_size,
            dataset_unit=m.dataset_unit, cached=False,
        )  # fmt: skip
    pre = find_base(
        lock.base_fingerprint, [base, (lock.method_params or {}).get("base_weights"), snap.base_hint],
        origin=snap.origin,
    )  # fmt: skip
    if snap.kind == "checkpoint":
        _check_shapes(snap, pre, {f: h for f, (h, _) in headers.items()})
    elif snap.kind == "adapter":
        _check_adapter(snap, pre, headers[_ADAPTER_FILES[1]][0])
    return Resolved(None, origin, name=ident, version=f"0.0.0+hf.{snap.sha[:12]}", size=size, cached=False)


def _check_adapter(snap: HubSnapshot, pre: str, header: dict) -> None:
    """Refuse, from adapter_config.json and the weights' header, what the conversion refuses for its
    config or its shapes (NaN/Inf values need the tensor data: only the real install finds those).

    The errors name the weights file where the real install puts it (``snap.path``, the same
    HF cache snapshot), so a dry run and the install it previews print the same sentence.
    """
    from .._build.adapter import WEIGHTS_NAME, check_shapes, header_shapes, read_adapter
    from .._format.checkpoint import Checkpoint

    info = read_adapter(snap.path, weights_here=False)
    where = snap.path / WEIGHTS_NAME
    with Checkpoint.open(pre) as base, _other_base_hint(snap):
        check_shapes(info, header_shapes(header, where), {n: i.shape for n, i in base.infos().items()}, where=where)


def _check_shapes(snap: HubSnapshot, pre: str, headers: dict[str, dict]) -> None:
    """Every tensor of a remote checkpoint exists in θ_pre with the same shape (TensorMismatch names one that does not)."""
    from .._format.checkpoint import Checkpoint
    from ..errors import TensorMismatch

    with Checkpoint.open(pre) as base:
        known = set(base.names())
        for header in headers.values():
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                shape = tuple(entry.get("shape", ())) if isinstance(entry, dict) else None
                if name not in known:
                    raise TensorMismatch(
                        f"`{snap.origin}` has tensor `{name}`, which θ_pre `{pre}` does not have.",
                        tensor=name, hints=[f"`{snap.origin}` was not fine-tuned from this model's base"],
                    )  # fmt: skip
                if shape != tuple(base.info(name).shape):
                    raise TensorMismatch(
                        f"`{snap.origin}` has `{name}` of shape {list(shape or ())}, θ_pre has "
                        f"{list(base.info(name).shape)}.",
                        tensor=name, hints=[f"`{snap.origin}` was not fine-tuned from this model's base"],
                    )  # fmt: skip


def check(
    arg: str,
    *,
    into: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    offline: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> HubReport:
    """Whether ``hf://org/repo`` fits the model environment ``into``, converting in the cache only."""
    from .._env.environment import require_lock
    from .._format.artifact import Artifact
    from .._format.fingerprint import short
    from ..errors import TensorMismatch

    lock = require_lock(Path(into))
    snap = download(arg, offline=offline, tensors=False, progress=progress)
    bases = [base, (lock.method_params or {}).get("base_weights")]
    try:
        path, snap = fetch(arg, base_fingerprint=lock.base_fingerprint, base=bases, offline=offline, progress=progress)
        art = Artifact(path)
        try:
            m = art.manifest
            if m.base_fingerprint != lock.base_fingerprint:
                raise IncompatibleBase(
                    f"`{snap.origin}` was built for base {short(m.base_fingerprint)}, not {short(lock.base_fingerprint)}.",
                    expected=lock.base_fingerprint, found=m.base_fingerprint,
                )  # fmt: skip
            count = len(m.tensors)
        finally:
            art.close()
    except (IncompatibleBase, CheckpointError, TensorMismatch) as exc:
        return HubReport(snap.origin, snap.kind, None, snap.base_hint, 0, False, exc.message)
    return HubReport(snap.origin, snap.kind, lock.base_fingerprint, snap.base_hint, count, True)
