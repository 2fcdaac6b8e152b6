"""The ``.tvskill`` file: one safetensors file holding a manifest and one coded blob per tensor.

Layout (see docs/format.md): a standard safetensors file whose ``__metadata__`` has
``tvreg.manifest`` (JSON, :class:`~tvreg._format.manifest.Manifest`) and ``format: tvskill``,
and whose tensors are 1-D ``U8`` arrays named after the model tensor they encode.
Any safetensors reader can list it; the header alone tells compatibility; each
tensor decodes independently (random access), and each blob's SHA-256 is in the
manifest so a tampered byte is caught when that tensor is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import CorruptArtifact, InvalidManifest
from . import statcache
from .codecs import get_codec
from .codecs.budget import charge
from .codecs.forms import StoredForm, Undecoded
from .codecs.verify import verify_stored
from .codecs.zstd_frame import buffer
from .fsutil import WriteBehind, append_hashed, disk_errors, file_sha256, fsync_dir, hash_mapped, make_temp
from .manifest import Manifest, TensorEntry
from .safetensors_io import SafetensorsFile, build_header

MANIFEST_KEY = "tvreg.manifest"
_DIGESTS = "digests"
_VERIFIED = "verified"


def remember_verified(path: Path, digest: str, *, read_since_ns: int | None = None) -> None:
    """Remember that the artifact at ``path``, as it is now, with ``digest`` passed every check
    :func:`tvreg._registry.project.verify_artifact` makes (tvreg built it, or decoded every tensor).

    Keyed by the file's stat identity (:mod:`tvreg._format.statcache`): any later write to the file
    forgets it. ``read_since_ns`` as for :func:`tvreg._format.statcache.remember`; None only when tvreg
    wrote the file itself.
    """
    statcache.remember(_VERIFIED, Path(path), digest, read_since_ns=read_since_ns)


def known_verified(path: Path) -> str | None:
    """The digest of ``path`` if it is unchanged since it was verified or built by tvreg, else None."""
    known = statcache.lookup(_VERIFIED, Path(path))
    if not (isinstance(known, str) and known.startswith("sha256:")):
        return None
    return known if file_digest(Path(path)) == known else None


def file_digest(path: Path, *, fresh: bool = False) -> str:
    """``sha256:<hex>`` of a whole file, remembered while the file is unchanged (:mod:`tvreg._format.statcache`).

    ``fresh=True`` reads every byte whatever was remembered.
    """
    if not fresh:
        known = statcache.lookup(_DIGESTS, Path(path))
        if isinstance(known, str) and known.startswith("sha256:"):
            return known
    started = time.time_ns()
    digest = file_sha256(Path(path))
    statcache.remember(_DIGESTS, Path(path), digest, read_since_ns=started)
    return digest


RESERVE_FROM_BYTES = 64 << 20
"""τ this large (fp32 bytes) or larger is written behind a reserved header (:func:`header_reserve`)."""


def header_reserve(manifest: Manifest, tensors: Sequence[tuple[str, int]]) -> int:
    """Bytes to leave for the JSON header of an artifact of ``tensors`` (name, element count) before its body.

    Why: the header lists every blob's size and digest, so it is known only once the last
    blob is coded; leaving room for it lets the body be written in place in the final file,
    synced while it grows, where it was otherwise copied after the header at the end (1.5 s
    and a file-sized ``fsync`` with one core idle, for a 535 MiB artifact). The estimate is
    generous (~2x the headers of every codec measured: per tensor its name twice and ~250
    bytes, per million entries ≤ 100 bytes of frame sizes); the unused room is spaces after
    the JSON, which safetensors allows. A header that still does not fit is written the old
    way. The result keeps the body at a page boundary (``8 + reserve`` is a multiple of 4096).
    """
    size = 2048 + len(manifest.to_json()) * 5 // 4
    for name, numel in tensors:
        size += 2 * len(name.encode()) + 320 + 128 * (-(-numel // (1 << 20)))
    return -(-(size + 8) // 4096) * 4096 - 8


class ArtifactWriter:
    """Write a ``.tvskill`` atomically while tensors arrive one at a time.

    Blobs stream into a temporary file beside the output; :meth:`finish` writes the header
    (now that every size is known), fsyncs the file and renames it into place. Nothing
    appears at ``path`` unless the whole artifact was written.

    With ``reserve`` (:func:`header_reserve`), the blobs go straight into the final
    temporary file after that many bytes left for the header, and are synced to disk while
    they are written (:class:`~tvreg._format.fsutil.WriteBehind`); the header is then
    written into the room, padded with spaces. Without it, or when the header needs more
    room, the body goes to a file of its own and is copied after the header at the end.
    """

    def __init__(self, path: Path, manifest: Manifest, *, reserve: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self._entries: dict[str, TensorEntry] = {}
        self._order: list[str] = []
        self._start = 8 + reserve if reserve > 0 else 0
        self._behind: WriteBehind | None = None
        self._copy_path: str | None = None
        if self._start:
            fd, self._body_path = make_temp(self.path.parent, self.path.name)
            self._body = os.fdopen(fd, "wb")
            self._body.seek(self._start)
            self._behind = WriteBehind()
        else:
            fd, self._body_path = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".body", dir=self.path.parent)
            self._body = os.fdopen(fd, "wb")
        self.digest: str | None = None
        """``sha256:<hex>`` of the finished file, computed while :meth:`finish` writes it."""

    def add(
        self,
        name: str,
        data: bytes,
        *,
        codec: str,
        shape: tuple[int, ...],
        dtype: str,
        params: dict,
        rel_error: float | None = None,
    ) -> None:
        if name in self._entries:
            raise ValueError(f"tensor `{name}` added twice")
        with disk_errors(self.path):
            self._body.write(data)
            if self._behind is not None:
                self._behind.wrote(self._body, len(data))
        self._entries[name] = TensorEntry(
            codec=codec,
            shape=tuple(shape),
            dtype=dtype,
            stored_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            params=params,
            rel_error=rel_error,
        )
        self._order.append(name)

    def finish(self) -> Manifest:
        manifest = replace(self.manifest, tensors=dict(self._entries))
        head, _ = build_header(
            [(n, "U8", (self._entries[n].stored_bytes,)) for n in self._order],
            {MANIFEST_KEY: manifest.to_json(), "format": "tvskill"},
        )
        try:
            if self._start and len(head) <= self._start:
                self._finish_in_place(head)
            else:
                self._finish_by_copy(head)
            os.replace(self._copy_path or self._body_path, self.path)
            fsync_dir(self.path.parent)
            # tvreg wrote these bytes itself, so the digest is remembered at once (no settle wait).
            statcache.remember(_DIGESTS, self.path, self.digest)
        finally:
            self.abort()
        return manifest

    def _finish_in_place(self, head: bytes) -> None:
        """Write ``head`` (padded) into the room left before the body, hash the file while it is synced."""
        assert self._behind is not None
        pad = self._start - len(head)
        head = (self._start - 8).to_bytes(8, "little") + head[8:] + b" " * pad
        with disk_errors(self.path):
            size = self._body.tell()
            self._body.flush()
            os.pwrite(self._body.fileno(), head, 0)
            self._behind.finished(self._body)
            h = hashlib.sha256()
            with ThreadPoolExecutor(1, thread_name_prefix="tvreg-hash") as hasher:
                hashed = hasher.submit(hash_mapped, self._body.fileno(), size, h)
                self._behind.wait()
                hashed.result()
            self._body.close()
        self.digest = "sha256:" + h.hexdigest()

    def _finish_by_copy(self, head: bytes) -> None:
        """Write ``head`` then the body after it into a new temporary file, hashing both on the way."""
        fd, tmp = make_temp(self.path.parent, self.path.name)
        self._copy_path = tmp
        with disk_errors(self.path):
            size = self._body.tell() - self._start
            self._body.flush()
            h = hashlib.sha256(head)
            with os.fdopen(fd, "wb") as out:
                out.write(head)
                out.flush()
                append_hashed(self._body.fileno(), size, out.fileno(), h, start=self._start)
                os.fsync(out.fileno())
            self._body.close()
        self.digest = "sha256:" + h.hexdigest()

    def abort(self) -> None:
        self._body.close()
        if self._behind is not None:
            self._behind.close()
        for leftover in (self._body_path, self._copy_path):
            if leftover is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)


class Artifact:
    """An opened ``.tvskill``: its manifest at once, tensors decoded on demand.

    Raises:
        CorruptArtifact: the file is not a valid tvskill (bad header, blob sizes).
        InvalidManifest: the manifest is missing or malformed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"):
            raise CorruptArtifact(
                f"`{self.path}` is a pickle file, not a tvreg skill; tvreg never unpickles."
            )
        self._file = SafetensorsFile(self.path, error=CorruptArtifact)
        text = self._file.metadata.get(MANIFEST_KEY)
        if text is None:
            self._file.close()
            raise InvalidManifest(
                f"`{self.path}` has no tvreg manifest; it is not a skill artifact.",
                hints=["build one with `tvreg build`"],
            )
        self.manifest = Manifest.from_json(text, where=str(self.path))
        blobs = {n: i for n, i in self._file.tensors.items()}
        for name, entry in self.manifest.tensors.items():
            info = blobs.get(name)
            if info is None or info.dtype != "U8" or info.nbytes != entry.stored_bytes:
                self._file.close()
                raise CorruptArtifact(
                    f"`{self.path}` lacks the stored data of tensor `{name}` its manifest lists."
                )
            get_codec(entry.codec)
        extra = sorted(set(blobs) - set(self.manifest.tensors))
        if extra:
            self._file.close()
            raise CorruptArtifact(
                f"`{self.path}` holds tensor `{extra[0]}`, which its manifest does not list."
            )

    @property
    def stored_bytes(self) -> int:
        return self._file.size

    def decode(self, name: str) -> torch.Tensor:
        """Decode one tensor to float32, verifying its digest first.

        Raises:
            CorruptArtifact: the stored bytes do not match the manifest's digest or size.
        """
        entry, data = self._verified(name)
        return get_codec(entry.codec).decode(data, entry.shape, entry.params, where=f"{name}` in `{self.path}")

    def decode_form(self, name: str, *, lazy: bool = False) -> StoredForm:
        """Decode one tensor to its codec's compact stored form (int8 + scales, sparse, factors, ...).

        With ``lazy`` the blob is read and its digest checked now, and the decode waits
        for the merge (:class:`~tvreg._format.codecs.forms.Undecoded`), which may add it
        straight into its accumulator instead.
        """
        entry, data = self._verified(name)
        codec = get_codec(entry.codec)
        where = f"{name}` in `{self.path}"
        if not lazy:
            return codec.decode_form(data, entry.shape, entry.params, where=where)

        def decode() -> StoredForm:
            return codec.decode_form(data, entry.shape, entry.params, where=where)

        def add(acc: torch.Tensor, weight: float) -> bool:
            return codec.add_into(data, entry.shape, entry.params, where=where, acc=acc, weight=weight)

        def decode_counting() -> tuple[StoredForm, np.ndarray] | None:
            return codec.decode_form_with_histogram(data, tuple(entry.shape), entry.params, where=where)

        masked = codec.masked_blob(data, tuple(entry.shape), entry.params, where=where)
        return Undecoded(
            shape=tuple(entry.shape), decode=decode, add=add, masked=masked, decode_counting=decode_counting
        )

    def verify(self, name: str) -> None:
        """Check one tensor as :meth:`decode` would (digest, codec bounds) and that it is finite, without expanding it.

        Memory stays a few MiB whatever shape the manifest declares (:mod:`tvreg._format.codecs.verify`);
        the declared size must still fit the decode memory budget, since installing the
        skill expands it.

        Raises:
            CorruptArtifact: corrupt data, or NaN/infinite values.
            DecodeBudgetExceeded: the tensor is larger than the decode budget.
        """
        entry, data = self._verified(name)
        verify_stored(entry.codec, data, entry.shape, entry.params, where=f"{name}` in `{self.path}")

    def _verified(self, name: str) -> tuple[TensorEntry, memoryview]:
        """The entry and digest-checked bytes of ``name``, once its fp32 size fits the decode budget.

        The bytes land in a buffer of the thread's decode arena when one is active (an install:
        no fresh pages, no zero-filling under the GIL), else in fresh memory.
        """
        entry = self.manifest.tensors[name]
        charge(4 * entry.numel, where=f"{name}` in `{self.path}")
        info = self._file.tensors[name]
        data = memoryview(buffer(info.nbytes, torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
        self._file.read_into(info, data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise CorruptArtifact(
                f"tensor `{name}` in `{self.path}` is corrupt: its data hashes to sha256:{digest[:12]}…, "
                f"the manifest says sha256:{entry.sha256[:12]}….",
                hints=["download or rebuild the skill"],
            )
        return entry, data

    def close(self) -> None:
        self._file.close()


    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_stored_artifact(path: str | os.PathLike[str], *, workers: int = 1) -> Manifest:
    """Verify every tensor of an artifact in bounded memory (the registry's check of an upload).

    ``workers > 1`` checks tensors on that many threads, largest first (the checks release the
    GIL: SHA-256, zstd and the compiled walks), holding at most one blob per thread; a
    failure is the one a single worker would report, the first failing tensor in the
    manifest's order. Why: the check is most of the wait at the end of a publish, and the
    client sits idle during it.

    Raises:
        ArtifactError: the artifact is corrupt, holds NaN/Inf, or a tensor exceeds the decode budget.
    """
    with Artifact(path) as art:
        names = list(art.manifest.tensors)
        if workers <= 1 or len(names) < 2:
            for name in names:
                art.verify(name)
            return art.manifest
        largest_first = sorted(names, key=lambda n: -art.manifest.tensors[n].stored_bytes)
        with ThreadPoolExecutor(min(workers, len(names)), thread_name_prefix="tvreg-verify") as pool:
            checks = {name: pool.submit(art.verify, name) for name in largest_first}
        for name in names:
            checks[name].result()
        return art.manifest
