"""A no-op progress reporter the library calls; the CLI plugs in a ``rich`` one.

Why: the library must not import ``rich`` or print, yet long steps (hashing,
building, installing) should show a progress bar in the terminal.
"""

from __future__ import annotations


class Progress:
    """Receives progress events. Every method is optional to override and cheap to call."""

    def task(self, description: str, total: int | None) -> None:
        """A new step begins; ``total`` is in bytes (or None when unknown)."""

    def advance(self, amount: int) -> None:
        """``amount`` more bytes of the current step are done."""

    def done(self) -> None:
        """The current step finished."""

    def note(self, message: str) -> None:
        """Something the user should read in the summary (e.g. rows left unchanged)."""

    def warn(self, message: str) -> None:
        """Something the user should act on (e.g. installing a yanked version); a note by default."""
        self.note(message)


NULL_PROGRESS = Progress()
