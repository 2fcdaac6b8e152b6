"""What a skill is: the manifest stored in every artifact's header.

The manifest is JSON under the ``tvreg.manifest`` key of the safetensors
``__metadata__``, so reading the header alone answers "is this skill compatible
with my model?" without touching tensor data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

from .._names import validate_dependencies, validate_name, validate_version
from ..errors import InvalidManifest, InvalidName
from ._json import strict_json_loads

FORMAT_VERSION = 1
SKILL_KINDS = ("task_vector", "delta_from_general")
DATASET_UNITS = ("examples", "tokens")
@dataclass(frozen=True)
class TensorEntry:
    """How one tensor is stored: codec, the base tensor's shape/dtype, and stored bytes' digest."""

    codec: str
    shape: tuple[int, ...]
    dtype: str
    stored_bytes: int
    sha256: str
    params: dict = field(default_factory=dict)
    rel_error: float | None = None
    """‖τ̂ − τ‖ / ‖τ‖ measured at build (0 for lossless codecs; None in artifacts of tvreg 0.1)."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def ratio(self) -> float:
        """How many times smaller the stored blob is than the fp32 τ tensor."""
        return self.numel * 4 / self.stored_bytes if self.stored_bytes else float("inf")


@dataclass(frozen=True)
class Manifest:
    """Everything tvreg knows about a skill version.

    ``base_fingerprint`` is the fingerprint of θ_pre for ``kind="task_vector"`` (or of
    the general model for ``delta_from_general``). ``dataset_size`` is |D|, used for the
    default merge weight |D|/|G|.
    """

    name: str
    version: str
    base_fingerprint: str
    kind: str = "task_vector"
    dataset_size: int | None = None
    dataset_unit: str = "examples"
    description: str = ""
    license: str | None = None
    source: dict = field(default_factory=dict)
    requires: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    created_by: str = ""
    format_version: int = FORMAT_VERSION
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    calibration: dict | None = None
    """What a calibrated ``auto`` build measured (:class:`tvreg._build.calibrate.Calibration`); absent otherwise."""

    def to_json(self) -> str:
        data = asdict(self)
        if data["calibration"] is None:
            # Absent rather than null, so uncalibrated artifacts keep the bytes they always had.
            del data["calibration"]
        data["tensors"] = {k: {**asdict(v), "shape": list(v.shape)} for k, v in sorted(self.tensors.items())}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def report(self) -> list:
        """Per-tensor compression report rows (:class:`tvreg._format.codecs.report.TensorLine`)."""
        from .codecs.report import TensorLine

        return [TensorLine(n, t.codec, t.numel, t.stored_bytes, t.rel_error) for n, t in self.tensors.items()]

    @property
    def lossy(self) -> bool:
        """Whether any tensor is stored by a lossy codec (τ̂ may differ from τ)."""
        from .codecs.report import is_lossy

        return is_lossy(self.report())

    @classmethod
    def from_json(cls, text: str, *, where: str) -> Manifest:
        """Parse and validate a manifest; ``where`` names the artifact in errors."""

        def bad(what: str) -> InvalidManifest:
            return InvalidManifest(f"the manifest of `{where}` is invalid: {what}.")

        try:
            data = strict_json_loads(text)
        except ValueError as exc:
            raise bad(f"not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise bad("not a JSON object")
        fmt = data.get("format_version")
        if fmt != FORMAT_VERSION:
            raise InvalidManifest(
                f"`{where}` uses tvreg format version {fmt!r}; this tvreg reads version {FORMAT_VERSION}.",
                hints=["upgrade tvreg"],
            )
        for key, typ in (("name", str), ("version", str), ("base_fingerprint", str), ("kind", str)):
            if not isinstance(data.get(key), typ):
                raise bad(f"field `{key}` is missing or not a {typ.__name__}")
        try:
            validate_name(data["name"])
            validate_version(data["version"])
        except InvalidName as exc:
            raise bad(exc.message.rstrip(".")) from exc
        if not re.fullmatch(r"[0-9a-f]{64}", data["base_fingerprint"]):
            raise bad("`base_fingerprint` is not 64 hex digits")
        if data["kind"] not in SKILL_KINDS:
            raise bad(f"unknown kind `{data['kind']}`")
        size = data.get("dataset_size")
        if size is not None and (type(size) is not int or size <= 0):
            raise bad("`dataset_size` must be a positive integer")
        for key, types in (("description", str), ("created_by", str), ("license", (str, type(None)))):
            if not isinstance(data.get(key, ""), types):
                raise bad(f"`{key}` must be a string")
        if not isinstance(data.get("source", {}), dict):
            raise bad("`source` must be an object")
        calibration = data.get("calibration")
        if calibration is not None:
            if not isinstance(calibration, dict):
                raise bad("`calibration` must be an object")
            for key in ("retention", "target", "loss_pre", "loss_finetuned", "loss_chosen"):
                value = calibration.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise bad(f"`calibration.{key}` must be a finite number")
            bound = calibration.get("retention_bound")
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound)
            ):
                raise bad("`calibration.retention_bound` must be a finite number or null")
            for key in ("margin", "plan"):
                if not isinstance(calibration.get(key), (dict, type(None))):
                    raise bad(f"`calibration.{key}` must be an object or null")
        if data.get("dataset_unit", "examples") not in DATASET_UNITS:
            raise bad(f"`dataset_unit` must be one of {', '.join(DATASET_UNITS)}")
        for key in ("requires", "conflicts"):
            deps = data.get(key, {})
            if not isinstance(deps, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in deps.items()
            ):
                raise bad(f"`{key}` must map skill names to version ranges")
            try:
                validate_dependencies(deps)
            except InvalidName as exc:
                raise bad(f"`{key}` entry {exc.message.rstrip('.')}") from exc
        tensors_raw = data.get("tensors")
        if not isinstance(tensors_raw, dict):
            raise bad("`tensors` is missing")
        tensors: dict[str, TensorEntry] = {}
        for name, entry in tensors_raw.items():
            # Tensor names are matched against the base model's, never used as paths;
            # control characters can only be an attack on terminals and logs.
            if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
                raise bad(f"tensor name {name!r} is empty or holds control characters")
            try:
                t = TensorEntry(
                    codec=entry["codec"],
                    shape=tuple(entry["shape"]),
                    dtype=entry["dtype"],
                    stored_bytes=entry["stored_bytes"],
                    sha256=entry["sha256"],
                    params=entry.get("params", {}),
                    rel_error=entry.get("rel_error"),
                )
            except (KeyError, TypeError, AttributeError) as exc:
                raise bad(f"tensor `{name}` entry lacks {exc}") from exc
            if not all(type(d) is int and d >= 0 for d in t.shape) or type(t.stored_bytes) is not int:
                raise bad(f"tensor `{name}` has an invalid shape or size")
            if not isinstance(t.codec, str) or not isinstance(t.params, dict):
                raise bad(f"tensor `{name}` has an invalid codec or codec parameters")
            err = t.rel_error
            if err is not None and (isinstance(err, bool) or not isinstance(err, (int, float)) or not err >= 0):
                raise bad(f"tensor `{name}` has an invalid `rel_error`")
            tensors[name] = t
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in known and k != "tensors"}
        return cls(**fields, tensors=tensors)
