"""Where a ToyWorld result differs from the true object: size, colour or shape (issue 5).

    python benchmarks/toy_diagnose.py RUN_DIR [RUN_DIR ...] [--prior-samples 16] [--png out.png]

For each run folder of `ism3d generate` / `ism3d eval` on a ToyWorld prompt, on the eval rings
(16 views x polar 90, 60 at 64x64, as `ism3d eval` scores):
    1. IoU and PSNR exactly as the benchmark computes them;
    2. area ratio: result silhouette pixels / true silhouette pixels (size);
    3. mean colour inside the intersection of the silhouettes, result vs truth, and the MSE there
       against the MSE over the union (colour error vs silhouette error);
    4. with --prior-samples N: the shipped prior's own DDIM samples of "<prompt>, front view"
       (50 steps, CFG 1, 3, 7.5): mean foreground colour, to tell a prior bias from a distillation one.
With --png, the first run's truth, result and result alpha, 8 views each, side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
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


@torch.no_grad()
def diagnose(run: Path, rings: bench.Rings) -> tuple[str, torch.Tensor]:
    prompt = json.loads((run / "summary.json").read_text())["prompt"]
    colour, family = parse_prompt(prompt)
    ref = bench.make_reference(colour, family, rings)
    params, deg = load_ply(run / "gaussians.ply")
    g = activate(params, deg)
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
    idx = list(range(0, rgb.shape[0], max(1, rgb.shape[0] // 8)))[:8]
    rows = [torch.cat(list(x[idx]), dim=2) for x in (ref.rgb, rgb, alpha.expand_as(rgb))]
    return prompt, torch.cat(rows, dim=1)                                     # [3, 3S, 8S]


@torch.no_grad()
def prior_colours(prompt: str, n: int) -> None:
    from ism3d.priors import load_prior
    from ism3d.toyworld import train_prior as tp

    prior = load_prior(C.preset_config("toy").prior, "cpu")
    for cfg in (1.0, 3.0, 7.5):
        imgs = tp.ddim_sample(prior, [f"{prompt}, front view"] * n, steps=50, cfg_scale=cfg,
                              gen=torch.Generator().manual_seed(0))
        fg, _ = tp.foreground(imgs)                                           # [n, S, S]
        print(f"  prior samples, CFG {cfg:g}: mean foreground colour "
              f"{channel_means(imgs, fg[:, None])} ({fg.float().mean():.2f} of the pixels)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--prior-samples", type=int, default=0)
    ap.add_argument("--png", default="")
    args = ap.parse_args()
    rings = bench.Rings.from_config(C.preset_config("toy"), 16, 64, "cpu")
    grids, sampled = [], set()
    for run in args.runs:
        prompt, grid = diagnose(run, rings)
        grids.append(grid)
        if args.prior_samples and prompt not in sampled:
            prior_colours(prompt, args.prior_samples)
            sampled.add(prompt)
    if args.png:
        from PIL import Image
        im = (grids[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype("uint8")
        Image.fromarray(im).resize((im.shape[1] * 3, im.shape[0] * 3), Image.NEAREST).save(args.png)


if __name__ == "__main__":
    main()
