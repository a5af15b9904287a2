"""init.kind=shap-e: a point cloud from a text prompt with Shap-E (diffusers `ShapEPipeline`).

Pipeline (diffusers 0.42, the `openai/shap-e` layout; one folder per component):
    tokenizer        CLIPTokenizer
    text_encoder     CLIPTextModelWithProjection (CLIP ViT-L/14 text tower, 768-d projection)
    prior            PriorTransformer (24 layers, width 1024): denoises a latent of 1024 x 1024
    scheduler        HeunDiscreteScheduler (Karras sigmas, "exp" betas, 1024 train steps,
                     x0 prediction clipped to [-1, 1])
    shap_e_renderer  ShapERenderer: the latent -> weights of an STF MLP (signed distance and
                     colour of a point in [-1, 1]^3) and `decode_to_mesh`, marching cubes on a
                     grid of that field, vertex colours R, G, B from the MLP
Steps (numbered as in `generate`):
    1. resolve the model (hub id via the HF cache, or a local folder) and load each component
       with its own `from_pretrained` (`load_pipeline`); fp16 on CUDA, fp32 elsewhere
    2. latent = pipe(prompt, steps, guidance, generator seeded with train.seed, "latent")
    3. mesh = renderer.decode_to_mesh(latent, grid_size=init.shap_e_grid): what the pipeline's
       output_type="mesh" runs, with the grid exposed (its default is 128)
    4. undo two decoder conventions:
       - positions: the decoder pads the G^3 field to (G+2)^3 and maps the padded grid onto the
         same [-1, 1] box, so every vertex comes out scaled by (G-1)/(G+1) (1.6% at 128);
         we multiply by (G+1)/(G-1)
         (the colours stay those the decoder queried at its own positions)
       - colours: diffusers converts the MLP's sRGB output to linear light
         (`_convert_srgb_to_linear`) for its own renderer; gaussian colours are sRGB, so we
         convert back (`linear_to_srgb`)
    5. generator frame (z up, front -y) -> scene frame (z up, front +x), times init.scale
       (cloud.py, step 1)
    6. sample num_points // copies points on the mesh (area-weighted, colours interpolated) with
       a CPU generator seeded with train.seed

The model is found (`resolve_shap_e`) in seconds before anything heavy: a local folder must hold
the five components; a hub id must be in the HF cache, or the hub must be reachable (then only the
needed files are downloaded: the fp16 safetensors of prior/text_encoder where the repo has them,
shap_e_renderer's weights, configs, tokenizer). Anything else is one `InitError` line.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ..config import InitConfig
from ..errors import one_line
from .cloud import (
    GeneratedCloud,
    InitError,
    linear_to_srgb,
    num_base_points,
    sample_surface,
    to_scene_frame,
)

__all__ = [
    "COMPONENTS",
    "decode_mesh",
    "generate",
    "load_pipeline",
    "mesh_to_cloud",
    "missing_parts",
    "resolve_shap_e",
    "sample_latent",
]

COMPONENTS = ("prior", "text_encoder", "tokenizer", "scheduler", "shap_e_renderer")
# weight file stems of the components that have weights
_WEIGHTS = {"prior": "diffusion_pytorch_model", "shap_e_renderer": "diffusion_pytorch_model",
            "text_encoder": "model"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------
# 1. where the model is
# ---------------------------------------------------------------------------------------------
def _weights_variant(d: Path, comp: str) -> str | None | bool:
    """None: plain weights; "fp16": only fp16-variant weights; False: no weights."""
    stem = _WEIGHTS[comp]
    alt = "pytorch_model" if comp == "text_encoder" else stem
    for name in (f"{stem}.safetensors", f"{stem}.bin", f"{alt}.bin",
                 f"{stem}.safetensors.index.json", f"{alt}.bin.index.json"):
        if (d / name).is_file():
            return None
    for name in (f"{stem}.fp16.safetensors", f"{stem}.fp16.bin", f"{alt}.fp16.bin"):
        if (d / name).is_file():
            return "fp16"
    return False


def missing_parts(folder: Path) -> list[str]:
    """Components of a Shap-E folder that are absent (config, weights, tokenizer files)."""
    missing = []
    for comp in COMPONENTS:
        d = folder / comp
        if comp in _WEIGHTS:
            ok = (d / "config.json").is_file() and _weights_variant(d, comp) is not False
        elif comp == "tokenizer":
            ok = (d / "tokenizer.json").is_file() or \
                ((d / "vocab.json").is_file() and (d / "merges.txt").is_file())
        else:
            ok = (d / "scheduler_config.json").is_file()
        if not ok:
            missing.append(comp)
    return missing


def _offline_error(name: str) -> InitError:
    return InitError(
        f"init.model '{name}' is not available offline: download it where there is internet "
        f"(huggingface-cli download {name}) and copy the HF cache here, or set "
        f"init.model=FOLDER (a ShapEPipeline saved with save_pretrained)")


def resolve_shap_e(name: str, offline: bool = False) -> str:
    """Where the Shap-E pipeline comes from, without loading it.

    Returns:
        The absolute path of a complete local folder (for a hub id: its HF-cache snapshot), or
        the hub id itself when it is not cached but the hub is reachable (`generate` downloads).
    Raises:
        InitError: a missing or incomplete folder; a hub id neither cached nor reachable.
    """
    from ..priors.locate import cached_or_reachable

    name = name.strip()
    if not name:
        raise InitError("init.model is empty: use a hub id (openai/shap-e) or a local folder")
    path = Path(os.path.expanduser(name))
    if path.exists() or not _HUB_ID.match(name):
        if not path.is_dir():
            raise InitError(f"init.model {name}: no such folder (a Shap-E pipeline folder or a "
                            f"hub id like openai/shap-e)")
        missing = missing_parts(path)
        if missing:
            raise InitError(f"init.model {name} is not a complete Shap-E pipeline folder: "
                            f"missing {', '.join(missing)} (config or weights)")
        return str(path.resolve())
    return cached_or_reachable(name, offline, _cached_snapshot, _offline_error)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The HF-cache snapshot folder of `repo_id` if it holds every component; no network."""
    from ..priors.stable_diffusion import hf_cache_folder

    folder = hf_cache_folder(repo_id)
    return folder if folder is not None and not missing_parts(folder) else None


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", "scheduler/*", "tokenizer/*", "shap_e_renderer/*"]
    patterns += [f"{c}/config.json" for c in ("prior", "text_encoder")]
    patterns += [f"{c}/*.safetensors" for c in ("prior", "text_encoder")]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 (network errors, unknown ids)
        raise InitError(f"cannot download init.model '{repo_id}' from the hub: "
                        f"{one_line(e)}") from None
    if missing_parts(folder):  # a repo without safetensors: take its .bin weights too
        try:
            folder = Path(snapshot_download(
                repo_id, allow_patterns=patterns + ["prior/*.bin", "text_encoder/*.bin"]))
        except Exception as e:  # noqa: BLE001
            raise InitError(f"cannot download init.model '{repo_id}': {one_line(e)}") from None
    missing = missing_parts(folder)
    if missing:
        raise InitError(f"init.model '{repo_id}' is not a Shap-E pipeline (no {', '.join(missing)})")
    return folder


# ---------------------------------------------------------------------------------------------
# 1. loading
# ---------------------------------------------------------------------------------------------
def load_pipeline(folder: str | Path, device: torch.device | str,
                  dtype: torch.dtype | None = None):
    """A diffusers ShapEPipeline from a local folder, each component loaded on its own.

    Args:
        folder: a complete Shap-E folder (`missing_parts` is empty).
        device: where it runs; dtype: None = fp16 on CUDA, fp32 elsewhere.
    Raises:
        InitError: a component cannot be loaded, or the renderer has no marching-cubes tables.
    """
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from ..priors.stable_diffusion import quiet_hf

    folder, device = Path(folder), torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        with quiet_hf():
            prior = PriorTransformer.from_pretrained(
                folder, subfolder="prior", torch_dtype=dtype, local_files_only=True,
                variant=_weights_variant(folder / "prior", "prior"))
            text_encoder = CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder", dtype=dtype, local_files_only=True,
                variant=_weights_variant(folder / "text_encoder", "text_encoder"))
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer",
                                                      local_files_only=True)
            scheduler = HeunDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
            renderer = ShapERenderer.from_pretrained(
                folder, subfolder="shap_e_renderer", torch_dtype=dtype, local_files_only=True,
                variant=_weights_variant(folder / "shap_e_renderer", "shap_e_renderer"))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise InitError(f"cannot load Shap-E from {folder}: {one_line(e)}") from None
    if not bool(renderer.mesh_decoder.masks.any()):
        raise InitError(f"{folder}: shap_e_renderer holds no marching-cubes tables "
                        "(mesh_decoder.cases/masks are zero): use the openai/shap-e weights")
    pipe = ShapEPipeline(prior=prior, text_encoder=text_encoder, tokenizer=tokenizer,
                         scheduler=scheduler, shap_e_renderer=renderer).to(device)
    for m in (prior, text_encoder, renderer):
        m.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# 3-4. decoding
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def decode_mesh(pipe, latent: torch.Tensor, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Shap-E latent -> (verts [V, 3], faces [F, 3], srgb [V, 3]) in the Shap-E frame.

    Args:
        latent: [num_embeddings, embedding_dim] (1024 x 1024 for openai/shap-e).
        grid: marching-cubes grid G (>= 8).
    Raises:
        InitError: the decoded field is outside everywhere (an empty mesh).
    """
    prior_cfg = pipe.prior.config
    assert latent.shape == (prior_cfg.num_embeddings, prior_cfg.embedding_dim), latent.shape
    device = pipe.device
    try:
        mesh = pipe.shap_e_renderer.decode_to_mesh(latent[None], device, grid_size=grid)
    except RuntimeError as e:
        if "non-empty" in str(e):  # decode_to_mesh concatenates zero texture batches
            raise InitError("Shap-E made an empty mesh (its field is outside everywhere): try "
                            "another init.prompt or train.seed") from None
        raise
    verts = mesh.verts.detach().double().cpu().numpy() * (grid + 1) / (grid - 1)  # [V, 3]
    faces = mesh.faces.detach().long().cpu().numpy()                                # [F, 3]
    lin = torch.stack([mesh.vertex_channels[c] for c in "RGB"], dim=1)              # [V, 3]
    return verts, faces, linear_to_srgb(lin.detach().double().cpu().numpy())


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_latent(pipe, prompt: str, cfg: InitConfig, seed: int) -> torch.Tensor:
    """Step 2: one Shap-E latent [num_embeddings, embedding_dim] for `prompt`, seeded."""
    gen = torch.Generator(device=pipe.device).manual_seed(int(seed))
    out = pipe(prompt, num_inference_steps=cfg.steps, guidance_scale=cfg.shap_e_guidance,
               generator=gen, output_type="latent").images                     # [1, E, D]
    return out[0]


def mesh_to_cloud(verts: np.ndarray, faces: np.ndarray, srgb: np.ndarray, cfg: InitConfig,
                  seed: int) -> GeneratedCloud:
    """Steps 5-6: Shap-E-frame mesh -> num_points // copies scene-frame points on its surface."""
    verts = to_scene_frame(verts, cfg.scale, lift=0.0)
    pts, cols = sample_surface(verts, faces, srgb, num_base_points(cfg),
                               torch.Generator().manual_seed(int(seed)))
    return GeneratedCloud(pts, cols)


def generate(cfg: InitConfig, prompt: str, seed: int, device: torch.device | str,
             offline: bool = False, pipe=None) -> GeneratedCloud:
    """Shap-E cloud for `prompt` (steps 1-6 of the module docstring).

    Args:
        cfg: InitConfig (model, steps, shap_e_guidance, shap_e_grid, scale, num_points, copies).
        prompt: the init prompt (already resolved: init.prompt or the main prompt).
        seed: seeds the latent noise and the surface sampling.
        device: where the pipeline runs.
        offline: never download (prior.offline).
        pipe: an already loaded pipeline (tests and benchmarks); None loads `cfg.model`.
    Returns:
        GeneratedCloud of num_points // copies points in the scene frame.
    """
    if num_base_points(cfg) < 1:
        raise InitError(f"init.num_points {cfg.num_points} < init.copies {cfg.copies}: "
                        "no point to generate")
    # 1. model
    if pipe is None:
        where = resolve_shap_e(cfg.model, offline=offline)
        folder = Path(where) if Path(where).is_dir() else _download(where)
        pipe = load_pipeline(folder, device)
    # 2. latent   3-4. mesh in the Shap-E frame with sRGB colours   5-6. scene-frame points
    latent = sample_latent(pipe, prompt, cfg, seed)
    verts, faces, srgb = decode_mesh(pipe, latent, cfg.shap_e_grid)
    return mesh_to_cloud(verts, faces, srgb, cfg, seed)
