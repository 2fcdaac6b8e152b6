"""The read side of the Hugging Face Hub API, so ``huggingface_hub`` downloads skills.

Why: the people who use task vectors move their models through the Hub every day with
``snapshot_download``, ``hf_hub_download`` and ``hf download``. Answering the few
endpoints those use lets them fetch a skill into the ordinary HF cache with
``endpoint=REGISTRY`` (or ``HF_ENDPOINT``), and lets ``tvreg install hf://...`` reuse
``huggingface_hub``'s own download code against this registry and huggingface.co alike.

The mapping:

* a skill ``ns/name`` is the model repo ``ns/name``;
* a revision is a version (``1.2.0``), a dist-tag (``beta``), ``main`` (the ``latest``
  dist-tag, the Hub's default revision) or a commit hash;
* the commit hash of a version is :func:`commit_hash`: 40 hex digits derived from the
  repo id, the version and its artifact digest, so it is stable across servers and
  replicas and names exactly one set of files;
* the files of every revision: ``README.md`` (a card with Hub YAML metadata),
  ``tvskill.toml`` (the skill project, ``artifact = ...``) and the artifact
  ``<name>-<version>.tvskill``, served like a Git LFS file (its ETag is the SHA-256 of
  its bytes, as the Hub does for LFS files, so the HF cache names the blob by it).

Endpoints (as the Hub spells them, for model repos only):

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``model_info``,
  ``repo_info``; ``?blobs=true`` adds sizes and LFS data to ``siblings``);
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``list_repo_tree``, used by
  ``snapshot_download``);
* ``GET /api/models/{repo}/refs`` (``list_repo_refs``: dist-tags are branches, ``main``
  among them; versions are tags);
* ``GET|HEAD /{repo}/resolve/{rev}/{filename}`` with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length`` and, for the artifact, ``X-Linked-Etag``/``X-Linked-Size`` and
  ``Range``.

Errors are answered as the Hub answers them, because ``huggingface_hub`` maps them to its
exception classes by header: ``X-Error-Code: RepoNotFound`` (also for a private skill the
caller may not read: 404, identical to a missing one), ``RevisionNotFound``,
``EntryNotFound``; an invalid registry token is 401 with ``X-Error-Message: Invalid
credentials in Authorization header``. A bearer token that is not a registry token
(``hf_...``: ``huggingface_hub`` sends the user's huggingface.co token to every endpoint)
is ignored, so public skills stay readable to a logged-in Hub user.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import tomli_w
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from ..auth import TOKEN_PREFIX, Principal, readable_skill
from ..context import Context
from ..deps import ContextDep, get_principal
from ..errors import ApiError, NotFound
from ..models import DistTag, Skill, Version
from ..names import semver_key
from . import skills as skill_routes

router = APIRouter(tags=["hub"], include_in_schema=False)

CARD_FORMAT = 1
"""Bumped whenever the generated README.md or tvskill.toml change, so commit hashes change with them."""

DEFAULT_BRANCH = "main"
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SPDX_SIMPLE = re.compile(r"^[A-Za-z0-9.+-]+$")
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def commit_hash(repo_id: str, version: str, digest: str) -> str:
    """The commit hash of ``repo_id@version``: stable, 40 hex, unique per (repo, version, bytes).

    The repo id and version take part because the card and ``tvskill.toml`` name them:
    two skills publishing identical artifact bytes still have different files.
    """
    text = f"tvreg-hub-commit/{CARD_FORMAT}\0{repo_id}\0{version}\0{digest}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def git_blob_id(data: bytes) -> str:
    """Git's object id of a file with ``data`` (what the Hub reports as a file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def artifact_filename(name: str, version: str) -> str:
    """The artifact's file name in a skill repo (as ``tvreg publish`` names it in ``dist/``)."""
    return f"{name}-{version}.tvskill"


