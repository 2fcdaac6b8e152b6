"""What `resolve_install` needs before it can ask any registry (found by the type checker, issue 17)."""

from __future__ import annotations

import pytest

from tvreg._registry.fetch import resolve_install
from tvreg.errors import ModelEnvironmentError

# Nothing listens here: the call must fail before any request.
NO_REGISTRY = "http://127.0.0.1:9"


def test_a_registry_skill_without_into_lock_or_base_names_what_is_missing():
    with pytest.raises(ModelEnvironmentError) as info:
        resolve_install(["alice/science@^1"], registry=NO_REGISTRY)
    assert info.value.message == "resolving `alice/science@^1` needs the model it is for."
    assert info.value.hints == ["give `into` (a model environment), `lock` or `base`"]
