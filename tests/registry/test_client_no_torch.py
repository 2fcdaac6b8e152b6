"""Registry commands that touch no tensor never import torch, against a real registry.

Each command runs as ``tvreg`` would, in a fresh interpreter, and reports whether torch
was loaded when it exited: these are the commands a user types most, and torch alone
costs over a second of start-up.
"""

from __future__ import annotations

import subprocess
import sys

from client_helpers import build_artifacts, cli, login, write_project
from helpers import subprocess_env

_RUN = """
import sys
sys.argv = ["tvreg", *sys.argv[1:]]
try:
    from tvreg.cli import main
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
sys.stderr.write(f"\\nEXIT={code} TORCH={'torch' in sys.modules}\\n")
"""


def _tvreg(*argv: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", _RUN, *argv], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    return res.stderr.strip().splitlines()[-1]


def test_registry_commands_stay_off_torch(registry, family, tmp_path, tmp_path_factory):
    artifacts = build_artifacts(family, tmp_path_factory.mktemp("no-torch-artifacts"))
    token = login(registry, "alice")
    project = write_project(tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"]))
    assert cli("publish", project).exit_code == 0
    for argv in (
        ("login", "--registry", registry.url, "--token", token),
        ("whoami",),
        ("search", "science"),
        ("search", "science", "--format", "json"),
        ("info", "alice/science"),
        ("info", "alice/science", "--format", "json"),
        ("tag", "add", "alice/science@1.0.0", "stable"),
        ("tag", "rm", "alice/science", "stable"),
        ("yank", "alice/science@1.0.0", "--reason", "testing"),
        ("unyank", "alice/science@1.0.0"),
        ("cache", "list"),
        ("logout",),
    ):
        assert _tvreg(*argv) == "EXIT=0 TORCH=False", argv
