"""benchmarks/toy_lightness.py: interior luminance of truth and result from an eval_views.png."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import toy_lightness  # noqa: E402


def _views(path: Path, truth_rgb, result_rgb, result_shift: int = 0) -> Path:
    """A 2 x 1 grid of 16x16 tiles on white: a 6x6 square of truth_rgb over one of result_rgb."""
    img = np.full((32, 16, 3), 255, np.uint8)
    img[5:11, 5:11] = truth_rgb
    img[16 + 5:16 + 11, 5 + result_shift:11 + result_shift] = result_rgb
    Image.fromarray(img).save(path)
    return path


def test_interior_luminance_uses_the_eroded_overlap_of_both_silhouettes(tmp_path):
    # truth pure red, result pure green; the 6x6 squares erode to 4x4; shifted by one pixel
    # the overlap of the eroded squares is 4x3 = 12 pixels
    t, r, n = toy_lightness.interior_luminance(_views(tmp_path / "a.png", (255, 0, 0), (0, 255, 0), 1))
    assert n == 12
    assert t == pytest.approx(0.299) and r == pytest.approx(0.587)
    # a result cut to 2 pixels wide by the image edge: nothing survives the erosion (NaN, 0)
    t0, r0, n0 = toy_lightness.interior_luminance(_views(tmp_path / "b.png", (9, 9, 9), (9, 9, 9), 9))
    assert n0 == 0 and np.isnan(t0) and np.isnan(r0)


def test_measure_reads_the_runs_named_in_the_report(tmp_path):
    runs = []
    for method, grey in (("ism", 120), ("sds", 100)):
        name = f"a_red_cube_{method}_s0"
        (tmp_path / "runs" / name).mkdir(parents=True)
        _views(tmp_path / "runs" / name / "eval_views.png", (80, 80, 80), (grey, grey, grey))
        runs.append({"name": name, "prompt": "a red cube", "method": method, "seed": 0})
    runs.append({"name": "missing", "prompt": "a red cube", "method": "ism", "seed": 1})  # no picture
    (tmp_path / "report.json").write_text(json.dumps({"runs": runs}))
    got = toy_lightness.measure([tmp_path])
    assert set(got) == {("a red cube", "ism", 0), ("a red cube", "sds", 0)}
    t, r, n = got[("a red cube", "ism", 0)]
    assert (t, r, n) == (pytest.approx(80 / 255), pytest.approx(120 / 255), 16)
