"""Train ism3d's embedded ToyWorld prior: a small pixel-space text-to-image diffusion model.

    python -m ism3d.toyworld.train_prior --out DIR [--steps N] [--res 32] [--batch 256]
        [--minutes M] [--seed 0] [--device cuda] [--init-from DIR] [--patch P]

The run (numbered as in `main`):
    1. prior: a `PixelPrior` (UNet2DConditionModel + word tokenizer + small text transformer)
       over `world.vocabulary()`, new (architecture `--arch`) or loaded from `--init-from`;
    2. data: `ToyWorldData` batches rendered on the fly (gsplat on CUDA);
    3. loop: eps-prediction, t ~ U{0..T-1}, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
       loss = mean (eps_hat - eps)^2; AdamW, linear warm-up then cosine decay to
       `min_lr_ratio` x lr (pure functions of the step and the horizon), grad-norm clipping,
       bf16 autocast on CUDA, EMA of the weights (the EMA is what is saved);
    4. time budget: with `--minutes M` the speed is measured over the first steps (during the
       warm-up) and the horizon -- the step count the cosine schedule ends on -- is cut to what
       fits in M minutes; the loop always ends at the horizon, so the schedule completes;
    5. save: `PixelPrior.save_pretrained(DIR)` with the EMA weights, then the safetensors file is
       rewritten in float16 (the weights ship in the package: <= 20 MB); reloaded with
       `PixelPrior.from_pretrained` for everything below, so the check uses the shipped file;
    6. samples: DIR/samples.png -- a ground-truth row (eval-ring framing) and sample rows
       (DDIM, classifier-free guidance with the empty prompt as the unconditional branch);
    7. metrics: DIR/metrics.json -- per prompt and view, (a) hue match, (b) best-match silhouette
       IoU against ground-truth renders of the requested object over a grid of cameras of the
       requested view, and shape accuracy (is the best-matching family the requested one);
    8. DIR/MODEL_CARD.md and a compact summary printed last.

Resolution: 32x32 by default, because `ism3d generate` must run on a 2-core CPU. One `eps` call of
the default architecture there (measured, idle machine, float32) costs 57 / 86 / 152 ms at batch
2 / 4 / 8 at 32x32 (8.2 GFLOP per batch-8 call) against 225 / 450 / 776 ms at 64x64 (32.8 GFLOP);
an ISM iteration makes about two calls at batch B and one at 2B, so 300 iterations with B = 2
spend ~60 s in the UNet at 32x32 but ~270 s at 64x64, over the 3-minute budget on their own.
`--patch 2` keeps the UNet at 32x32 for a 64x64 prior (pixel-unshuffle, see `PixelPrior`), and
`--init-from` a 32x32 prior with `--patch 2` starts it from that prior's weights (`patchify`). Such
a prior was trained and measured (BENCHMARKS.md, ToyWorld): it did not distil better than the
shipped 32x32 one, which stays the default.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import orbit_cameras
from ..config import CameraConfig, preset_config
from ..guidance.ddim import q_sample, x0_hat
from ..priors.pixel import FORMAT, SD_SCHEDULE, PixelPrior, PixelPriorConfig
from .data import DataConfig, ObjectBank, ToyWorldData
from .world import COLOURS, FAMILIES, VIEWS, caption, hue_of, view_of_azimuth, vocabulary

# Bytes. The weights ship inside the package (hard limit 20 MB) and come back from the GPU
# machine as one file (at most 16 MB there).
WEIGHTS_LIMIT = 16_000_000
EVAL_RADIUS, EVAL_FOVY, EVAL_POLAR = 3.5, 0.55, 75.0
VIEW_AZIMUTH = {"front": 0.0, "side": 90.0, "back": 180.0}

# UNet + text-encoder architectures. "small" is the shipped one (7.24M parameters, 14.5 MB in
# float16, 8.2 GFLOP per batch-8 call at 32x32); "tiny" is for tests and smoke runs.
_D, _U, _CD, _CU = "DownBlock2D", "UpBlock2D", "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
ARCHS = {
    "small": dict(
        text=dict(text_dim=128, text_layers=2, text_heads=4, text_ff=256),
        unet=dict(block_out_channels=[32, 64, 128, 128], layers_per_block=1, norm_num_groups=16,
                  down_block_types=[_D, _CD, _CD, _CD], up_block_types=[_CU, _CU, _CU, _U],
                  attention_head_dim=8, addition_embed_type="text",
                  addition_embed_type_num_heads=4)),
    "tiny": dict(
        text=dict(text_dim=32, text_layers=1, text_heads=2, text_ff=64),
        unet=dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                  down_block_types=[_CD, _D], up_block_types=[_U, _CU],
                  attention_head_dim=4, addition_embed_type="text",
                  addition_embed_type_num_heads=2)),
}


class TrainPriorError(ValueError):
    """A bad command-line argument or an unusable --init-from / --out folder."""


def prior_config(res: int, arch: str, patch: int = 1) -> PixelPriorConfig:
    """The PixelPriorConfig of a new ToyWorld prior at `res` x `res` with architecture `arch`,
    its UNet running on `patch` x `patch` pixel-unshuffled images ([3 patch^2, res/patch, res/patch])."""
    if arch not in ARCHS:
        raise TrainPriorError(f"unknown --arch {arch!r}: use one of {', '.join(ARCHS)}")
    a = ARCHS[arch]
    levels = len(a["unet"]["block_out_channels"])
    if patch < 1 or res % (patch * 2 ** (levels - 1)) != 0:
        raise TrainPriorError(f"--res {res} must be a multiple of --patch x {2 ** (levels - 1)} "
                              f"= {patch * 2 ** (levels - 1)} for --arch {arch}")
    unet = dict(sample_size=res // patch, in_channels=3 * patch ** 2, out_channels=3 * patch ** 2,
                cross_attention_dim=a["text"]["text_dim"], **a["unet"])
    return PixelPriorConfig(image_size=res, vocab=vocabulary(), max_length=8, permissive=False,
                            unet=unet, schedule=dict(SD_SCHEDULE), name=f"toyworld-{res}",
                            patch=patch, **a["text"])


@torch.no_grad()
def patchify(prior: PixelPrior, patch: int) -> PixelPrior:
    """A patch-`patch` prior of `patch` x the size, whose UNet starts as `prior`'s (warm start).

    Only the UNet's first and last convolutions change shape. Pixel-unshuffle puts sub-pixel k of
    channel c in channel c p^2 + k, so
        conv_in'  [O, 3 p^2]:  W'[:, c p^2 + k] = W[:, c] / p^2   (= conv_in of the p x p mean image)
        conv_out' [3 p^2, I]:  W'[c p^2 + k]    = W[c]            (pixel-shuffled = nearest upsampling)
    so at first  prior'.unet_forward(x) == upsample(prior.unet_forward(avgpool_p(x))).
    """
    if prior.patch != 1:
        raise TrainPriorError(f"--patch with --init-from needs a patch-1 prior; {prior.name} has "
                              f"patch {prior.patch}")
    c, pp = prior.config, patch * patch
    size = c.image_size * patch
    unet = {**c.unet, "sample_size": c.image_size, "in_channels": 3 * pp, "out_channels": 3 * pp}
    new = PixelPrior(replace(c, image_size=size, patch=patch, unet=unet, name=f"toyworld-{size}"),
                     prior.device, prior.dtype)
    sd = prior.unet.state_dict()
    sd["conv_in.weight"] = sd["conv_in.weight"].repeat_interleave(pp, dim=1) / pp   # [O, 3 p^2, k, k]
    for k in ("conv_out.weight", "conv_out.bias"):
        sd[k] = sd[k].repeat_interleave(pp, dim=0)                                   # [3 p^2, ...]
    new.unet.load_state_dict(sd, strict=True)
    new.text_encoder.load_state_dict(prior.text_encoder.state_dict(), strict=True)
    return new


# ---------------------------------------------------------------------------------------------
# Schedules (pure functions of the step)
# ---------------------------------------------------------------------------------------------
def lr_at(step: int, horizon: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from lr to min_ratio * lr at `horizon`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, horizon - warmup))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


def fit_horizon(step: int, elapsed: float, per_step: float, budget: float, max_steps: int,
                margin: float = 0.97) -> int:
    """Steps the run can end on: `step` done after `elapsed` seconds at `per_step` seconds a step,
    `margin` x the rest of `budget` to spend; at least step + 1, at most max_steps."""
    fit = step + int(max(0.0, budget - elapsed) / max(per_step, 1e-9) * margin)
    return max(step + 1, min(max_steps, fit))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with a short start-up: min(decay, (1 + step) / (10 + step))."""
    return min(decay, (1.0 + step) / (10.0 + step))


