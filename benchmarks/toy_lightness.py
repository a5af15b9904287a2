"""Are a method's colours lighter or darker than the truth? (issue 5: ISM vs SDS on ToyWorld)

    python benchmarks/toy_lightness.py EVAL_DIR [EVAL_DIR ...]

Reads what `ism3d eval --out EVAL_DIR` leaves in each run folder, eval_views.png: the ground truth
(top row) over the result (bottom row), 8 views of the first eval ring on white. Per run:
    1. masks: pixels whose darkest channel is < 0.9 (not white), in the truth and in the result;
       each eroded by one pixel (4-neighbourhood), so the edges, where a silhouette blends into
       the white, do not count; the interior = both eroded masks;
    2. luminance (Rec. 601: 0.299 R + 0.587 G + 0.114 B, in [0, 1]) averaged over the interior,
       for the truth and for the result, on the same pixels;
    3. printed per run: truth, result, difference; then per method the mean difference and, for
       runs with both methods (same prompt and seed), the paired ISM - SDS difference with its
       standard error.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

LUMA = np.array([0.299, 0.587, 0.114])


def erode(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool -> True where the pixel and its 4 neighbours are True (edges of the image: False)."""
    out = np.zeros_like(mask)
    out[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                       & mask[1:-1, :-2] & mask[1:-1, 2:])
    return out


def interior_luminance(png: Path) -> tuple[float, float, int]:
    """Steps 1-2 for one eval_views.png -> (truth, result, interior pixel count)."""
    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64) / 255.0   # [2h, W, 3]
    h = img.shape[0] // 2
    truth, result = img[:h], img[h:2 * h]
    inside = erode(truth.min(-1) < 0.9) & erode(result.min(-1) < 0.9)          # [h, W]
    if not inside.any():
        return math.nan, math.nan, 0
    return float((truth[inside] @ LUMA).mean()), float((result[inside] @ LUMA).mean()), int(inside.sum())


def measure(dirs: list[Path]) -> dict[tuple[str, str, int], tuple[float, float, int]]:
    """Every finished run of the eval folders -> {(prompt, method, seed): (truth, result, n)}."""
    out = {}
    for d in dirs:
        for r in json.loads((d / "report.json").read_text())["runs"]:
            png = d / "runs" / r["name"] / "eval_views.png"
            if png.is_file():
                out[(r["prompt"], r["method"], int(r["seed"]))] = interior_luminance(png)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="`ism3d eval --out` folders")
    args = ap.parse_args()
    runs = measure(args.dirs)
    if not runs:
        sys.exit("toy_lightness: no run with an eval_views.png in " + ", ".join(map(str, args.dirs)))
    print(f"{'prompt':<18}{'method':<10}{'seed':>4}{'truth':>8}{'result':>8}{'diff':>8}{'pixels':>8}")
    for (p, m, s), (t, r, n) in sorted(runs.items()):
        print(f"{p:<18}{m:<10}{s:>4}{t:8.3f}{r:8.3f}{r - t:+8.3f}{n:8d}")
    for m in sorted({k[1] for k in runs}):
        d = [r - t for (_, mm, _), (t, r, n) in runs.items() if mm == m and n]
        print(f"{m}: result - truth {statistics.fmean(d):+.3f} over {len(d)} runs")
    pairs = [(p, s) for (p, m, s) in runs if m == "ism" and (p, "sds", s) in runs]
    d = [(runs[(p, "ism", s)][1] - runs[(p, "ism", s)][0]) - (runs[(p, "sds", s)][1] - runs[(p, "sds", s)][0])
         for p, s in pairs]
    d = [x for x in d if not math.isnan(x)]
    if len(d) > 1:
        se = statistics.stdev(d) / math.sqrt(len(d))
        print(f"ISM - SDS, paired: {statistics.fmean(d):+.3f} +- {se:.3f} "
              f"(ISM lighter in {sum(x > 0 for x in d)} of {len(d)})")


if __name__ == "__main__":
    main()
