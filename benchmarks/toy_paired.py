"""Paired comparisons of `ism3d eval` results (ToyWorld, issue 5), runs matched by (prompt, seed)
so that the spread between prompts (chairs 0.6, mugs 0.9 IoU) cancels. Two questions:

Did a setting move IoU / PSNR? (report.json of the base runs and of the variant runs)

    python benchmarks/toy_paired.py --base A.json [A2.json ...] --variant B.json [B2.json ...]
                                    [--method ism]

    1. pairs: every (prompt, seed) of `--method` present in both sets;
    2. per pair d = variant - base, for IoU and PSNR;
    3. printed: the means of each set over the pairs, mean(d) +- its standard error
       (stdev(d) / sqrt(n)), and how many pairs the variant improved.

Where does ISM's error lie against SDS's: overall lightness, silhouette edges or inside?

    python benchmarks/toy_paired.py --anatomy EVAL_DIR [EVAL_DIR ...]

Reads what `ism3d eval --out EVAL_DIR` leaves in each run folder, eval_views.png: the ground truth
(top row) over the result (bottom row), 8 views of the first eval ring on white. Per run:
    A1. masks: pixels whose darkest channel is < 0.9 (not white), in the truth and in the result;
        each eroded by one pixel (4-neighbourhood), so the edges, where a silhouette blends into
        the white, do not count; the interior = both eroded masks;
    A2. luminance (Rec. 601: 0.299 R + 0.587 G + 0.114 B, in [0, 1]) averaged over the interior,
        for the truth and for the result, on the same pixels;
    A3. printed per run: truth, result, difference; then per method the mean difference and, for
        runs with both methods (same prompt and seed), the paired ISM - SDS difference with its
        standard error;
    A4. does the colour explain the PSNR? PSNR of the result against the truth inside the union of
        the (uneroded) silhouettes of these 8 views, as it is and after a least-squares gain per
        colour channel (g_c = sum(t_c r_c) / sum(r_c^2)), and the paired ISM - SDS gap of both;
    A5. where the squared error lies: the union of the silhouettes split into the interior (A1)
        and the edge band (the rest of the union, about a pixel each side of either silhouette):
        each method's share of its summed squared error in the band, and the paired ISM - SDS
        difference of the summed squared error, interior + band.
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


def load_runs(paths: list[Path], method: str) -> dict[tuple[str, int], tuple[float, float]]:
    """report.json files -> {(prompt, seed): (iou, psnr)} of the finished runs of `method`."""
    runs = {}
    for path in paths:
        for r in json.loads(path.read_text())["runs"]:
            if r.get("method") == method and r.get("iou") is not None and r.get("psnr") is not None:
                runs[(r["prompt"], int(r["seed"]))] = (float(r["iou"]), float(r["psnr"]))
    return runs


def paired(base: dict, variant: dict) -> dict:
    """Steps 1-3 on two {(prompt, seed): (iou, psnr)} maps."""
    keys = sorted(base.keys() & variant.keys())                         # 1.
    out = {"pairs": len(keys)}
    for i, name in enumerate(("iou", "psnr")):
        d = [variant[k][i] - base[k][i] for k in keys]                   # 2.
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        out[name] = {"base": statistics.fmean(base[k][i] for k in keys),  # 3.
                     "variant": statistics.fmean(variant[k][i] for k in keys),
                     "delta": statistics.fmean(d), "se": se, "better": sum(x > 0 for x in d)}
    return out


# Part 2: error anatomy (steps A1-A5) -------------------------------------------------------
LUMA = np.array([0.299, 0.587, 0.114])


def erode(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool -> True where the pixel and its 4 neighbours are True (edges of the image: False)."""
    out = np.zeros_like(mask)
    out[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                       & mask[1:-1, :-2] & mask[1:-1, 2:])
    return out


def load(png: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """eval_views.png -> truth, result [h, W, 3] in [0, 1] and their silhouettes [h, W] (step A1,
    not eroded)."""
    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64) / 255.0   # [2h, W, 3]
    h = img.shape[0] // 2
    truth, result = img[:h], img[h:2 * h]
    return truth, result, truth.min(-1) < 0.9, result.min(-1) < 0.9


def interior_luminance(views) -> tuple[float, float, int]:
    """Steps A1-A2 for `load(png)` -> (truth, result, interior pixel count)."""
    truth, result, mt, mr = views
    inside = erode(mt) & erode(mr)                                              # [h, W]
    if not inside.any():
        return math.nan, math.nan, 0
    return float((truth[inside] @ LUMA).mean()), float((result[inside] @ LUMA).mean()), int(inside.sum())


def psnr_with_gain(views) -> tuple[float, float]:
    """Step A4 for `load(png)` -> (PSNR dB as is, PSNR dB after the per-channel gain)."""
    truth, result, mt, mr = views
    union = mt | mr                                                             # [h, W]
    t, r = truth[union], result[union]                                          # [P, 3]
    gain = (t * r).sum(0) / np.maximum((r * r).sum(0), 1e-12)                    # [3]
    return tuple(float(10 * np.log10(1 / max(((t - x) ** 2).mean(), 1e-12))) for x in (r, r * gain))


