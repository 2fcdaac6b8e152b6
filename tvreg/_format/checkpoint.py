"""Open a Hugging Face model checkpoint and read its tensors one at a time.

A checkpoint is a directory with ``config.json`` and safetensors weights, either one
``model.safetensors`` or shards listed by ``model.safetensors.index.json``; or a Hub
model id already in the local HF cache (resolved by ``huggingface_hub`` offline).
Pickle weights are refused and never opened: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import CheckpointError, CorruptCheckpoint, UnsafeCheckpoint
from .safetensors_io import SafetensorsFile, TensorInfo

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def resolve_model_path(ref: str | os.PathLike[str]) -> Path:
    """Turn a directory, a ``.safetensors`` file or a cached Hub id into a local path.

    Raises:
        UnsafeCheckpoint: ``ref`` is a pickle file.
        CheckpointError: nothing usable exists at ``ref`` or in the local HF cache.
    """
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_file() and path.suffix in PICKLE_SUFFIXES:
            raise _unsafe(path)
        return path
    text = str(ref)
    if text.count("/") <= 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            return Path(snapshot_download(repo_id=text, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
            pass
    raise CheckpointError(
        f"no model found at `{ref}`: it is neither a local path nor a model in the local Hugging Face cache.",
        hints=["pass a model directory, or download the model first with `huggingface-cli download`"],
    )


def _unsafe(path: Path) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"`{path}` holds pickle weights, which tvreg never loads because unpickling can run arbitrary code.",
        hints=[
            "convert the model to safetensors (e.g. `model.save_pretrained(dir, safe_serialization=True)`)"
        ],
    )


def _safe_member(directory: Path, name: object) -> Path:
    if (
        not isinstance(name, str)
        or not name
        or name != os.path.basename(name)
        or name in (".", "..")
        or "\\" in name
        or "\x00" in name
        or not name.endswith(".safetensors")
    ):
        raise CorruptCheckpoint(f"`{directory / INDEX_NAME}` names an unsafe shard file {name!r}.")
    return directory / name


class Checkpoint:
    """A model's weights, possibly sharded, read lazily tensor by tensor.

    Example:
        >>> with Checkpoint.open("path/to/model") as ckpt:  # doctest: +SKIP
        ...     for name in ckpt.names():
        ...         t = ckpt.read(name)
    """

    def __init__(self, directory: Path, files: list[Path], index: dict[str, str] | None) -> None:
        self.directory = directory
        self.files = files
        self.is_sharded = index is not None
        self._handles: list[SafetensorsFile] = []
        self._where: dict[str, tuple[SafetensorsFile, TensorInfo]] = {}
        try:
            for file in files:
                handle = SafetensorsFile(file)
                self._handles.append(handle)
                for name, info in handle.tensors.items():
                    if name in self._where:
                        raise CorruptCheckpoint(
                            f"tensor `{name}` appears in both `{self._where[name][0].path.name}` and `{file.name}`."
                        )
                    if index is not None and index.get(name) != file.name:
                        raise CorruptCheckpoint(
                            f"`{directory / INDEX_NAME}` does not list tensor `{name}` under `{file.name}`."
                        )
                    self._where[name] = (handle, info)
            if index is not None:
                missing = sorted(set(index) - set(self._where))
                if missing:
                    raise CorruptCheckpoint(
                        f"`{directory / INDEX_NAME}` lists tensor `{missing[0]}` but no shard contains it."
                    )
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, ref: str | os.PathLike[str]) -> Checkpoint:
        """Open a model directory, a single ``.safetensors`` file, or a cached Hub id.

        Raises:
            UnsafeCheckpoint: the weights are pickle files.
            CheckpointError / CorruptCheckpoint: no weights, or malformed ones.
        """
        path = resolve_model_path(ref)
        if path.is_file():
            if path.suffix != ".safetensors":
                raise CheckpointError(f"`{path}` is not a safetensors file.")
            return cls(path.parent, [path], None)
        index_path = path / INDEX_NAME
        if index_path.exists():
            try:
                index = json.loads(index_path.read_text())
                weight_map = index["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptCheckpoint(f"`{index_path}` is not a valid safetensors index ({exc}).") from exc
            files = sorted({_safe_member(path, f) for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise CorruptCheckpoint(f"`{index_path}` names shard `{f.name}`, which is missing.")
            return cls(path, files, dict(weight_map))
        if (path / SINGLE_NAME).is_file():
            return cls(path, [path / SINGLE_NAME], None)
        pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else []
        if pickles:
            raise _unsafe(pickles[0])
        raise CheckpointError(
            f"`{path}` has no safetensors weights (`{SINGLE_NAME}` or `{INDEX_NAME}`).",
            hints=["save the model with `save_pretrained(..., safe_serialization=True)`"],
        )

    @property
    def handles(self) -> list[SafetensorsFile]:
        """One open file per shard, in ``files`` order."""
        return list(self._handles)

    def names(self) -> list[str]:
        """Tensor names in storage order (file by file, offset by offset): sequential reads."""
        return list(self._where)

    def info(self, name: str) -> TensorInfo:
        return self._where[name][1]

    def infos(self) -> dict[str, TensorInfo]:
        return {name: info for name, (_, info) in self._where.items()}

    def file_of(self, name: str) -> SafetensorsFile:
        return self._where[name][0]

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def read(self, name: str, *, into: torch.Tensor | None = None) -> torch.Tensor:
        """One tensor in fresh memory, or in the front of the uint8 buffer ``into``."""
        handle, _ = self._where[name]
        return handle.read(name, into=into)

    def read_float32(self, name: str) -> torch.Tensor:
        t = self.read(name)
        return t if t.dtype == torch.float32 else t.to(torch.float32)

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for _, info in self._where.values())

    def config(self) -> dict:
        cfg = self.directory / "config.json"
        try:
            return json.loads(cfg.read_text()) if cfg.is_file() else {}
        except ValueError as exc:
            raise CheckpointError(f"`{cfg}` is not valid JSON ({exc}).") from exc

    def close(self) -> None:
        for h in self._handles:
            h.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)
