"""Publish a skill project to the registry: build if needed, verify, upload in chunks, PUT the version.

Why chunked and resumable: artifacts are hundreds of megabytes and connections drop.
The upload's id is kept in ``cache_dir()/uploads/<digest>.json``, so a publish that was
killed or lost its connection continues from the registry's offset the next time
(``GET /uploads/{id}``), and a 409 on a chunk (offsets disagree) is answered the same
way. Everything that can be checked locally is checked before the first byte goes out:
the project file, the artifact (every tensor decoded, no NaN/Inf), the login, and
whether the version already exists (same bytes: nothing to do; other bytes: refused,
versions are immutable). The interference sketch (:mod:`tvreg._format.sketch`) is computed in the
same pass that verifies every tensor, and attached to the version after it is published;
publishing a version again that the registry holds without a sketch uploads just the sketch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .._format.artifact import file_digest
from .._format.faults import crash_point
from .._format.fsutil import atomic_write_text
from .._format.sketch import Sketch, SketchBuilder, load_cached, store_cached
from .._names import validate_tag
from .._util.paths import cache_dir
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import AuthError, Conflict, NotFound, RegistryError, RegistryUnavailable
from .client import RegistryClient, client_for
from .project import load_project, prepare_artifact, read_card
from .refs import SkillRef

_RETRIES = 3
_STALL_ROUNDS = 3
"""Rounds in a row in which the registry's upload offset does not move before ``tvreg publish`` gives up."""
_MIN_CHUNK = 64 << 10


@dataclass(frozen=True)
class PublishResult:
    """What ``publish`` did.

    ``status`` is ``published`` (a new version), ``unchanged`` (the registry already had
    exactly these bytes) or ``dry-run`` (checked, nothing uploaded).
    """

    name: str
    version: str
    digest: str
    size: int
    registry: str
    artifact: Path
    built: bool
    status: str
    uploaded_bytes: int = 0
    tag: str | None = None
    sketch_bytes: int = 0
    sketch_status: str = "none"
    """``uploaded``, ``present`` (the registry had it), ``dry-run``, or ``failed: <why>``."""
    card_status: str = "none"
    """The README.md card: ``uploaded``, ``none`` (the project has none), or ``failed: <why>``."""
    signature_status: str = "none"
    """Like ``sketch_status``, for the signature bundle (``none`` when not signing)."""
    signed_by: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def _state_path(digest: str) -> Path:
    return cache_dir() / "uploads" / f"{digest.split(':', 1)[1]}.json"


def _resume_or_create(client: RegistryClient, digest: str, size: int) -> tuple[str, int, int]:
    """(upload id, offset, chunk size): the saved upload for this digest if the registry still has it."""
    state = _state_path(digest)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(state.read_text())
        if saved["registry"] == client.url:
            try:
                st = client.upload_status(saved["id"])
            except NotFound:
                st = None
            if st and st.get("digest") == digest and int(st.get("size", -1)) == size:
                offset = _checked_offset(client, saved["id"], client.int_field(st, "offset"), size)
                return saved["id"], offset, int(saved.get("chunk_size") or (8 << 20))
    up = client.create_upload(size, digest)
    if not isinstance(up, dict) or not isinstance(up.get("id"), str):
        raise RegistryError(f"the registry at {client.url} answered a new upload without an id.")
    declared = up.get("chunk_size")
    chunk = max(1, declared if type(declared) is int else (8 << 20))
    state.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state, json.dumps({"registry": client.url, "id": up["id"], "chunk_size": chunk}))
    offset = up.get("offset", 0)
    return up["id"], _checked_offset(client, up["id"], offset if type(offset) is int else -1, size), chunk


