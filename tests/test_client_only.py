"""The client works without the server stack (``pip install tvreg`` without ``[server]``).

Each check runs in a fresh interpreter whose import system refuses FastAPI, Starlette,
uvicorn, SQLAlchemy, Alembic and psycopg, as if they were not installed, and reports every
attempt to import one: the client must not even try.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import torch
from helpers import ROOT, copy_model, subprocess_env
from tiny_models import read_state_dict

BLOCKED = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg")

_PRELUDE = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class _NoServerStack(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {BLOCKED!r}:
                sys.stderr.write(f"blocked import: {{name}}\\n")
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _NoServerStack())
    """
)


def _run(body: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    script = _PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=subprocess_env(),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


_CLI = """
sys.argv = ["tvreg", *sys.argv[1:]]
from tvreg.cli import main
main()
"""


def test_import_and_help_without_the_server_stack():
    done = _run(
        """
        import tvreg, tvreg.cli
        assert not [m for m in sys.modules if m.partition(".")[0] in BLOCKED]
        print(tvreg.__version__)
        """.replace("BLOCKED", repr(BLOCKED))
    )
    assert done.returncode == 0, done.stderr
    assert "blocked import" not in done.stderr
    helped = _run(_CLI, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Usage: tvreg" in helped.stdout and "blocked import" not in helped.stderr


def test_build_and_install_from_local_files_without_the_server_stack(family, tmp_path):
    skill = tmp_path / "science.tvskill"
    built = _run(
        _CLI, "build", "--base", str(family.pre), "--finetuned", str(family.science), "--name", "science",
        "--version", "1.0.0", "--dataset-size", "3000", "-o", str(skill),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert skill.is_file() and "blocked import" not in built.stderr
    model = copy_model(family.general, tmp_path / "mymodel")
    installed = _run(
        _CLI, "install", str(skill), "--into", str(model), "--base", str(family.pre), "--general-size", "10000"
    )
    assert installed.returncode == 0, installed.stderr
    assert "blocked import" not in installed.stderr
    from tvreg._env.operations import install

    reference = copy_model(family.general, tmp_path / "reference")
    install([skill], into=reference, base=family.pre, general_size=10000)
    got, want = read_state_dict(model), read_state_dict(reference)
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)


def test_tvreg_server_without_the_server_stack_says_what_to_install():
    done = _run(
        """
        sys.argv = ["tvreg-server", *sys.argv[1:]]
        from registry_server.launch import main
        main()
        """,
        "serve",
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "blocked import: fastapi" in done.stderr  # the blocker was in the way
    shown = [line for line in done.stderr.splitlines() if not line.startswith("blocked import: ")]
    assert shown == [
        "error: `tvreg-server` needs the registry's packages, and fastapi, starlette, uvicorn, sqlalchemy, "
        "alembic are not installed.",
        "hint: pip install 'tvreg[server]'",
    ]
    assert "Traceback" not in done.stderr


def test_the_tvreg_server_script_is_the_checking_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["tvreg-server"] == "registry_server.launch:main"
    assert scripts["tvreg"] == "tvreg.cli:main"
    done = subprocess.run(
        [sys.executable, "-c", "from registry_server.launch import main; main(['--help'])"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: tvreg-server" in done.stdout
