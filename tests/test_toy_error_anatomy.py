"""benchmarks/toy_paired.py --anatomy: lightness, gain-corrected PSNR and error split from eval_views.png."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import toy_paired  # noqa: E402


def _views(path: Path, truth_rgb, result_rgb, result_shift: int = 0) -> Path:
    """A 2 x 1 grid of 16x16 tiles on white: a 6x6 square of truth_rgb over one of result_rgb."""
    img = np.full((32, 16, 3), 255, np.uint8)
    img[5:11, 5:11] = truth_rgb
    img[16 + 5:16 + 11, 5 + result_shift:11 + result_shift] = result_rgb
    Image.fromarray(img).save(path)
    return path


def _v(*args):
    return toy_paired.load(_views(*args))


def test_interior_luminance_uses_the_eroded_overlap_of_both_silhouettes(tmp_path):
    # truth pure red, result pure green; the 6x6 squares erode to 4x4; shifted by one pixel
    # the overlap of the eroded squares is 4x3 = 12 pixels
    t, r, n = toy_paired.interior_luminance(_v(tmp_path / "a.png", (255, 0, 0), (0, 255, 0), 1))
    assert n == 12
    assert t == pytest.approx(0.299) and r == pytest.approx(0.587)
    # a result cut to 2 pixels wide by the image edge: nothing survives the erosion (NaN, 0)
    t0, r0, n0 = toy_paired.interior_luminance(_v(tmp_path / "b.png", (9, 9, 9), (9, 9, 9), 9))
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
    got = toy_paired.measure([tmp_path])
    assert set(got) == {("a red cube", "ism", 0), ("a red cube", "sds", 0)}
    t, r, n = got[("a red cube", "ism", 0)][:3]
    assert (t, r, n) == (pytest.approx(80 / 255), pytest.approx(120 / 255), 16)


def test_psnr_with_gain_closed_form(tmp_path):
    # truth grey 0.4 on the 36-pixel square, result grey 0.2 on the same square: PSNR on the union
    # = 10 log10(1 / 0.2^2); the gain 2 (per channel, least squares) makes the result exact
    png = _views(tmp_path / "a.png", (102, 102, 102), (51, 51, 51))
    raw, fitted = toy_paired.psnr_with_gain(toy_paired.load(png))
    assert raw == pytest.approx(10 * np.log10(1 / 0.2 ** 2))
    assert fitted > 100                                         # exact up to rounding (capped at 120)
    # shifted by one pixel the union has 42 pixels: 30 where both are grey, 6 + 6 against white
    raw2, fitted2 = toy_paired.psnr_with_gain(_v(tmp_path / "b.png", (102,) * 3, (51,) * 3, 1))
    mse = (30 * 0.2 ** 2 + 6 * 0.6 ** 2 + 6 * 0.8 ** 2) / 42
    assert raw2 == pytest.approx(10 * np.log10(1 / mse))
    assert fitted2 > raw2                                       # the gain can only lower the error


def test_paired_gap_over_prompts_and_seeds_with_both_methods():
    runs = {("a", "ism", 0): (0, 0, 1, 12.0, 0), ("a", "sds", 0): (0, 0, 1, 11.0, 0),
            ("a", "ism", 1): (0, 0, 1, 10.0, 0), ("a", "sds", 1): (0, 0, 1, 13.0, 0),
            ("b", "ism", 0): (0, 0, 1, 50.0, 0)}                  # no SDS partner: ignored
    mean, se, higher, n = toy_paired.paired_gap(runs, lambda x: x[3])
    assert (mean, higher, n) == (pytest.approx(-1.0), 1, 2)
    assert se == pytest.approx(2.0)                                # differences +1 and -3
    assert toy_paired.paired_gap({("a", "ism", 0): (0, 0, 1, 1.0, 0)}, lambda x: x[3]) is None


def test_error_split_interior_and_edge_band(tmp_path):
    # truth grey 0.4, result grey 0.2, both the same 6x6 square: interior 4x4 = 16 pixels, band the
    # other 20 pixels of the square; squared error per pixel 3 x 0.2^2 (three channels)
    inner, band = toy_paired.error_split(_v(tmp_path / "a.png", (102,) * 3, (51,) * 3))
    assert inner == pytest.approx(16 * 3 * 0.04) and band == pytest.approx(20 * 3 * 0.04)
    # shifted by one pixel: interior 4x3 = 12 pixels at 3 x 0.04; band = the rest of the 42-pixel
    # union: 18 grey-on-grey pixels at 3 x 0.04, 6 truth-on-white at 3 x 0.6^2, 6 white-on-result
    # at 3 x 0.8^2
    inner2, band2 = toy_paired.error_split(_v(tmp_path / "b.png", (102,) * 3, (51,) * 3, 1))
    assert inner2 == pytest.approx(12 * 3 * 0.04)
    assert band2 == pytest.approx(18 * 3 * 0.04 + 6 * 3 * 0.36 + 6 * 3 * 0.64)