def _upload(
    client: RegistryClient,
    path: Path,
    digest: str,
    size: int,
    label: str,
    progress: Progress,
    max_chunk: int | None,
) -> str:
    upload_id, offset, chunk = _resume_or_create(client, digest, size)
    chunk = max(chunk, _MIN_CHUNK)  # a registry asking for 1-byte chunks would make a publish endless
    if max_chunk:
        chunk = min(chunk, max_chunk)
    progress.task(f"Uploading {label}", size)
    shown = 0
    failures = 0
    stalled = 0
    try:
        with open(path, "rb") as f:
            while offset < size:
                if offset > shown:
                    progress.advance(offset - shown)
                    shown = offset
                f.seek(offset)
                data = f.read(min(chunk, size - offset))
                before = offset
                try:
                    offset = _checked_offset(client, upload_id, client.upload_chunk(upload_id, offset, data), size)
                    failures = 0
                except (Conflict, RegistryUnavailable) as exc:
                    failures += 1
                    if failures > _RETRIES:
                        raise
                    if isinstance(exc, RegistryUnavailable):
                        time.sleep(min(exc.retry_after or float(failures), 10.0))
                    status = client.int_field(client.upload_status(upload_id), "offset")
                    offset = _checked_offset(client, upload_id, status, size)
                # A registry that never moves the offset forward would keep us sending the same chunk forever.
                stalled = 0 if offset > before else stalled + 1
                if stalled >= _STALL_ROUNDS:
                    raise RegistryError(
                        f"the registry at {client.url} did not advance upload `{upload_id}` past byte {offset} "
                        f"of {size} in {_STALL_ROUNDS} rounds; giving up.",
                        hints=["run `tvreg publish` again later: the upload resumes from the registry's offset"],
                    )
                crash_point("publish:chunk")
            if size > shown:
                progress.advance(size - shown)
    finally:
        progress.done()
    return upload_id


def _checked_offset(client: RegistryClient, upload_id: str, offset: int, size: int) -> int:
    if not 0 <= offset <= size:
        raise RegistryError(
            f"the registry at {client.url} reports offset {offset} for upload `{upload_id}` of {size} bytes."
        )
    return offset


def _upload_sketch(client: RegistryClient, ref: SkillRef, version: str, data: bytes) -> str:
    """Attach the sketch to the published version. A failure does not undo the publish:
    the version is out, and publishing again uploads only the missing sketch."""
    try:
        _version, created = client.put_sketch(ref, version, data)
    except RegistryError as exc:
        return f"failed: {exc.message}"
    return "uploaded" if created else "present"


def _with_card(client: RegistryClient, ref: SkillRef, card: str | None, res: PublishResult) -> PublishResult:
    """Set the project's README.md as the version's card (the registry keeps the newest, so a
    publish of unchanged bytes still updates it). Like the sketch, a failure does not undo the publish."""
    if card is None:
        return res
    try:
        client.put_card(ref, res.version, card)
    except RegistryError as exc:
        return dataclasses.replace(res, card_status=f"failed: {exc.message}")
    return dataclasses.replace(res, card_status="uploaded")


def _signature(client: RegistryClient, key: str | None, path: Path, who: dict | None, namespace: str):
    """(key id, bundle) signing ``path`` with ``key``, checked to be registered to the publisher."""
    if not key:
        return None
    from .._format.signing import public_key_of, sign_artifact
    from .trust import check_publish_key

    public = public_key_of(key)
    if who is not None:
        check_publish_key(client, public, who, namespace)
    return public.id, sign_artifact(path, key)


def _with_signature(
    client: RegistryClient, ref: SkillRef, signing, status: str, res: PublishResult
) -> PublishResult:
    """Attach the signature after the version is out; like the sketch, a failure does not undo it."""
    if signing is None:
        return res
    if status == "dry-run":
        return dataclasses.replace(res, signature_status="dry-run", signed_by=signing[0])
    from .trust import push_signature

    try:
        created = push_signature(client, ref, res.version, signing[1])
    except RegistryError as exc:
        return dataclasses.replace(res, signature_status=f"failed: {exc.message}", signed_by=signing[0])
    return dataclasses.replace(
        res, signature_status="uploaded" if created else "present", signed_by=signing[0]
    )


