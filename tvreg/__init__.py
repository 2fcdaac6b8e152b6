"""tvreg: a registry and package manager for task vectors.

The public API is exactly ``__all__``; everything else is internal. Names load lazily
(PEP 562): ``import tvreg`` imports nothing but this file and ``tvreg._version``, and the
module that defines a name (and torch, where that module needs it) is imported on first
access. So ``import tvreg`` and ``tvreg --help`` stay off torch.

Implementation lives in ``_``-private packages (``_format``, ``_registry``, ``_env``,
``_build``, ``_merge``, ``_util``), so no public name shadows a module: ``tvreg.install`` is the
function, and the public modules are only ``tvreg``, ``tvreg.errors``, ``tvreg.taskvector``,
``tvreg.cli`` and ``tvreg.kernels``.
"""

import importlib as _importlib
import typing as _typing

from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._build.build import BuildResult, build_skill
    from ._env.check import check
    from ._env.environment import init_environment
    from ._env.evaluate import EvalHook, load_hook
    from ._env.export import ExportResult, export_peft
    from ._env.lockfile import Lock, LockedSkill, read_lock
    from ._env.operations import InstallResult, install, sync, uninstall, upgrade
    from ._env.policy import Policy, check_policy, load_policy
    from ._env.sweep import SweepPoint, SweepResult, sweep
    from ._env.verify import VerifyResult, verify
    from ._format.artifact import Artifact
    from ._format.checkpoint import Checkpoint
    from ._format.fingerprint import fingerprint
    from ._format.interference import InterferenceReport, PairReport
    from ._format.manifest import Manifest
    from ._format.sketch import Sketch
    from ._registry.cache import BlobCache
    from ._registry.client import RegistryClient
    from ._registry.fetch import FetchedSkill, fetch_skill
    from ._registry.project import SkillProject, load_project
    from ._registry.publish import PublishResult, publish
    from ._registry.refs import SkillRef, parse_ref
    from ._util.progress import Progress
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
    from .taskvector import TaskVector

_SOURCES: dict[str, str] = {
    "Artifact": "_format.artifact",
    "ArtifactError": "errors",
    "AuthError": "errors",
    "BlobCache": "_registry.cache",
    "BuildResult": "_build.build",
    "Checkpoint": "_format.checkpoint",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "Conflict": "errors",
    "CorruptArtifact": "errors",
    "CorruptCheckpoint": "errors",
    "DecodeBudgetExceeded": "errors",
    "DiskFull": "errors",
    "DownloadError": "errors",
    "EvalHook": "_env.evaluate",
    "EvaluationError": "errors",
    "ExportError": "errors",
    "ExportResult": "_env.export",
    "FetchedSkill": "_registry.fetch",
    "GateFailed": "errors",
    "IncompatibleBase": "errors",
    "InstallInterrupted": "errors",
    "InstallResult": "_env.operations",
    "InterferenceReport": "_format.interference",
    "InvalidCodecOption": "errors",
    "InvalidManifest": "errors",
    "InvalidName": "errors",
    "InvalidRange": "errors",
    "Lock": "_env.lockfile",
    "LockHeld": "errors",
    "LockMismatch": "errors",
    "LockOutdated": "errors",
    "LockedSkill": "_env.lockfile",
    "Manifest": "_format.manifest",
    "MergeError": "errors",
    "ModelEnvironmentError": "errors",
    "NotFound": "errors",
    "PairReport": "_format.interference",
    "Policy": "_env.policy",
    "PolicyError": "errors",
    "PolicyViolation": "errors",
    "Progress": "_util.progress",
    "ProjectError": "errors",
    "PublishResult": "_registry.publish",
    "RegistryClient": "_registry.client",
    "RegistryError": "errors",
    "RegistryUnavailable": "errors",
    "ResolutionImpossible": "errors",
    "SignatureError": "errors",
    "Sketch": "_format.sketch",
    "SketchError": "errors",
    "SketchMismatch": "errors",
    "SketchMissing": "errors",
    "SkillProject": "_registry.project",
    "SkillRef": "_registry.refs",
    "SweepPoint": "_env.sweep",
    "SweepResult": "_env.sweep",
    "TaskVector": "taskvector",
    "TensorMismatch": "errors",
    "TvregError": "errors",
    "UnsafeCheckpoint": "errors",
    "VerifyResult": "_env.verify",
    "WeightError": "errors",
    "WeightsMismatch": "errors",
    "build_skill": "_build.build",
    "check": "_env.check",
    "check_policy": "_env.policy",
    "export_peft": "_env.export",
    "fetch_skill": "_registry.fetch",
    "fingerprint": "_format.fingerprint",
    "init_environment": "_env.environment",
    "install": "_env.operations",
    "load_hook": "_env.evaluate",
    "load_policy": "_env.policy",
    "load_project": "_registry.project",
    "parse_ref": "_registry.refs",
    "publish": "_registry.publish",
    "read_lock": "_env.lockfile",
    "sweep": "_env.sweep",
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

def __getattr__(name: str) -> _typing.Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
