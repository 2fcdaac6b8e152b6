"""tvreg: a registry and package manager for task vectors.

The public API is exactly ``__all__``; everything else is internal. Names load lazily
(PEP 562): ``import tvreg`` imports nothing but this file and ``tvreg._version``, and the
module that defines a name (and torch, where that module needs it) is imported on first
access. So ``import tvreg`` and ``tvreg --help`` stay off torch.

Seven public functions share their name with the module that defines them (``install``,
``check``, ``fingerprint``, ``publish``, ``sweep``, ``sync``, ``verify``). The attribute
``tvreg.install`` is always the function, whatever was imported before: the package
refuses to let the import system rebind those names to their submodules. The module
itself is ``importlib.import_module("tvreg.install")`` (``import tvreg.install as m``
gives the function, as it always has). The modules become ``_``-private in a later change.
"""

import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._env.environment import init_environment
    from ._env.lockfile import Lock, LockedSkill, read_lock
    from ._env.operations import InstallResult, install, sync, uninstall, upgrade
    from ._env.verify import VerifyResult, verify
    from .artifact import Artifact
    from .build import BuildResult, build_skill
    from .cache import BlobCache
    from .check import check
    from .checkpoint import Checkpoint
    from .client import RegistryClient
    from .errors import (
        ArtifactError,
        AuthError,
        CheckpointError,
        ConfigError,
        Conflict,
        CorruptArtifact,
        CorruptCheckpoint,
        DecodeBudgetExceeded,
        DiskFull,
        DownloadError,
        EvaluationError,
        ExportError,
        GateFailed,
        IncompatibleBase,
        InstallInterrupted,
        InvalidCodecOption,
        InvalidManifest,
        InvalidName,
        InvalidRange,
        LockHeld,
        LockMismatch,
        LockOutdated,
        MergeError,
        ModelEnvironmentError,
        NotFound,
        PolicyError,
        PolicyViolation,
        ProjectError,
        RegistryError,
        RegistryUnavailable,
        ResolutionImpossible,
        SignatureError,
        SketchError,
        SketchMismatch,
        SketchMissing,
        TensorMismatch,
        TvregError,
        UnsafeCheckpoint,
        WeightError,
        WeightsMismatch,
    )
    from .evaluate import EvalHook, load_hook
    from .export import ExportResult, export_peft
    from .fetch import FetchedSkill, fetch_skill
    from .fingerprint import fingerprint
    from .interference import InterferenceReport, PairReport
    from .manifest import Manifest
    from .policy import Policy, check_policy, load_policy
    from .progress import Progress
    from .project import SkillProject, load_project
    from .publish import PublishResult, publish
    from .refs import SkillRef, parse_ref
    from .sketch import Sketch
    from .sweep import SweepPoint, SweepResult, sweep
    from .taskvector import TaskVector