# ---------------------------------------------------------------------------------------------
# Sampling and metrics
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def ddim_sample(prior: PixelPrior, prompts: list[str], *, steps: int, cfg_scale: float,
                gen: torch.Generator, uncond: str = "") -> Tensor:
    """DDIM (eta = 0) samples with classifier-free guidance, x0 clipped to [-1, 1] each step.

    1. x_T ~ N(0, I); timesteps t_0 > ... > t_{n-1}: round(linspace(T - 1, 0, n))
    2. eps = eps(x, t, "") + g (eps(x, t, y) - eps(x, t, ""))
    3. x0 = clip(x0_hat(x, t, eps)); eps' = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t)
    4. x = q_sample(x0, eps', abar_next) (the next timestep's abar; the last step returns x0)

    Returns:
        `[B, 3, S, S]` images in [0, 1] (float32, on the prior's device).
    """
    B, S = len(prompts), prior.image_size
    abar = prior.alphas_cumprod.double()
    T = abar.shape[0]
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    x = torch.randn(B, 3, S, S, generator=gen).to(prior.device)           # [B, 3, S, S]
    emb = torch.cat([prior.embed([uncond] * B), prior.embed(prompts)])    # [2B, L, D]
    for i, t in enumerate(ts):
        e = prior.eps(torch.cat([x, x]), torch.full((2 * B,), t, dtype=torch.long), emb)
        e_u, e_c = e.chunk(2)
        e = e_u + cfg_scale * (e_c - e_u)
        a = float(abar[t])
        x0 = x0_hat(x, a, e).clamp(-1.0, 1.0)
        if i == len(ts) - 1:
            x = x0
            break
        e = (x - math.sqrt(a) * x0) / math.sqrt(1.0 - a)
        x = q_sample(x0, e, float(abar[ts[i + 1]]))
    return prior.decode(x)


