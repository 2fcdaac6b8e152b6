"""Killing, interrupting or starving an install leaves the model exactly as it was (or fully new)."""

from __future__ import annotations

import random
import resource
import signal
import subprocess
import sys
import time

import pytest
from helpers import copy_model, subprocess_env, tree_digest

from tvreg._env.lockfile import read_lock
from tvreg._env.operations import install
from tvreg._format.fingerprint import fingerprint


@pytest.fixture
def setup(science_env):
    return science_env


def _cli(*args, fault=None, preexec=None):
    env = subprocess_env()
    if fault:
        env["TVREG_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "tvreg.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )


def _staging(model):
    return list(model.parent.glob(f".{model.name}.tvreg-*.staging"))


@pytest.mark.parametrize("point", ["install:decode", "install:write", "install:before-swap"])
def test_kill_before_the_swap_leaves_the_old_model(setup, point):
    model, skill = setup
    before = tree_digest(model)
    proc = _cli("install", str(skill), "--into", str(model), fault=point)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert tree_digest(model) == before
    assert _staging(model), "the killed install should have left its staging tree behind"
    res = install([skill], into=model)  # the retry cleans up and succeeds
    assert not _staging(model)
    assert res.output_fingerprint == fingerprint(model) == read_lock(model).output_fingerprint


def test_kill_right_after_the_swap_leaves_the_complete_new_model(setup):
    model, skill = setup
    proc = _cli("install", str(skill), "--into", str(model), fault="install:after-swap")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    lock = read_lock(model)
    assert [s.name for s in lock.skills] == ["science"]
    assert lock.output_fingerprint == fingerprint(model)


def test_ctrl_c_mid_write_says_so_and_changes_nothing(setup):
    model, skill = setup
    before = tree_digest(model)
    proc = _cli("install", str(skill), "--into", str(model), fault="install:write:SIGINT")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().startswith("error: install interrupted;") and "is unchanged" in err
    assert "Traceback" not in err
    assert tree_digest(model) == before and not _staging(model)


def test_kill_at_random_moments_leaves_old_or_new(setup, tmp_path):
    model, skill = setup
    before = tree_digest(model)
    reference = copy_model(model, tmp_path / "reference")
    # The reference must carry the same absolute artifact path into its lock: install it in place of mymodel.
    install([skill], into=reference)
    ref_lock = read_lock(reference)
    rng = random.Random(1234)
    outcomes = set()
    for _ in range(6):
        proc = _cli("install", str(skill), "--into", str(model))
        time.sleep(rng.uniform(0.05, 4.0))  # deliberate: a kill at a random moment (reliability row 21)
        proc.kill()
        proc.communicate(timeout=120)
        lock = read_lock(model)
        if lock.skills:
            outcomes.add("new")
            assert lock.output_fingerprint == ref_lock.output_fingerprint == fingerprint(model)
            break
        outcomes.add("old")
        assert tree_digest(model) == before
    assert outcomes


def test_full_disk_names_the_path_and_changes_nothing(setup):
    model, skill = setup
    install([skill], into=model)
    before = tree_digest(model)
    limit = 40_000  # below one shard of the tiny sharded model, above the lockfile

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    # a change of dtype forces a rewrite (re-installing the same set is a no-op that writes nothing)
    proc = _cli("install", "--into", str(model), "--output-dtype", "float16", preexec=small_files)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err.startswith("error: no space left on the device while writing `")
    assert ".safetensors`" in err and "Traceback" not in err
    assert tree_digest(model) == before and not _staging(model)


def test_a_second_install_names_the_process_holding_the_model(setup):
    model, skill = setup
    import fcntl
    import os

    lock_path = model.parent / f".{model.name}.tvreg.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, b"424242", 0)
    try:
        proc = _cli("install", str(skill), "--into", str(model))
        _, err = proc.communicate(timeout=120)
    finally:
        os.close(fd)
    assert proc.returncode == 1
    assert "is being changed by tvreg process 424242" in err


def _run_on_a_terminal(args, env):
    """Run the CLI with stderr on a pseudo-terminal (so rich draws bars); returns (exit code, stderr bytes)."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvreg.cli", *args], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks)


def test_ctrl_c_while_a_bar_is_drawn_restores_the_terminal(setup):
    import re

    model, skill = setup
    before = tree_digest(model)
    env = subprocess_env()
    env.update(TVREG_FAULT="progress:bar:SIGINT", TVREG_PROGRESS_DELAY="0", COLUMNS="100", TERM="xterm")
    env.pop("NO_COLOR", None)
    code, raw = _run_on_a_terminal(["install", str(skill), "--into", str(model)], env)
    assert code == 130, raw
    assert b"\x1b[?25l" in raw, "no bar was drawn: the test did not exercise the terminal"
    assert raw.rfind(b"\x1b[?25h") > raw.rfind(b"\x1b[?25l"), "the cursor was left hidden"
    assert raw.endswith(b"\n"), "the prompt would land on the bar's line"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode()).replace("\r", "")
    lines = [line for line in text.splitlines() if line.strip()]
    assert sum("is unchanged" in line for line in lines) == 1, lines
    assert lines[-1].startswith("error: install interrupted;") or "is unchanged" in lines[-1], lines
    assert "Traceback" not in text
    assert tree_digest(model) == before and not _staging(model)
