"""Blobs in an object store (S3-compatible or any fsspec filesystem), uploads staged on local disk.

``tvreg-server serve --blob-url s3://bucket/prefix`` stores blob ``sha256:<hex>`` as the
object ``prefix/sha256/<hex[:2]>/<hex>``. Uploads in flight stay on local disk in
:class:`~registry_server.storage.UploadStaging`, as with the local store: appends and
resumable chunks need a real file, and object stores have neither appends nor cheap
partial writes. Only after the staged bytes pass the size and digest check is
the blob uploaded, with one PUT; an object store makes an object visible whole or not at
all, so a reader never sees part of a blob. Replicas share the object store and, as with
the local store, must share the staging directory (or route an upload's chunks to one
replica).

fsspec, and the filesystem package behind the URL (``s3fs`` for ``s3://``, the ``s3``
extra), are imported only when an object store is configured.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .errors import ServerFault, Unavailable
from .storage import BlobStore, digest_hex

# Filesystems whose single upload of an object is atomic (S3 multipart uploads included:
# the object appears at CompleteMultipartUpload). Others get a temporary name and a move.
_ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
_BLOCK = 8 * 1024 * 1024


class BlobStoreUnavailable(Unavailable):
    """The object store did not answer or refused the request (503, the client retries)."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    return tuple(errors)


class FsspecBlobStore(BlobStore):
    """Blobs under ``url/sha256/ab/abcdef…`` on an fsspec filesystem.

    Args:
        url: where blobs go, e.g. ``s3://bucket/prefix``, ``gs://bucket``, ``memory://blobs``.
        staging: the server's local blob directory (``DATA/blobs``): uploads are staged in
            its ``uploads/`` (:class:`~registry_server.storage.UploadStaging`), and
            :meth:`path` keeps downloaded copies in its ``cache/``.
        options: keyword arguments for the fsspec filesystem, e.g.
            ``{"client_kwargs": {"endpoint_url": "http://minio:9000"}}``; S3 credentials
            and endpoint otherwise come from the usual ``AWS_*`` environment variables.

    Raises:
        BlobStoreUnavailable: the filesystem package for ``url`` is not installed (the
            message names the extra to install).
    """

    local = False

    def __init__(
        self, url: str, *, staging: str | os.PathLike[str], options: Mapping[str, Any] | None = None
    ):
        try:
            import fsspec

            fs, root = fsspec.core.url_to_fs(url, **dict(options or {}))
        except ImportError as exc:
            raise BlobStoreUnavailable(
                f"the fsspec backend for the blob store `{url}` is not installed ({exc}); "
                "install it with `pip install 'tvreg[s3]'` for s3:// (another URL needs its fsspec package)."
            ) from exc
        except (ValueError, TypeError) as exc:
            raise BlobStoreUnavailable(f"the blob store `{url}` cannot be configured: {exc}.") from exc
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self._atomic_put = protocol in _ATOMIC_PUT
        self._local = Path(staging)
        self._errors = _transport_errors()

    @contextlib.contextmanager
    def _remote(self, action: str) -> Iterator[None]:
        """Translate the filesystem's errors (except a missing object) into 503 ``unavailable``."""
        try:
            yield
        except FileNotFoundError:
            raise
        except self._errors as exc:
            raise BlobStoreUnavailable(f"the blob store `{self.url}` failed while {action}: {exc}.") from exc

    def _key(self, digest: str) -> str:
        hexd = digest_hex(digest)
        return f"{self.root}/sha256/{hexd[:2]}/{hexd}"

    def create(self) -> None:
        """Check the store answers (at startup, so a bad URL fails early)."""
        try:
            with self._remote("opening it"):
                self.fs.makedirs(self.root, exist_ok=True)
                self.fs.find(self.root, maxdepth=1)  # a listing proves access; a new prefix is empty
        except FileNotFoundError as exc:
            raise BlobStoreUnavailable(f"the blob store `{self.url}` does not exist: {exc}.") from exc

    def link(self, src: Path, digest: str) -> None:
        # Uploaded again even when the blob exists: the new write refreshes its modification
        # time, so garbage collection sees it as young while the version naming it commits
        # (object stores cannot touch an object without rewriting it).
        size = src.stat().st_size
        key = self._key(digest)
        with self._remote(f"storing blob {digest}"):
            if self._atomic_put:
                self.fs.put_file(str(src), key)
            else:
                tmp = f"{self.root}/tmp/{uuid.uuid4()}"
                self.fs.makedirs(f"{self.root}/tmp", exist_ok=True)
                self.fs.makedirs(key.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(src), tmp)
                self.fs.mv(tmp, key)
            self.fs.invalidate_cache(key)
            stored = self.fs.info(key)["size"]
        if stored != size:
            raise ServerFault(
                f"the blob store `{self.url}` holds {stored} bytes of blob {digest}, not {size}."
            )

    def exists(self, digest: str) -> bool:
        key = self._key(digest)
        with self._remote(f"looking up blob {digest}"):
            self.fs.invalidate_cache(key)
            return bool(self.fs.isfile(key))

    def size(self, digest: str) -> int:
        key = self._key(digest)
        with self._remote(f"looking up blob {digest}"):
            self.fs.invalidate_cache(key)
            return int(self.fs.info(key)["size"])

    def open(self, digest: str) -> IO[bytes]:
        key = self._key(digest)
        with self._remote(f"reading blob {digest}"):
            self.fs.invalidate_cache(key)
            return self.fs.open(key, "rb", block_size=_BLOCK, cache_type="readahead")

    def path(self, digest: str) -> Path:
        """Download blob ``digest`` into ``staging/cache/`` (once) and return that file.

        Cost: a full download on first use; the server itself streams through :meth:`open`.
        """
        hexd = digest_hex(digest)
        dst = self._local / "cache" / hexd
        if dst.is_file():
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{hexd}.{uuid.uuid4().hex}.part")
        try:
            with self._remote(f"downloading blob {digest}"):
                self.fs.get_file(self._key(digest), str(tmp))
            os.replace(tmp, dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return dst

    def delete(self, digest: str) -> None:
        with self._remote(f"deleting blob {digest}"), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._key(digest))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._local / "cache" / digest_hex(digest))

    def blobs(self) -> Iterator[tuple[str, float]]:
        base = f"{self.root}/sha256"
        with self._remote("listing blobs"):
            self.fs.invalidate_cache(base)
            try:
                found = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return
        for key, info in sorted(found.items()):
            name = key.rsplit("/", 1)[-1]
            if re.fullmatch(r"[0-9a-f]{64}", name):
                yield "sha256:" + name, _mtime(info)


def _mtime(info: Mapping[str, Any]) -> float:
    """An object's modification time from whatever field its filesystem reports."""
    for field in ("LastModified", "mtime", "updated", "last_modified", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    # Unknown: report it as brand new, so garbage collection never deletes it early.
    return datetime.now().timestamp()
