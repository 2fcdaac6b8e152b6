"""``tvreg install hf://org/repo[@revision]``: Hub repos (LoRA adapters, fine-tuned checkpoints) install
like skills, through the real ``huggingface_hub`` client, against a Hub-protocol server on loopback
(``hub_fixture.py``); the lock pins the commit, so ``sync --locked`` elsewhere rebuilds the same bytes."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from click.testing import CliRunner
from helpers import copy_model, tree_digest
from hub_fixture import HubRepos, HubServer
from safetensors.torch import load_file
from tiny_models import CODING_TEXTS, SCIENCE_TEXTS, make_lora_adapter

from tvreg._build.build import build_skill
from tvreg._env.environment import init_environment
from tvreg._env.lockfile import read_lock
from tvreg._env.operations import install, sync
from tvreg.cli import main

pytestmark = [
    pytest.mark.usefixtures("hf_home"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def adapters(family, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sci = make_lora_adapter(family.pre, out / "sci", SCIENCE_TEXTS, r=4, lora_alpha=8, steps=3)
        code = make_lora_adapter(family.pre, out / "code", CODING_TEXTS, r=4, lora_alpha=8, steps=3, seed=1)
    return {"sci": sci, "code": code}


@pytest.fixture
def hub(family, adapters, monkeypatch):
    repos = HubRepos()
    repos.push_dir("alice/sci-lora", adapters["sci"])
    ft = {p.name: p.read_bytes() for p in family.science.iterdir() if p.name.endswith((".json", ".safetensors"))}
    # A fine-tune's card names its base (Hub metadata); tvreg opens it and checks its fingerprint.
    ft["README.md"] = f"---\nbase_model: {family.pre}\ntags: [text-generation]\n---\n# sci-full\n".encode()
    repos.push("alice/sci-full", ft)
    with HubServer(repos) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        yield repos, url


@pytest.fixture
def env(family, tmp_path):
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=275000)
    return model


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v for p in sorted(model.glob("*.safetensors")) for k, v in load_file(p).items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_installs_like_its_converted_skill(family, adapters, hub, env, tmp_path):
    repos, url = hub
    install(["hf://alice/sci-lora"], into=env, weights={"sci-lora": 1.0})
    skill = tmp_path / "sci.tvskill"
    build_skill(family.pre, adapter=adapters["sci"], output=skill, name="sci-lora", version="1.0.0")
    other = copy_model(family.general, tmp_path / "other")
    init_environment(other, base=family.pre, general_size=275000)
    install([str(skill)], into=other, weights={"sci-lora": 1.0})
    assert _equal(_weights(env), _weights(other))
    assert not _equal(_weights(env), _weights(family.general))

    (locked,) = read_lock(env).skills
    sha = repos.refs["alice/sci-lora"]["main"]
    assert locked.artifact == f"hf://alice/sci-lora@{sha}"
    assert locked.registry == url and locked.requested == "hf://alice/sci-lora"
    assert locked.id == "hf://alice/sci-lora"


def _weight_files(*roots) -> list:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.name.endswith((".safetensors", ".tvskill"))]


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "server-ignores-range"])
@pytest.mark.parametrize(("repo", "weight"), [("alice/sci-lora", "sci-lora=1"), ("alice/sci-full", "sci-full=0.5")])
def test_dry_run_downloads_no_weights_and_converts_nothing(family, hub, env, tmp_path, repo, weight, ranges):
    repos, _ = hub
    repos.ranges = ranges
    before = tree_digest(env)
    res = CliRunner().invoke(main, ["install", f"hf://{repo}", "--into", str(env), "--weight", weight, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert f"hf://{repo}" in res.stdout and "Would download" in res.stdout and "dry run" in res.stdout
    assert tree_digest(env) == before
    caches = (tmp_path / "hf-home", tmp_path / "tvreg-cache", tmp_path / "tvreg-data" / "artifacts")
    assert _weight_files(*caches) == []  # no weight file in the HF cache, nothing converted or stored
    small = {p.name for p in (tmp_path / "hf-home").rglob("*") if p.is_file() and "snapshots" in p.parts}
    assert small <= {"adapter_config.json", "config.json", "README.md", "model.safetensors.index.json"}
    gets = [r for r in repos.requests if r.startswith("GET") and r.split()[1].endswith(".safetensors")]
    assert gets and all(" bytes=" in r for r in gets) == ranges  # only header reads when Range is honoured
    # The real install afterwards downloads and converts as usual.
    res = CliRunner().invoke(main, ["install", f"hf://{repo}", "--into", str(env), "--weight", weight])
    assert res.exit_code == 0, res.output
    assert _weight_files(tmp_path / "hf-home")


def test_dry_run_refuses_a_checkpoint_of_other_shapes_from_its_header(family, hub, env, tmp_path):
    from safetensors.torch import save_file

    repos, _ = hub
    files = dict(repos.commits["alice/sci-full"][repos.refs["alice/sci-full"]["main"]])
    weights = load_file(family.science / "model.safetensors") if (family.science / "model.safetensors").exists() else None
    if weights is None:
        pytest.skip("the science fixture is sharded")
    name = sorted(weights)[0]
    weights[name] = torch.zeros(3, 5)
    save_file(weights, tmp_path / "bad.safetensors")
    files["model.safetensors"] = (tmp_path / "bad.safetensors").read_bytes()
    repos.push("alice/bad-shape", files)
    res = CliRunner().invoke(main, ["install", "hf://alice/bad-shape", "--into", str(env), "--dry-run"])
    assert res.exit_code != 0
    assert f"has `{name}` of shape [3, 5], θ_pre has" in res.stderr
    assert _weight_files(tmp_path / "hf-home", tmp_path / "tvreg-cache") == []


def _bad_lora(adapter, case: str) -> dict[str, bytes]:
    """The repo's files for `adapter` spoilt in one way; its last LoRA module is the one spoilt."""
    from safetensors.torch import save

    files = {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}
    cfg = json.loads(files["adapter_config.json"])
    tensors = load_file(adapter / "adapter_model.safetensors")
    a_key = sorted(k for k in tensors if k.endswith("lora_A.weight"))[-1]
    b_key = a_key.replace("lora_A", "lora_B")
    if case == "in-features":
        tensors[a_key] = torch.ones(tensors[a_key].shape[0], tensors[a_key].shape[1] + 8)
    elif case == "rank":
        module = a_key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        cfg["rank_pattern"] = {module.replace(".", r"\."): cfg["r"] * 2}
    elif case == "unpaired":
        del tensors[b_key]
    elif case == "dora":  # a config the conversion refuses: the dry run reads it the same way
        cfg["use_dora"] = True
    files["adapter_config.json"] = json.dumps(cfg).encode()
    files["adapter_model.safetensors"] = save(tensors)
    return files


