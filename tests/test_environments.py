"""Model environments: the lockfile, and install/uninstall/upgrade/sync/verify being exact and atomic."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from helpers import copy_model, reference_install, subprocess_env, tree_digest
from huggingface_hub import ModelCard
from tiny_models import read_state_dict

from tvreg._build.build import build_skill
from tvreg._env.environment import init_environment
from tvreg._env.lockfile import LOCK_NAME, LOCK_VERSION, read_lock
from tvreg._env.operations import install, sync, uninstall
from tvreg._env.store import artifact_path, pristine_path
from tvreg._env.verify import verify
from tvreg._format.checkpoint import Checkpoint
from tvreg._format.fingerprint import fingerprint
from tvreg.cli import main
from tvreg.cli.app import human_size
from tvreg.errors import LockMismatch, LockOutdated, MergeError, ModelEnvironmentError


def _skill(fam, tmp_path, which, *, version="1.0.0", size=3000, name=None):
    return build_skill(
        fam.pre,
        finetuned=getattr(fam, which),
        output=tmp_path / f"{name or which}-{version}.tvskill",
        name=name or which,
        version=version,
        dataset_size=size,
    ).path


def test_lock_records_method_dtype_size_and_origin(family, tmp_path):
    sci = _skill(family, tmp_path, "science")
    model = copy_model(family.general, tmp_path / "mymodel")
    install([sci], into=model, base=family.pre, general_size=10000)
    lock = read_lock(model)
    data = json.loads((model / LOCK_NAME).read_text())
    assert data["lock_version"] == LOCK_VERSION == 3
    assert "pristine" not in data and str(tmp_path) not in (model / LOCK_NAME).read_text()
    assert (data["method"], data["method_params"], data["output_dtype"]) == ("task_arithmetic", {}, None)
    (skill,) = lock.skills
    assert skill.size == sci.stat().st_size and skill.registry is None
    assert skill.artifact == sci.name  # v3: a file's name only, never a path of this machine


def test_version_1_lock_is_read_and_written_back_as_version_2(family, tmp_path):
    sci = _skill(family, tmp_path, "science")
    model = copy_model(family.general, tmp_path / "mymodel")
    install([sci], into=model, base=family.pre, general_size=10000)
    data = json.loads((model / LOCK_NAME).read_text())
    data["lock_version"] = 1
    for key in ("method_params", "output_dtype"):
        del data[key]
    for s in data["skills"]:
        for key in ("registry", "requested", "size"):
            del s[key]
    (model / LOCK_NAME).write_text(json.dumps(data))
    assert read_lock(model).skills[0].name == "science"
    data["lock_version"] = 9
    (model / LOCK_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelEnvironmentError, match="lockfile version 9, newer than this tvreg"):
        read_lock(model)


def test_output_dtype_casts_every_float_tensor_and_is_locked(family, tmp_path):
    sci = _skill(family, tmp_path, "science")
    model = copy_model(family.general, tmp_path / "mymodel")
    res = install([sci], into=model, base=family.pre, general_size=10000, output_dtype="bfloat16")
    expected = reference_install(family.general, family.pre, [(family.science, 0.3)])
    got = read_state_dict(model)
    for name, t in expected.items():
        assert torch.equal(got[name], t.to(torch.bfloat16) if t.is_floating_point() else t), name
    assert read_lock(model).output_dtype == "bfloat16"
    assert json.loads((model / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((family.general / "config.json").read_text())["dtype"] == "float32"
    assert res.output_fingerprint == fingerprint(model)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in got.values())
    install([], into=model, output_dtype="auto")
    assert read_lock(model).output_dtype is None


def test_unknown_method_and_dtype_are_refused_before_writing(family, tmp_path):
    sci = _skill(family, tmp_path, "science")
    model = copy_model(family.general, tmp_path / "mymodel")
    with pytest.raises(MergeError, match="unknown merge method `nope`"):
        install([sci], into=model, base=family.pre, general_size=10000, method="nope")
    with pytest.raises(ModelEnvironmentError, match="unsupported output dtype `int8`"):
        install([sci], into=model, base=family.pre, general_size=10000, output_dtype="int8")
    assert read_lock(model) is None  # a refused install that would initialise on the fly writes nothing


def _weights(model):
    return {p.name: p.read_bytes() for p in sorted(model.glob("*.safetensors"))}


@pytest.fixture
def two_skills(family, tmp_path):
    return _skill(family, tmp_path, "science", size=3000), _skill(family, tmp_path, "coding", size=1500)


def test_uninstall_gives_the_bytes_of_installing_only_the_rest(family, tmp_path, two_skills):
    sci, cod = two_skills
    both = copy_model(family.general, tmp_path / "both")
    install([sci, cod], into=both, base=family.pre, general_size=10000)
    uninstall(["science"], into=both)
    only = copy_model(family.general, tmp_path / "only")
    install([cod], into=only, base=family.pre, general_size=10000)
    assert _weights(both) == _weights(only)
    assert [s.name for s in read_lock(both).skills] == ["coding"]
    assert read_lock(both).output_fingerprint == read_lock(only).output_fingerprint
    uninstall(["coding"], into=both)
    assert _weights(both) == _weights(family.general)
    with pytest.raises(
        ModelEnvironmentError, match=r"skill `coding` is not installed in .* \(installed: none\)"
    ):
        uninstall(["coding"], into=both)


def test_sync_on_a_fresh_copy_reproduces_the_weights_bit_for_bit(family, tmp_path, two_skills, monkeypatch):
    model = copy_model(family.general, tmp_path / "mymodel")
    install(list(two_skills), into=model, base=family.pre, general_size=10000)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("tvreg.lock", "config.json"):
        shutil.copy(model / name, copy / name)
    for p in family.general.iterdir():  # G's pristine files, as a fresh checkout of G would have them
        if not (copy / p.name).exists():
            shutil.copy(p, copy / p.name)
    sync(copy, locked=True)
    assert _weights(copy) == _weights(model)
    assert verify(copy).ok


def test_sync_locked_refuses_a_stale_lock_and_sync_refreshes_it(family, tmp_path, two_skills):
    model = copy_model(family.general, tmp_path / "mymodel")
    install(list(two_skills), into=model, base=family.pre, general_size=10000)
    before = _weights(model)
    init_environment(model, general_size=20000)  # |G| changed: default weights are stale
    for dry_run in (True, False):  # a dry run refuses alike
        with pytest.raises(LockOutdated, match=r"default weight of `science` is now \|D\|/\|G\| = 3000/20000"):
            sync(model, locked=True, dry_run=dry_run)
    assert _weights(model) == before
    sync(model)
    assert [s.weight for s in read_lock(model).skills] == [0.15, 0.075]
    sync(model, locked=True)


def test_verify_names_the_tensor_with_a_flipped_byte(family, tmp_path, two_skills):
    model = copy_model(family.general, tmp_path / "mymodel")
    install(list(two_skills), into=model, base=family.pre, general_size=10000)
    assert verify(model).ok
    with Checkpoint.open(model) as ckpt:
        name = ckpt.names()[3]
        info = ckpt.info(name)
        file = ckpt.file_of(name).path
    stat = file.stat()
    with open(file, "r+b") as f:
        f.seek(info.start + 5)
        byte = f.read(1)
        f.seek(info.start + 5)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the hash cache must not be trusted
    result = verify(model)
    assert not result.ok
    assert [(d.tensor, d.problem) for d in result.diffs] == [(name, "changed")]


def test_a_lock_digest_that_does_not_match_the_artifact_is_refused(family, tmp_path, two_skills):
    model = copy_model(family.general, tmp_path / "mymodel")
    install(list(two_skills), into=model, base=family.pre, general_size=10000)
    stored = artifact_path(read_lock(model).skills[0].digest)
    with open(stored, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\0" * 10)
    before = _weights(model)
    with pytest.raises(LockMismatch, match="refusing to use it"):
        sync(model)
    assert _weights(model) == before


def test_model_card_lists_g_and_the_skills_and_keeps_the_users_text(family, tmp_path, two_skills):
    model = copy_model(family.general, tmp_path / "mymodel")
    (model / "README.md").write_text(
        "---\nlicense: apache-2.0\ntags:\n- mine\n---\n\n# My model\n\nMy notes.\n"
    )
    install(list(two_skills), into=model, base=family.pre, general_size=10000)
    card = ModelCard.load(model / "README.md")
    gfp = read_lock(model).general_fingerprint
    assert card.data.base_model == [gfp, "science", "coding"]  # G by fingerprint, never the env's own dir
    assert card.data.base_model_relation == "merge"
    assert card.data.tags == ["mine", "tvreg", "task-vector"] and card.data.license == "apache-2.0"
    assert "| science | 1.0.0 | 0.3 | \\|D\\|/\\|G\\| = 3000/10000 |" in card.text  # cells escaped
    assert "| coding | 1.0.0 | 0.15 |" in card.text and str(tmp_path) not in card.text
    assert card.text.rstrip().endswith("My notes.")
    uninstall(["science"], into=model)
    card = ModelCard.load(model / "README.md")
    assert card.data.base_model == [gfp, "coding"]
    assert "| science |" not in card.text and card.text.count("My notes.") == 1


@pytest.mark.parametrize(
    "card",
    [
        "---\nlicense: apache-2.0\ntags:\n- mine\n---\n\n# My model\n",  # the usual card
        "---\r\nlicense: mit\r\nlanguage:\r\n- en\r\n---\r\nText with CRLF.\r\n",  # Windows line ends
        "---\n---\nno metadata at all\n",  # an empty block
        "  ---\nlicense: mit\n---   \nspaces around the fences\n",
        "---\nmodel-index: not-a-list\nlicense: mit\n---\nbad metadata, kept (ignore_metadata_errors)\n",
        "---\nlicense: mit\nno closing fence\n",  # no block: the whole text is the body
        "---\nbase_model: [a, b]\ncustom_key: {nested: 1}\n---\n\n---\nsecond fence is text\n",
    ],
)
def test_the_model_card_is_read_as_huggingface_hub_reads_it(card):
    """tvreg splits a card without importing ``huggingface_hub.repocard`` (its Hub client costs every
    install ~0.35 CPU-s); metadata and text must be what ``ModelCard(..., ignore_metadata_errors=True)`` gives."""
    from tvreg._env.modelcard import _read_card

    theirs = ModelCard(card, ignore_metadata_errors=True)
    assert _read_card(card) == (theirs.data.to_dict(), theirs.text)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def installed(family, tmp_path, two_skills):
    model = copy_model(family.general, tmp_path / "mymodel")
    install(list(two_skills), into=model, base=family.pre, general_size=10000)
    return model


def test_list_into_prints_a_freeze_like_listing(installed):
    lock = read_lock(installed)
    res = cli("list", "--into", installed, "--format", "freeze")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [
        f"{artifact_path(s.digest)}  # {s.id}@{s.version} ω={s.weight:.6g} {s.digest}" for s in lock.skills
    ]
    assert cli("list", installed).exit_code == 0
    res = cli("list", installed, "--into", installed)
    assert res.exit_code == 2 and "either as MODEL_DIR or with --into" in res.stderr


def test_dry_run_tables_show_the_set_and_its_cost_and_change_nothing(installed, family, tmp_path):
    before = tree_digest(installed)
    res = cli("uninstall", "science", "--into", installed, "--dry-run")
    assert res.exit_code == 0, res.output
    assert re.search(r"^ -\s+science\s+1\.0\.0\s+-\s", res.stdout, re.M), res.stdout
    assert re.search(r"^\s+coding\s+1\.0\.0\s+0\.15\s+\|D\|/\|G\| = 1500/10000", res.stdout, re.M), res.stdout
    assert "Would download nothing (nothing cached already); estimated peak memory" in res.stdout
    _, output = re.search(r"peak memory ([\d.]+ \w+); output ([\d.]+ \w+)", res.stdout).groups()
    weights = sum(p.stat().st_size for p in installed.glob("*.safetensors"))
    assert output == human_size(weights)
    third = _skill(family, tmp_path, "science", version="1.1.0", size=6000)
    res = cli("install", third, "--into", installed, "--dry-run", "--weight", "coding=0.5")
    assert res.exit_code == 0, res.output
    assert re.search(r"~\s+science\s+1\.0\.0 → 1\.1\.0\s+0\.6\s+\|D\|/\|G\| = 6000/10000", res.stdout), (
        res.stdout
    )
    assert re.search(r"coding\s+1\.0\.0\s+0\.5\s+user", res.stdout), res.stdout
    assert tree_digest(installed) == before
    res = cli("uninstall", "nope", "--into", installed, "--dry-run")
    assert res.exit_code == 1 and "skill `nope` is not installed" in res.stderr


def test_verify_cli_exits_1_and_names_the_tensor(installed):
    assert cli("verify", installed).exit_code == 0
    with Checkpoint.open(installed) as ckpt:
        name = ckpt.names()[0]
        info, file = ckpt.info(name), ckpt.file_of(name).path
    with open(file, "r+b") as f:
        f.seek(info.start)
        b = f.read(1)
        f.seek(info.start)
        f.write(bytes([b[0] ^ 0x80]))
    res = cli("verify", installed)
    assert res.exit_code == 1
    assert f"error: 1 tensor(s) of `{installed}` differ from tvreg.lock: `{name}` (changed)." in res.stderr
    assert cli("sync", "--into", installed).exit_code == 0
    assert cli("verify", installed).exit_code == 0


_HEAVY_UNUSED = ("httpx", "httpcore", "huggingface_hub.repocard", "huggingface_hub.hf_api")

_INSTALL_FROM_FILES = """
import sys
from tvreg.cli import main
try:
    main(sys.argv[1:-1])