def foreground(images: Tensor, thresh: float = 0.15) -> tuple[Tensor, Tensor]:
    """Foreground of images on a solid background.

    The background colour is the per-channel median of the 1-pixel border; a pixel is foreground
    when some channel differs from it by more than `thresh`.

    Args:
        images: `[S, 3, H, W]` in [0, 1].
    Returns:
        mask `[S, H, W]` bool, background `[S, 3]`.
    """
    assert images.ndim == 4 and images.shape[1] == 3, images.shape
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0],
                        images[..., 1:-1, -1]], dim=-1)                     # [S, 3, P]
    bg = border.median(dim=-1).values                                        # [S, 3]
    mask = (images - bg[:, :, None, None]).abs().amax(dim=1) > thresh        # [S, H, W]
    return mask, bg


PALETTE_HUES = {c: float(hue_of(torch.tensor(rgb))) for c, rgb in COLOURS.items()}


def hue_match(images: Tensor, mask: Tensor, colour: str, *, min_sat: float = 0.25,
              min_val: float = 0.12) -> Tensor:
    """Fraction of coloured foreground pixels whose hue is nearest to `colour`'s (among COLOURS).

    Coloured = in `mask`, HSV saturation >= min_sat and value >= min_val (so white, black and grey
    pixels, e.g. a dark door, do not count). Returns `[S]`, NaN where an image has none.
    """
    assert images.ndim == 4 and mask.shape == (images.shape[0],) + images.shape[2:], (images.shape, mask.shape)
    px = images.permute(0, 2, 3, 1)                                          # [S, H, W, 3]
    mx, mn = px.amax(-1), px.amin(-1)
    sat = (mx - mn) / mx.clamp_min(1e-6)
    valid = mask & (sat >= min_sat) & (mx >= min_val)                        # [S, H, W]
    hue = hue_of(px)                                                         # [S, H, W]
    names = list(PALETTE_HUES)
    ref = torch.tensor([PALETTE_HUES[n] for n in names], device=images.device)
    d = (hue[..., None] - ref).abs()
    d = torch.minimum(d, 360.0 - d)                                          # circular distance
    match = d.argmin(-1) == names.index(colour)
    n = valid.sum(dim=(1, 2)).float()
    hit = (match & valid).sum(dim=(1, 2)).float()
    return torch.where(n > 0, hit / n.clamp_min(1), torch.full_like(n, float("nan")))


def iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """`[S, P]` and `[K, P]` boolean masks -> `[S, K]` intersection over union (0 when both empty)."""
    af, bf = a.float(), b.float()
    inter = af @ bf.T
    union = af.sum(1)[:, None] + bf.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def normalise_masks(mask: Tensor, size: int = 32) -> tuple[Tensor, Tensor]:
    """Silhouettes with position and scale removed: each mask's bounding box is scaled (aspect
    kept) to fit `size` x `size` and centred, so two views of the same shape compare equal
    whatever the camera distance, fovy or look-at jitter.

    Args:
        mask: `[S, H, W]` bool.
    Returns:
        normalised `[S, size * size]` bool, framed `[S]` bool (the mask is non-empty, covers at
        least 1% of the image and does not touch the image border, i.e. it is a whole object).
    """
    assert mask.ndim == 3, mask.shape
    S, H, W = mask.shape
    out = torch.zeros(S, size, size, dtype=torch.bool, device=mask.device)
    framed = torch.zeros(S, dtype=torch.bool, device=mask.device)
    for i in range(S):
        ys, xs = mask[i].nonzero(as_tuple=True)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        framed[i] = (y0 > 0 and x0 > 0 and y1 < H and x1 < W) and len(ys) >= 0.01 * H * W
        h, w = y1 - y0, x1 - x0
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        crop = mask[i, y0:y1, x0:x1].float()[None, None]
        small = F.interpolate(crop, size=(nh, nw), mode="bilinear", align_corners=False)[0, 0] > 0.5
        oy, ox = (size - nh) // 2, (size - nw) // 2
        out[i, oy:oy + nh, ox:ox + nw] = small
    return out.reshape(S, size * size), framed


def view_azimuths(view: str, quick: bool) -> list[float]:
    """Candidate azimuths (degrees) of a view word, 10 degrees apart over its bin in
    `world.view_of_azimuth` (|az| < 45 front, < 135 side, else back)."""
    if quick:
        return [VIEW_AZIMUTH[view]]
    lo, hi = {"front": (-40, 40), "side": (50, 130), "back": (140, 220)}[view]
    az = [float(a) for a in range(lo, hi + 1, 10)]
    if view == "side":
        az += [-a for a in az]
    return az


