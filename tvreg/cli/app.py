"""The ``tvreg`` command group, its error handling and the rich progress bar every command shares.

No logic lives here. Errors from the library (:class:`~tvreg.errors.TvregError`) are
printed as ``error: <sentence>`` plus ``hint:`` lines, with the family's exit code
(1 for failures, 2 for bad usage, 130 for interrupts) and no traceback unless
``--debug``.
"""

from __future__ import annotations

import signal
import sys
import time

import click
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.progress import Progress as RichBar

from .._version import __version__
from ..errors import TvregError
from ..progress import Progress
from .text import SafeConsole, safe

err = SafeConsole(stderr=True, highlight=False)
out = SafeConsole(highlight=False, soft_wrap=True)


class RichProgress(Progress):
    """Shows each step that lasts over a second as a transient rich progress bar on stderr."""

    delay = 1.0

    def __init__(self) -> None:
        self._bar: RichBar | None = None
        self._task = None
        self._pending: tuple[str, int | None, float] | None = None
        self._completed = 0

    def task(self, description, total):
        self.done()
        self._pending = (description, total, time.monotonic())
        self._completed = 0

    def _start(self) -> None:
        description, total, _ = self._pending
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, completed=self._completed)

    def advance(self, amount):
        if self._bar is not None:
            self._bar.advance(self._task, amount)
            return
        self._completed += amount
        if (
            self._pending is not None
            and err.is_terminal
            and time.monotonic() - self._pending[2] >= self.delay
        ):
            self._start()

    def done(self):
        self._pending = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def note(self, message):
        err.print(f"[yellow]note:[/] {safe(message)}", soft_wrap=True)

    def warn(self, message):
        err.print(f"[bold yellow]warning:[/] {safe(message)}", soft_wrap=True)


def _fail(exc: TvregError, debug: bool) -> None:
    if debug:
        err.print_exception()
    err.print(f"[bold red]error:[/] {safe(exc.message)}", soft_wrap=True)
    for hint in exc.hints:
        err.print(f"[cyan]hint:[/] {safe(hint)}", soft_wrap=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except TvregError as exc:
            _fail(exc, debug)
        except KeyboardInterrupt:
            err.print("[bold red]error:[/] interrupted.")
            sys.exit(130)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="tvreg")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def main(debug: bool) -> None:
    """tvreg: a package manager for task vectors.

    Build skills (task vectors τ = θ_finetuned − θ_pretrained) from checkpoints or LoRA
    adapters, and install them onto a general model G: θ = θ_G + Σ ω_k τ_k.
    """
    signal.signal(signal.SIGTERM, _sigterm)


def split_requirement(text: str) -> tuple[str, str]:
    name, _, spec = text.partition("@")
    return name, spec


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def parse_weights(values: tuple[str, ...]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in values:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = float(value)
        except ValueError:
            raise click.BadParameter(f"expected NAME=FLOAT, got {item!r}", param_hint="--weight") from None
    return weights
