"""The README's first command, `make demo`, end to end: the quickstart, then the trust tour.

Both scripts work under ``./demo`` relative to where they run, so each test run gets its
own directory; they start their own registry (``tvreg-server`` on loopback), which is why
this lives with the registry tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)], cwd=cwd, env=subprocess_env(),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_make_demo_runs_end_to_end(tmp_path):
    quick = _run("quickstart.py", tmp_path)
    assert quick.returncode == 0, quick.stdout[-3000:] + quick.stderr[-3000:]
    assert len(json.loads((tmp_path / "demo" / "mymodel" / "tvreg.lock").read_text())["skills"]) == 2
    trust = _run("trust_policy.py", tmp_path)
    assert trust.returncode == 0, trust.stdout[-3000:] + trust.stderr[-3000:]
    assert "Traceback" not in quick.stderr + trust.stderr
    guarded = json.loads((tmp_path / "demo" / "guarded" / "tvreg.lock").read_text())["skills"]
    assert guarded and all(s.get("signed_by") for s in guarded)