@dataclass(frozen=True)
class HubFile:
    """One file of a revision: generated ``data``, or the artifact (``data`` None) by ``sha256``."""

    path: str
    size: int
    data: bytes | None = None
    sha256: str | None = None

    @property
    def lfs(self) -> bool:
        return self.data is None

    @property
    def etag(self) -> str:
        """SHA-256 for LFS files, the git blob id otherwise: what the Hub sends."""
        return self.sha256 if self.data is None else git_blob_id(self.data)  # type: ignore[return-value]

    @property
    def pointer(self) -> bytes:
        return LFS_POINTER.format(oid=self.sha256, size=self.size).encode("ascii")

    @property
    def blob_id(self) -> str:
        return git_blob_id(self.pointer if self.data is None else self.data)

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry

    def sibling(self, *, blobs: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": self.path}
        if blobs:
            entry.update(size=self.size, blobId=self.blob_id)
            if self.lfs:
                entry["lfs"] = {"size": self.size, "sha256": self.sha256, "pointerSize": len(self.pointer)}
        return entry


@dataclass
class HubRevision:
    """A resolved revision of a skill repo: the version row and everything derived from it."""

    repo_id: str
    namespace: str
    name: str
    version: str
    digest: str
    size: int
    manifest: dict[str, Any]
    private: bool
    published_at: str
    created_at: str
    sha: str
    downloads: int = 0
    card_data: dict[str, Any] = field(default_factory=dict)
    files: list[HubFile] = field(default_factory=list)

    def file(self, path: str) -> HubFile | None:
        return next((f for f in self.files if f.path == path), None)


class _HubMiss(Exception):
    """A 404 the Hub way: ``code`` goes to ``X-Error-Code`` (and the commit, when known)."""

    def __init__(self, code: str, message: str, *, commit: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.commit = commit


def _hub_error(status: int, message: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _answer_miss(exc: _HubMiss) -> JSONResponse:
    headers = {"X-Error-Code": exc.code, "X-Error-Message": exc.message}
    if exc.commit:
        headers["X-Repo-Commit"] = exc.commit
    return _hub_error(404, exc.message, headers)


def _answer_api_error(exc: ApiError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.status == 401:
        # The exact text huggingface_hub tells apart from "repository not found".
        headers["X-Error-Message"] = "Invalid credentials in Authorization header"
    elif isinstance(exc, NotFound):
        headers.update({"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
    else:
        headers["X-Error-Message"] = exc.message
    return _hub_error(exc.status, exc.message, headers)


def _caller(request: Request) -> Principal | None:
    """The registry user behind a ``tvr_`` bearer token; None for none or a foreign (Hub) token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip().startswith(TOKEN_PREFIX):
        return None
    return get_principal(request)


def _repo_not_found(repo_id: str) -> _HubMiss:
    return _HubMiss("RepoNotFound", f"Repository not found: `{repo_id}`.")


def _yaml_value(value: Any) -> str:
    # JSON scalars and flow sequences are valid YAML, and json.dumps is deterministic.
    return json.dumps(value, ensure_ascii=False)


def _license_fields(license_: str | None) -> dict[str, Any]:
    """The Hub's ``license`` field: a lower-case identifier, or ``other`` with the name."""
    if not license_:
        return {}
    if _SPDX_SIMPLE.match(license_):
        return {"license": license_.lower()}
    return {"license": "other", "license_name": license_}


def _base_model(manifest: dict[str, Any]) -> str | None:
    """The base model's Hub id when the artifact records one (a local path is not one)."""
    source = manifest.get("source") or {}
    for candidate in (
        manifest.get("base_model"),
        source.get("base_model"),
        source.get("base_model_name_or_path"),
    ):
        if (
            isinstance(candidate, str)
            and re.fullmatch(r"[\w.-]+/[\w.-]+", candidate)
            and ".." not in candidate
        ):
            return candidate
    return None


def _card(rev: HubRevision) -> tuple[dict[str, Any], bytes]:
    """The model card: Hub YAML metadata, then what the skill is and how to install it."""
    m = rev.manifest
    data: dict[str, Any] = {}
    base = _base_model(m)
    if base:
        data["base_model"] = base
    data["library_name"] = "tvreg"
    data.update(_license_fields(m.get("license")))
    data["tags"] = ["tvreg", "task-vector"]
    data["tvreg"] = {
        "name": rev.repo_id,
        "version": rev.version,
        "digest": rev.digest,
        "base_fingerprint": m.get("base_fingerprint"),
        "kind": m.get("kind"),
        "dataset_size": m.get("dataset_size"),
        "dataset_unit": m.get("dataset_unit", "examples"),
    }
    lines = ["---"]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_yaml_value(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {_yaml_value(value)}")
    lines.append("---")
    codec = (m.get("source") or {}).get("codec")
    body = [
        "",
        f"# {rev.repo_id} {rev.version}",
        "",
        (m.get("description") or "A task vector published with tvreg.").strip(),
        "",
        "A task vector τ = θ_finetuned − θ_pre for the base model whose content fingerprint is",
        f"`{m.get('base_fingerprint')}`. Install it onto a model built from that base with",
        "[tvreg](https://github.com/tvreg/tvreg):",
        "",
        "```bash",
        f"tvreg install {rev.repo_id}@{rev.version} --into mymodel",
        "```",
        "",
        "| field | value |",
        "|---|---|",
        f"| artifact | `{artifact_filename(rev.name, rev.version)}` ({rev.size} bytes) |",
        f"| digest | `{rev.digest}` |",
        f"| kind | {m.get('kind')} |",
        f"| dataset size | {m.get('dataset_size')} {m.get('dataset_unit', 'examples')} |",
    ]
    if codec:
        body.append(f"| codec | {_yaml_value(codec)} |")
    text = "\n".join(lines + body) + "\n"
    return data, text.encode("utf-8")


def _project_file(rev: HubRevision) -> bytes:
    """``tvskill.toml``: the downloaded snapshot is itself a skill project ``tvreg publish`` accepts."""
    m = rev.manifest
    fields: dict[str, Any] = {"name": rev.repo_id, "version": rev.version, "base": m.get("base_fingerprint")}
    for key in ("dataset_size", "dataset_unit", "description", "license"):
        if m.get(key) not in (None, ""):
            fields[key] = m[key]
    fields["artifact"] = artifact_filename(rev.name, rev.version)
    for key in ("requires", "conflicts"):
        if m.get(key):
            fields[key] = dict(sorted(m[key].items()))
    return tomli_w.dumps(fields).encode("utf-8")


def _revision(skill: Skill, row: Version) -> HubRevision:
    repo_id = skill.full_name
    sha256 = row.digest.removeprefix("sha256:")
    rev = HubRevision(
        repo_id=repo_id,
        namespace=skill.namespace.name,
        name=skill.name,
        version=row.version,
        digest=row.digest,
        size=row.size,
        manifest=row.manifest,
        private=skill.namespace.private,
        published_at=row.published_at.isoformat().replace("+00:00", "Z"),
        created_at=skill.created_at.isoformat().replace("+00:00", "Z"),
        sha=commit_hash(repo_id, row.version, row.digest),
        downloads=int(row.downloads or 0),
    )
    rev.card_data, card = _card(rev)
    project = _project_file(rev)
    rev.files = [
        HubFile("README.md", len(card), data=card),
        HubFile("tvskill.toml", len(project), data=project),
        HubFile(artifact_filename(skill.name, row.version), row.size, sha256=sha256),
    ]
    return rev


def _skill_versions(s: Session, skill: Skill) -> tuple[list[Version], dict[str, Version]]:
    """Every version of ``skill`` with only the columns a revision lookup needs.

    The manifests (up to 1 MiB each) stay in the database: the one revision chosen loads
    its own when it is read, so a long history costs a few columns per version.
    """
    narrow = load_only(Version.id, Version.skill_id, Version.version, Version.digest, Version.downloads)
    versions = list(s.scalars(select(Version).where(Version.skill_id == skill.id).options(narrow)).all())
    tags = {
        tag: version
        for tag, version in s.execute(
            select(DistTag.tag, Version)
            .join(Version, DistTag.version_id == Version.id)
            .where(DistTag.skill_id == skill.id)
        ).all()
    }
    return versions, tags


def resolve_revision(
    s: Session, principal: Principal | None, namespace: str, name: str, revision: str
) -> HubRevision:
    """``ns/name`` at ``revision`` (version, dist-tag, ``main`` or commit hash), if the caller may read it.

    Raises:
        _HubMiss: ``RepoNotFound`` for a missing or hidden skill, ``RevisionNotFound`` for
            an unknown revision.
    """
    repo_id = f"{namespace}/{name}"
    try:
        skill = readable_skill(s, principal, namespace, name)
    except NotFound as exc:
        raise _repo_not_found(repo_id) from exc
    versions, tags = _skill_versions(s, skill)
    wanted = "latest" if revision == DEFAULT_BRANCH else revision
    row = tags.get(wanted) or next((v for v in versions if v.version == revision), None)
    if row is None and _COMMIT_RE.match(revision):
        row = next((v for v in versions if commit_hash(repo_id, v.version, v.digest) == revision), None)
    if row is None:
        raise _HubMiss("RevisionNotFound", f"Revision not found: `{revision}` of `{repo_id}`.")
    return _revision(skill, row)


def _read(ctx: Context, request: Request, namespace: str, name: str, revision: str) -> HubRevision:
    principal = _caller(request)
    with ctx.sessions() as s:
        return resolve_revision(s, principal, namespace, name, revision)


def _model_info(rev: HubRevision, *, blobs: bool) -> dict[str, Any]:
    return {
        "_id": rev.sha,
        "id": rev.repo_id,
        "modelId": rev.repo_id,
        "author": rev.namespace,
        "sha": rev.sha,
        "lastModified": rev.published_at,
        "createdAt": rev.created_at,
        "private": rev.private,
        "gated": False,
        "disabled": False,
        "downloads": rev.downloads,  # this version's artifact downloads (batched: may lag a flush)
        "likes": 0,
        "library_name": "tvreg",
        "tags": [
            "tvreg",
            "task-vector",
            *([f"license:{rev.card_data['license']}"] if "license" in rev.card_data else []),
        ],
        "cardData": rev.card_data,
        "siblings": [f.sibling(blobs=blobs) for f in rev.files],
        "usedStorage": sum(f.size for f in rev.files),
    }


def _hub(fn: Any) -> Any:
    """Answer this route's failures the way the Hub does (see the module docstring)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Response:
        try:
            return fn(*args, **kwargs)
        except _HubMiss as exc:
            return _answer_miss(exc)
        except ApiError as exc:
            return _answer_api_error(exc)

    return wrapped


@router.get("/api/models/{namespace}/{name}")
@_hub
def model_info(namespace: str, name: str, request: Request, ctx: ContextDep, blobs: bool = False) -> Response:
    """``HfApi.model_info(repo)``: the ``main`` revision (the ``latest`` dist-tag)."""
    return JSONResponse(_model_info(_read(ctx, request, namespace, name, DEFAULT_BRANCH), blobs=blobs))


@router.get("/api/models/{namespace}/{name}/revision/{revision}")
@_hub
def model_info_at(
    namespace: str, name: str, revision: str, request: Request, ctx: ContextDep, blobs: bool = False
) -> Response:
    """``HfApi.model_info(repo, revision=...)``, which ``snapshot_download`` calls first."""
    return JSONResponse(_model_info(_read(ctx, request, namespace, name, revision), blobs=blobs))


@router.get("/api/models/{namespace}/{name}/tree/{revision}")
@_hub
def tree(namespace: str, name: str, revision: str, request: Request, ctx: ContextDep) -> Response:
    """``HfApi.list_repo_tree``: every file (a skill repo has no folders)."""
    rev = _read(ctx, request, namespace, name, revision)
    return JSONResponse([f.tree_entry() for f in rev.files])


@router.get("/api/models/{namespace}/{name}/tree/{revision}/{path:path}")
@_hub
def subtree(
    namespace: str, name: str, revision: str, path: str, request: Request, ctx: ContextDep
) -> Response:
    """A folder listing: there are none, so the Hub's answer for a missing path."""
    rev = _read(ctx, request, namespace, name, revision)
    raise _HubMiss("EntryNotFound", f"Entry not found: `{path}` in `{rev.repo_id}`.", commit=rev.sha)


@router.get("/api/models/{namespace}/{name}/refs")
@_hub
def refs(namespace: str, name: str, request: Request, ctx: ContextDep) -> Response:
    """``HfApi.list_repo_refs``: dist-tags as branches (``main`` = ``latest``), versions as tags."""
    principal = _caller(request)
    repo_id = f"{namespace}/{name}"
    with ctx.sessions() as s:
        try:
            skill = readable_skill(s, principal, namespace, name)
        except NotFound as exc:
            raise _repo_not_found(repo_id) from exc
        versions, tags = _skill_versions(s, skill)

    def ref(kind: str, label: str, row: Version) -> dict[str, str]:
        return {
            "name": label,
            "ref": f"refs/{kind}/{label}",
            "targetCommit": commit_hash(repo_id, row.version, row.digest),
        }

    branches = [ref("heads", DEFAULT_BRANCH, tags["latest"])] if "latest" in tags else []
    branches += [ref("heads", t, row) for t, row in sorted(tags.items()) if t != DEFAULT_BRANCH]
    version_refs = [ref("tags", v.version, v) for v in sorted(versions, key=lambda v: semver_key(v.version))]
    return JSONResponse({"branches": branches, "tags": version_refs, "converts": []})


@router.api_route("/{namespace}/{name}/resolve/{revision}/{filename:path}", methods=["GET", "HEAD"])
@_hub
def resolve(
    namespace: str, name: str, revision: str, filename: str, request: Request, ctx: ContextDep
) -> Response:
    """A file of a revision, with the headers ``hf_hub_download`` needs; ``Range`` on the artifact."""
    principal = _caller(request)
    with ctx.sessions() as s:
        rev = resolve_revision(s, principal, namespace, name, revision)
    entry = rev.file(filename)
    if entry is None:
        raise _HubMiss("EntryNotFound", f"Entry not found: `{filename}` in `{rev.repo_id}`.", commit=rev.sha)
    immutable = revision in (rev.sha, rev.version)
    headers = {
        "X-Repo-Commit": rev.sha,
        "ETag": f'"{entry.etag}"',
        "Cache-Control": ("private" if rev.private else "public")
        + (", max-age=31536000, immutable" if immutable else ", no-cache"),
    }
    if entry.data is not None:
        if request.method == "HEAD":
            return Response(
                headers={**headers, "Content-Length": str(entry.size)}, media_type=_media(filename)
            )
        return Response(entry.data, headers=headers, media_type=_media(filename))
    response = skill_routes.download(namespace, name, rev.version, ctx, principal)
    # The store's answer (ranges, HEAD, streaming) with the Hub's names for the same facts.
    for key, value in {
        **headers,
        "X-Linked-Etag": f'"{entry.etag}"',
        "X-Linked-Size": str(entry.size),
    }.items():
        response.headers[key] = value
    return response


def _media(filename: str) -> str:
    return {"README.md": "text/markdown; charset=utf-8", "tvskill.toml": "application/toml"}.get(
        filename, "application/octet-stream"
    )
