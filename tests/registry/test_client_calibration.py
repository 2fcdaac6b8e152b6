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
    assert f"lossy, retention {100 * cal['retention']:.1f}% on {len(HELDOUT)} held-out texts (target 90%" in info.stdout
