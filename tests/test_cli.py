"""The CLI: pip-like help, exit codes, and one-sentence errors without tracebacks."""

from __future__ import annotations

import json

from helpers import copy_model

from tvreg._format.fingerprint import fingerprint


def test_help_lists_the_commands(run):
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("build", "fingerprint", "info", "init", "install", "list"):
        assert f"  {cmd} " in res.output


def test_build_init_install_list_through_the_cli(run, family, tmp_path):
    skill = tmp_path / "science-1.0.0.tvskill"
    res = run(
        "build", "--base", family.pre, "--finetuned", family.science, "--name", "science",
        "--version", "1.0.0", "--dataset-size", 61000, "-o", skill,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Built science@1.0.0 for base ")
    info = json.loads(run("info", skill, "--format", "json").stdout)
    assert info["name"] == "science" and info["dataset_size"] == 61000
    model = copy_model(family.general, tmp_path / "mymodel")
    assert run("init", model, "--base", family.pre, "--general-size", 275000).exit_code == 0
    res = run("install", skill, "--into", model, "--weight", "science=0.25")
    assert res.exit_code == 0, res.output
    assert "Installed 1 skill(s)" in res.stdout
    listed = json.loads(run("list", model, "--format", "json").stdout)
    assert [(s["name"], s["weight"], s["weight_source"]) for s in listed] == [("science", 0.25, "user")]
    assert run("fingerprint", model, "--short").stdout.strip() == fingerprint(model)[:12]


def test_errors_are_one_sentence_with_hints_and_exit_1(run, family, tmp_path):
    model = copy_model(family.general, tmp_path / "mymodel")
    skill = tmp_path / "s.tvskill"
    run(
        "build",
        "--base",
        family.pre,
        "--finetuned",
        family.science,
        "--name",
        "s",
        "--version",
        "1.0.0",
        "-o",
        skill,
    )
    res = run("install", skill, "--into", model)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert lines[0] == f"error: `{model}` is not a tvreg model environment (no `tvreg.lock`)."
    assert lines[1].startswith("hint: run `tvreg init")
    assert "Traceback" not in res.stderr


def test_debug_shows_the_traceback(run, tmp_path):
    res = run("--debug", "fingerprint", tmp_path / "nope")
    assert res.exit_code == 1 and "Traceback" in res.stderr


def test_bad_names_exit_2_like_usage_errors(run, family, tmp_path):
    res = run("build", "--base", family.pre, "--finetuned", family.science, "--name", "../x", "--version", "1.0.0",
              "-o", tmp_path / "x.tvskill")  # fmt: skip
    assert res.exit_code == 2 and res.stderr.startswith("error: invalid skill name `../x`")


def test_bad_weight_syntax_is_a_usage_error(run, tmp_path):
    res = run("install", "--into", tmp_path, "--weight", "science")
    assert res.exit_code == 2 and "expected NAME=FLOAT" in res.stderr


def test_the_collector_is_off_while_a_command_starts_and_on_again_after_it(run, tmp_path, monkeypatch):
    import gc

    from tvreg.cli import app

    seen = []
    real_task = app.RichProgress.task

    def task(self, description, total):
        seen.append(("before the first task", gc.isenabled()))
        real_task(self, description, total)
        seen.append(("after it", gc.isenabled()))

    monkeypatch.setattr(app.RichProgress, "task", task)
    res = run("build", "--base", tmp_path / "missing", "--finetuned", tmp_path / "missing", "--name", "s",
              "--version", "1.0.0", "-o", tmp_path / "s.tvskill")  # fmt: skip
    assert res.exit_code != 0 and gc.isenabled()  # a failed command leaves the collector on
    res = run("cache", "list")
    assert res.exit_code == 0 and gc.isenabled()  # one that draws no progress too
    seen.clear()
    app._pause_collector()
    assert not gc.isenabled()
    app.RichProgress().task("work", 1)
    assert seen == [("before the first task", False), ("after it", True)]
