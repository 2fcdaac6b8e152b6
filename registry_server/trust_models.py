"""Tables for signed skills: registered public keys, version signatures and attestations.

Kept apart from :mod:`registry_server.models` (and imported at its end) so the trust
feature reads as one unit; the rows live on the same ``Base`` and migration 0008 makes them.

A ``SigningKey`` belongs to exactly one user or one team; it is never deleted, only
revoked, so a revocation stays visible and old signatures can still be explained.
A ``VersionSignature`` is a Sigstore bundle over a version's artifact, by one key; an
``Attestation`` is a signed evaluation statement about a version, by anyone whose key
is registered, and a version may carry many.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .models import Base, Team, User, utcnow


class SigningKey(Base):
    """A public key registered to a user or a team; ``key_id`` is ``sha256:`` of its SPKI DER."""

    __tablename__ = "signing_keys"
    __table_args__ = (CheckConstraint("(user_id IS NULL) <> (team_id IS NULL)", name="one_owner"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[str] = mapped_column(String(71), unique=True)
    public_key: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(100), default="")
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(Text)

    user: Mapped[User | None] = relationship()
    team: Mapped[Team | None] = relationship()


class VersionSignature(Base):
    """A Sigstore bundle that signs a version's artifact, verified at upload against ``key_id``."""

    __tablename__ = "version_signatures"
    __table_args__ = (UniqueConstraint("version_id", "key_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str] = mapped_column(String(71))
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    uploaded_by: Mapped[str] = mapped_column(String(100))


class Attestation(Base):
    """A signed in-toto statement about a version (an evaluation); ``summary`` is for listing."""

    __tablename__ = "attestations"
    __table_args__ = (UniqueConstraint("version_id", "bundle_digest"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str] = mapped_column(String(71))
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    bundle_digest: Mapped[str] = mapped_column(String(71))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    uploaded_by: Mapped[str] = mapped_column(String(100))
