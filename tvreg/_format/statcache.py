"""Facts about a file (its digest, its tensors' hashes), remembered under its stat identity.

Why: an install re-checks every artifact it uses against the digest its lock pins, and
a fingerprint re-reads whole models; for a file nobody has touched since, that is
seconds of hashing that cannot find anything new. Like git's index, tvreg keys what
it learned by (path, device, inode, size, mtime, ctime): any write, rename over or
``touch`` changes the key, and ``ctime`` cannot be set back by an ordinary user the way
``mtime`` can, so a rewritten file is always re-read.

Racy files: file times tick coarsely (a few milliseconds on Linux), so a file written
again within the same tick after being hashed would keep its key. A digest computed by
*reading* a file can therefore be remembered only if the file had been left alone for
:data:`SETTLE_NS` before the read began (``read_since_ns``); one that tvreg computed
while *writing* the file itself is remembered at once.

Entries live under ``$XDG_CACHE_HOME/tvreg/<kind>/``; anything unreadable counts as a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .._util.paths import cache_dir
from .fsutil import atomic_write_text

#: How long a file must have been unchanged before a digest read from it is remembered.
SETTLE_NS = 50_000_000


def stat_key(path: Path, *, version: int = 1, ctime: bool = True) -> str:
    """The identity a remembered fact is valid for; it changes whenever the file may have."""
    st = os.stat(path)
    key = f"v{version}:{os.path.realpath(path)}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    return key + f":{st.st_ctime_ns}" if ctime else key


def _entry(kind: str, key: str) -> Path:
    return cache_dir() / kind / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def lookup(kind: str, path: Path) -> object | None:
    """What was remembered about ``path`` as it is now, or None."""
    try:
        key = stat_key(path)
        cached = json.loads(_entry(kind, key).read_text())
        return cached["value"] if cached.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


_read_only = 0


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Inside, nothing is remembered (here, or by :func:`writes_allowed`'s other caches, e.g. sketches).

    Why: a dry run writes nothing, not even to caches.
    """
    global _read_only
    _read_only += 1
    try:
        yield
    finally:
        _read_only -= 1


def writes_allowed() -> bool:
    """False inside :func:`read_only` (a dry run): caches must keep what they learn to themselves."""
    return not _read_only


def remember(kind: str, path: Path, value: object, *, read_since_ns: int | None = None) -> None:
    """Remember ``value`` for ``path`` as it is now.

    ``read_since_ns``: when the read that produced ``value`` began (:func:`time.time_ns`);
    the fact is dropped if the file changed within :data:`SETTLE_NS` before that. Leave
    it out only for files tvreg has just written itself, whose bytes it knows.
    """
    if _read_only:
        return
    try:
        st = os.stat(path)
        if read_since_ns is not None and max(st.st_mtime_ns, st.st_ctime_ns) > read_since_ns - SETTLE_NS:
            return
        key = stat_key(path)
        atomic_write_text(_entry(kind, key), json.dumps({"key": key, "value": value}))
    except OSError:
        pass
