"""The ``tvreg`` command group, its error handling and the rich progress bar every command shares.

No logic lives here. Errors from the library (:class:`~tvreg.errors.TvregError`) are
printed as ``error: <sentence>`` plus ``hint:`` lines, with the family's exit code
(1 for failures, 2 for bad usage, 130 for interrupts) and no traceback unless
``--debug``.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import time

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichBar

from .._format.faults import crash_point
from .._util.progress import Progress
from .._version import __version__
from ..errors import TvregError
from .text import SafeConsole, safe

err = SafeConsole(stderr=True, highlight=False)
out = SafeConsole(highlight=False, soft_wrap=True)


CHANGING = None  # the model directory the running command changes (set by environment commands)


class RichProgress(Progress):
    """Shows each step that lasts over a second as a transient rich progress bar on stderr."""

    #: Seconds a step must last before its bar is drawn; ``TVREG_PROGRESS_DELAY`` overrides it.
    delay = 1.0
    live: list[RichProgress] = []

    @classmethod
    def stop_all(cls) -> bool:
        """Stop every bar still drawn, show the cursor, end the line; True if one was drawn."""
        drawn = False
        for progress in list(cls.live):
            drawn = drawn or progress._bar is not None
            try:
                progress.done()
            except Exception:  # noqa: BLE001 - the terminal must be restored whatever rich says
                pass
        cls.live.clear()
        if drawn and err.is_terminal:
            err.show_cursor(True)
            err.file.write("\n")
            err.file.flush()
        return drawn

    def __init__(self) -> None:
        try:
            self.delay = max(0.0, float(os.environ.get("TVREG_PROGRESS_DELAY", RichProgress.delay)))
        except ValueError:
            self.delay = RichProgress.delay
        self._bar: RichBar | None = None
        self._task: TaskID | None = None
        self._pending: tuple[str, int | None, float] | None = None
        self._completed = 0
        RichProgress.live.append(self)

    def task(self, description, total):
        _resume_collector()
        self.done()
        self._pending = (description, total, time.monotonic())
        self._completed = 0

    def _start(self) -> None:
        assert self._pending is not None  # called only while a task is pending
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
        crash_point("progress:bar")

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


def _unchanged_line(drawn: bool, message: str) -> None:
    if drawn and CHANGING is not None and "unchanged" not in message:
        err.print(f"`{CHANGING}` is unchanged.", soft_wrap=True)


class _Group(click.Group):
    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except TvregError as exc:
            drawn = RichProgress.stop_all()
            if drawn and CHANGING is not None and "unchanged" not in exc.message:
                exc.hints.append(f"`{CHANGING}` is unchanged.")
            _fail(exc, debug)
        except KeyboardInterrupt:
            drawn = RichProgress.stop_all()
            err.print("[bold red]error:[/] interrupted.")
            _unchanged_line(drawn, "")
            sys.exit(130)
        finally:
            _resume_collector()  # a command run in-process (click's test runner) leaves the collector as it found it




def _spare_the_exit_collections() -> None:
    """A command's process ends right after it: the interpreter's full garbage collections at exit
    (three, one of them even with the collector disabled) would walk every object torch and Numba
    loaded, about 0.4 s, only for the process to end. Frozen objects are not walked.

    Not once Triton is loaded: its nanobind bindings count what is still alive at exit and
    print every survivor as a leak."""
    gc.disable()
    if "triton" not in sys.modules:
        gc.freeze()


atexit.register(_spare_the_exit_collections)

_collector_paused = False


def _pause_collector() -> None:
    """Keep the cyclic garbage collector off while a command starts, until its first progress task.

    Why: start-up imports torch, NumPy and Numba, some 280,000 objects, and the collector's
    full walks, each set off as the heap grows by a quarter, cost ~0.4 s of a 3 s start on the
    2-core VM (``import`` of the install's modules: 3.04 s with the collector on, 2.57 s off).
    Nothing cyclic worth collecting is made by imports. A command that shows progress has
    imported what it needs by its first task, and from there on runs with the collector on, as
    any long command must; a short command without progress runs to its end with it off.
    Either way it is on again when the command returns (:class:`_Group`), for a caller that
    runs commands in-process; the process's exit collections are spared separately
    (:func:`_spare_the_exit_collections`).
    """
    global _collector_paused
    if gc.isenabled():
        gc.disable()
        _collector_paused = True


def _resume_collector() -> None:
    global _collector_paused
    if _collector_paused:
        _collector_paused = False
        gc.enable()


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
    _pause_collector()


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
