"""Strict JSON for untrusted headers, without torch: the manifest check runs in commands that touch no tensor."""

from __future__ import annotations

import json


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key `{key}`")
        seen[key] = value
    return seen


def strict_json_loads(text: str) -> object:
    """``json.loads`` for untrusted headers: duplicate keys and deep nesting are ValueError.

    The standard parser silently keeps the last of two equal keys (so two readers can
    disagree about one file) and recurses once per nesting level (so ``[[[[...`` raises
    RecursionError, which callers would not expect).
    """
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("nested too deeply") from None
