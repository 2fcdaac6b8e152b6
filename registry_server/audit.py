"""The audit trail: one row per write, added in the same transaction as the write itself.

Writing the row inside the caller's transaction means a write and its record commit
or vanish together; there is never an audit row for a publish that did not happen,
nor a publish without one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from .models import AuditEvent

CLI_ACTOR = "cli:admin"


def record(session: Session, *, actor: str, action: str, target: str, **detail: Any) -> None:
    """Add an audit row to ``session`` (committed with it).

    Args:
        actor: the user name, or :data:`CLI_ACTOR` for the admin CLI.
        action: a dotted verb, e.g. ``version.publish``, ``upload.create``.
        target: what was acted on, e.g. ``alice/safety@1.0.0``.
        detail: JSON-serialisable facts (digests, reasons, roles).
    """
    session.add(AuditEvent(actor=actor, action=action, target=target, detail=detail))
