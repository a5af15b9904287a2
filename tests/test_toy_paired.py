"""benchmarks/toy_paired.py matches runs by (prompt, seed) and reports the paired difference."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import toy_paired  # noqa: E402


def _report(path: Path, runs: list[tuple[str, str, int, float | None, float | None]]) -> Path:
    path.write_text(json.dumps({"runs": [
        {"prompt": p, "method": m, "seed": s, "iou": iou, "psnr": psnr} for p, m, s, iou, psnr in runs]}))
    return path


def test_pairs_by_prompt_and_seed_and_reports_mean_and_standard_error(tmp_path):
    base = _report(tmp_path / "a.json", [
        ("a red cube", "ism", 0, 0.80, 12.0),
        ("a red cube", "ism", 1, 0.70, 10.0),
        ("a red cube", "sds", 0, 0.10, 1.0),     # other method: ignored
        ("a blue mug", "ism", 0, 0.50, 9.0),     # no partner in the variant: ignored
    ])
    variant = _report(tmp_path / "b.json", [
        ("a red cube", "ism", 1, 1.00, 11.0),
        ("a red cube", "ism", 0, 0.90, 11.0),
        ("a green cone", "ism", 0, 0.99, 30.0),  # no partner in the base: ignored
        ("a blue mug", "ism", 1, None, None),    # failed run
    ])
    res = toy_paired.paired(toy_paired.load_runs([base], "ism"), toy_paired.load_runs([variant], "ism"))
    assert res["pairs"] == 2
    # IoU differences 0.1 and 0.3: mean 0.2, sample stdev 0.1 * sqrt(2), standard error 0.1
    assert res["iou"]["delta"] == pytest.approx(0.2)
    assert res["iou"]["se"] == pytest.approx(0.1)
    assert res["iou"]["base"] == pytest.approx(0.75) and res["iou"]["variant"] == pytest.approx(0.95)
    assert res["iou"]["better"] == 2
    # PSNR differences -1 and +1: mean 0, standard error 1
    assert res["psnr"]["delta"] == pytest.approx(0.0)
    assert res["psnr"]["se"] == pytest.approx(1.0)
    assert res["psnr"]["better"] == 1


def test_several_reports_per_side_are_merged(tmp_path):
    a0 = _report(tmp_path / "a0.json", [("a red cube", "ism", 0, 0.5, 10.0)])
    a1 = _report(tmp_path / "a1.json", [("a red cube", "ism", 1, 0.6, 11.0)])
    b = _report(tmp_path / "b.json", [("a red cube", "ism", 0, 0.6, 12.0), ("a red cube", "ism", 1, 0.6, 12.0)])
    res = toy_paired.paired(toy_paired.load_runs([a0, a1], "ism"), toy_paired.load_runs([b], "ism"))
    assert res["pairs"] == 2
    assert res["iou"]["delta"] == pytest.approx(0.05)
    assert res["psnr"]["delta"] == pytest.approx(1.5)
