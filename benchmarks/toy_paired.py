"""Paired comparison of two sets of `ism3d eval` reports (issue 5): did a setting move IoU / PSNR?

    python benchmarks/toy_paired.py --base A.json [A2.json ...] --variant B.json [B2.json ...]
                                    [--method ism]

Runs are matched by (prompt, seed) -- the same prompt and seed trained with the base setting and
with the variant -- so that the spread between prompts (chairs 0.6, mugs 0.9 IoU) cancels:
    1. pairs: every (prompt, seed) of `--method` present in both sets;
    2. per pair d = variant - base, for IoU and PSNR;
    3. printed: the means of each set over the pairs, mean(d) +- its standard error
       (stdev(d) / sqrt(n)), and how many pairs the variant improved.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", nargs="+", type=Path, required=True)
    ap.add_argument("--variant", nargs="+", type=Path, required=True)
    ap.add_argument("--method", default="ism")
    args = ap.parse_args()
    res = paired(load_runs(args.base, args.method), load_runs(args.variant, args.method))
    if res["pairs"] == 0:
        sys.exit(f"toy_paired: no (prompt, seed) of method {args.method!r} is in both sets")
    print(f"{res['pairs']} pairs ({args.method})")
    for name, unit, digits in (("iou", "", 4), ("psnr", " dB", 3)):
        r = res[name]
        print(f"  {name.upper():4s} base {r['base']:.{digits}f}  variant {r['variant']:.{digits}f}  "
              f"delta {r['delta']:+.{digits}f} +- {r['se']:.{digits}f}{unit}  "
              f"(variant better in {r['better']} of {res['pairs']})")


if __name__ == "__main__":
    main()
