"""The registry's tables as SQLAlchemy 2 ORM models; the migrations in ``migrations/`` build them.

Who may do what: a ``Namespace`` (the ``ns`` in ``ns/skill``) belongs to one ``Team``;
``Membership`` gives a ``User`` a role on a team; a ``Token`` authenticates a user and
may cap that role (a read-only token). What exists: a ``Skill`` in a namespace has
immutable ``Version`` rows (one per semantic version, each naming a content-addressed
blob by digest, with an optional ``VersionSketch``) and movable ``DistTag`` pointers. ``Upload`` keeps the state of an
upload in flight in the database, so any replica can continue it, and ``AuditEvent``
records every write.

Uniqueness that matters for correctness is enforced by constraints, not by checks in
Python: two replicas publishing the same version race on ``uq_versions_skill_id``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

ROLES = ("read", "write", "admin")
UPLOAD_STATES = ("open", "published", "failed")

# Stable constraint names, so migrations can refer to them on SQLite and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC.

    SQLite stores no offset and hands back naive datetimes; PostgreSQL hands back the
    session's zone. Normalising here keeps ``published_at`` identical on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


def _role_check(column: str) -> CheckConstraint:
    return CheckConstraint(f"{column} IN ('read', 'write', 'admin')", name=f"{column}_valid")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    max_open_uploads: Mapped[int | None]  # None: the server's --max-open-uploads

    memberships: Mapped[list[Membership]] = relationship(back_populates="user")


class Team(Base):
    """A group that owns namespaces. ``personal`` teams are created with their user."""

    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    personal: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="team")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("team_id", "user_id"), _role_check("role"))

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(8))

    team: Mapped[Team] = relationship(back_populates="memberships")
    user: Mapped[User] = relationship(back_populates="memberships")


class Namespace(Base):
    """The first half of ``ns/skill``; public (anyone reads) or private (members only)."""

    __tablename__ = "namespaces"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    normalized_name: Mapped[str] = mapped_column(String(100), unique=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    storage_quota: Mapped[int | None] = mapped_column(BigInteger)  # None: the server's --namespace-quota

    team: Mapped[Team] = relationship()


class Token(Base):
    """An API token. Only its SHA-256 is stored; ``scope`` caps the user's roles."""

    __tablename__ = "tokens"
    __table_args__ = (_role_check("scope"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8), default="admin")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class Skill(Base):
    __tablename__ = "skills"
    __table_args__ = (
        UniqueConstraint("namespace_id", "name"),
        UniqueConstraint("namespace_id", "normalized_name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id"))
    name: Mapped[str] = mapped_column(String(100))
    normalized_name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    namespace: Mapped[Namespace] = relationship()
    versions: Mapped[list[Version]] = relationship(back_populates="skill")
    tags: Mapped[list[DistTag]] = relationship(back_populates="skill")

    @property
    def full_name(self) -> str:
        return f"{self.namespace.name}/{self.name}"


class Version(Base):
    """One published, immutable version; its bytes live in the blob store under ``digest``."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("skill_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    skill_id: Mapped[int] = mapped_column(ForeignKey("skills.id"))
    version: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(71), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]]
    base_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    dataset_size: Mapped[int | None] = mapped_column(BigInteger)
    dataset_unit: Mapped[str] = mapped_column(String(16))
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    publisher_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    yanked_reason: Mapped[str | None] = mapped_column(Text)
    sketch_digest: Mapped[str | None] = mapped_column(String(71))
    sketch_size: Mapped[int | None] = mapped_column(BigInteger)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))

    skill: Mapped[Skill] = relationship(back_populates="versions")
    publisher: Mapped[User] = relationship()


class VersionSketch(Base):
    """The interference sketch of a version (``tvreg.sketch``), added once after publish.

    A few KB to a few MB, so it lives in the database beside its version rather than in
    the blob store: it is written in the same transaction that records it on the version,
    and ``tvreg check`` reads it without touching the artifact. ``Version.sketch_digest``
    and ``sketch_size`` say whether there is one without loading it.
    """

    __tablename__ = "sketches"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True)
    sketch_version: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DistTag(Base):
    """A movable name (``latest``, ``beta``) pointing at one version of a skill."""

    __tablename__ = "dist_tags"

    skill_id: Mapped[int] = mapped_column(ForeignKey("skills.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))

    skill: Mapped[Skill] = relationship(back_populates="tags")
    version: Mapped[Version] = relationship()


class Upload(Base):
    """An upload in flight. ``received`` is the durable offset: bytes fsynced in the staging area.

    ``writer`` and ``lease_expires_at`` form a lease taken by the request appending to
    the upload, so two PATCHes (possibly on two replicas) never write at once; a crashed
    writer's lease simply expires.
    """

    __tablename__ = "uploads"
    __table_args__ = (CheckConstraint("state IN ('open', 'published', 'failed')", name="state_valid"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(71))
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16), default="open")
    writer: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Who did what to which target, and when. ``actor`` is a name, so rows outlive users."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_target", "target"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(300))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RegistryState(Base):
    """One row: ``generation`` grows with every change a read can see (migration 0004's triggers).

    Replicas key their read caches by it (:mod:`registry_server.readcache`).
    """

    __tablename__ = "registry_state"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class AuthFailure(Base):
    """One failed token check from ``address``; rows older than the throttle's window are deleted."""

    __tablename__ = "auth_failures"
    __table_args__ = (Index("ix_auth_failures_address_at", "address", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(index=True)


class WebSession(Base):
    """A browser signed in with a token (registry_server.web.sessions); only the cookie's SHA-256 is kept.

    Valid while ``expires_at`` is ahead and its token is neither revoked nor expired.
    """

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Card(Base):
    """A version's skill card: the project's README.md as published (Markdown, YAML front matter allowed)."""

    __tablename__ = "cards"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(71))
    size: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


from . import trust_models  # noqa: E402,F401  (signing keys, signatures, attestations: migration 0008)
