"""`tvreg check`: the interference report of a planned skill set, from sketches only."""

from __future__ import annotations

import json
import sys

import click

from .app import RichProgress, err, main, out, parse_weights
from .environment_cmds import HUB_ENDPOINT


@main.command()
@click.argument("skills", nargs=-1, metavar="SKILL...")
@click.option(
    "--into", "into", type=click.Path(file_okay=False),
    help="The model environment (default: the current directory when it holds tvreg.lock).",
)  # fmt: skip
@click.option(
    "--weight", "weights", multiple=True, metavar="NAME=ω", help="Merge weight of one skill (repeatable)."
)
@click.option(
    "--registry", metavar="URL", help="Registry to resolve named skills on (default: the logged-in one)."
)
@click.option(
    "--resolution",
    type=click.Choice(["highest", "lowest"]),
    default="highest",
    show_default=True,
    help="Resolve to the highest versions, or the lowest, as install would.",
)
@click.option(
    "--no-download",
    is_flag=True,
    help="Fail instead of downloading the artifact of a version published without a sketch.",
)
@click.option("--strict", is_flag=True, help="Exit with status 1 when any pair is flagged (for CI).")
@click.option(
    "--policy", "policy", is_flag=True,
    help="Judge the installed skills and SKILL... against the model's tvreg.toml policy instead; exit 1 if refused.",
)  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@HUB_ENDPOINT
def check(skills, into, weights, registry, resolution, no_download, strict, policy, fmt):
    """Estimate how the skills would interfere if installed together into a model.

    Checks every pair among the model's installed skills and SKILL... (files or registry
    requirements, resolved as `tvreg install` would), from the sketches published with
    each version: no tensor data is downloaded. Per pair: the estimated cosine of the two
    task vectors (whole model and worst layers), the sign-conflict fraction on the
    parameters both change most, and the ratio of their norms after ω. Pairs past the
    thresholds in the README ("Checking for interference") get a warning and a suggestion.

    A Hub repo (`hf://org/repo[@revision]`) gets a compatibility report instead: what it
    holds, the commit, and whether it converts onto the model's base (exit 1 if not).
    """
    if skills and all(s.startswith("hf://") for s in skills):
        _check_hub(skills, into, fmt)
        return
    from .._env.check import check as do_check
    from .environment_cmds import into_dir

    into = into_dir(into, required=True)
    if policy:
        _check_policy(list(skills), into, registry, fmt)
        return
    report = do_check(
        list(skills),
        into=into,
        weights=parse_weights(weights),
        registry=registry,
        resolution=resolution,
        download=not no_download,
        progress=RichProgress(),
    )
    if fmt == "json":
        out.print_json(json.dumps(report.to_dict()))
    else:
        print_report(report)
    if strict and report.flagged:
        sys.exit(1)


def _check_policy(skills, into, registry, fmt) -> None:
    from .._env.policy import check_policy

    report = check_policy(skills, into=into, registry=registry, progress=RichProgress())
    if fmt == "json":
        rows = [
            {"skill": r.verdict.name, "version": r.verdict.version, "digest": r.verdict.digest,
             "planned": r.planned, "signed_by": r.verdict.signed_by, "signer": r.verdict.signer,
             "refused": r.verdict.refused, "note": r.verdict.note, "attested": r.verdict.attested}
            for r in report.rows
        ]  # fmt: skip
        out.print_json(json.dumps({"policy": str(report.policy.path), "ok": report.ok, "skills": rows,
                                   "problems": list(report.problems)}))  # fmt: skip
    else:
        out.print(f"policy {report.policy.path}")
        for r in report.rows:
            v = r.verdict
            who = f"signed by {v.signer or '?'} {v.signed_by[:19]}…" if v.signed_by else "unsigned"
            status = "[red]refused[/]" if v.refused else "[green]ok[/]"
            att = (" attested " + ", ".join(f"{k}={x:g}" for k, x in sorted(v.attested.items()))) if v.attested else ""
            out.print(f"  {'+' if r.planned else ' '} {v.name} {v.version}  {who}{att}  {status}", soft_wrap=True)
        for p in report.problems:
            err.print(f"[bold red]refused:[/] {p}", soft_wrap=True)
        if report.ok:
            out.print(f"{report.model_dir.name} meets its policy ({len(report.rows)} skill(s) checked).")
    if not report.ok:
        sys.exit(1)


def _check_hub(args, into, fmt) -> None:
    """`tvreg check hf://…`: download and convert in the caches only; the model is not touched."""
    from dataclasses import asdict

    from .._registry.hub import check as hub_check

    reports = [hub_check(a, into=into, progress=RichProgress()) for a in args]
    if fmt == "json":
        out.print_json(json.dumps([asdict(r) for r in reports]))
    for r in reports if fmt == "text" else ():
        verdict = "compatible" if r.compatible else "not compatible"
        out.print(f"{r.origin}: {r.kind}, {verdict} with {into}", soft_wrap=True)
        if r.base_verified:
            out.print(f"  base verified by fingerprint {r.base_verified[:12]}; {r.tensors} tensors changed")
        if r.base_hint:
            out.print(f"  the repo names its base `{r.base_hint}` (a hint, not what was checked)", soft_wrap=True)
        if r.reason:
            out.print(f"  {r.reason}", soft_wrap=True)
    if not all(r.compatible for r in reports):
        sys.exit(1)


def print_report(report) -> None:
    """The skills with ω and norms, then one block per pair, then the warnings."""
    if len(report.skills) < 2:
        out.print("Nothing to compare: interference needs at least two skills.")
        return
    out.print("[bold]skills[/] (ω‖τ‖: how far each moves the weights)")
    for s in report.skills:
        out.print(
            f"  {s.label}  ω {s.weight:.4g} ({s.weight_source}), ‖τ‖ {s.sketch.norm:.4g}, "
            f"ω‖τ‖ {s.weight * s.sketch.norm:.4g}"
        )
    for p in report.pairs:
        mark = "  [bold yellow](flagged)[/]" if p.warnings else ""
        out.print(f"\n[bold]{p.a} × {p.b}[/]{mark}")
        layers = ", ".join(f"{name} {cos:+.2f}" for name, cos in p.worst_layers)
        out.print(f"  cosine          {p.cosine:+.2f} (worst layers: {layers})")
        if p.sign_conflict is not None:
            out.print(f"  sign conflict   {p.sign_conflict:.2f} of the parameters both change most")
        out.print(
            f"  norms after ω   {p.scaled_norms[0]:.4g} and {p.scaled_norms[1]:.4g} (ratio {p.norm_ratio:.2f})"
        )
    out.print()
    _print_warnings(report)
    if not report.flagged:
        out.print(f"No pair past the interference thresholds ({len(report.pairs)} checked).")
    else:
        out.print(f"{len(report.flagged)} of {len(report.pairs)} pairs past the interference thresholds.")


def _print_warnings(report) -> None:
    for p in report.flagged:
        for w in p.warnings:
            err.print(f"[bold yellow]warning:[/] {w}", soft_wrap=True)
        for s in dict.fromkeys(p.suggestions):
            err.print(f"[cyan]hint:[/] {s}", soft_wrap=True)


def interference_printer(skills, *, into):
    """The install's check-step hook: print the flagged pairs' warnings and where to see more.

    The install pipeline calls it with the report of the one resolution it made (no second
    resolve); it never fails the install.
    """

    def show(report) -> None:
        if report.flagged:
            _print_warnings(report)
            err.print(
                f"[cyan]hint:[/] see the full report: `tvreg check {' '.join(skills)} --into {into}`",
                soft_wrap=True,
            )

    return show
