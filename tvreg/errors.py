"""Every failure tvreg reports, one class per family.

The tree::

    TvregError                      base; ``str(exc)`` is the sentence a user sees
    ├── CheckpointError             a model directory that cannot be read as safetensors
    │   ├── UnsafeCheckpoint        pickle weights (.bin/.pt/.ckpt): never unpickled
    │   └── CorruptCheckpoint       a safetensors file whose header or layout is invalid
    ├── ArtifactError               a .tvskill file that cannot be trusted
    │   ├── CorruptArtifact         truncated, tampered, bomb, bad header
    │   ├── InvalidManifest         manifest fields missing or malformed
    │   ├── DecodeBudgetExceeded    a tensor larger than the decode memory budget (``TVREG_DECODE_MEMORY``)
    │   └── SketchError             a sketch file that is malformed or of another sketch version
    ├── SketchMismatch              two sketches made with other parameters cannot be compared
    ├── IncompatibleBase            skill built for another base model
    ├── TensorMismatch              missing/extra tensors, shape or dtype mismatch
    ├── InvalidName                 a name, version or tag that is unsafe or malformed
    │   └── InvalidRange            a version range or requirement spec that does not parse
    ├── InvalidCodecOption          an unknown codec or a bad codec parameter at build time
    ├── ModelEnvironmentError         a model environment (mymodel) that is not set up right
    │   ├── LockMismatch            an artifact's bytes are not the digest ``tvreg.lock`` pins
    │   ├── LockOutdated            ``--locked`` and ``tvreg.lock`` would change
    │   └── WeightsMismatch         installed weights differ from what ``tvreg.lock`` records
    ├── WeightError                 ω cannot be determined
    ├── MergeError                  an unknown merge method, a bad parameter, missing θ_pre weights
    ├── ResolutionImpossible        no set of skill versions satisfies every requirement
    ├── InstallInterrupted          Ctrl-C or a signal stopped an install; nothing changed
    ├── DiskFull                    no space left while writing; nothing changed
    ├── LockHeld                    another tvreg process holds the model environment
    ├── ConfigError                 an unreadable ``config.toml`` or no registry configured
    ├── ProjectError                a skill project (``tvskill.toml``) that cannot be published
    ├── EvaluationError             an evaluation hook that cannot be loaded or returns no scores
    ├── ExportError                 a skill set that cannot be written as the requested adapter format
    ├── SignatureError              a signature bundle or attestation that is malformed, does not cover
    │                               the artifact, or is not by a key the client trusts; a bad key file
    ├── PolicyError                 a ``tvreg.toml`` ``[policy]`` that does not parse (unknown key, bad value)
    ├── PolicyViolation             the environment's policy refuses the skill set (outside the resolver)
    ├── GateFailed                  ``install --gate``: the staged model missed a ``--require``; nothing swapped
    └── RegistryError               the registry refused a request or could not be used
        ├── RegistryUnavailable     connection failed, timed out, or 503 (``retry_after``)
        ├── AuthError               no token, a bad/expired token (401) or a role too low (403)
        ├── NotFound                no such skill, version or upload (404; also private ones)
        │   └── SketchMissing       the version was published without a sketch (404 no_sketch)
        ├── Conflict                409: a version exists with other bytes, a name collides
        └── DownloadError           short body or bytes whose digest is not the one announced

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


class DecodeBudgetExceeded(ArtifactError):
    """Decoding a tensor would need more memory than this process's decode budget allows.

    The budget (``TVREG_DECODE_MEMORY``) bounds what any manifest can make a process
    allocate: a declared shape is a claim, not a fact.
    """


class SketchError(ArtifactError):
    """A sketch (``.tvsketch``) cannot be read, or was made by a sketch version this tvreg does not read."""


class SketchMismatch(TvregError):
    """Two sketches were made with other parameters (sketch version, sizes) and cannot be compared."""


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


class InvalidCodecOption(TvregError):
    """A codec name or parameter given to ``tvreg build`` is unknown or out of range."""

    exit_code = 2


class InvalidName(TvregError):
    """A skill name, version or file name is malformed or unsafe."""

    exit_code = 2


class InvalidRange(InvalidName):
    """A version range (or the part after ``@`` in a requirement) that is neither a range nor a tag."""


class ModelEnvironmentError(TvregError):
    """A model environment is missing its tvreg setup or is inconsistent."""


class LockMismatch(ModelEnvironmentError):
    """An artifact's bytes hash to another digest than ``tvreg.lock`` pins; it is refused, never used."""

    def __init__(
        self, message: str, *, expected: str, found: str, hints: list[str] | tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hints=hints)
        self.expected = expected
        self.found = found


