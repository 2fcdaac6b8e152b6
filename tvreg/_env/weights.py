"""The default merge weight ω = |D|/|G| (the one rule), the output dtypes, and method parameters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .._format.artifact import Artifact
from .._merge import get_method
from ..errors import ModelEnvironmentError, WeightError
from .lockfile import Lock

OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_weight(
    label: str, name: str, dataset_size: int | None, dataset_unit: str, lock: Lock, model_dir: Path
) -> tuple[float, str]:
    """The default ω = |D|/|G| of a skill and how it was computed, or a WeightError saying what is missing."""
    if dataset_size is None:
        raise WeightError(
            f"skill `{label}` does not record its dataset size |D|, so its default weight |D|/|G| is unknown.",
            hints=[f"pass `--weight {name}=0.3` (any ω you choose)"],
        )
    if lock.general_size is None:
        raise WeightError(
            f"the size of the general model's instruction-tuning set |G| is unknown for `{model_dir}`, "
            f"so the default weight of `{name}` (|D|/|G|) cannot be computed.",
            hints=[
                f"pass `--general-size N` (or run `tvreg init {model_dir} --general-size N`)",
                f"or give the weight explicitly: `--weight {name}=0.3`",
            ],
        )
    if dataset_unit != lock.general_size_unit:
        raise WeightError(
            f"skill `{label}` counts |D| in {dataset_unit} but |G| of `{model_dir}` is in "
            f"{lock.general_size_unit}; the ratio would be meaningless.",
            hints=[f"give the weight explicitly: `--weight {name}=0.3`"],
        )
    return dataset_size / lock.general_size, f"|D|/|G| = {dataset_size}/{lock.general_size}"


def _default_weight(artifact: Artifact, lock: Lock, model_dir: Path) -> tuple[float, str]:
    m = artifact.manifest
    return default_weight(m.label, m.name, m.dataset_size, m.dataset_unit, lock, model_dir)


def _check_output_dtype(output_dtype: str | None) -> torch.dtype | None:
    if output_dtype is None:
        return None
    if output_dtype not in OUTPUT_DTYPES:
        raise ModelEnvironmentError(
            f"unsupported output dtype `{output_dtype}`.",
            hints=[f"choose one of: {', '.join(OUTPUT_DTYPES)} (or leave it out to keep G's dtypes)"],
        )
    return OUTPUT_DTYPES[output_dtype]


def _resolve_params(method: str, params: Mapping[str, object]) -> dict[str, object]:
    """The method's complete parameters; ``base_weights`` becomes an absolute path when it is one."""
    resolved = get_method(method).resolve_params(params)
    where = resolved.get("base_weights")
    if isinstance(where, str) and Path(where).expanduser().exists():
        resolved["base_weights"] = str(Path(where).expanduser().resolve())
    return resolved
