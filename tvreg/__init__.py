"""tvreg: a registry and package manager for task vectors.

The public API is listed in ``__all__``; everything else is internal.
"""

__version__ = "0.1.0"

from .artifact import Artifact  # noqa: E402
from .build import BuildResult, build_skill  # noqa: E402
from .cache import BlobCache  # noqa: E402
from .check import check  # noqa: E402
from .checkpoint import Checkpoint  # noqa: E402
from .client import RegistryClient  # noqa: E402
from .environment import init_environment  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    AuthError,
    CheckpointError,
    ConfigError,
    Conflict,
    CorruptArtifact,
    CorruptCheckpoint,
    DiskFull,
    DownloadError,
    EvaluationError,
    IncompatibleBase,
    InstallInterrupted,
    InvalidManifest,
    InvalidName,
    LockHeld,
    LockMismatch,
    LockOutdated,
    MergeError,
    ModelEnvironmentError,
    NotFound,
    ProjectError,
    RegistryError,
    RegistryUnavailable,
    SketchError,
    SketchMismatch,
    SketchMissing,
    TensorMismatch,
    TvregError,
    UnsafeCheckpoint,
    WeightError,
    WeightsMismatch,
)
from .evaluate import EvalHook, load_hook  # noqa: E402
from .fetch import FetchedSkill, fetch_skill  # noqa: E402
from .fingerprint import fingerprint  # noqa: E402
from .install import InstallResult, install, uninstall  # noqa: E402
from .interference import InterferenceReport, PairReport  # noqa: E402
from .lockfile import Lock, LockedSkill, read_lock  # noqa: E402
from .manifest import Manifest  # noqa: E402
from .progress import Progress  # noqa: E402
from .project import SkillProject, load_project  # noqa: E402
from .publish import PublishResult, publish  # noqa: E402
from .refs import SkillRef, parse_ref  # noqa: E402
from .sketch import Sketch  # noqa: E402
from .sweep import SweepPoint, SweepResult, sweep  # noqa: E402
from .sync import sync, upgrade  # noqa: E402
from .verify import VerifyResult, verify  # noqa: E402

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
    "DiskFull",
    "DownloadError",
    "EvalHook",
    "EvaluationError",
    "FetchedSkill",
    "IncompatibleBase",
    "InstallInterrupted",
    "InstallResult",
    "InterferenceReport",
    "InvalidManifest",
    "InvalidName",
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
    "Progress",
    "ProjectError",
    "PublishResult",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailable",
    "Sketch",
    "SketchError",
    "SketchMismatch",
    "SketchMissing",
    "SkillProject",
    "SkillRef",
    "SweepPoint",
    "SweepResult",
    "TensorMismatch",
    "TvregError",
    "UnsafeCheckpoint",
    "VerifyResult",
    "WeightError",
    "WeightsMismatch",
    "__version__",
    "build_skill",
    "check",
    "fetch_skill",
    "fingerprint",
    "init_environment",
    "install",
    "load_hook",
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
