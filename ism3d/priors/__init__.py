"""Diffusion priors: the `DiffusionPrior` protocol and `load_prior`, the one way to get a prior.

`load_prior(cfg.prior, device)` takes any name:
- "tiny": a seeded random-weight 32x32 pixel prior (tests, smoke runs; `pixel.PixelPrior.tiny`);
- a folder or `.safetensors` file written by `PixelPrior.save_pretrained` (e.g. a trained toy prior);
- anything else is Stable Diffusion (`stable_diffusion.py`; SDXL: `sdxl.py`): a hub id, a
  diffusers folder, or a single original-layout `.safetensors`/`.ckpt` file; with textual
  inversions, LoRAs, another VAE and a low-VRAM mode on top (`customise`).

The Stable Diffusion module (and diffusers) is imported only when needed, so `resolve_prior`
stays cheap and `python -m ism3d.priors.stable_diffusion` runs cleanly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import DiffusionPrior, PriorError, PromptError
from .pixel import PixelPrior, is_pixel_prior

if TYPE_CHECKING:
    from ism3d.config import PriorConfig

    from .stable_diffusion import StableDiffusionPrior

__all__ = ["DiffusionPrior", "PriorError", "PromptError", "PixelPrior", "StableDiffusionPrior",
           "load_prior", "resolve_prior"]


def resolve_prior(name: str, offline: bool = False) -> str:
    """"tiny", an existing local path, or a hub id to download; raises PriorError (one line) for
    a missing path or a hub model that is neither cached nor reachable. Loads nothing."""
    from .locate import resolve_prior as _resolve

    return _resolve(name, offline=offline)


def load_prior(cfg: "PriorConfig", device: torch.device | str) -> DiffusionPrior:
    """Build the prior named by `cfg.name` on `device`, frozen and in eval mode.

    Args:
        cfg: `PriorConfig` (name, dtype, latent, offline, single_file_config, resolution,
            cuda_graphs, compile; for SD/SDXL also vae, textual_inversion, lora, attention_slicing,
            channels_last, offload: see `customise`).
        device: torch device of all the prior's computations.

    Returns:
        A `DiffusionPrior`: `PixelPrior` for "tiny" and pixel-prior files, `StableDiffusionXLPrior`
        for an SDXL folder or file, else `StableDiffusionPrior`.

    Raises:
        PriorError: the prior cannot be found or loaded (one line saying what to do).
    """
    from .locate import resolve_dtype
    from .stable_diffusion import load_stable_diffusion

    device = torch.device(device)
    check_custom_files(cfg)  # a missing LoRA/embedding file fails before the model loads
    loc = resolve_prior(cfg.name, offline=cfg.offline)
    if (loc == "tiny" or is_pixel_prior(loc)) and (cfg.textual_inversion or cfg.lora or cfg.vae):
        raise PriorError(f"prior.textual_inversion, prior.lora and prior.vae need a Stable Diffusion prior, "
                         f"not {cfg.name!r}")
    if loc == "tiny":
        prior = PixelPrior.tiny(device, dtype=resolve_dtype(cfg.dtype, device, auto=torch.float32))
    elif is_pixel_prior(loc):
        prior = PixelPrior.from_pretrained(loc, device, dtype=resolve_dtype(cfg.dtype, device, auto=torch.float32))
    else:
        prior = load_stable_diffusion(loc, device, cfg.dtype, cfg.latent, cfg.single_file_config, cfg.offline,
                                      name=cfg.name)
        prior.set_resolution(cfg.resolution)
        customise(prior, cfg)
    if cfg.cuda_graphs and cfg.offload == "none":
        prior.enable_cuda_graphs(compile=cfg.compile)
    if cfg.compile and cfg.offload == "none" and hasattr(prior, "compile_encoder"):
        prior.compile_encoder()
    return prior


def check_custom_files(cfg: "PriorConfig") -> None:
    """PriorError (one line) for a textual-inversion/LoRA/VAE entry naming a local file that is
    not there; cheap (hub ids are looked up later, when they are loaded)."""
    import os

    from . import lora, textual_inversion
    from .locate import _looks_like_path, weights_file_like

    for what, split, specs in (("textual inversion", textual_inversion.split_spec, cfg.textual_inversion),
                               ("LoRA", lora.split_spec, cfg.lora)):
        for spec in specs:
            src = split(spec)[0]
            if weights_file_like(src) and not os.path.exists(os.path.expanduser(src)):
                raise PriorError(f"{what}: no such file: {src}")
    if cfg.vae and _looks_like_path(cfg.vae) and not os.path.exists(os.path.expanduser(cfg.vae)):
        raise PriorError(f"prior.vae: no such folder: {cfg.vae}")


def customise(prior, cfg: "PriorConfig") -> None:
    """A separate VAE, textual inversions, LoRAs (fused), attention slicing, channels-last networks
    and offload, in that order; what was done goes to `prior.custom` (summary.json). Raises
    PriorError (one line)."""
    from .lora import fuse_loras
    from .offload import enable_offload
    from .textual_inversion import load_textual_inversions

    if cfg.vae:
        prior.replace_vae(cfg.vae, offline=cfg.offline)
        prior.custom["vae"] = cfg.vae
    if cfg.textual_inversion:
        prior.custom["textual_inversion"] = load_textual_inversions(prior, cfg.textual_inversion, cfg.offline)
    if cfg.lora:
        prior.custom["lora"] = fuse_loras(prior, cfg.lora, cfg.offline)
    if cfg.attention_slicing:
        prior.unet.set_attention_slice("auto")
        prior.custom["attention_slicing"] = True
    if cfg.channels_last:
        prior.custom["channels_last"] = prior.enable_channels_last()
    if cfg.offload != "none":
        enable_offload(prior, cfg.offload)
        prior.custom["offload"] = cfg.offload


def __getattr__(name: str):
    if name == "StableDiffusionPrior":
        from .stable_diffusion import StableDiffusionPrior
        return StableDiffusionPrior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
