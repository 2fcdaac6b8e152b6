"""Turn the example's score rows into ``results.csv``, ``results.md`` and three PNG plots.

Normalisation follows Merge to Learn: a model's general score is divided by G's, its
score on skill k by the expert θ_k's (the model fine-tuned on D_k alone); a row's skill
score is the mean over the skills it has, and ``combined`` is the mean of general and
skill. Safety's skill score is the mean of the refusal rate on harmful prompts and the
compliance rate on harmless look-alikes (XSTest's two sides), so over-refusal costs.

Accuracy only says whether the right answer still ranks first, so it hides a model growing
less sure of what it knows; ``general_margin_norm`` (the mean log-likelihood margin of the
right answer over the best distractor, ÷ G's) is reported beside it to show such forgetting.
LoRA rows are normalised by the same (full fine-tuning) experts, so both sit on one scale.
"""

from __future__ import annotations

import csv
from pathlib import Path

TASKS = ("general", "coding", "science", "safety", "safety_refusal", "safety_compliance")
MARGINS = ("general_margin", "coding_margin", "science_margin")


def _skill_score(scores: dict, skill: str) -> float:
    return scores[skill]


def normalise(rows: list[dict], skills: list[str]) -> list[dict]:
    by = {r["name"]: r for r in rows}
    g = by["G"]["scores"]["general"]
    expert = {s: _skill_score(by[f"expert-{s}"]["scores"], s) for s in skills}
    out = []
    for r in rows:
        row = dict(r)
        sc = r["scores"]
        row["general_norm"] = sc["general"] / g if g else float("nan")
        g_margin = by["G"]["scores"].get("general_margin")
        row["general_margin_norm"] = (
            sc["general_margin"] / g_margin if g_margin and "general_margin" in sc else None
        )
        have = [s for s in r["skills"].split("+") if s]
        norms = {s: (sc[s] / expert[s] if expert[s] else float("nan")) for s in skills}
        row["skill_norms"] = norms
        if have:
            row["skill_norm"] = sum(norms[s] for s in have) / len(have)
            row["combined"] = (row["general_norm"] + row["skill_norm"]) / 2
        else:
            row["skill_norm"] = row["combined"] = None
        out.append(row)
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _order(r: dict) -> tuple:
    kinds = [
        "pre",
        "G",
        "expert",
        "lora-expert",
        "cft",
        "ptm",
        "lora-ptm",
        "merge",
        "ties",
        "dare_ties",
        "merge-lora",
    ]
    kind = r["kind"].removesuffix("-default").removesuffix("-sweep")
    w = float(r["weights"]) if kind in ("ptm", "lora-ptm") else 0.0
    return (kinds.index(kind) if kind in kinds else 99, r["skills"], w, r["name"])