_SOURCES: dict[str, str] = {
    "Artifact": "artifact",
    "ArtifactError": "errors",
    "AuthError": "errors",
    "BlobCache": "cache",
    "BuildResult": "build",
    "Checkpoint": "checkpoint",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "Conflict": "errors",
    "CorruptArtifact": "errors",
    "CorruptCheckpoint": "errors",
    "DecodeBudgetExceeded": "errors",
    "DiskFull": "errors",
    "DownloadError": "errors",
    "EvalHook": "evaluate",
    "EvaluationError": "errors",
    "ExportError": "errors",
    "ExportResult": "export",
    "FetchedSkill": "fetch",
    "GateFailed": "errors",
    "IncompatibleBase": "errors",
    "InstallInterrupted": "errors",
    "InstallResult": "_env.operations",
    "InterferenceReport": "interference",
    "InvalidCodecOption": "errors",
    "InvalidManifest": "errors",
    "InvalidName": "errors",
    "InvalidRange": "errors",
    "Lock": "_env.lockfile",
    "LockHeld": "errors",
    "LockMismatch": "errors",
    "LockOutdated": "errors",
    "LockedSkill": "_env.lockfile",
    "Manifest": "manifest",
    "MergeError": "errors",
    "ModelEnvironmentError": "errors",
    "NotFound": "errors",
    "PairReport": "interference",
    "Policy": "policy",
    "PolicyError": "errors",
    "PolicyViolation": "errors",
    "Progress": "progress",
    "ProjectError": "errors",
    "PublishResult": "publish",
    "RegistryClient": "client",
    "RegistryError": "errors",
    "RegistryUnavailable": "errors",
    "ResolutionImpossible": "errors",
    "SignatureError": "errors",
    "Sketch": "sketch",
    "SketchError": "errors",
    "SketchMismatch": "errors",
    "SketchMissing": "errors",
    "SkillProject": "project",
    "SkillRef": "refs",
    "SweepPoint": "sweep",
    "SweepResult": "sweep",
    "TaskVector": "taskvector",
    "TensorMismatch": "errors",
    "TvregError": "errors",
    "UnsafeCheckpoint": "errors",
    "VerifyResult": "_env.verify",
    "WeightError": "errors",
    "WeightsMismatch": "errors",
    "build_skill": "build",
    "check": "check",
    "check_policy": "policy",
    "export_peft": "export",
    "fetch_skill": "fetch",
    "fingerprint": "fingerprint",
    "init_environment": "_env.environment",
    "install": "_env.operations",
    "load_hook": "evaluate",
    "load_policy": "policy",
    "load_project": "project",
    "parse_ref": "refs",
    "publish": "publish",
    "read_lock": "_env.lockfile",
    "sweep": "sweep",
    "sync": "_env.operations",
    "uninstall": "_env.operations",
    "upgrade": "_env.operations",
    "verify": "_env.verify",
}

__all__ = [
    "Artifact",
    "ArtifactError",
    "AuthError",
    "BlobCache",
    "BuildResult",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "Conflict",
    "CorruptArtifact",
    "CorruptCheckpoint",
    "DecodeBudgetExceeded",
    "DiskFull",
    "DownloadError",
    "EvalHook",
    "EvaluationError",
    "ExportError",
    "ExportResult",
    "FetchedSkill",
    "GateFailed",
    "IncompatibleBase",
    "InstallInterrupted",
    "InstallResult",
    "InterferenceReport",
    "InvalidCodecOption",
    "InvalidManifest",
    "InvalidName",
    "InvalidRange",
    "Lock",
    "LockHeld",
    "LockMismatch",
    "LockOutdated",
    "LockedSkill",
    "Manifest",
    "MergeError",
    "ModelEnvironmentError",
    "NotFound",
    "PairReport",
    "Policy",
    "PolicyError",
    "PolicyViolation",
    "Progress",
    "ProjectError",
    "PublishResult",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailable",
    "ResolutionImpossible",
    "SignatureError",
    "Sketch",
    "SketchError",
    "SketchMismatch",
    "SketchMissing",
    "SkillProject",
    "SkillRef",
    "SweepPoint",
    "SweepResult",
    "TaskVector",
    "TensorMismatch",
    "TvregError",
    "UnsafeCheckpoint",
    "VerifyResult",
    "WeightError",
    "WeightsMismatch",
    "__version__",
    "build_skill",
    "check",
    "check_policy",
    "export_peft",
    "fetch_skill",
    "fingerprint",
    "init_environment",
    "install",
    "load_hook",
    "load_policy",
    "load_project",
    "parse_ref",
    "publish",
    "read_lock",
    "sweep",
    "sync",
    "uninstall",
    "upgrade",
    "verify",
]

# The public functions that share a name with a tvreg submodule (or a compatibility alias of one).
_SHADOWED = frozenset({"check", "fingerprint", "install", "publish", "sweep", "sync", "verify"})


class _Package(_types.ModuleType):
    """The module type of ``tvreg``: keeps each public function bound over its same-named submodule."""

    def __setattr__(self, name: str, value: _typing.Any) -> None:
        if name in _SHADOWED and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> _typing.Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
