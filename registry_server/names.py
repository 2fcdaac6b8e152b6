"""The registry's view of names: tvreg's one set of rules (:mod:`tvreg._names`) answering 400.

Why no rules of its own: a second copy drifts, and then a tag the registry accepts cannot
be installed (``1x``) or a tag shadows a range (``v2``). Every name, version and tag in a
request goes through here before the database sees it, so a bad value is a 400 naming
it, never a 500 from a column that is too short.
"""

from __future__ import annotations

from tvreg._names import (
    MAX_LENGTH,
    RESERVED_NAMES,
    Version,
    is_prerelease,
    precedence_core,
    ultranormalize,
    validate_name,
    validate_namespace_name,
    validate_tag,
    validate_version,
    version_key,
)
from tvreg.errors import InvalidName

from .errors import BadRequest

__all__ = [
    "MAX_LENGTH",
    "RESERVED_NAMES",
    "check_name",
    "check_namespace_name",
    "check_tag",
    "check_version",
    "is_prerelease",
    "precedence_core",
    "semver_key",
    "ultranormalize",
]


def check_name(name: str, *, what: str = "skill name") -> str:
    """Return ``name`` if it is a valid skill or namespace name, else raise 400 naming it."""
    try:
        return validate_name(name, what=what)
    except InvalidName as exc:
        raise BadRequest(exc.message) from exc


def check_namespace_name(name: str, *, what: str = "namespace") -> str:
    """Return ``name`` if it may become a new user, team or namespace, else raise 400.

    A reserved name (:data:`~tvreg._names.RESERVED_NAMES`) is refused with its hint in
    the error's ``hint`` field.
    """
    try:
        return validate_namespace_name(name, what=what)
    except InvalidName as exc:
        raise BadRequest(exc.message, extra={"hint": exc.hints[0]} if exc.hints else None) from exc


def check_version(version: str) -> str:
    """Return ``version`` if it is a publishable semantic version, else raise 400."""
    try:
        return validate_version(version)
    except InvalidName as exc:
        raise BadRequest(exc.message) from exc


def check_tag(tag: str) -> str:
    """Return ``tag`` if it can be a dist-tag (a name that is not a version or range), else raise 400."""
    try:
        return validate_tag(tag)
    except InvalidName as exc:
        raise BadRequest(exc.message) from exc


def semver_key(version: str) -> Version:
    """Sort key for semantic versions (``1.10.0`` after ``1.9.0``, prereleases first)."""
    return version_key(version)