def _targets(rows: list[dict], skills: list[str]) -> list[tuple[str, str, str, str]]:
    by = {r["name"]: r for r in rows}
    out = []
    g = by["G"]
    for s in skills:
        sweep = [r for r in rows if r["kind"].startswith("ptm") and r["skills"] == s]
        default = next((r for r in sweep if r["kind"] == "ptm-default"), None)
        cft = by.get(f"cft-{s}")
        if default is None or cft is None:
            continue
        w = default["weights"]
        gn = default["general_norm"]
        out.append(
            (s, f"PTM@|D|/|G| (ω={w}) keeps general within 2% of G", f"{gn:.3f} × G", _yes(gn >= 0.98))
        )
        gain_cft = cft["scores"][s] - g["scores"][s]
        gain_ptm = default["scores"][s] - g["scores"][s]
        frac = gain_ptm / gain_cft if gain_cft > 0 else float("nan")
        out.append(
            (
                s,
                "PTM@|D|/|G| gains ≥ ½ of CFT's skill gain",
                f"{gain_ptm:+.3f} vs CFT {gain_cft:+.3f} ({frac:.0%})"
                if gain_cft > 0
                else f"CFT gain {gain_cft:+.3f}",
                _yes(frac >= 0.5 - 1e-9) if gain_cft > 0 else "n/a",
            )
        )
        out.append(
            (
                s,
                "CFT loses more general score than PTM@|D|/|G|",
                f"CFT {cft['general_norm']:.3f} vs PTM {gn:.3f} × G",
                _yes(cft["general_norm"] < gn),
            )
        )
        if cft.get("general_margin_norm") is not None and default.get("general_margin_norm") is not None:
            cm, pm = cft["general_margin_norm"], default["general_margin_norm"]
            out.append(
                (
                    s,
                    "… the same on the general log-likelihood margin (÷ G's)",
                    f"CFT {cm:.3f} vs PTM {pm:.3f} × G",
                    _yes(cm < pm),
                )
            )
        if s == "safety":
            d, c = default["scores"], cft["scores"]
            out.append(
                (
                    s,
                    "PTM refuses harmful prompts with fewer look-alike refusals than CFT",
                    f"PTM refuses {d['safety_refusal']:.2f} / answers look-alikes {d['safety_compliance']:.2f}; "
                    f"CFT {c['safety_refusal']:.2f} / {c['safety_compliance']:.2f}",
                    _yes(
                        d["safety_compliance"] > c["safety_compliance"]
                        and d["safety_refusal"] > g["scores"]["safety_refusal"]
                    ),
                )
            )
        best = max(sweep, key=lambda r: r["combined"])
        out.append(
            (
                s,
                "|D|/|G| within 10% of the best swept ω (combined)",
                f"{default['combined']:.3f} vs best {best['combined']:.3f} at ω={best['weights']}",
                _yes(default["combined"] >= 0.9 * best["combined"]),
            )
        )
        picked = next((r for r in sweep if r.get("best_on_val")), None)
        if picked is not None:
            out.append(
                (
                    s,
                    "ω picked on validation (--lock-best), its test combined",
                    f"ω={picked['weights']}: {picked['combined']:.3f}",
                    "",
                )
            )
    return out


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def write_tables(
    rows: list[dict], skills: list[str], sizes: dict[str, int], general_size: int, out: Path
) -> None:
    rows = sorted(rows, key=_order)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        val = sorted({k for r in rows for k in r["scores"] if k.startswith("val_")})
        w.writerow(
            ["name", "kind", "skills", "weights", *TASKS, *MARGINS, *val, "general_norm", "general_margin_norm",
             "skill_norm", "combined"]
        )  # fmt: skip
        for r in rows:
            sc = r["scores"]
            w.writerow(
                [r["name"], r["kind"], r["skills"], r["weights"], *(_fmt(sc.get(t)) for t in TASKS),
                 *(_fmt(sc.get(m)) for m in MARGINS), *(_fmt(sc.get(v)) for v in val), _fmt(r["general_norm"]),
                 _fmt(r["general_margin_norm"]), _fmt(r["skill_norm"]), _fmt(r["combined"])]
            )  # fmt: skip
    lines = ["# Merge to Learn on SmolLM2-135M-Instruct: results", ""]
    lines.append(
        f"|G| = {general_size} examples; |D| = "
        + ", ".join(f"{s} {sizes[s]} (default ω = {sizes[s] / general_size:.2f})" for s in skills)
        + ". Held-out test split; accuracy for general/coding/science (3-way log-likelihood ranking), "
        "refusal and look-alike compliance rates for safety (greedy prefix check). "
        "`general (norm)` is relative to G, `skill (norm)` to the skill's expert (the full fine-tune, for LoRA "
        "rows too); `margin (norm)` is the general set's mean log-likelihood margin of the right answer over the "
        "best distractor, relative to G's (it moves when a model grows less sure, which accuracy hides)."
    )
    lines += ["", "| model | ω | general | coding | science | safety: harmful refused | safety: look-alikes answered "
              "| general (norm) | margin (norm) | skill (norm) | combined |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        sc = r["scores"]
        label = r["name"] + (" ← picked on val" if r.get("best_on_val") else "")
        lines.append(
            f"| {label} | {r['weights']} | {sc['general']:.3f} | {_fmt(sc.get('coding'))} | {_fmt(sc.get('science'))} "
            f"| {_fmt(sc.get('safety_refusal'))} | {_fmt(sc.get('safety_compliance'))} | {r['general_norm']:.3f} "
            f"| {_fmt(r['general_margin_norm'])} | {_fmt(r['skill_norm'])} | {_fmt(r['combined'])} |"
        )
    lines += ["", "## Targets from the issue", "", "| skill | target | measured | met |", "|---|---|---|---|"]
    for t in _targets(rows, skills):
        lines.append("| " + " | ".join(t) + " |")
    lines += [
        "",
        "## Interference: each skill's normalised score alone (at |D|/|G|) and merged with others",
        "",
    ]
    merges = [r for r in rows if r["kind"] == "merge"]
    contexts = ["alone"] + [r["skills"] for r in merges]
    lines.append("| skill | " + " | ".join(contexts) + " |")
    lines.append("|---" * (len(contexts) + 1) + "|")
    alone = {r["skills"]: r for r in rows if r["kind"] == "ptm-default"}
    for s in skills:
        cells = [_fmt(alone[s]["skill_norms"][s]) if s in alone else ""]
        cells += [_fmt(r["skill_norms"][s]) if s in r["skills"].split("+") else "" for r in merges]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    cells = [""] + [_fmt(r["general_norm"]) for r in merges]
    lines.append("| general (norm) | " + " | ".join(cells) + " |")
    others = [r for r in rows if r["kind"] in ("ties", "dare_ties")]
    if others:
        lines += ["", "Other merge methods (same skills, same ω):", ""]
        lines += ["| method | skills | general (norm) | skill (norm) | combined |", "|---|---|---|---|---|"]
        for r in merges + others:
            lines.append(
                f"| {r['kind'].replace('merge', 'task arithmetic')} | {r['skills']} | {r['general_norm']:.3f} | {_fmt(r['skill_norm'])} | {_fmt(r['combined'])} |"
            )
    lines += _lora_table(rows, skills)
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _lora_table(rows: list[dict], skills: list[str]) -> list[str]:
    """Full fine-tuning vs LoRA (built with ``tvreg build --adapter``) for each skill, side by side."""
    by = {r["name"]: r for r in rows}
    if not any(r["kind"].startswith("lora") for r in rows):
        return []
    lines = [
        "",
        "## Full fine-tuning vs LoRA task vectors",
        "",
        "Same data, same top layers, same steps; LoRA's τ comes from `tvreg build --adapter`. Raw skill score "
        "(safety: mean of harmful refused and look-alikes answered, both in brackets), then the general "
        "score and margin relative to G.",
        "",
        "| skill | model | full: skill | LoRA: skill | full: general (norm) | LoRA: general (norm) "
        "| full: margin (norm) | LoRA: margin (norm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    g = by["G"]

    def cells(r: dict | None, s: str) -> tuple[str, str, str]:
        if r is None:
            return "", "", ""
        sc = r["scores"]
        skill = _fmt(sc.get(s))
        if s == "safety":  # the two sides behind the mean: harmful refused / look-alikes answered
            skill += f" ({sc['safety_refusal']:.2f} / {sc['safety_compliance']:.2f})"
        return skill, _fmt(r["general_norm"]), _fmt(r["general_margin_norm"])

    for s in skills:
        pairs = [("G (ω = 0)", g, g), ("expert", by.get(f"expert-{s}"), by.get(f"lora-expert-{s}"))]
        lora_points = sorted(
            (r for r in rows if r["kind"].startswith("lora-ptm") and r["skills"] == s),
            key=lambda r: float(r["weights"]),
        )
        for lp in lora_points:
            full = next(
                (r for r in rows if r["kind"].startswith("ptm") and r["skills"] == s
                 and abs(float(r["weights"]) - float(lp["weights"])) < 1e-6),
                None,
            )  # fmt: skip
            tag = " = |D|/|G|" if lp["kind"] == "lora-ptm-default" else ""
            pairs.append((f"G + ω·τ, ω = {lp['weights']}{tag}", full, lp))
        for label, full, lora in pairs:
            f, lo = cells(full, s), cells(lora, s)
            lines.append(f"| {s} | {label} | {f[0]} | {lo[0]} | {f[1]} | {lo[1]} | {f[2]} | {lo[2]} |")
    triple = "+".join(skills)
    full, lora = by.get(f"task_arithmetic:{triple}"), by.get(f"task_arithmetic-lora:{triple}")
    if lora is not None:
        lines += [
            "",
            f"All {len(skills)} skills merged by task arithmetic at |D|/|G|:",
            "",
            "| skill | full | LoRA |",
            "|---|---|---|",
        ]
        for s in skills:
            lines.append(f"| {s} | {cells(full, s)[0]} | {cells(lora, s)[0]} |")
        lines.append(f"| general (norm) | {cells(full, skills[0])[1]} | {cells(lora, skills[0])[1]} |")
        lines.append(f"| margin (norm) | {cells(full, skills[0])[2]} | {cells(lora, skills[0])[2]} |")
    return lines


def plot(rows: list[dict], skills: list[str], sizes: dict[str, int], general_size: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["name"]: r for r in rows}
    fig, axes = plt.subplots(1, len(skills), figsize=(4.6 * len(skills), 3.8), squeeze=False)
    for ax, s in zip(axes[0], skills, strict=True):
        sweep = sorted(
            (r for r in rows if r["kind"].startswith("ptm") and r["skills"] == s),
            key=lambda r: float(r["weights"]),
        )
        if not sweep:
            ax.set_title(f"{s}: not swept yet")
            continue
        xs = [0.0] + [float(r["weights"]) for r in sweep]
        g = by["G"]
        ax.plot(xs, [g["general_norm"]] + [r["general_norm"] for r in sweep], "o-", label="general (÷ G)")
        if all(r.get("general_margin_norm") is not None for r in sweep):
            ax.plot(xs, [1.0] + [r["general_margin_norm"] for r in sweep], "o:", color="C2",
                    label="general margin (÷ G)")  # fmt: skip
        lora = sorted(
            (r for r in rows if r["kind"].startswith("lora-ptm") and r["skills"] == s),
            key=lambda r: float(r["weights"]),
        )
        if lora:
            ax.plot([0.0] + [float(r["weights"]) for r in lora],
                    [g["skill_norms"][s]] + [r["skill_norms"][s] for r in lora], "^--", color="C3",
                    label=f"{s}, LoRA τ (÷ expert)")  # fmt: skip
        ax.plot(
            xs, [g["skill_norms"][s]] + [r["skill_norms"][s] for r in sweep], "s-", label=f"{s} (÷ expert)"
        )
        cft = by[f"cft-{s}"]
        ax.plot([1.12], [cft["general_norm"]], "o", color="C0", mfc="none", ms=9)
        ax.plot([1.12], [cft["skill_norms"][s]], "s", color="C1", mfc="none", ms=9)
        if cft.get("general_margin_norm") is not None:
            ax.plot([1.12], [cft["general_margin_norm"]], "o", color="C2", mfc="none", ms=9)
        ax.annotate(
            "CFT", (1.12, cft["skill_norms"][s]), textcoords="offset points", xytext=(-8, 8), fontsize=8
        )
        d = sizes[s] / general_size
        ax.axvline(d, ls="--", color="gray")
        ax.annotate("|D|/|G|", (d, 0.02), xycoords=("data", "axes fraction"), fontsize=8, color="gray")
        ax.set_title(f"{s}: θ_G + ω·τ_{s}")
        ax.set_xlabel("ω (0 = G; hollow markers = CFT)")
        ax.set_ylim(0, max(1.25, max(r["skill_norms"][s] for r in sweep) + 0.1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised score")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    plt.close(fig)

    merges = [r for r in rows if r["kind"] == "merge"]
    alone = {r["skills"]: r for r in rows if r["kind"] == "ptm-default"}
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(skills) * max(1, len(merges) // 2), 3.6))
    contexts = ["alone"] + [r["skills"] for r in merges]
    width = 0.8 / len(contexts)
    for j, ctx in enumerate(contexts):
        vals = []
        for s in skills:
            if ctx == "alone":
                vals.append(alone[s]["skill_norms"][s] if s in alone else 0)
            else:
                r = next(r for r in merges if r["skills"] == ctx)
                vals.append(r["skill_norms"][s] if s in ctx.split("+") else float("nan"))
        ax.bar([i + j * width for i in range(len(skills))], vals, width, label=ctx)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(skills))], skills)
    ax.set_ylabel("skill score ÷ expert")
    ax.set_title("Interference: each skill alone vs merged (task arithmetic, ω = |D|/|G|)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "interference.png", dpi=110)
    plt.close(fig)

    if "safety" in skills:
        fig, ax = plt.subplots(figsize=(5, 4))
        sweep = sorted(
            (r for r in rows if r["kind"].startswith("ptm") and r["skills"] == "safety"),
            key=lambda r: float(r["weights"]),
        )
        ax.plot(
            [r["scores"]["safety_compliance"] for r in sweep],
            [r["scores"]["safety_refusal"] for r in sweep],
            "o-",
            label="G + ω·τ_safety",
        )
        for r in sweep:
            ax.annotate(f"ω={r['weights']}", (r["scores"]["safety_compliance"], r["scores"]["safety_refusal"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7)  # fmt: skip
        lora = sorted(
            (r for r in rows if r["kind"].startswith("lora-ptm") and r["skills"] == "safety"),
            key=lambda r: float(r["weights"]),
        )
        if lora:
            ax.plot([r["scores"]["safety_compliance"] for r in lora], [r["scores"]["safety_refusal"] for r in lora],
                    "^--", color="C6", label="G + ω·τ_safety (LoRA)")  # fmt: skip
            for r in lora:
                ax.annotate(f"ω={r['weights']}", (r["scores"]["safety_compliance"], r["scores"]["safety_refusal"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color="C6")  # fmt: skip
        for name, marker in (("G", "D"), ("pre", "v"), ("cft-safety", "*"), ("expert-safety", "P"),
                             ("lora-expert-safety", "X")):  # fmt: skip
            if name in by:
                sc = by[name]["scores"]
                ax.plot([sc["safety_compliance"]], [sc["safety_refusal"]], marker, ms=10, label=name)
        ax.set_xlabel("harmless look-alikes answered (higher is better)")
        ax.set_ylabel("harmful prompts refused (higher is better)")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        ax.set_title("Safety vs exaggerated refusal")
        fig.tight_layout()
        fig.savefig(out / "safety.png", dpi=110)
        plt.close(fig)


def write(rows: list[dict], skills: list[str], sizes: dict[str, int], general_size: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = normalise(rows, skills)
    write_tables(rows, skills, sizes, general_size, out)
    plot(rows, skills, sizes, general_size, out)
