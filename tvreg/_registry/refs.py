"""Registry skill references: ``namespace/skill`` with an optional ``@version``.

Why a module of its own: both parts become URL path segments and the version picks
what gets installed, so every string a user types is checked here, with the same
rules as the registry (:mod:`tvreg._names`), before any request is made. ``../etc``
never reaches the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._names import NAME_HINT, show, validate_name, validate_version
from ..errors import InvalidName


@dataclass(frozen=True)
class SkillRef:
    """``namespace/skill``, optionally pinned to one exact ``version``."""

    namespace: str
    skill: str
    version: str | None = None

    @property
    def name(self) -> str:
        """``namespace/skill``, the registry's name of the skill."""
        return f"{self.namespace}/{self.skill}"

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


def looks_like_ref(text: str) -> bool:
    """True for strings shaped like ``ns/skill[@version]`` (one slash, no file suffix)."""
    head = text.split("@", 1)[0]
    return head.count("/") == 1 and not head.endswith(".tvskill") and "\\" not in text


def parse_ref(text: str, *, allow_version: bool = True, require_version: bool = False) -> SkillRef:
    """Parse and validate ``namespace/skill[@version]``.

    Args:
        text: what the user typed.
        allow_version: whether ``@version`` may be given.
        require_version: whether ``@version`` must be given.

    Returns:
        A :class:`SkillRef` whose parts are safe URL path segments.

    Raises:
        InvalidName: a part is malformed or unsafe (``..``, slashes, upper case, NUL), or
            the version is missing, unexpected or not a semantic version.

    Example:
        >>> parse_ref("nlp/science@1.2.0")
        SkillRef(namespace='nlp', skill='science', version='1.2.0')
    """
    if not isinstance(text, str):
        raise InvalidName(f"invalid skill reference {show(text)}.")
    head, at, version = text.partition("@")
    namespace, slash, skill = head.partition("/")
    if not slash or "/" in skill:
        raise InvalidName(
            f"invalid skill reference `{show(text)}`: use `namespace/skill` or `namespace/skill@1.2.0`."
        )
    for part, what in ((namespace, "namespace"), (skill, "skill name")):
        try:
            validate_name(part, what=what)
        except InvalidName as exc:
            raise InvalidName(f"{exc.message.rstrip('.')} in `{show(text)}`.", hints=[NAME_HINT]) from exc
    if at and not allow_version:
        raise InvalidName(f"`{show(text)}` names a version here; give `{head}` alone.")
    if require_version and not at:
        raise InvalidName(f"`{show(text)}` needs a version: `{head}@1.2.0`.")
    if at:
        validate_version(version)
    return SkillRef(namespace, skill, version or None)
