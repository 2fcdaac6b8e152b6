"""The reliability tests reuse the registry tests' real servers and private PostgreSQL.

``tests/registry/conftest.py`` holds that machinery (a forked server per test, a
throw-away PostgreSQL cluster per session, the ``Api`` helpers); its fixtures are
loaded here under another module name, so both directories share one implementation.
When both directories run in one session each gets its own cluster and server zygote.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_REGISTRY_TESTS = Path(__file__).resolve().parents[1] / "registry"
sys.path.insert(0, str(_REGISTRY_TESTS))  # client_helpers

_spec = importlib.util.spec_from_file_location("tvreg_registry_fixtures", _REGISTRY_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
registry_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = registry_fixtures
_spec.loader.exec_module(registry_fixtures)

from tvreg_registry_fixtures import (  # noqa: E402, F401
    Api,
    PostgresCluster,
    Registry,
    api,
    free_port,
    make_registry,
    postgres_cluster,
    postgres_template,
    registry,
    server_artifacts,
    server_spawner,
    sha256_digest,
)

pytest_configure = registry_fixtures.pytest_configure
