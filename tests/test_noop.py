"""The no-op fast path for skills installed from files: nothing written, torch never imported."""

from __future__ import annotations

import os
import time

import pytest
from helpers import cli_without_torch, tree_digest

from tvreg._env.operations import install
from tvreg._format.statcache import SETTLE_NS

_probe = cli_without_torch


def _stats(model):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(model.iterdir())}


@pytest.fixture
def installed(science_env):
    model, skill = science_env
    # A file read within statcache.SETTLE_NS of its last change is not remembered (racy-git
    # rule): without the pause the first no-op would (rightly) re-read it the full way.
    time.sleep(2 * SETTLE_NS / 1e9)
    install([skill], into=model, weights={"science": 0.25})
    return model, skill


def test_reinstalling_the_same_file_writes_nothing_and_loads_no_torch(installed):
    model, skill = installed
    stats, digest = _stats(model), tree_digest(model)
    for args in (
        ["install", skill, "--weight", "science=0.25", "--into", model],
        ["install", skill, "--weight", "science=0.25", "--method", "task_arithmetic", "--output-dtype", "auto",
         "--into", model],
        ["install", "--into", model],
        ["sync", "--locked", "--into", model],
    ):  # fmt: skip
        stdout, torch_free = _probe(*args)
        assert "Nothing to change: 1 skill(s) already installed" in stdout, (args, stdout)
        assert torch_free, args
        assert _stats(model) == stats and tree_digest(model) == digest, args


def test_what_the_fast_path_cannot_vouch_for_goes_the_full_way(installed):
    model, skill = installed
    stats = _stats(model)
    # Without --weight the user's ω would become |D|/|G| again: a change, decided by the full pipeline.
    stdout, torch_free = _probe("install", skill, "--into", model)
    assert "Installed 1 skill(s)" in stdout and not torch_free
    stats = _stats(model)
    # A touched file is not vouched for by the stat cache: the full pipeline re-checks it (and still writes nothing).
    os.utime(skill)
    stdout, torch_free = _probe("install", skill, "--into", model)
    assert "Nothing to change" in stdout and not torch_free
    assert _stats(model) == stats
    stdout, torch_free = _probe("install", "--output-dtype", "float16", "--into", model)
    assert "Installed 1 skill(s)" in stdout and _stats(model) != stats
