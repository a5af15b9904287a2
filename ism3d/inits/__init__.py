"""Text-to-3D initialisers: init.kind=shap-e (diffusers Shap-E) and init.kind=point-e (OpenAI
Point-E), beside scene.py's ball | shell | box | file.

    check_init(cfg.init, offline)           cheap checks for `generate.prepare` (InitError)
    init_from_config(cfg, prompt, out_dir, device, gen) -> ParameterDict
                                            what `train` calls when it starts a run: the
                                            text kinds here, every other kind `scene.init_params`

A text kind generates a cloud from init.prompt (or the main prompt) on the training device,
keeps it in the run folder as `init_points.ply` (reused only for the same model, init prompt,
seed and settings) and turns it into gaussians with the file initialiser's code (cloud.py).
Frames, copies/jitter and the cache are documented in cloud.py; each generator in its module.
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch

from ..config import Config, InitConfig
from .cloud import (
    INIT_CLOUD,
    TEXT_KINDS,
    GeneratedCloud,
    InitError,
    cache_key,
    cloud_to_params,
    load_cloud,
    num_base_points,
    save_cloud,
)

__all__ = [
    "INIT_CLOUD",
    "TEXT_KINDS",
    "GeneratedCloud",
    "InitError",
    "check_init",
    "generate_cloud",
    "init_from_config",
    "text_init_params",
]

log = logging.getLogger("ism3d.inits")


def check_init(cfg: InitConfig, offline: bool = False, need_model: bool = True) -> None:
    """Everything about a text init that can be checked without loading a model.

    Args:
        cfg: the InitConfig; other kinds than shap-e / point-e pass.
        offline: never count on downloading the Shap-E model (prior.offline).
        need_model: also check the model/package (a resumed run does not generate anything).
    Raises:
        InitError (a ConfigError: exit 2 at the CLI): a value out of range, point_e not
        installed (kind=point-e), or the Shap-E model missing (kind=shap-e; see
        shap_e.resolve_shap_e).
    """
    if cfg.kind not in TEXT_KINDS:
        return
    need = [(cfg.copies >= 1, "init.copies", "must be at least 1"),
            (cfg.jitter >= 0, "init.jitter", "must be >= 0"),
            (cfg.scale > 0, "init.scale", "must be > 0"),
            (cfg.steps >= 1, "init.steps", "must be at least 1"),
            (cfg.shap_e_guidance >= 0, "init.shap_e_guidance", "must be >= 0"),
            (cfg.point_e_guidance >= 0, "init.point_e_guidance", "must be >= 0"),
            (8 <= cfg.shap_e_grid <= 512, "init.shap_e_grid", "must be between 8 and 512"),
            (num_base_points(cfg) >= 1, "init.num_points", "must be at least init.copies")]
    for ok, key, why in need:
        if not ok:
            raise InitError(f"{key}: {why} (got {getattr(cfg, key.split('.')[1])!r})")
    if not need_model:
        return
    if cfg.kind == "point-e":
        from .point_e import check_installed
        check_installed()
    else:
        from .shap_e import resolve_shap_e
        resolve_shap_e(cfg.model, offline=offline)


def generate_cloud(cfg: InitConfig, prompt: str, seed: int, device: torch.device | str,
                   offline: bool = False) -> GeneratedCloud:
    """Run the generator of `cfg.kind` for the (already resolved) init `prompt`."""
    if cfg.kind == "shap-e":
        from . import shap_e
        return shap_e.generate(cfg, prompt, seed, device, offline=offline)
    if cfg.kind == "point-e":
        from . import point_e
        return point_e.generate(cfg, prompt, seed, device)
    raise InitError(f"init.kind {cfg.kind!r} is not a text-to-3D kind ({', '.join(TEXT_KINDS)})")


def text_init_params(cfg: Config, prompt: str, out_dir: str | Path, device: torch.device | str,
                     generator: torch.Generator) -> torch.nn.ParameterDict:
    """Initial gaussians of a text kind, through `out_dir/init_points.ply`.

    1. key = (kind, model, init prompt, seed, steps, guidance, points, scale, grid)
    2. the cloud in `out_dir/init_points.ply` if its key is this key; else generate it and
       (re)write the file
    3. cloud -> gaussians (copies, jitter: the only draws from `generator`)

    Args:
        cfg: the run's Config (init, train.seed, prior.offline).
        prompt: the run's main prompt (the init prompt when init.prompt is empty).
        out_dir: the run folder.
        device: where the generator runs.
        generator: the training generator.
    Returns:
        ParameterDict on the CPU, as `scene.init_params`.
    """
    init = cfg.init
    key = cache_key(init, prompt, cfg.train.seed)
    path = Path(out_dir) / INIT_CLOUD
    found = load_cloud(path)
    if found is not None and found[1] == key:
        cloud = found[0]
        log.info("init: reusing %s (%d points)", path, len(cloud.points))
    else:
        if found is not None:
            log.warning("init: %s was made for %s; generating a new cloud for %s",
                        path, _short(found[1]), _short(key))
        cloud = generate_cloud(init, key["prompt"], cfg.train.seed, device,
                               offline=cfg.prior.offline)
        save_cloud(path, cloud, key)
        if torch.device(device).type == "cuda":  # hand the generator's memory back for training
            gc.collect()
            torch.cuda.empty_cache()
    return cloud_to_params(cloud, init, generator)


def _short(key: dict) -> str:
    return f"({key.get('kind')}, {key.get('model')}, {key.get('prompt')!r}, seed {key.get('seed')})"


def init_from_config(cfg: Config, prompt: str, out_dir: str | Path, device: torch.device | str,
                     generator: torch.Generator) -> torch.nn.ParameterDict:
    """The initial raw parameters of a new run (CPU): a text kind through `text_init_params`,
    any other kind through `scene.init_params(cfg.init, generator)`."""
    if cfg.init.kind in TEXT_KINDS:
        return text_init_params(cfg, prompt, out_dir, device, generator)
    from ..scene import init_params
    return init_params(cfg.init, generator)
