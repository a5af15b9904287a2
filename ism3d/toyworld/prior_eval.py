"""Sampling a trained ToyWorld prior and scoring its samples (steps 6 and 7 of `train_prior`).

- `ddim_sample`: DDIM (eta = 0) with classifier-free guidance, the empty prompt as the
  unconditional branch;
- the metrics of one image: `foreground` (pixels unlike the border colour), `hue_match` (their
  hue is the requested colour's), `normalise_masks` + `iou_matrix` (silhouette IoU with position
  and scale removed) against ground-truth renders over `candidate_cameras` of the requested view;
- `evaluate`: every (family, colour, view) prompt sampled and scored, with the same metrics on
  the ground truth and on training images as references (DIR/metrics.json);
- `sample_grid`: DIR/samples.png, a ground-truth row over sample rows.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import orbit_cameras
from ..guidance.ddim import q_sample, x0_hat
from ..priors.pixel import PixelPrior
from .data import ObjectBank, ToyWorldData
from .world import COLOURS, FAMILIES, VIEWS, caption, hue_of, view_of_azimuth

# The ground-truth cameras: the eval ring's radius and fovy; polar of the samples.png GT row
EVAL_RADIUS, EVAL_FOVY, EVAL_POLAR = 3.5, 0.55, 75.0
# Azimuth (degrees) of each view word's ground-truth render
VIEW_AZIMUTH = {"front": 0.0, "side": 90.0, "back": 180.0}


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


def ground_truth(bank: ObjectBank, family: str, colour: str, view: str, res: int) -> Tensor:
    """`[1, 3, res, res]` render of the object on white from the eval-ring camera of `view`
    (polar EVAL_POLAR, azimuth VIEW_AZIMUTH[view]): the reference image of a prompt."""
    cam = orbit_cameras(torch.tensor([EVAL_POLAR]), torch.tensor([VIEW_AZIMUTH[view]]),
                        torch.tensor([EVAL_RADIUS]), torch.tensor([EVAL_FOVY]), res, res)
    return bank.render(torch.tensor([bank.index(family, colour)]), cam, torch.ones(3))[0]


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
        gt_rows.append(_score(ground_truth(bank, f, colour, v, res).to(dev), f, v, colour, text, sil))

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
        gts.append(ground_truth(bank, f, colour, view, res))
    gen = torch.Generator().manual_seed(seed)
    scale = max(1, 96 // res)
    grid = [_tiles(torch.cat(gts), scale)]
    for _ in range(rows):
        grid.append(_tiles(ddim_sample(prior, prompts, steps=steps, cfg_scale=cfg_scale, gen=gen), scale))
    img = torch.cat(grid, dim=1).clamp(0, 1).permute(1, 2, 0).numpy()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return prompts
