"""The registry shares only the format layer with the client (DESIGN.md: ``registry_server`` imports
``tvreg._format``, ``tvreg._names``, ``tvreg.errors`` and ``tvreg._version``, nothing else of tvreg).

Read from the sources with ``ast``, so a lazy import inside a function counts as much as one at the
top, and nothing is imported to find out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import registry_server

ALLOWED = ("tvreg._format", "tvreg._names", "tvreg.errors", "tvreg._version")
SERVER = Path(registry_server.__file__).parent


def _allowed(module: str) -> bool:
    return any(module == ok or module.startswith(ok + ".") for ok in ALLOWED)


def tvreg_imports(source: str) -> list[tuple[int, str]]:
    """Every tvreg module a source imports, with its line (``from tvreg import x`` names ``tvreg.x``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tvreg"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tvreg":
                found += [(node.lineno, f"tvreg.{a.name}") for a in node.names]
            elif node.module.split(".")[0] == "tvreg":
                found.append((node.lineno, node.module))
    return found


def test_registry_server_imports_only_the_shared_format_layer():
    sources = sorted(SERVER.rglob("*.py"))
    assert len(sources) > 20
    bad = [
        f"{path.relative_to(SERVER.parent)}:{line}: {module}"
        for path in sources
        for line, module in tvreg_imports(path.read_text())
        if not _allowed(module)
    ]
    assert bad == []


def test_the_walk_sees_every_form_of_import():
    src = (
        "import tvreg\nimport tvreg._registry.client as c\nfrom tvreg import TaskVector\n"
        "def f():\n    from tvreg._env.operations import install\n"
        "from tvreg._format.artifact import Artifact\nfrom tvreg.errors import TvregError\n"
    )
    assert [m for _, m in tvreg_imports(src) if not _allowed(m)] == [
        "tvreg",
        "tvreg._registry.client",
        "tvreg.TaskVector",
        "tvreg._env.operations",
    ]
