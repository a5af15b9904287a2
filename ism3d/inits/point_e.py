"""init.kind=point-e: a point cloud from a text prompt with OpenAI's Point-E, as the reference does.

Point-E is not on PyPI: `pip install git+https://github.com/openai/point-e`. It is imported only
here, lazily; `check_installed` (called by `generate.prepare`) turns a missing package into one
`InitError` line before anything heavy. Its weights download on first use (from
openaipublic.azureedge.net) into `cache_dir()` (~/.cache/point_e); on a machine without internet
copy base_40m_textvec.pt and upsample_40m.pt there.

What we call (point_e, read from openai/point-e; the reference LucidDreamer's
utils/pointe_utils.py makes the same calls):
    models.configs.MODEL_CONFIGS[name], model_from_config(config, device) -> nn.Module
    models.download.load_checkpoint(name, device, cache_dir=...) -> state dict
    diffusion.configs.DIFFUSION_CONFIGS[name], diffusion_from_config(config)
    diffusion.sampler.PointCloudSampler(device, models, diffusions, num_points, aux_channels,
        guidance_scale, model_kwargs_key_filter, karras_steps); .sample_batch(batch_size,
        model_kwargs) -> [B, 6, N]; .output_to_point_clouds(samples) -> [PointCloud]
    PointCloud.coords [N, 3] (z up, the object's front towards -y: see cloud.py, step 1),
    PointCloud.channels {"R", "G", "B": [N] in [0, 1]} (the sampler divides its 0..255 by 255)
Steps (numbered as in `generate`):
    1. base40M-textvec (text-conditioned, 1024 points, guidance init.point_e_guidance = 3) and
       the upsampler (3072 more points, unconditioned, unguided): 4096 points
    2. sample with the global torch RNG seeded with train.seed inside `torch.random.fork_rng`
       (Point-E's samplers take no generator; the caller's RNG state is left untouched)
    3. generator frame -> scene frame with the reference's lift of 0.15 (cloud.py, step 1)
    4. keep num_points // copies of the 4096 (all of them with the defaults), a seeded subset
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from ..config import InitConfig
from ..errors import one_line
from .cloud import GeneratedCloud, InitError, num_base_points, to_scene_frame

__all__ = [
    "BASE",
    "LIFT",
    "MISSING",
    "MODEL_NAME",
    "UPSAMPLER",
    "cache_dir",
    "check_installed",
    "generate",
]

MISSING = ("init=point-e needs the point_e package (not on PyPI): "
           "pip install git+https://github.com/openai/point-e")
BASE, UPSAMPLER = "base40M-textvec", "upsample"
MODEL_NAME = f"point-e:{BASE}+{UPSAMPLER}"
NUM_POINTS = (1024, 4096 - 1024)  # base, upsampler
LIFT = 0.15  # the reference lifts Point-E clouds by 0.15 along z


def check_installed() -> None:
    """Raise InitError (one line: how to install it) if `point_e` cannot be imported."""
    try:
        importlib.import_module("point_e")
    except ImportError:
        raise InitError(MISSING) from None


def cache_dir() -> Path:
    """Where Point-E's weights are downloaded and looked for."""
    return Path.home() / ".cache" / "point_e"


def _modules():
    check_installed()
    try:
        configs = importlib.import_module("point_e.diffusion.configs")
        sampler = importlib.import_module("point_e.diffusion.sampler")
        models = importlib.import_module("point_e.models.configs")
        download = importlib.import_module("point_e.models.download")
    except ImportError as e:
        raise InitError(f"the point_e package is incomplete ({e}); reinstall it: "
                        "pip install git+https://github.com/openai/point-e") from None
    return configs, sampler, models, download


@torch.no_grad()
def generate(cfg: InitConfig, prompt: str, seed: int, device: torch.device | str) -> GeneratedCloud:
    """Point-E cloud for `prompt` (steps 1-4 of the module docstring).

    Args:
        cfg: InitConfig (steps, point_e_guidance, scale, num_points, copies).
        prompt: the init prompt; seed: seeds the sampling and the subset.
    Returns:
        GeneratedCloud of min(4096, num_points // copies) points in the scene frame, with the
        model's colours.
    """
    device = torch.device(device)
    m = num_base_points(cfg)
    if m < 1:
        raise InitError(f"init.num_points {cfg.num_points} < init.copies {cfg.copies}: "
                        "no point to generate")
    dconf, dsampler, mconf, download = _modules()
    # 1. models
    models, diffusions = [], []
    for name in (BASE, UPSAMPLER):
        model = mconf.model_from_config(mconf.MODEL_CONFIGS[name], device)
        model.eval()
        try:
            state = download.load_checkpoint(name, device, cache_dir=str(cache_dir()))
        except Exception as e:  # noqa: BLE001 (network errors while downloading)
            raise InitError(f"cannot get the Point-E weights '{name}' ({one_line(e)}); they "
                            f"download on first use into {cache_dir()}") from None
        model.load_state_dict(state)
        models.append(model)
        diffusions.append(dconf.diffusion_from_config(dconf.DIFFUSION_CONFIGS[name]))
    sampler = dsampler.PointCloudSampler(
        device=device, models=models, diffusions=diffusions, num_points=list(NUM_POINTS),
        aux_channels=["R", "G", "B"], guidance_scale=[cfg.point_e_guidance, 0.0],
        model_kwargs_key_filter=("texts", ""), karras_steps=[cfg.steps, cfg.steps])
    # 2. sample, seeded, without touching the caller's RNG
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        samples = sampler.sample_batch(batch_size=1, model_kwargs={"texts": [prompt]})
    pc = sampler.output_to_point_clouds(samples)[0]
    coords = np.asarray(pc.coords, dtype=np.float64)                           # [4096, 3]
    rgb = np.stack([np.asarray(pc.channels[c], dtype=np.float64) for c in "RGB"], axis=1)
    assert coords.ndim == 2 and coords.shape[1] == 3 and rgb.shape == coords.shape
    # 3. scene frame
    pts = to_scene_frame(coords, cfg.scale, lift=LIFT)
    # 4. subset
    if m < len(pts):
        keep = torch.randperm(len(pts), generator=torch.Generator().manual_seed(int(seed)))[:m]
        keep = keep.sort().values.numpy()
        pts, rgb = pts[keep], rgb[keep]
    return GeneratedCloud(pts, rgb)