def publish(
    project_dir: str | os.PathLike[str],
    *,
    registry: str | None = None,
    token: str | None = None,
    tag: str | None = "latest",
    dry_run: bool = False,
    chunk_size: int | None = None,
    client: RegistryClient | None = None,
    progress: Progress = NULL_PROGRESS,
    sign: str | None = None,
) -> PublishResult:
    """Publish the skill project in ``project_dir`` (a directory with ``tvskill.toml``).

    Args:
        project_dir: the project; see :mod:`tvreg._registry.project` for ``tvskill.toml``.
        registry, token: override the configured registry and token.
        tag: the dist-tag to point at the new version (``latest`` by default, which the
            registry does not move for prereleases); None to set no tag.
        dry_run: do every check (build, verify, login, version collision) and upload nothing.
        chunk_size: at most this many bytes per ``PATCH`` (default: the registry's suggestion),
            e.g. behind a proxy that limits request bodies.
        sign: a private key (name or path) to sign the artifact with (default: ``[sign] key``
            of ``tvskill.toml``); the bundle is attached to the version (:mod:`tvreg._registry.trust`).

    Returns:
        A :class:`PublishResult`.

    Raises:
        ProjectError / InvalidName: ``tvskill.toml`` is wrong.
        ArtifactError: the artifact is corrupt or holds NaN/Inf.
        AuthError: not logged in, or no write role on the namespace.
        Conflict: the version exists with other bytes.
        RegistryError: any other registry failure.
    """
    if tag is not None:
        validate_tag(tag)  # before any byte is uploaded: a refused tag must not leave a half-published version
    project = load_project(project_dir)
    card = read_card(project)
    own = client is None
    client = client or client_for(registry, token)
    try:
        namespace = project.namespace
        who = None
        if client.token:
            who = client.whoami()
        elif not dry_run:
            raise AuthError(
                f"publishing to {client.url} needs a login.",
                hints=[f"log in: `tvreg login --registry {client.url}` (or set `TVREG_TOKEN`)"],
            )
        if namespace is None:
            if who is None:
                raise AuthError(
                    f"`{project.skill}` has no namespace, and without a login the default one (your user) is unknown.",
                    hints=['write `name = "namespace/skill"` in tvskill.toml, or log in'],
                )
            namespace = who["user"]
        if who is not None and "namespaces" in who and namespace not in who["namespaces"]:
            raise AuthError(
                f"{who.get('user', 'you')} cannot publish to namespace `{namespace}`; "
                f"yours: {', '.join(who['namespaces']) or 'none'}.",
                hints=["ask an admin of the namespace's team to add you with the `write` role"],
            )
        ref = SkillRef(namespace, project.skill, project.version)
        sketcher = SketchBuilder()
        known: dict[str, Sketch] = {}

        def trust(digest: str) -> bool:
            cached = load_cached(digest)
            if cached is not None:
                known[digest] = cached
            return cached is not None

        path, manifest, built = prepare_artifact(project, progress=progress, on_tensor=sketcher.add, trust=trust)
        digest, size = file_digest(path), path.stat().st_size
        sketch = known.get(digest) or sketcher.finish(
            skill=manifest.name,
            version=manifest.version,
            base_fingerprint=manifest.base_fingerprint,
            artifact_digest=digest,
        )
        store_cached(sketch)
        sketch_data = sketch.to_bytes()
        signing = _signature(client, sign or project.sign_key, path, who, namespace)

        def result(status: str, uploaded: int = 0, sketch_status: str = "dry-run") -> PublishResult:
            return _with_signature(
                client,
                ref,
                signing,
                status,
                PublishResult(
                    ref.name,
                    ref.version or "",
                    digest,
                    size,
                    client.url,
                    path,
                    built,
                    status,
                    uploaded,
                    tag,
                    len(sketch_data),
                    sketch_status,
                ),
            )

        try:
            existing = client.version(ref, project.version)
        except NotFound:
            existing = None
        if existing is not None:
            if existing.get("digest") != digest:
                raise Conflict(
                    f"`{ref}` is already published with other bytes ({existing.get('digest')}; yours are {digest}).",
                    hints=["published versions are immutable: bump `version` in tvskill.toml"],
                )
            if dry_run:
                return result("dry-run")
            if existing.get("sketch"):
                return _with_card(client, ref, card, result("unchanged", sketch_status="present"))
            return _with_card(
                client,
                ref,
                card,
                result("unchanged", sketch_status=_upload_sketch(client, ref, project.version, sketch_data)),
            )
        if dry_run:
            return result("dry-run")
        upload_id = _upload(client, path, digest, size, str(ref), progress, chunk_size)
        put_tag = tag if tag == "latest" else None
        _version, created = client.put_version(ref, project.version, upload_id, tag=put_tag)
        with contextlib.suppress(FileNotFoundError):
            _state_path(digest).unlink()
        if tag is not None and tag != "latest":
            client.set_tag(ref, tag, project.version)
        sketch_status = _upload_sketch(client, ref, project.version, sketch_data)
        return _with_card(client, ref, card, result("published" if created else "unchanged", size, sketch_status))
    finally:
        if own:
            client.close()
