"""The README's Python section runs as written, against a test registry; library and CLI write the same lock."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from client_helpers import cli, login, write_project

import tvreg
from tvreg._env.lockfile import read_lock

pytestmark = pytest.mark.parametrize("registry", ["sqlite"], indirect=True)

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_section() -> str:
    text = README.read_text(encoding="utf-8")
    after = text[text.index("From Python:") :]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_readme_python_section_runs(registry, family, tmp_path, monkeypatch):
    login(registry, "alice")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(family.pre, "pre")
    shutil.copytree(family.science, "ft")
    shutil.copytree(family.general, "mymodel")
    write_project(Path("science"), name="alice/science", version="1.0.0", artifact=str(tmp_path / "science.tvskill"))
    code = _python_section()
    assert 'install(["alice/science"], into="mymodel")' in code
    exec(compile(code, str(README), "exec"), {})
    assert [s.id for s in read_lock(Path("mymodel")).skills] == ["alice/science"]


def test_a_lock_written_from_python_equals_one_written_by_the_cli(registry, family, tmp_path):
    login(registry, "alice")
    art = tvreg.build_skill(family.pre, finetuned=family.science, output=tmp_path / "s.tvskill", name="science",
                            version="1.0.0", dataset_size=1000).path  # fmt: skip
    assert cli("publish", write_project(tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(art))).exit_code == 0
    made = []
    for how in ("python", "cli"):
        model = tmp_path / how
        shutil.copytree(family.general, model)
        tvreg.init_environment(model, base=family.pre, general_size=10000)
        if how == "python":
            tvreg.install(["alice/science"], into=model)
        else:
            assert cli("install", "alice/science", "--into", model).exit_code == 0
        made.append((model / "tvreg.lock").read_text())
    assert made[0] == made[1]
