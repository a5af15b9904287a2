"""Where does a ToyWorld result differ from the true object: size, colour, placement or shape?
(issue 5; for ISM vs SDS over a whole eval, `toy_paired.py --anatomy`)

    python benchmarks/toy_diagnose.py RUN_DIR [RUN_DIR ...] [--prior-samples 16] [--png out.png]
                                      [--device cpu|cuda]

For each run folder of `ism3d generate` / `ism3d eval` on a ToyWorld prompt, on the eval rings
(16 views x polar 90, 60 at 64x64, as `ism3d eval` scores):
    1. IoU and PSNR exactly as the benchmark computes them;
    2. area ratio: result silhouette pixels / true silhouette pixels (size);
    3. mean colour inside the intersection of the silhouettes, result vs truth, and the MSE there
       against the MSE over the union (colour error vs silhouette error);
    4. placement: the rigid translation of the result (searched per axis, z then x then y, in
       0.02-unit steps up to 0.16) that maximises its IoU, and the IoU and PSNR after it -- how
       much of the error is where the object sits rather than its shape;
    5. with --prior-samples N: the shipped prior's own DDIM samples of "<prompt>, front view"
       (50 steps, CFG 1, 3, 7.5): mean foreground colour and silhouette centroid (against the
       truth's on the polar-90 ring at the prior's size), to tell a prior bias from a distillation one.
The last line gives the means over the runs of the IoU, the PSNR and the shift. With --png, the
first run's truth, result and result alpha, 8 views each, side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ism3d import config as C  # noqa: E402
from ism3d.eval import bench  # noqa: E402
from ism3d.ply import load_ply  # noqa: E402
from ism3d.scene import activate  # noqa: E402
from ism3d.toyworld.world import parse_prompt  # noqa: E402


def channel_means(rgb: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """rgb [V, 3, S, S], mask [V, 1, S, S] bool -> mean of each channel over the masked pixels."""
    m = mask.expand_as(rgb)
    return [round(float(rgb[:, c][m[:, c]].mean()), 3) for c in range(3)]


def best_translation(g, ref, rings: bench.Rings, step: float = 0.02, reach: float = 0.16):
    """Coordinate search (z, then x, then y) for the translation of `g` that maximises the IoU."""
    shift = [0.0, 0.0, 0.0]
    best, _ = bench.evaluate_gaussians(g, ref, rings)
    n = round(reach / step)
    for axis in (2, 0, 1):
        base = list(shift)
        for k in range(-n, n + 1):
            trial = list(base)
            trial[axis] = base[axis] + k * step
            moved = replace(g, means=g.means + torch.tensor(trial, device=g.means.device))
            m, _ = bench.evaluate_gaussians(moved, ref, rings)
            if m["iou"] > best["iou"]:
                best, shift = m, trial
    return shift, best


@torch.no_grad()
def diagnose(run: Path, rings: bench.Rings) -> tuple[str, torch.Tensor, tuple]:
    """Steps 1-4 for one run: prints them; returns the prompt, the --png grid and
    (IoU, PSNR, IoU and PSNR after the best translation, dx, dy, dz)."""
    prompt = json.loads((run / "summary.json").read_text())["prompt"]
    colour, family = parse_prompt(prompt)
    ref = bench.make_reference(colour, family, rings)
    params, deg = load_ply(run / "gaussians.ply")
    g = activate({k: v.to(rings.device) for k, v in params.items()}, deg)
    m, rgb = bench.evaluate_gaussians(g, ref, rings)                          # 1.
    _, alpha = rings.render(g, 1.0)
    a, b = alpha > 0.5, ref.alpha > 0.5
    inter, union = a & b, a | b
    sq = (rgb - ref.rgb) ** 2
    print(f"{run}: {prompt!r}")
    print(f"  IoU {m['iou']:.3f}  PSNR {m['psnr']:.2f} dB")
    print(f"  area ratio result/truth {a.sum().item() / max(1, b.sum().item()):.3f}")       # 2.
    print(f"  mean colour in the intersection: result {channel_means(rgb, inter)}, "      # 3.
          f"truth {channel_means(ref.rgb, inter)}")
    print(f"  MSE in the intersection {sq[inter.expand_as(sq)].mean():.4f}, in the union "
          f"{sq[union.expand_as(sq)].mean():.4f}")
    shift, moved = best_translation(g, ref, rings)                           # 4.
    print(f"  best translation (x, y, z) {[round(v, 2) for v in shift]}: IoU {moved['iou']:.3f}  "
          f"PSNR {moved['psnr']:.2f} dB")
    stats = (m["iou"], m["psnr"], moved["iou"], moved["psnr"], *shift)
    idx = list(range(0, rgb.shape[0], max(1, rgb.shape[0] // 8)))[:8]
    rows = [torch.cat(list(x[idx]), dim=2) for x in (ref.rgb, rgb, alpha.expand_as(rgb))]
    return prompt, torch.cat(rows, dim=1), stats                              # [3, 3S, 8S]


def centroid(mask: torch.Tensor) -> tuple[float, float]:
    """[n, S, S] bool silhouettes -> mean (row, column) of their centroids, in pixels."""
    w = mask.float()
    idx = torch.arange(mask.shape[-1], dtype=torch.float32)
    area = w.sum(dim=(1, 2)).clamp_min(1.0)                                   # [n]
    rows = (w.sum(dim=2) * idx).sum(dim=1) / area
    cols = (w.sum(dim=1) * idx).sum(dim=1) / area
    return round(float(rows.mean()), 2), round(float(cols.mean()), 2)


@torch.no_grad()
def prior_samples(prompt: str, n: int) -> None:
    from ism3d.priors import load_prior
    from ism3d.toyworld import train_prior as tp

    cfg_toy = C.preset_config("toy")
    prior = load_prior(cfg_toy.prior, "cpu")
    colour, family = parse_prompt(prompt)
    ring = bench.Rings.from_config(cfg_toy, 16, prior.image_size, "cpu")
    truth = bench.make_reference(colour, family, ring).alpha[:16, 0] > 0.5   # polar 90, [16, S, S]
    print(f"  truth at {prior.image_size}x{prior.image_size}, polar 90: silhouette centroid "
          f"(row, col) {centroid(truth)}")
    for cfg in (1.0, 3.0, 7.5):
        imgs = tp.ddim_sample(prior, [f"{prompt}, front view"] * n, steps=50, cfg_scale=cfg,
                              gen=torch.Generator().manual_seed(0))
        fg, _ = tp.foreground(imgs)                                           # [n, S, S]
        print(f"  prior samples, CFG {cfg:g}: mean foreground colour "
              f"{channel_means(imgs, fg[:, None])} ({fg.float().mean():.2f} of the pixels), "
              f"centroid (row, col) {centroid(fg)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--prior-samples", type=int, default=0)
    ap.add_argument("--png", default="")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rings = bench.Rings.from_config(C.preset_config("toy"), 16, 64, args.device)
    grids, stats, sampled = [], [], set()
    for run in args.runs:
        prompt, grid, st = diagnose(run, rings)
        grids.append(grid)
        stats.append(st)
        if args.prior_samples and prompt not in sampled:
            prior_samples(prompt, args.prior_samples)
            sampled.add(prompt)
    if stats:
        mean = [sum(c) / len(c) for c in zip(*stats)]
        print(f"mean over {len(stats)} runs: IoU {mean[0]:.3f} PSNR {mean[1]:.2f} dB; after the best "
              f"translation IoU {mean[2]:.3f} PSNR {mean[3]:.2f} dB; shift (x, y, z) "
              f"{[round(v, 3) for v in mean[4:]]}")
    if args.png:
        from PIL import Image
        im = (grids[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype("uint8")
        Image.fromarray(im).resize((im.shape[1] * 3, im.shape[0] * 3), Image.NEAREST).save(args.png)


if __name__ == "__main__":
    main()