def _error_lines(output: str) -> list[str]:
    lines = output.strip().splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("error:")) :]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("in-features", "but the base has"),
        ("rank", "but adapter_config.json gives"),
        ("unpaired", "without its"),
        ("dora", "is a DoRA adapter"),
    ],
)
def test_dry_run_refuses_bad_lora_factors_as_the_install_does(family, adapters, hub, env, tmp_path, case, words):
    """Factors that fit neither the config nor θ_pre: the dry run refuses them from the header, in the
    real install's words and exit code, downloading no weights; neither writes to the model."""
    repos, _ = hub
    repos.push("alice/bad-lora", _bad_lora(adapters["sci"], case))
    before = tree_digest(env)
    args = ["install", "hf://alice/bad-lora", "--into", str(env), "--weight", "bad-lora=1"]
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 1, dry.output
    assert words in dry.stderr and "Traceback" not in dry.output
    assert tree_digest(env) == before
    assert _weight_files(tmp_path / "hf-home", tmp_path / "tvreg-cache") == []
    real = CliRunner().invoke(main, args)
    assert real.exit_code == dry.exit_code, real.output
    assert _error_lines(real.stderr) == _error_lines(dry.stderr)
    assert _weight_files(tmp_path / "hf-home")  # the real install did download the weights it refused
    assert tree_digest(env) == before


