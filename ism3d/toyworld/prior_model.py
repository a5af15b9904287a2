"""The ToyWorld prior as a model: its architectures, a new one's config, a larger one warm-started
from a smaller one, and the float16 weights that ship in the package.

- `ARCHS`: the UNet + text-encoder sizes ("small" is shipped, "tiny" for tests and smoke runs);
- `prior_config`: the `PixelPriorConfig` of a new prior at a resolution, architecture and patch;
- `patchify`: a patch-p prior of p x the size whose UNet starts as a patch-1 prior's;
- `save_fp16`: `save_pretrained`, then the safetensors file rewritten in float16 (`WEIGHTS_LIMIT`).

Trained by `python -m ism3d.toyworld.train_prior` (ism3d/toyworld/train_prior.py).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from ..priors.pixel import FORMAT, SD_SCHEDULE, PixelPrior, PixelPriorConfig
from .world import vocabulary

# Bytes. The weights ship inside the package (hard limit 20 MB) and come back from the GPU
# machine as one file (at most 16 MB there).
WEIGHTS_LIMIT = 16_000_000

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

