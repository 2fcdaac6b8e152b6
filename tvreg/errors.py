"""Every failure tvreg reports, one class per family.

The tree::

    TvregError                      base; ``str(exc)`` is the sentence a user sees
    ├── CheckpointError             a model directory that cannot be read as safetensors
    │   ├── UnsafeCheckpoint        pickle weights (.bin/.pt/.ckpt): never unpickled
    │   └── CorruptCheckpoint       a safetensors file whose header or layout is invalid
    ├── ArtifactError               a .tvskill file that cannot be trusted
    │   ├── CorruptArtifact         truncated, tampered, bomb, bad header
    │   └── InvalidManifest         manifest fields missing or malformed
    ├── IncompatibleBase            skill built for another base model
    ├── TensorMismatch              missing/extra tensors, shape or dtype mismatch
    ├── InvalidName                 a name or version that is unsafe or malformed
    ├── ModelEnvironmentError         a model environment (mymodel) that is not set up right
    ├── WeightError                 ω cannot be determined
    ├── InstallInterrupted          Ctrl-C or a signal stopped an install; nothing changed
    ├── DiskFull                    no space left while writing; nothing changed
    └── LockHeld                    another tvreg process holds the model environment

Why one module: callers catch a family (``except ArtifactError``), the CLI maps each
family to an exit code and prints ``hint:`` lines, and foreign exceptions (zstd, json,
OSError) are translated at one boundary per subsystem with ``raise ... from exc``.
"""

from __future__ import annotations


class TvregError(Exception):
    """Base of every error tvreg raises on purpose.

    ``message`` is one sentence naming what happened and where; ``hints`` are
    separate lines of advice the CLI prints as ``hint: ...``.
    """

    exit_code = 1

    def __init__(self, message: str, *, hints: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hints = list(hints)

    def __str__(self) -> str:
        return self.message


class CheckpointError(TvregError):
    """A model checkpoint could not be read."""


class UnsafeCheckpoint(CheckpointError):
    """Weights are stored in a pickle-based format, which tvreg never loads."""


class CorruptCheckpoint(CheckpointError):
    """A safetensors file is malformed (header, offsets, sizes)."""


class ArtifactError(TvregError):
    """A skill artifact could not be read or trusted."""


class CorruptArtifact(ArtifactError):
    """The bytes of an artifact do not match what its header declares."""


class InvalidManifest(ArtifactError):
    """The manifest of an artifact is missing a field or has a malformed one."""


class IncompatibleBase(TvregError):
    """A skill was built on a different base model than the target's base."""

    def __init__(
        self, message: str, *, expected: str, found: str, hints: list[str] | tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hints=hints)
        self.expected = expected
        self.found = found


class TensorMismatch(TvregError):
    """Two checkpoints (or a skill and a model) disagree on a tensor's name, shape or dtype."""

    def __init__(self, message: str, *, tensor: str, hints: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message, hints=hints)
        self.tensor = tensor


class InvalidName(TvregError):
    """A skill name, version or file name is malformed or unsafe."""

    exit_code = 2


class ModelEnvironmentError(TvregError):
    """A model environment is missing its tvreg setup or is inconsistent."""


class WeightError(TvregError):
    """The merge weight ω of a skill cannot be determined."""


class InstallInterrupted(TvregError):
    """An install was interrupted; the model directory was left unchanged."""

    exit_code = 130


class DiskFull(TvregError):
    """The filesystem ran out of space while writing; the target was left unchanged."""


class LockHeld(TvregError):
    """Another tvreg process is working on the same model environment."""


__all__ = [
    "ArtifactError",
    "CheckpointError",
    "CorruptArtifact",
    "CorruptCheckpoint",
    "DiskFull",
    "ModelEnvironmentError",
    "IncompatibleBase",
    "InstallInterrupted",
    "InvalidManifest",
    "InvalidName",
    "LockHeld",
    "TensorMismatch",
    "TvregError",
    "UnsafeCheckpoint",
    "WeightError",
]
