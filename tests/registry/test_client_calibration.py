"""A calibrated skill built from `tvskill.toml` keeps its calibration figures through publish and `tvreg info`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from client_helpers import cli, login, write_project

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_calibrate import HELDOUT  # noqa: E402


def test_calibration_round_trips_through_publish_and_info(registry, family, tmp_path):
    login(registry, "alice")
    project = write_project(
        tmp_path / "science", name="alice/science", version="1.0.0", base=family.pre,
        build={"finetuned": str(family.science), "codec": "auto", "calibration": "heldout.txt", "min_retention": 0.9},
    )  # fmt: skip
    (project / "heldout.txt").write_text("\n".join(HELDOUT) + "\n", encoding="utf-8")
    res = cli("publish", project)
    assert res.exit_code == 0, res.output
    local = json.loads(cli("info", project / "dist" / "science-1.0.0.tvskill", "--format", "json").stdout)
    cal = local["calibration"]
    assert cal["target"] == 0.9 and cal["texts"] == len(HELDOUT) and cal["retention"] >= 0.9
    remote = json.loads(cli("info", "alice/science@1.0.0", "--format", "json").stdout)
    assert remote["manifest"]["calibration"] == cal
    info = cli("info", "alice/science@1.0.0")
    assert info.exit_code == 0, info.output
    assert cal["margin"] == {"method": "paired bootstrap", "resamples": 1000, "quantile": 0.05, "seed": 0}
    assert 0.9 <= cal["retention_bound"] <= cal["retention"]
    phrase = (
        f"lossy, retention {100 * cal['retention']:.1f}% (≥ {100 * cal['retention_bound']:.1f}% at 95%) "
        f"on {len(HELDOUT)} held-out texts"
    )
    assert f"{phrase} (target 90%" in info.stdout
    listing = cli("info", "alice/science")  # the registry's version table: the phrase without the detail
    assert listing.exit_code == 0, listing.output
    assert _column(listing.stdout, "storage") == [phrase], listing.stdout


def _column(table: str, name: str) -> list[str]:
    """The cells of column ``name`` in a rich table, each cell's wrapped lines joined back."""
    lines = table.splitlines()
    head = next(i for i, line in enumerate(lines) if f" {name} " in line)
    start = lines[head].index(f" {name} ") + 1
    end = start + len(name)
    while end < len(lines[head]) and lines[head][end] == " ":
        end += 1
    cells: list[str] = []
    for line in lines[head + 1 :]:
        if not line.strip() or (line.startswith("  ") and line[2] != " "):
            break  # the table ends where the next `  key  value` line starts
        piece = line[start:end].strip()
        if line[1] != " ":  # a row's first line starts with its version
            cells.append(piece)
        elif piece:
            cells[-1] += " " + piece
    return cells