except SystemExit as exc:
    assert not exc.code, exc.code
print(sorted(m for m in sys.argv[-1].split(",") if m in sys.modules))
"""


def test_installing_files_imports_no_http_stack_or_hub_client(family, tmp_path, two_skills):
    """The HTTP client and the Hub client cost a process ~0.4 CPU-s to import; an install from files
    uses neither (the model card is read without ``huggingface_hub.repocard``)."""
    model = copy_model(family.general, tmp_path / "mymodel")
    (model / "README.md").write_text("---\nlicense: mit\n---\n\nMy notes.\n")
    argv = ["install", *map(str, two_skills), "--into", str(model), "--base", str(family.pre),
            "--general-size", "10000", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _INSTALL_FROM_FILES, *argv, ",".join(_HEAVY_UNUSED)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "My notes." in (model / "README.md").read_text() and read_lock(model).skills


@pytest.mark.parametrize("point", ["install:write", "install:before-swap"])
def test_a_kill_mid_uninstall_leaves_the_old_weights_and_lock(installed, point):
    before = tree_digest(installed)
    proc = subprocess.run(
        [sys.executable, "-m", "tvreg.cli", "uninstall", "science", "--into", str(installed)],
        env={**subprocess_env(), "TVREG_FAULT": point},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    assert tree_digest(installed) == before
    uninstall(["science"], into=installed)  # the retry cleans up and succeeds
    assert [s.name for s in read_lock(installed).skills] == ["coding"]


def test_lock_then_sync_materialises_and_offline_names_what_is_missing(installed, family, tmp_path):
    newer = _skill(family, tmp_path, "science", version="1.1.0", size=6000)
    before = _weights(installed)
    res = cli("lock", newer, "--into", installed)
    assert res.exit_code == 0, res.output
    assert "run `tvreg sync --into" in res.stdout
    assert _weights(installed) == before and read_lock(installed).output_fingerprint is None
    res = cli("verify", installed)
    assert res.exit_code == 1 and "locked but never synced" in res.stderr
    assert cli("sync", "--into", installed, "--offline").exit_code == 0
    fresh = copy_model(family.general, tmp_path / "fresh")
    install([newer, tmp_path / "coding-1.0.0.tvskill"], into=fresh, base=family.pre, general_size=10000)
    assert _weights(installed) == _weights(fresh)
    digest = read_lock(installed).skill("science").digest
    artifact_path(digest).unlink()
    newer.unlink()
    res = cli("sync", "--into", installed, "--offline")
    assert res.exit_code == 1
    assert (
        "error: `--offline`: 1 locked artifact(s) are not in the local store or cache: science@1.1.0"
        in res.stderr
    )
    assert digest in res.stderr


def test_a_missing_pristine_g_names_its_fingerprint_and_the_one_command_that_fixes_it(installed, family):
    lock = read_lock(installed)
    before = _weights(installed)
    shutil.rmtree(pristine_path(lock.general_fingerprint))
    # A model that still verifies needs no G: nothing to change (uv's "Audited").
    synced = cli("sync", "--into", installed)
    assert synced.exit_code == 0 and "Nothing to change" in synced.stdout, synced.output
    # Damaged weights must be rebuilt from pristine G, which this machine no longer has.
    shard = sorted(installed.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    res = cli("sync", "--into", installed)
    assert res.exit_code == 1
    assert res.stderr.startswith(
        f"error: the general model G with fingerprint {lock.general_fingerprint} is not in this machine's store"
    )
    assert f"hint: point tvreg at an untouched copy of G: `tvreg sync --into {installed} --general PATH_TO_G`" in res.stderr
    fixed = cli("sync", "--into", installed, "--general", family.general)
    assert fixed.exit_code == 0, fixed.stderr
    assert pristine_path(lock.general_fingerprint).is_dir() and _weights(installed) == before
