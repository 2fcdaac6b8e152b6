"""Limits on every publisher-controlled value, checked before the database sees it.

A value the database cannot store (a NUL in a PostgreSQL text, an integer past BIGINT,
NaN in JSON that strict encoders refuse) used to surface as a 500, sometimes after the
version was committed; a value of unbounded size was served to every anonymous reader.
Each check here raises the API's 400 with the field named, so a refused publish leaves
nothing behind. The limits are documented in docs/registry-api.md ("Field limits").
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import BadRequest, InvalidArtifact

MAX_DESCRIPTION = 2000
MAX_SHORT_TEXT = 200
MAX_YANK_REASON = 500
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_QUERY = 200
MAX_PAGE = 10**6
BIGINT_MAX = 2**63 - 1
_ALLOWED_CONTROLS = {"\n", "\t"}


def has_control(text: str, *, allow_newlines: bool = False) -> bool:
    """Whether ``text`` holds a control character (C0, DEL, C1); newlines and tabs only if allowed."""
    for ch in text:
        o = ord(ch)
        if o < 32 or 127 <= o < 160:
            if allow_newlines and ch in _ALLOWED_CONTROLS:
                continue
            return True
    return False


def check_text(value: str, *, field: str, limit: int, allow_newlines: bool = False, error=BadRequest) -> str:
    if len(value) > limit:
        raise error(f"`{field}` is {len(value)} characters; the limit is {limit}.")
    if has_control(value, allow_newlines=allow_newlines):
        raise error(f"`{field}` holds a control character; only printable text is accepted.")
    return value


def check_query(value: str | None, *, field: str) -> str | None:
    """A search parameter: at most :data:`MAX_QUERY` characters, no control characters."""
    if value is None:
        return None
    return check_text(value, field=field, limit=MAX_QUERY)


def _walk(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArtifact(f"the manifest's `{path}` is {value}; JSON numbers must be finite.")
    if isinstance(value, int) and not isinstance(value, bool) and not -BIGINT_MAX - 1 <= value <= BIGINT_MAX:
        raise InvalidArtifact(f"the manifest's `{path}` is an integer outside 64 bits.")
    if isinstance(value, str) and "\x00" in value:
        raise InvalidArtifact(f"the manifest's `{path}` holds a NUL character.")
    if isinstance(value, dict):
        for k, v in value.items():
            if "\x00" in k:
                raise InvalidArtifact(f"a key under the manifest's `{path}` holds a NUL character.")
            _walk(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, f"{path}[{i}]")


def check_manifest(manifest: dict[str, Any], label: str) -> None:
    """Refuse a manifest the registry cannot store and serve as it is (400 ``invalid_artifact``)."""
    _walk(manifest, "")
    try:
        size = len(json.dumps(manifest, allow_nan=False, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidArtifact(f"the manifest of `{label}` is not plain JSON: {exc}.") from exc
    if size > MAX_MANIFEST_BYTES:
        raise InvalidArtifact(
            f"the manifest of `{label}` is {size} bytes; the registry accepts up to {MAX_MANIFEST_BYTES}."
        )
    description = manifest.get("description") or ""
    if not isinstance(description, str):
        raise InvalidArtifact("the manifest's `description` must be a string.")
    check_text(description, field="description", limit=MAX_DESCRIPTION, allow_newlines=True, error=InvalidArtifact)
    for key in ("license", "created_by", "dataset_unit", "kind"):
        value = manifest.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise InvalidArtifact(f"the manifest's `{key}` must be a string.")
            check_text(value, field=key, limit=MAX_SHORT_TEXT, error=InvalidArtifact)
    size_value = manifest.get("dataset_size")
    if size_value is not None and (
        not isinstance(size_value, int) or isinstance(size_value, bool) or not 0 <= size_value <= BIGINT_MAX
    ):
        raise InvalidArtifact(
            f"the manifest's `dataset_size` is {size_value!r}; it must be an integer from 0 to {BIGINT_MAX}."
        )
    if manifest.get("dataset_unit", "examples") not in ("examples", "tokens"):
        raise InvalidArtifact("the manifest's `dataset_unit` must be `examples` or `tokens`.")