def candidate_cameras(view: str, res: int, quick: bool):
    """Ground-truth cameras of one view bin: polar 45..105 (15 degrees apart) x the bin's
    azimuths, at the eval ring's radius and fovy (framing does not matter after
    `normalise_masks`)."""
    polars = [EVAL_POLAR] if quick else [45.0, 60.0, 75.0, 90.0, 105.0]
    grid = [(p, a) for p in polars for a in view_azimuths(view, quick)]
    p, a = (torch.tensor(v, dtype=torch.float64) for v in zip(*grid))
    return orbit_cameras(p, a, torch.full_like(p, EVAL_RADIUS), torch.full_like(p, EVAL_FOVY), res, res)


@torch.no_grad()
def evaluate(prior: PixelPrior, data: ToyWorldData, *, families: list[str], views: list[str],
             colours_per_family: int, samples: int, steps: int, cfg_scale: float, seed: int,
             quick: bool, n_data: int = 512, chunk: int = 256) -> dict:
    """Sample every (family, colour, view) prompt and score it (see the module docstring, 7.).

    Two references put the numbers in scale: "gt_reference" scores the ground-truth render of each
    prompt at the eval-ring camera, "data_reference" scores `n_data` training images (colour, with
    a view caption): what a prior that reproduced its training distribution exactly would get.

    Returns:
        {"per_prompt": [...], "summary": {...}, "summary_by_family": {...}, "gt_reference": {...},
         "data_reference": {...}, "settings": {...}}
    """
    res, dev, bank = prior.image_size, prior.device, data.bank
    gen = torch.Generator().manual_seed(seed)
    colours = list(COLOURS)
    # 1. ground-truth silhouettes of every family in every view bin (colour does not matter)
    sil: dict[tuple[str, str], Tensor] = {}
    for v in VIEWS:
        cams = candidate_cameras(v, 2 * res, quick)
        for f in FAMILIES:
            obj = torch.full((len(cams),), bank.index(f, colours[0]), dtype=torch.long)
            _, alpha, _ = bank.render(obj, cams, torch.ones(3))
            sil[(f, v)] = normalise_masks(alpha[:, 0] > 0.5)[0].to(dev)          # [K, 32 * 32]
    # 2. prompts (colours rotate over the families), all sampled together in chunks
    todo = [(f, colours[(fi + ci * 3) % len(colours)], v)
            for fi, f in enumerate(families) for ci in range(colours_per_family) for v in views]
    texts = [caption(c, f, v) for f, c, v in todo for _ in range(samples)]
    imgs = torch.cat([ddim_sample(prior, texts[i:i + chunk], steps=steps, cfg_scale=cfg_scale, gen=gen)
                      for i in range(0, len(texts), chunk)])                 # [P * samples, 3, S, S]
    rows, gt_rows = [], []
    for k, (f, colour, v) in enumerate(todo):
        text = caption(colour, f, v)
        rows.append(_score(imgs[k * samples:(k + 1) * samples], f, v, colour, text, sil))
        # the metric on the ground truth itself (eval-ring camera, white background)
        cam = orbit_cameras(torch.tensor([EVAL_POLAR]), torch.tensor([VIEW_AZIMUTH[v]]),
                            torch.tensor([EVAL_RADIUS]), torch.tensor([EVAL_FOVY]), res, res)
        gt, _, _ = bank.render(torch.tensor([bank.index(f, colour)]), cam, torch.ones(3))
        gt_rows.append(_score(gt.to(dev), f, v, colour, text, sil))

    # 3. the metric on training images
    dgen = torch.Generator().manual_seed(seed + 7)
    ref_data = ToyWorldData(replace(data.cfg, p_disparity=0.0, p_empty=0.0, p_plain=0.0), bank=bank)
    batch = ref_data.batch(n_data, dgen)
    data_rows = []
    for i, v in enumerate(view_of_azimuth(batch.azimuth)):
        f, colour = bank.keys[int(batch.obj[i])]
        data_rows.append(_score(batch.images[i:i + 1].to(dev), f, v, colour, batch.captions[i], sil))

    def summary(rs: list[dict]) -> dict:
        return {k: _nanmean([r[k] for r in rs]) for k in ("hue_match", "iou", "shape_acc", "framed")}

    return {
        "per_prompt": rows,
        "summary": summary(rows),
        "summary_by_family": {f: summary([r for r in rows if r["family"] == f]) for f in families},
        "gt_reference": summary(gt_rows),
        "data_reference": summary(data_rows),
        "settings": {"samples_per_prompt": samples, "ddim_steps": steps, "cfg_scale": cfg_scale,
                     "seed": seed, "uncond": "", "res": res,
                     "candidate_cameras_per_view": {v: int(sil[(FAMILIES[0], v)].shape[0]) for v in VIEWS}},
    }


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _score(imgs: Tensor, family: str, view: str, colour: str, text: str,
           sil: dict[tuple[str, str], Tensor]) -> dict:
    """Metrics of `[S, 3, H, W]` images of one prompt."""
    mask, _ = foreground(imgs)                                               # [S, H, W]
    hue = hue_match(imgs, mask, colour)
    flat, framed = normalise_masks(mask)                                     # [S, 32 * 32], [S]
    flat = flat.to(next(iter(sil.values())).device)
    framed = framed.to(flat.device)
    best = {f: iou_matrix(flat, sil[(f, view)]).amax(dim=1) for f in FAMILIES}  # [S] per family
    own = best[family]
    stacked = torch.stack([best[f] for f in FAMILIES], dim=1)               # [S, F]
    correct = stacked.argmax(dim=1) == FAMILIES.index(family)
    fr = framed.float()
    n_fr = float(fr.sum())

    def on_framed(x: Tensor) -> float:
        return float((x.float() * fr).sum() / n_fr) if n_fr > 0 else float("nan")
    return {"prompt": text, "family": family, "colour": colour, "view": view,
            "hue_match": _nanmean(hue.tolist()), "iou": on_framed(own),
            "shape_acc": on_framed(correct), "framed": float(fr.mean())}


