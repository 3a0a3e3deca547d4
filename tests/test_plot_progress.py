"""scripts/plot_progress.py: stage hours count compute (a paused step counts as a typical one) and the table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "plot_progress.py"


@pytest.fixture(scope="module")
def progress():
    spec = importlib.util.spec_from_file_location("plot_progress", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _log(path: Path, secs: list[float], vals: dict[int, float]) -> None:
    rows = [{"step": 0, "val_fve_nrm": vals[0]}] if 0 in vals else []
    for i, s in enumerate(secs, 1):
        rows.append({"step": i, "sec": s, **({"val_fve_nrm": vals[i]} if i in vals else {})})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_a_paused_step_counts_as_a_typical_one(progress, tmp_path):
    _log(tmp_path / "rl_v7_metrics.jsonl", [10, 12, 11, 900, 10], {0: 0.30, 3: 0.40, 5: 0.35})
    xs, ys, hours = progress.curve(tmp_path / "rl_v7_metrics.jsonl", "val_fve_nrm")
    assert hours == pytest.approx((10 + 12 + 11 + 11 + 10) / 3600)  # the 900 s step counts as the median, 11 s
    assert ys == [0.30, 0.40, 0.35] and xs[0] == 0.0 and xs[1] == pytest.approx(33 / 3600)


def test_stage_table_rows_and_cumulative_hours(progress, tmp_path):
    _log(tmp_path / "ar_sft_metrics.jsonl", [3600] * 2, {2: 0.5})
    _log(tmp_path / "rl_v7_metrics.jsonl", [1800] * 2, {0: 0.3, 2: 0.4})
    table = progress.stage_table(tmp_path).splitlines()
    assert table[0].startswith("| stage | hours | cumulative |") and len(table) == 4  # header, rule, two stages
    assert "| 2.00 CPU-h | 2.00 | 0.500 | 0.500 | 0.500 |" in table[2]
    assert "| 1.00 CPU-h | 3.00 | 0.300 | 0.400 | 0.400 |" in table[3]