def test_checkpoint_installs_as_its_task_vector(family, hub, env, tmp_path):
    install(["hf://alice/sci-full"], into=env, weights={"sci-full": 0.5})
    skill = tmp_path / "sci.tvskill"
    build_skill(family.pre, finetuned=family.science, output=skill, name="sci-full", version="1.0.0")
    other = copy_model(family.general, tmp_path / "other")
    init_environment(other, base=family.pre, general_size=275000)
    install([str(skill)], into=other, weights={"sci-full": 0.5})
    assert _equal(_weights(env), _weights(other))


def test_base_given_explicitly_when_the_repo_names_none(family, hub, env, tmp_path):
    repos, _ = hub
    files = dict(repos.commits["alice/sci-full"][repos.refs["alice/sci-full"]["main"]])
    del files["README.md"]
    repos.push("alice/no-card", files)
    before = tree_digest(env)
    bare = CliRunner().invoke(main, ["install", "hf://alice/no-card", "--into", str(env), "--weight", "no-card=0.5"])
    assert bare.exit_code == 1 and "which is not at hand." in bare.output, bare.output
    assert tree_digest(env) == before
    r = CliRunner().invoke(
        main, ["install", "hf://alice/no-card", "--into", str(env), "--weight", "no-card=0.5", "--base", str(family.pre)]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert read_lock(env).skills[0].artifact.startswith("hf://alice/no-card@")


def test_revision_is_pinned_and_sync_locked_elsewhere_fetches_it(family, adapters, hub, env, tmp_path, monkeypatch):
    repos, _ = hub
    first = repos.refs["alice/sci-lora"]["main"]
    install(["hf://alice/sci-lora"], into=env, weights={"sci-lora": 1.0})
    want = _weights(env)
    # main moves on: a locked sync must still fetch the locked commit, not main.
    repos.push_dir("alice/sci-lora", adapters["code"])
    assert repos.refs["alice/sci-lora"]["main"] != first

    elsewhere = tmp_path / "machine-2"
    monkeypatch.setenv("TVREG_DATA_DIR", str(elsewhere / "data"))
    monkeypatch.setenv("TVREG_CACHE_DIR", str(elsewhere / "cache"))
    monkeypatch.setenv("HF_HOME", str(elsewhere / "hf-home"))
    copy = copy_model(family.general, elsewhere / "mymodel")
    shutil.copy(env / "tvreg.lock", copy / "tvreg.lock")
    seen = len(repos.requests)
    sync(copy, locked=True, general=family.general)
    assert _equal(_weights(copy), want)
    assert any(f"/revision/{first}" in r for r in repos.requests[seen:])
    # Through huggingface_hub's cache of this "machine" (HF_HOME as set now, not at import).
    assert (elsewhere / "hf-home" / "hub" / "models--alice--sci-lora" / "snapshots" / first).is_dir()


def test_offline_uses_the_hf_cache_only(family, hub, env, monkeypatch):
    install(["hf://alice/sci-lora"], into=env, weights={"sci-lora": 1.0})
    want = _weights(env)
    repos, _ = hub
    before = len(repos.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env2 = copy_model(family.general, env.parent / "mymodel2")
    init_environment(env2, base=family.pre, general_size=275000)
    install(["hf://alice/sci-lora"], into=env2, weights={"sci-lora": 1.0}, offline=True)
    assert _equal(_weights(env2), want)
    assert len(repos.requests) == before


def _base_mismatch(repos, adapters, family):
    cfg = json.loads((adapters["sci"] / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(family.general)
    files = {p.name: p.read_bytes() for p in adapters["sci"].iterdir() if p.is_file()}
    files["adapter_config.json"] = json.dumps(cfg).encode()
    repos.push("bob/elsewhere", files)


@pytest.mark.parametrize(
    ("arg", "setup", "message", "hint"),
    [
        ("hf://alice/nothing", None, "error: no Hub repo `alice/nothing` on URL.", "hint: check the name"),
        ("hf://alice/sci-lora@v9", None, "error: `alice/sci-lora` on URL has no revision `v9`.", "hint: give a branch"),
        ("hf://alice/sci-lora", "gated", "error: `hf://alice/sci-lora` is a gated repo on URL", "hint: accept its"),
        ("hf://alice/sci-lora", "badtoken", "error: URL refused the token sent for `alice/sci-lora` (401).", "hint: log in"),
        ("hf://carol/pickled", "pickle", "error: `hf://carol/pickled` holds neither a skill, a LoRA adapter nor",
         "hint: its weights are pickles"),
        ("hf://bob/elsewhere", "mismatch", "error: converting `hf://bob/elsewhere@", "hint: pass θ_pre with `--base PRE`"),
        ("hf://bad..name", None, "error: `hf://bad..name` is not a Hub repo reference.", "hint: write it as"),
    ],
)  # fmt: skip
def test_errors_are_one_sentence_and_write_nothing(family, adapters, hub, env, monkeypatch, arg, setup, message, hint):
    repos, url = hub
    if setup == "gated":
        repos.gated.add("alice/sci-lora")
    elif setup == "badtoken":
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    elif setup == "pickle":
        repos.push("carol/pickled", {"config.json": b"{}", "pytorch_model.bin": b"\x80\x02"})
    elif setup == "mismatch":
        _base_mismatch(repos, adapters, family)
    before = tree_digest(env)
    result = CliRunner().invoke(main, ["install", arg, "--into", str(env), "--weight", "x=1"])
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1 and lines[errors[0]].startswith(message.replace("URL", url)), result.output
    assert any(line.startswith(hint) for line in lines[errors[0] + 1 :]), result.output
    assert "Traceback" not in result.output
    assert tree_digest(env) == before
    # The base is checked (and the repo classified) before any tensor is downloaded.
    assert not [r for r in repos.requests if r.startswith("GET") and r.endswith(".safetensors")]


def test_check_reports_without_installing(family, adapters, hub, env):
    repos, _ = hub
    before = tree_digest(env)
    ok = CliRunner().invoke(main, ["check", "hf://alice/sci-lora", "--into", str(env)])
    assert ok.exit_code == 0, ok.output
    assert "adapter" in ok.output and "compatible" in ok.output
    _base_mismatch(repos, adapters, family)
    bad = CliRunner().invoke(main, ["check", "hf://bob/elsewhere", "--into", str(env)])
    assert bad.exit_code == 1, bad.output
    assert "not compatible" in bad.output
    assert tree_digest(env) == before


def test_build_adapter_from_the_hub(family, adapters, hub, tmp_path):
    out = tmp_path / "hub.tvskill"
    r = CliRunner().invoke(
        main, ["build", "--base", str(family.pre), "--adapter", "hf://alice/sci-lora", "-o", str(out),
               "--name", "sci-lora", "--version", "1.0.0"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    local = tmp_path / "local.tvskill"
    build_skill(family.pre, adapter=adapters["sci"], output=local, name="sci-lora", version="1.0.0")
    from tvreg._format.artifact import Artifact

    a, b = Artifact(out), Artifact(local)
    try:
        assert all(torch.equal(a.decode(n), b.decode(n)) for n in b.manifest.tensors)
        assert a.manifest.source["adapter"].startswith("hf://alice/sci-lora@")
    finally:
        a.close()
        b.close()


def test_endpoint_from_config_when_hf_endpoint_is_unset(hub, env, monkeypatch, tmp_path):
    repos, url = hub
    monkeypatch.delenv("HF_ENDPOINT")
    from tvreg._registry.config import config_path

    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text(f'hub_endpoint = "{url}"\n', encoding="utf-8")
    install(["hf://alice/sci-lora"], into=env, weights={"sci-lora": 1.0})
    assert read_lock(env).skills[0].registry == url


def test_hub_endpoint_flag_wins_over_hf_endpoint_and_config(family, hub, env, monkeypatch, tmp_path):
    repos, url = hub
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    monkeypatch.setenv("HF_ENDPOINT", dead)
    from tvreg._registry.config import config_path

    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text(f'hub_endpoint = "{dead}"\n', encoding="utf-8")
    cli = CliRunner()
    r = cli.invoke(main, ["install", "hf://alice/sci-lora", "--into", str(env), "--weight", "sci-lora=1"])
    assert r.exit_code != 0 and dead in r.stderr  # without the flag: the environment's (dead) endpoint
    r = cli.invoke(main, ["check", "hf://alice/sci-lora", "--into", str(env), "--hub-endpoint", url])
    assert r.exit_code == 0 and "compatible" in r.output, r.output
    out = tmp_path / "hub.tvskill"
    r = cli.invoke(
        main, ["build", "--base", str(family.pre), "--adapter", "hf://alice/sci-lora", "-o", str(out),
               "--name", "sci-lora", "--version", "1.0.0", "--hub-endpoint", url],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = cli.invoke(
        main, ["install", "hf://alice/sci-lora", "--into", str(env), "--weight", "sci-lora=1", "--hub-endpoint", url]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert read_lock(env).skills[0].registry == url  # the lock records the endpoint used
    r = cli.invoke(main, ["install", "hf://alice/sci-lora", "--into", str(env), "--hub-endpoint", "ftp://x"])
    assert r.exit_code != 0 and "`--hub-endpoint ftp://x` is not an http(s) URL." in r.stderr


def test_sync_base_resyncs_a_repo_that_names_no_base_on_another_machine(family, hub, env, tmp_path, monkeypatch):
    repos, url = hub
    files = dict(repos.commits["alice/sci-full"][repos.refs["alice/sci-full"]["main"]])
    del files["README.md"]
    repos.push("alice/no-card", files)
    cli = CliRunner()
    r = cli.invoke(
        main, ["install", "hf://alice/no-card", "--into", str(env), "--weight", "no-card=0.5", "--base", str(family.pre)]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    want = _weights(env)

    elsewhere = tmp_path / "machine-2"
    monkeypatch.setenv("TVREG_DATA_DIR", str(elsewhere / "data"))
    monkeypatch.setenv("TVREG_CACHE_DIR", str(elsewhere / "cache"))
    monkeypatch.setenv("HF_HOME", str(elsewhere / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a dead mirror: `--hub-endpoint` wins over it
    copy = copy_model(family.general, elsewhere / "mymodel")
    shutil.copy(env / "tvreg.lock", copy / "tvreg.lock")
    before = tree_digest(copy)
    r = cli.invoke(main, ["sync", "--locked", "--into", str(copy), "--hub-endpoint", url, "--general", str(family.general)])
    assert r.exit_code == 1 and "which is not at hand" in r.stderr and "--base PRE" in r.stderr, r.output
    assert tree_digest(copy) == before
    r = cli.invoke(main, ["sync", "--locked", "--into", str(copy), "--hub-endpoint", url, "--base", str(family.science)])
    assert r.exit_code == 1 and "not at hand" in r.stderr  # another model is not θ_pre: its fingerprint is checked
    r = cli.invoke(main, ["sync", "--locked", "--into", str(copy), "--hub-endpoint", url, "--base", str(family.pre)])
    assert r.exit_code == 0, r.output
    assert _equal(_weights(copy), want)
