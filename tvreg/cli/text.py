"""The one boundary where text from a registry (or any artifact) meets the terminal.

Why: descriptions, yank reasons, names, tags and error messages are written by other
people. Printed raw, an escape sequence can rewrite the screen or the window title, a
bidi override can reverse what a line appears to say, a newline can forge an
``error:`` line, and rich markup (``[red]``, ``[/]``) can restyle the output or crash it.
Every CLI output goes through :class:`SafeConsole`, which makes control characters
visible (``\\x1b``); values interpolated into markup go through :func:`safe` first.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape

_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"
_ANY = re.compile(f"[{_CONTROLS}\n\t]")
_INLINE = re.compile(f"[{_CONTROLS}]")


def _visible(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: object, *, lines: bool = False) -> str:
    """``text`` with every control, bidi and zero-width character shown as an escape (``\\x1b``), URL credentials redacted.

    ``lines=True`` keeps newlines and tabs (for text tvreg composed itself).
    """
    from .._registry.config import redact_url

    return redact_url((_INLINE if lines else _ANY).sub(_visible, str(text)))


def safe(text: object) -> str:
    """Registry-supplied ``text`` ready to interpolate into rich markup: controls shown, markup escaped."""
    return escape(clean(text))


class SafeConsole(Console):
    """A rich console whose string arguments never carry a control character to the terminal."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: D102
        super().print(*(clean(o, lines=True) if isinstance(o, str) else o for o in objects), **kwargs)


__all__ = ["SafeConsole", "clean", "safe"]
