"""tvreg: a registry and package manager for task vectors.

The public API is listed in ``__all__``; everything else is internal.
"""

__version__ = "0.1.0"

from .artifact import Artifact  # noqa: E402
from .build import BuildResult, build_skill  # noqa: E402
from .checkpoint import Checkpoint  # noqa: E402
from .environment import init_environment  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    CheckpointError,
    CorruptArtifact,
    CorruptCheckpoint,
    DiskFull,
    IncompatibleBase,
    InstallInterrupted,
    InvalidManifest,
    InvalidName,
    LockHeld,
    ModelEnvironmentError,
    TensorMismatch,
    TvregError,
    UnsafeCheckpoint,
    WeightError,
)
from .fingerprint import fingerprint  # noqa: E402
from .install import InstallResult, install  # noqa: E402
from .lockfile import Lock, LockedSkill, read_lock  # noqa: E402
from .manifest import Manifest  # noqa: E402
from .progress import Progress  # noqa: E402

__all__ = [
    "Artifact",
    "ArtifactError",
    "BuildResult",
    "Checkpoint",
    "CheckpointError",
    "CorruptArtifact",
    "CorruptCheckpoint",
    "DiskFull",
    "IncompatibleBase",
    "InstallInterrupted",
    "InstallResult",
    "InvalidManifest",
    "InvalidName",
    "Lock",
    "LockHeld",
    "LockedSkill",
    "Manifest",
    "ModelEnvironmentError",
    "Progress",
    "TensorMismatch",
    "TvregError",
    "UnsafeCheckpoint",
    "WeightError",
    "__version__",
    "build_skill",
    "fingerprint",
    "init_environment",
    "install",
    "read_lock",
]