def error_split(views) -> tuple[float, float]:
    """Step A5 for `load(png)` -> summed squared error (interior, edge band)."""
    truth, result, mt, mr = views
    inside = erode(mt) & erode(mr)
    band = (mt | mr) & ~inside
    se = ((truth - result) ** 2).sum(-1)                                        # [h, W]
    return float(se[inside].sum()), float(se[band].sum())


def measure(dirs: list[Path]) -> dict[tuple[str, str, int], tuple]:
    """Every finished run of the eval folders -> {(prompt, method, seed): (truth, result, n,
    psnr, psnr after gain, squared error interior, squared error band)}."""
    out = {}
    for d in dirs:
        for r in json.loads((d / "report.json").read_text())["runs"]:
            png = d / "runs" / r["name"] / "eval_views.png"
            if png.is_file():
                v = load(png)
                out[(r["prompt"], r["method"], int(r["seed"]))] = (
                    *interior_luminance(v), *psnr_with_gain(v), *error_split(v))
    return out


def paired_gap(runs: dict, value) -> tuple[float, float, int, int] | None:
    """ISM - SDS of value(run) over the (prompt, seed) with both: (mean, standard error, ISM
    higher, pairs), or None with fewer than two pairs."""
    d = [value(runs[(p, "ism", s)]) - value(runs[(p, "sds", s)])
         for (p, m, s) in runs if m == "ism" and (p, "sds", s) in runs]
    d = [x for x in d if not math.isnan(x)]
    if len(d) < 2:
        return None
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d)), sum(x > 0 for x in d), len(d)


def main_paired(base: list[Path], variant: list[Path], method: str) -> None:
    res = paired(load_runs(base, method), load_runs(variant, method))
    if res["pairs"] == 0:
        sys.exit(f"toy_paired: no (prompt, seed) of method {method!r} is in both sets")
    print(f"{res['pairs']} pairs ({method})")
    for name, unit, digits in (("iou", "", 4), ("psnr", " dB", 3)):
        r = res[name]
        print(f"  {name.upper():4s} base {r['base']:.{digits}f}  variant {r['variant']:.{digits}f}  "
              f"delta {r['delta']:+.{digits}f} +- {r['se']:.{digits}f}{unit}  "
              f"(variant better in {r['better']} of {res['pairs']})")


def main_anatomy(dirs: list[Path]) -> None:
    runs = measure(dirs)
    if not runs:
        sys.exit("toy_paired: no run with an eval_views.png in " + ", ".join(map(str, dirs)))
    print(f"{'prompt':<18}{'method':<10}{'seed':>4}{'truth':>8}{'result':>8}{'diff':>8}{'pixels':>8}"
          f"{'PSNR':>8}{'+gain':>8}")
    for (p, m, s), (t, r, n, q, qg, _, _) in sorted(runs.items()):
        print(f"{p:<18}{m:<10}{s:>4}{t:8.3f}{r:8.3f}{r - t:+8.3f}{n:8d}{q:8.2f}{qg:8.2f}")
    for m in sorted({k[1] for k in runs}):
        v = [x for k, x in runs.items() if k[1] == m and x[2]]
        print(f"{m}: lightness result - truth {statistics.fmean(x[1] - x[0] for x in v):+.3f}, PSNR "
              f"{statistics.fmean(x[3] for x in v):.2f} dB, after the gain "
              f"{statistics.fmean(x[4] for x in v):.2f} dB; squared error in the edge band "
              f"{statistics.fmean(x[6] / max(x[5] + x[6], 1e-12) for x in v):.0%} ({len(v)} runs)")
    for what, value in (("lightness", lambda x: x[1] - x[0]), ("PSNR dB", lambda x: x[3]),
                        ("PSNR dB after the gain", lambda x: x[4]),
                        ("squared error, interior", lambda x: x[5]),
                        ("squared error, edge band", lambda x: x[6])):
        g = paired_gap(runs, value)
        if g is not None:
            print(f"ISM - SDS, paired, {what}: {g[0]:+.3f} +- {g[1]:.3f} (ISM higher in {g[2]} of {g[3]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", nargs="+", type=Path, help="report.json files of the base runs")
    ap.add_argument("--variant", nargs="+", type=Path, help="report.json files of the variant runs")
    ap.add_argument("--method", default="ism", help="which method's runs to pair (ism)")
    ap.add_argument("--anatomy", nargs="+", type=Path, metavar="EVAL_DIR",
                    help="instead: ISM vs SDS error anatomy of these `ism3d eval --out` folders")
    args = ap.parse_args()
    if args.anatomy:
        if args.base or args.variant:
            ap.error("--anatomy takes eval folders; it cannot be combined with --base/--variant")
        main_anatomy(args.anatomy)
    elif args.base and args.variant:
        main_paired(args.base, args.variant, args.method)
    else:
        ap.error("give --base and --variant report.json files, or --anatomy EVAL_DIR")


if __name__ == "__main__":
    main()
