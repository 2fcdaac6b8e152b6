"""The JSON shapes of docs/registry-api.md as pydantic models, and builders from ORM rows.

Declaring them gives the OpenAPI document at ``/openapi.json`` real schemas, and
validates request bodies before any route code runs (a bad body is a 400, see app.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .models import Skill, Version
from .names import MAX_LENGTH


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class UploadCreate(BaseModel):
    size: int = Field(ge=0, description="Exact length of the artifact in bytes.")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="`sha256:<hex>` of the whole artifact.")


class UploadCreated(BaseModel):
    id: str
    offset: int
    chunk_size: int


class UploadOffset(BaseModel):
    offset: int


class UploadState(BaseModel):
    id: str
    offset: int
    size: int
    digest: str
    state: str


class PublishRequest(BaseModel):
    upload_id: str
    tag: str | None = Field(
        default="latest",
        max_length=MAX_LENGTH,
        description="Dist-tag to move; null moves none. A name that does not parse as a version or range.",
    )


class SketchInfo(BaseModel):
    digest: str
    size: int


class VersionOut(BaseModel):
    name: str
    version: str
    digest: str
    size: int
    base_fingerprint: str
    kind: str
    dataset_size: int | None
    dataset_unit: str
    manifest: dict[str, Any]
    published_at: str
    publisher: str
    yanked: bool
    yanked_reason: str | None
    downloads: int = Field(default=0, description="Artifact downloads of this version, counted in batches.")
    sketch: SketchInfo | None = Field(
        default=None,
        description="The version's interference sketch, or null when it was published without one.",
    )


class SkillOut(BaseModel):
    name: str
    description: str
    private: bool
    dist_tags: dict[str, str]
    versions: list[VersionOut] = Field(description="One page of versions, ascending semver.")
    downloads: int = Field(default=0, description="Artifact downloads of every version, counted in batches.")
    page: int = 1
    per_page: int = 100
    total_versions: int = Field(default=0, description="Versions of the skill across all pages.")


class SkillSummary(BaseModel):
    name: str
    description: str
    latest: str | None
    versions: int
    bases: list[str]
    private: bool


class SearchResults(BaseModel):
    items: list[SkillSummary]
    page: int
    per_page: int
    total: int


class YankRequest(BaseModel):
    reason: str = ""


class TagRequest(BaseModel):
    version: str = Field(max_length=MAX_LENGTH, description="An existing version of the skill.")


class DistTags(BaseModel):
    dist_tags: dict[str, str]


class TeamRole(BaseModel):
    team: str
    role: str


class WhoAmI(BaseModel):
    user: str
    teams: list[TeamRole]
    namespaces: list[str]


def version_out(skill: Skill, version: Version) -> dict[str, Any]:
    """The version object of the API (``skill.namespace`` and ``version.publisher`` are loaded)."""
    return {
        "name": skill.full_name,
        "version": version.version,
        "digest": version.digest,
        "size": version.size,
        "base_fingerprint": version.base_fingerprint,
        "kind": version.kind,
        "dataset_size": version.dataset_size,
        "dataset_unit": version.dataset_unit,
        "manifest": version.manifest,
        "published_at": version.published_at.isoformat(),
        "publisher": version.publisher.name,
        "yanked": version.yanked,
        "yanked_reason": version.yanked_reason,
        "downloads": version.downloads or 0,
        "sketch": (
            {"digest": version.sketch_digest, "size": version.sketch_size} if version.sketch_digest else None
        ),
    }