def _tiles(imgs: Tensor, scale: int) -> Tensor:
    """[N, 3, S, S] -> [3, S * scale, N * S * scale] row with 1-pixel grey separators."""
    up = F.interpolate(imgs.float().cpu(), scale_factor=scale, mode="nearest")
    up = F.pad(up, (1, 1, 1, 1), value=0.6)
    return torch.cat(list(up), dim=2)


@torch.no_grad()
def sample_grid(prior: PixelPrior, bank: ObjectBank, path: Path, *, families: list[str], rows: int,
                steps: int, cfg_scale: float, seed: int) -> list[str]:
    """DIR/samples.png: column j = prompt j (one per family, colours and views rotating); row 0 the
    ground truth at the eval-ring framing (polar 75), then `rows` sample rows. Returns the prompts."""
    import numpy as np
    from PIL import Image

    res = prior.image_size
    colours = list(COLOURS)
    prompts, gts = [], []
    for j, f in enumerate(families):
        colour, view = colours[j % len(colours)], VIEWS[j % len(VIEWS)]
        prompts.append(caption(colour, f, view))
        cam = orbit_cameras(torch.tensor([EVAL_POLAR]), torch.tensor([VIEW_AZIMUTH[view]]),
                            torch.tensor([EVAL_RADIUS]), torch.tensor([EVAL_FOVY]), res, res)
        gts.append(bank.render(torch.tensor([bank.index(f, colour)]), cam, torch.ones(3))[0])
    gen = torch.Generator().manual_seed(seed)
    scale = max(1, 96 // res)
    grid = [_tiles(torch.cat(gts), scale)]
    for _ in range(rows):
        grid.append(_tiles(ddim_sample(prior, prompts, steps=steps, cfg_scale=cfg_scale, gen=gen), scale))
    img = torch.cat(grid, dim=1).clamp(0, 1).permute(1, 2, 0).numpy()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return prompts


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------
def save_fp16(prior: PixelPrior, out: Path) -> int:
    """`prior.save_pretrained(out)`, then model.safetensors rewritten in float16. Returns its size."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    prior.save_pretrained(out)
    weights = out / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {"format": FORMAT}
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    tmp = weights.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, weights)
    os.chmod(weights, 0o644)
    return weights.stat().st_size


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ism3d.toyworld.train_prior",
                                description="Train the embedded ToyWorld pixel prior.")
    p.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, ...)")
    p.add_argument("--steps", type=int, default=20000, help="most optimisation steps")
    p.add_argument("--res", type=int, default=None, help="image size (default 32, or --init-from's)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="training-loop time budget (0 = none); the evaluation adds about a minute on a GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--init-from", default=None, help="a saved prior folder to continue training")
    p.add_argument("--arch", default="small", choices=sorted(ARCHS))
    p.add_argument("--patch", type=int, default=1,
                   help="pixel-unshuffle factor P: the UNet runs at res/P (a 64x64 prior at a 32x32 "
                        "one's cost with P=2); with --init-from a patch-1 prior of size S, start a "
                        "size S*P prior from its weights (a patch-P one just continues)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--objects-per-batch", type=int, default=0, help="0 = batch // 8")
    p.add_argument("--points", type=int, default=DataConfig().n_points, help="gaussians per object")
    p.add_argument("--p-disparity", type=float, default=DataConfig().p_disparity,
                   help="share of normalised-disparity images")
    p.add_argument("--bg-aug-prob", type=float, default=DataConfig().bg_aug_prob,
                   help="share of non-white backgrounds (random colour or black)")
    p.add_argument("--schedule-span", type=int, default=0,
                   help="camera schedule steps drawn in [0, span); 0 = 10 x camera.decay_every")
    p.add_argument("--framing", default="toy", choices=["toy", "spec"],
                   help="training cameras: the toy preset's fixed framing (radius 3.5, fovy 0.55, "
                        "the eval ring's) or the spec's orbit distribution with its zoom schedule")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--cfg", type=float, default=5.0, help="guidance scale of the samples/metrics")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=4, help="samples per prompt and view")
    p.add_argument("--no-eval", action="store_true",
                   help="save the weights and stop (no samples, metrics or model card)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test evaluation: 2 families, front view, 1 sample, 1 camera per view")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.minutes < 0 or a.warmup < 1:
        raise TrainPriorError("--steps, --batch and --warmup must be >= 1 and --minutes >= 0")
    return a


def _json_safe(x):
    """NaN (a metric with no valid sample) -> null, so metrics.json is standard JSON."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _fmt_time(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainPriorError("--device cuda asked for, but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    # 1. prior
    if args.patch < 1:
        raise TrainPriorError(f"--patch must be >= 1, got {args.patch}")
    if args.init_from:
        prior = PixelPrior.from_pretrained(args.init_from, device)
        if prior.words != vocabulary():
            raise TrainPriorError(f"{args.init_from}: its vocabulary is not ToyWorld's")
        if args.patch > 1 and prior.patch != args.patch:
            prior = patchify(prior, args.patch)
        if args.res is not None and args.res != prior.image_size:
            raise TrainPriorError(f"--res {args.res} differs from the image size {prior.image_size} of "
                                  f"--init-from{' x --patch' if args.patch > 1 else ''}; drop --res")
    else:
        prior = PixelPrior(prior_config(args.res or 32, args.arch, args.patch), device, seed=args.seed)
    res = prior.image_size
    modules = [prior.unet, prior.text_encoder]
    params = [p for m in modules for p in m.parameters()]
    for m in modules:
        m.train().requires_grad_(True)
    n_params = sum(p.numel() for p in params)
    log(f"[prior] {prior.name}: {res}x{res}, {n_params / 1e6:.2f}M parameters "
        f"(~{2 * n_params / 1e6:.1f} MB fp16), vocab {len(prior.words)}")

    # 2. data
    # the cameras of the preset that distils with this prior (toy: fixed framing) or the spec's
    # orbit distribution with its progressive zoom (--framing spec)
    camera = preset_config("toy").camera if args.framing == "toy" else CameraConfig()
    dcfg = DataConfig(res=res, n_points=args.points, objects_per_batch=args.objects_per_batch,
                      p_disparity=args.p_disparity, bg_aug_prob=args.bg_aug_prob,
                      schedule_span=args.schedule_span, camera=camera)
    t0 = time.perf_counter()
    data = ToyWorldData(dcfg, device)
    log(f"[data] {len(data.bank)} objects x {data.bank.means.shape[1]} gaussians, camera steps "
        f"U[0, {data.span}), built in {time.perf_counter() - t0:.1f}s")

    # 3. loop
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    ema = [p.detach().clone().float() for p in params]
    abar = prior.alphas_cumprod.float()                                       # [T]
    T = abar.shape[0]
    data_gen = torch.Generator().manual_seed(args.seed)
    noise_gen = torch.Generator(device).manual_seed(args.seed + 1)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    budget = args.minutes * 60.0 if args.minutes > 0 else math.inf
    horizon = args.steps
    calib = (min(10, args.warmup // 4), min(50, args.warmup))  # measure speed inside the warm-up
    t_loop = time.perf_counter()
    t_calib = t_loop
    loss_acc, n_acc, last_loss = torch.zeros((), device=device), 0, float("nan")
    history: list[tuple[int, float]] = []
    step = 0
    log(f"[train] batch {args.batch}, lr {args.lr} (warm-up {args.warmup}, cosine to "
        f"{args.min_lr_ratio}x), EMA {args.ema}, bf16 {device.type == 'cuda'}, "
        f"budget {'none' if budget == math.inf else _fmt_time(budget)}")
    try:
        while step < horizon:
            # 4. time budget: fix the horizon once the speed is known
            if step == calib[0]:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_calib = time.perf_counter()
            if step == calib[1] and budget < math.inf:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                per_step = (now - t_calib) / max(1, calib[1] - calib[0])
                horizon = fit_horizon(step, now - t_loop, per_step, budget, args.steps)
                log(f"[train] {per_step * 1000:.0f} ms/step -> horizon {horizon} steps "
                    f"(~{_fmt_time(horizon * per_step)})")
            lr = lr_at(step, horizon, args.lr, args.warmup, args.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = data.batch(args.batch, data_gen)
            x0 = batch.images * 2.0 - 1.0                                    # [B, 3, R, R]
            t = torch.randint(0, T, (args.batch,), generator=noise_gen, device=device)
            noise = torch.randn(x0.shape, generator=noise_gen, device=device)
            xt = q_sample(x0, noise, abar[t])
            ids = prior.tokens(batch.captions)                                # [B, L]
            with amp:
                pred = prior.unet_forward(xt, t, prior.text_encoder(ids))
            loss = F.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.clip)
            opt.step()
            with torch.no_grad():
                d = ema_decay_at(step, args.ema)
                torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1.0 - d)
            loss_acc += loss.detach()
            n_acc += 1
            step += 1
            if step % args.log_every == 0 or step == horizon:
                last_loss = float(loss_acc) / n_acc
                history.append((step, last_loss))
                loss_acc.zero_()
                n_acc = 0
                el = time.perf_counter() - t_loop
                log(f"[train] step {step}/{horizon} loss {last_loss:.4f} lr {lr:.2e} "
                    f"{step / el:.2f} it/s elapsed {_fmt_time(el)} eta {_fmt_time(el / step * (horizon - step))}")
            if time.perf_counter() - t_loop > budget * 1.05:
                log(f"[train] time budget exceeded at step {step}: stopping")
                break
    except KeyboardInterrupt:
        log(f"[train] interrupted at step {step}: saving the EMA weights")
    if n_acc:
        last_loss = float(loss_acc) / n_acc
        history.append((step, last_loss))
    train_s = time.perf_counter() - t_loop

    # 5. save the EMA weights (float16) and reload them as shipped
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for m in modules:
        m.eval().requires_grad_(False)
    size = save_fp16(prior, out)
    if size > WEIGHTS_LIMIT:
        raise TrainPriorError(f"model.safetensors is {size / 1e6:.1f} MB, over the {WEIGHTS_LIMIT / 1e6:.0f} MB "
                              "limit for shipped weights: use a smaller --arch")
    shipped = PixelPrior.from_pretrained(out, device)
    log(f"[save] {out / 'model.safetensors'}: {size / 1e6:.2f} MB (float16)")

    if args.no_eval:
        log(f"SUMMARY {prior.name}: {step} steps x {args.batch} in {_fmt_time(train_s)}, final loss "
            f"{last_loss:.4f}, weights {size / 1e6:.2f} MB -> {out} (no evaluation)")
        return {"training": {"steps": step, "horizon": horizon, "final_loss": last_loss,
                             "train_seconds": train_s, "weights_bytes": size}}

    # 6.-7. samples and metrics
    t_eval = time.perf_counter()
    families = list(FAMILIES[:2]) if args.quick else list(FAMILIES)
    steps_s = 2 if args.quick else args.ddim_steps
    grid_prompts = sample_grid(shipped, data.bank, out / "samples.png", families=families,
                               rows=1 if args.quick else 3, steps=steps_s, cfg_scale=args.cfg,
                               seed=args.seed)
    metrics = evaluate(shipped, data, families=families,
                       views=["front"] if args.quick else list(VIEWS),
                       colours_per_family=1 if args.quick else 2,
                       samples=1 if args.quick else args.eval_samples, steps=steps_s,
                       cfg_scale=args.cfg, seed=args.seed, quick=args.quick,
                       n_data=8 if args.quick else 512)
    eval_s = time.perf_counter() - t_eval
    log(f"[eval] {len(metrics['per_prompt'])} prompt-views sampled and scored in {eval_s:.1f}s")
    metrics["training"] = {"steps": step, "horizon": horizon, "batch": args.batch,
                           "final_loss": last_loss, "train_seconds": train_s,
                           "seconds_per_step": train_s / max(step, 1), "eval_seconds": eval_s,
                           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "parameters": n_params, "weights_bytes": size, "loss_history": history,
                           "args": vars(args), "data": {k: v for k, v in asdict(dcfg).items() if k != "camera"},
                           "camera": asdict(data.cfg.camera)}  # as drawn (independent azimuths)
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    write_model_card(out / "MODEL_CARD.md", metrics, grid_prompts, prior)

    # 8. compact summary, last
    s = metrics["summary"]
    total = time.perf_counter() - t_start
    log("=" * 72)
    log(f"SUMMARY {prior.name}: {step} steps x {args.batch} in {_fmt_time(train_s)} "
        f"({step / max(train_s, 1e-9):.2f} it/s), final loss {last_loss:.4f}, total {_fmt_time(total)}")
    log(f"  weights {size / 1e6:.2f} MB fp16, {n_params / 1e6:.2f}M params -> {out}")
    log(f"  samples (cfg {args.cfg}, {steps_s} DDIM steps): hue_match {s['hue_match']:.3f}  "
        f"iou {s['iou']:.3f}  shape_acc {s['shape_acc']:.3f}  framed {s['framed']:.2f}")
    for name in ("data_reference", "gt_reference"):
        g = metrics[name]
        log(f"  {name + ':':25s} hue_match {g['hue_match']:.3f}  iou {g['iou']:.3f}  "
            f"shape_acc {g['shape_acc']:.3f}  framed {g['framed']:.2f}")
    log("  by family: " + "  ".join(f"{f} {v['hue_match']:.2f}/{v['iou']:.2f}/{v['shape_acc']:.2f}"
                                    for f, v in metrics["summary_by_family"].items()) + "  (hue/iou/acc)")
    log("  files: config.json model.safetensors samples.png metrics.json MODEL_CARD.md")
    return metrics


def _jitter(cam: dict) -> str:
    j = (cam["jitter_center"], cam["jitter_target"], cam["jitter_up"])
    return ("none" if not any(j) else
            f"centre U(+-{j[0] / 2:g}), target N(0, {j[1]:g}^2), up N(0, {j[2]:g}^2)")


def write_model_card(path: Path, metrics: dict, grid_prompts: list[str], prior: PixelPrior) -> None:
    tr, s, g = metrics["training"], metrics["summary"], metrics["gt_reference"]
    dr = metrics["data_reference"]
    st = metrics["settings"]
    c = prior.config
    lines = [
        f"# {prior.name}: the ToyWorld pixel prior",
        "",
        "A small text-to-image diffusion model (pixel space, eps-prediction) that ism3d ships so that",
        "text-to-3D runs offline without Stable Diffusion weights. It knows only ToyWorld: the",
        f"objects of `ism3d.toyworld.world` ({', '.join(FAMILIES)}) in {len(COLOURS)} colours",
        f"({', '.join(COLOURS)}), opaque, with baked Lambert shading from a fixed light.",
        "",
        "## Prompts",
        f"Vocabulary ({len(prior.words)} words): {' '.join(prior.words)}.",
        "Captions: `a {colour} {family}` (`an orange`, also `a orange`) with an optional",
        "`, {front|side|back} view` suffix (view by",
        "azimuth: |az| < 45 front, < 135 side, else back, matching the guidance's interpolated view",
        "prompts); the empty prompt is the unconditional branch. Other words are rejected.",
        "",
        "## Model",
        f"- {c.image_size}x{c.image_size} RGB in [-1, 1]; UNet2DConditionModel "
        f"{c.unet['block_out_channels']} ({', '.join(c.unet['down_block_types'])})"
        + (f" on {c.patch}x{c.patch} pixel-unshuffled images ({3 * c.patch ** 2} channels at "
           f"{c.image_size // c.patch}x{c.image_size // c.patch})" if c.patch > 1 else "")
        + ", pooled text added to",
        f"  the time embedding; text encoder: {c.text_layers} transformer layer(s), width {c.text_dim}.",
        f"- {tr['parameters'] / 1e6:.2f}M parameters, {tr['weights_bytes'] / 1e6:.2f} MB (float16 safetensors).",
        "- Schedule: 1000 steps, scaled-linear betas 0.00085..0.012 (Stable Diffusion's abar_t).",
        "",
        "## Data",
        "Rendered on the fly (no dataset): a random object, cameras from `cameras.sample_orbit`",
        ("(the `toy` preset's: polar 45..105, any azimuth, fixed framing radius 3.5 and fovy 0.55 = "
         "the eval ring's, so the distilled object's size is pinned),"
         if tr["args"].get("framing", "spec") == "toy" else
         "(the spec's distribution: polar 45..105, any azimuth, radius and fovy over the whole "
         "progressive schedule),"),
        f"look-at jitter {_jitter(tr['camera'])};",
        "backgrounds white or (p = 0.66) a random colour or black, "
        f"{tr['data']['p_disparity']:.0%} normalised",
        f"disparity maps; captions {tr['data']['p_empty']:.0%} empty, {tr['data']['p_plain']:.0%} without view suffix.",
        "",
        "## Training",
        f"- {tr['steps']} steps x batch {tr['batch']} in {_fmt_time(tr['train_seconds'])} on {tr['device']} "
        f"({tr['seconds_per_step'] * 1000:.0f} ms/step); final loss {tr['final_loss']:.4f}.",
        f"- AdamW lr {tr['args']['lr']} (warm-up {tr['args']['warmup']}, cosine to "
        f"{tr['args']['min_lr_ratio']}x), weight decay {tr['args']['weight_decay']}, grad clip "
        f"{tr['args']['clip']}, EMA {tr['args']['ema']} (saved), bf16 autocast on CUDA, seed {tr['args']['seed']}.",
        *([f"- Continued from `{tr['args']['init_from']}` (its own card gives its training)."]
          if tr["args"].get("init_from") else []),
        "",
        "## Samples",
        "![samples](samples.png)",
        "",
        "Columns: " + "; ".join(f"{j + 1}. {p}" for j, p in enumerate(grid_prompts)) + ".",
        f"Row 1: ground truth (eval ring framing, polar {EVAL_POLAR:g}); other rows: DDIM "
        f"{st['ddim_steps']} steps, CFG {st['cfg_scale']}.",
        "",
        "## Metrics",
        f"{st['samples_per_prompt']} samples per prompt and view (DDIM {st['ddim_steps']}, CFG {st['cfg_scale']}, "
        "unconditional = empty prompt). Foreground = pixels differing from the median border colour",
        "by > 0.15. hue_match: coloured foreground pixels whose nearest palette hue is the requested",
        "one. iou: silhouettes are normalised (bounding box scaled to 32x32, centred), then the best",
        "IoU against ground-truth renders of the requested object over a grid of cameras of the",
        "requested view (polar 45..105 x the view's azimuths, 10 degrees apart); shape_acc: the",
        "best-matching family is the requested one. iou/shape_acc count only framed samples (a whole",
        "object: not touching the border; close-ups are in the training distribution).",
        "",
        "| | hue_match | iou | shape_acc | framed |",
        "|---|---|---|---|---|",
        f"| samples | {s['hue_match']:.3f} | {s['iou']:.3f} | {s['shape_acc']:.3f} | {s['framed']:.2f} |",
        f"| training images (ceiling) | {dr['hue_match']:.3f} | {dr['iou']:.3f} | {dr['shape_acc']:.3f} | {dr['framed']:.2f} |",
        f"| ground truth, eval ring | {g['hue_match']:.3f} | {g['iou']:.3f} | {g['shape_acc']:.3f} | {g['framed']:.2f} |",
        "",
        "Samples by family:",
        "",
        "| family | hue_match | iou | shape_acc | framed |",
        "|---|---|---|---|---|",
    ]
    for f, v in metrics["summary_by_family"].items():
        lines.append(f"| {f} | {v['hue_match']:.3f} | {v['iou']:.3f} | {v['shape_acc']:.3f} | {v['framed']:.2f} |")
    lines += ["", "## Limits",
              f"Only ToyWorld objects and words; {c.image_size}x{c.image_size} images (the "
              "distillation's renders are resized to it by `PixelPrior.encode`).", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except TrainPriorError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