class LockOutdated(ModelEnvironmentError):
    """``--locked`` was given but ``tvreg.lock`` is out of date; ``reasons`` says why."""

    def __init__(self, message: str, *, reasons: list[str] | tuple[str, ...] = (), hints=()) -> None:
        super().__init__(message, hints=hints)
        self.reasons = list(reasons)


class WeightsMismatch(ModelEnvironmentError):
    """The weights in a model directory are not the ones ``tvreg.lock`` records; ``tensors`` names them."""

    def __init__(self, message: str, *, tensors: list[str] | tuple[str, ...] = (), hints=()) -> None:
        super().__init__(message, hints=hints)
        self.tensors = list(tensors)


class WeightError(TvregError):
    """The merge weight ω of a skill cannot be determined."""


class MergeError(TvregError):
    """A merge method or its parameters cannot be used for this install."""


class InstallInterrupted(TvregError):
    """An install was interrupted; the model directory was left unchanged."""

    exit_code = 130


class DiskFull(TvregError):
    """The filesystem ran out of space while writing; the target was left unchanged."""


class LockHeld(TvregError):
    """Another tvreg process is working on the same model environment."""


class ResolutionImpossible(TvregError):
    """No combination of skill versions satisfies the requirements; ``causes`` holds the reasons."""

    def __init__(self, message: str, *, causes: list[str] | tuple[str, ...] = (), hints=()) -> None:
        super().__init__(message, hints=hints)
        self.causes = list(causes)


class ConfigError(TvregError):
    """The client configuration (``config.toml``) is unreadable, or no registry is configured."""


class ProjectError(TvregError):
    """A skill project directory (``tvskill.toml``) is missing, malformed or inconsistent."""


class EvaluationError(TvregError):
    """A user-supplied evaluation hook (``module:function``) cannot be loaded, fails, or returns no scores."""


class ExportError(TvregError):
    """A skill set cannot be exported as asked (a tensor no LoRA can carry, a merge method that is no sum)."""


class SignatureError(TvregError):
    """A signature or attestation cannot be made or does not verify against the trusted keys."""


class PolicyError(TvregError):
    """An environment policy (``tvreg.toml`` ``[policy]``) cannot be read: unknown key, bad value."""

    exit_code = 2


class PolicyViolation(TvregError):
    """The environment's policy refuses a skill set (an unsigned file, a required skill removed)."""


class GateFailed(TvregError):
    """An install gate measured the staged model below a requirement; the old model was kept.

    ``metrics`` are the scores the hook measured; ``failed`` the requirements they missed.
    """

    def __init__(
        self,
        message: str,
        *,
        metrics: dict[str, float] | None = None,
        failed: list[str] | tuple[str, ...] = (),
        hints: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, hints=hints)
        self.metrics = dict(metrics or {})
        self.failed = list(failed)


class RegistryError(TvregError):
    """A registry request failed.

    ``status`` is the HTTP status (None when no response arrived), ``code`` the
    error slug of the registry's JSON body (``bad_request``, ``digest_mismatch``, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        hints: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, hints=hints)
        self.status = status
        self.code = code


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or answered 503; ``retry_after`` is in seconds."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        hints: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, status=status, code=code, hints=hints)
        self.retry_after = retry_after


class AuthError(RegistryError):
    """Not logged in, a rejected token (401), or a role too low for the request (403)."""


class NotFound(RegistryError):
    """The skill, version or upload does not exist (or is private and not readable)."""


class SketchMissing(NotFound):
    """A skill version was published without a sketch (before sketches existed)."""


class Conflict(RegistryError):
    """The request conflicts with the registry's state (a version exists with other bytes)."""


class DownloadError(RegistryError):
    """Downloaded bytes are short or do not hash to the digest the registry announced.

    ``expected`` and ``found`` are ``sha256:<hex>`` digests (``found`` is None for a
    short body, whose sizes are in the message).
    """

    def __init__(
        self,
        message: str,
        *,
        expected: str,
        found: str | None = None,
        hints: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, hints=hints)
        self.expected = expected
        self.found = found



def _tree(root: type[TvregError]) -> list[type[TvregError]]:
    return [root, *(c for sub in root.__subclasses__() for c in _tree(sub))]


# Derived, not listed: a class added to the tree is exported here (and the public-API test
# then fails until ``tvreg.__all__`` lists it too).
__all__ = sorted({cls.__name__ for cls in _tree(TvregError) if cls.__module__ == __name__})
