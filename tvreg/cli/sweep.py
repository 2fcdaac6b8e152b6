"""``tvreg sweep``: try a skill at several merge weights, evaluate each, optionally lock the best."""

from __future__ import annotations

import json

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from .app import err, main, out


@main.command()
@click.argument("skill", metavar="SKILL")
@click.option(
    "--into", required=True, type=click.Path(exists=True, file_okay=False), help="The model environment."
)
@click.option(
    "--weights",
    "grid",
    default="0.2:1.0:0.2",
    show_default=True,
    metavar="START:STOP:STEP|LIST",
    help="The ω values to try (both ends included), or a comma list.",
)
@click.option(
    "--eval",
    "eval_spec",
    required=True,
    metavar="MODULE:FUNCTION",
    help="Evaluation hook: `pkg.module:fn` or `path/to/file.py:fn`, called as fn(model_dir) -> {metric: float}.",
)
@click.option("--metric", metavar="NAME", help="The score that picks the best ω (higher is better).")
@click.option("--lower-is-better", is_flag=True, help="The metric is a loss: pick the lowest.")
@click.option("--lock-best", is_flag=True, help="Install the best ω into the model and its tvreg.lock.")
@click.option("--no-default", is_flag=True, help="Do not add the default ω = |D|/|G| to the points.")
@click.option(
    "--registry", metavar="URL", help="Registry to fetch a named skill from (default: the logged-in one)."
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def sweep(skill, into, grid, eval_spec, metric, lower_is_better, lock_best, no_default, registry, fmt):
    """Install SKILL at each ω into a scratch copy of the model, evaluate it, print the scores.

    SKILL is a .tvskill file or a registry requirement (`ns/skill@^1`). Each point is a
    real install into a scratch model environment that shares the model's files by hard
    link; only that point's weights are written, and it is removed once evaluated. Other
    installed skills keep their weights. With --lock-best the ω with the best --metric
    (on your validation data, as Merge to Learn §3.2 advises) is installed into the model.
    """
    from .._env.evaluate import load_hook
    from .._env.sweep import parse_weight_grid
    from .._env.sweep import sweep as do_sweep
    from .._registry.fetch import fetch_for_install
    from .app import RichProgress

    weights = parse_weight_grid(grid)
    hook = load_hook(eval_spec)
    paths, sources = fetch_for_install([skill], into=into, registry=registry, progress=RichProgress())
    if len(paths) != 1:
        needed = ", ".join(str(getattr(s, "label", s)) for s in sources[1:])
        raise click.UsageError(f"`{skill}` needs other skills ({needed}); install those first.")
    bar = RichBar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with bar:
        task = bar.add_task("Sweeping", total=None)

        def on_stage(stage: str, w: float, index: int, count: int) -> None:
            verb = "installing" if stage == "install" else "evaluating"
            bar.update(task, total=count, description=f"ω = {w:.4g}: {verb}")

        res = do_sweep(
            paths[0],
            into=into,
            weights=weights,
            evaluate=hook,
            metric=metric,
            lower_is_better=lower_is_better,
            lock_best=lock_best,
            include_default=not no_default,
            source=sources[0],
            on_stage=on_stage,
            on_point=lambda _p: bar.advance(task),
        )
    if fmt == "json":
        out.print_json(
            json.dumps(
                {
                    "skill": res.skill,
                    "model": str(res.model_dir),
                    "default_weight": res.default_weight,
                    "metric": res.metric,
                    "best_weight": res.best.weight if res.best else None,
                    "locked": res.locked is not None,
                    "points": [
                        {
                            "weight": p.weight,
                            "default": p.is_default,
                            "scores": p.scores,
                            "install_seconds": round(p.install_seconds, 3),
                            "eval_seconds": round(p.eval_seconds, 3),
                        }
                        for p in res.points
                    ],
                }
            )
        )
        return
    metrics = sorted({k for p in res.points for k in p.scores})
    if res.metric in metrics:
        metrics.remove(res.metric)
        metrics.insert(0, res.metric)
    table = Table(box=None, header_style="bold", title=f"{res.skill} into {res.model_dir.name}")
    table.add_column("ω", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("")
    for p in res.points:
        marks = []
        if p.is_default:
            marks.append("|D|/|G|")
        if res.best is p:
            marks.append("best")
        style = "bold green" if res.best is p else None
        table.add_row(
            f"{p.weight:.4g}",
            *(f"{p.scores[m]:.4f}" if m in p.scores else "-" for m in metrics),
            ", ".join(marks),
            style=style,
        )
    out.print(table)
    for note in res.notes:
        out.print(f"[yellow]note:[/] {note}")
    if res.best is not None:
        out.print(f"Best ω on `{res.metric}`: {res.best.weight:.4g} ({res.best.scores[res.metric]:.4f}).")
    if res.locked is not None:
        out.print(
            f"Locked {res.skill} at ω = {res.best.weight:.4g} into {res.locked.model_dir} "
            f"(weights {res.locked.output_fingerprint[:12]})."
        )
