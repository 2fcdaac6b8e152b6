"""Names the registry accepts, and the "ultranormalized" form used to compare them.

Skill and namespace names become URL path segments and file names on clients, so the
registry applies tvreg's own rule (:func:`tvreg.manifest.validate_name`: lowercase ASCII,
no ``..``, no look-alike Unicode) rather than a second copy of it. Two names that differ
only in case, compatibility form or runs of ``-_.`` would fool a reader into installing
the wrong skill (warehouse's ultranormalized-name check), so they collide.
"""

from __future__ import annotations

import re
import unicodedata

import semver

from tvreg.errors import InvalidName
from tvreg.manifest import validate_name, validate_version

from .errors import BadRequest

_SEPARATORS = re.compile(r"[-_.]+")


def ultranormalize(name: str) -> str:
    """NFKC, case fold, and collapse runs of ``-``, ``_`` and ``.`` to ``-``.

    Example:
        >>> ultranormalize("Safe_.Ty")
        'safe-ty'
    """
    return _SEPARATORS.sub("-", unicodedata.normalize("NFKC", name).casefold())


def check_name(name: str, *, what: str = "skill name") -> str:
    """Return ``name`` if it is a valid skill or namespace name, else raise 400 naming it."""
    try:
        return validate_name(name)
    except InvalidName as exc:
        raise BadRequest(exc.message.replace("skill name", what, 1)) from exc


def check_version(version: str) -> str:
    """Return ``version`` if it is a semantic version, else raise 400."""
    try:
        return validate_version(version)
    except InvalidName as exc:
        raise BadRequest(exc.message) from exc


def is_prerelease(version: str) -> bool:
    return semver.Version.parse(version).prerelease is not None


def semver_key(version: str) -> object:
    """Sort key for semantic versions (``1.10.0`` after ``1.9.0``, prereleases first)."""
    return semver.Version.parse(version)


def check_tag(tag: str) -> str:
    """Return ``tag`` if it can be a dist-tag: a valid name that is not itself a version.

    npm forbids tags that parse as versions because ``install skill@1.0.0`` would be
    ambiguous; the same holds here.
    """
    check_name(tag, what="tag")
    try:
        validate_version(tag)
    except InvalidName:
        return tag
    raise BadRequest(f"invalid tag {tag!r}: a tag may not be a version number.")
