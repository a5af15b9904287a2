"""Typed configuration: one dataclass per part, presets, dotted overrides, YAML round trip.

Every number a run depends on lives here, with the reference recipe's value as default (see
shared/spec/ism.md). A run is fully described by its `Config`; `config.yaml` in a run folder is
`to_dict(cfg)` and `load_config_file()` reads it back, so `--config DIR/config.yaml` reproduces a run.

Overrides are `section.key=value` strings (`guidance.scale=5`, `train.iters=200`); an unknown key,
a value of the wrong type or an impossible value raises `ConfigError` naming the key, before any
model is loaded.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration key, value, preset or file is not acceptable. The CLI turns it into exit 2."""


# ---------------------------------------------------------------------------------------------
# Sections. A `#` comment above each field documents it (shown by `ism3d generate --help-config`).
# ---------------------------------------------------------------------------------------------
@dataclass
class InitConfig:
    # How to place the initial gaussians: ball | shell | box | file | shap-e | point-e (a point
    # cloud generated from a text prompt, ism3d/inits/)
    kind: Literal["ball", "shell", "box", "file", "shap-e", "point-e"] = "ball"
    # Number of initial gaussians (for kind=file: points sampled on a mesh surface; 0 = all points)
    num_points: int = 100_000
    # Ball/shell radius, or half the side of the box (world units)
    radius: float = 0.5
    # True: uniform in volume; False: the reference's centre-heavy ball (radius * U, not cbrt(U))
    volume_uniform: bool = True
    # For kind=file: a point cloud or mesh (.ply/.obj/.glb) or an existing 3DGS .ply
    path: str = ""
    # Initial colour (RGB in [0,1]) where the source has none
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Initial opacity in (0,1)
    opacity: float = 0.1
    # Spherical-harmonics degree of the colour (0..3); the paper recipe uses 0
    sh_degree: int = 0
    # kind=shap-e|point-e: the generator's text prompt ("" = the main prompt), e.g. "a hamburger."
    prompt: str = ""
    # kind=shap-e: a diffusers Shap-E pipeline, hub id or local folder
    model: str = "openai/shap-e"
    # kind=shap-e|point-e: colour the gaussians with the generated colours (else init.color)
    use_colors: bool = False
    # kind=shap-e|point-e: gaussians per generated point; num_points / copies points are made
    # (Point-E: at most its 4096; the reference: 20 copies, so 81,920 gaussians)
    copies: int = 20
    # kind=shap-e|point-e: the copies are jittered in a ball of this radius (reference 0.05)
    jitter: float = 0.05
    # kind=shap-e|point-e: world units per generator unit
    scale: float = 1.0
    # kind=shap-e|point-e: sampling steps of the generator (Karras/Heun steps, both 64)
    steps: int = 64
    # kind=shap-e: classifier-free guidance scale (GaussianDreamer: 15)
    shap_e_guidance: float = 15.0
    # kind=point-e: guidance scale of the base model (the reference: 3; its upsampler unguided)
    point_e_guidance: float = 3.0
    # kind=shap-e: marching-cubes grid of the mesh decode (128 = the diffusers pipeline's)
    shap_e_grid: int = 128


@dataclass
class CameraConfig:
    # Polar angle range in degrees, measured from +z (90 = equator, 45 = looking down)
    polar_range: tuple[float, float] = (45.0, 105.0)
    # Azimuth range in degrees; 0 = front (camera on +x), counter-clockwise seen from above
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    # How the B azimuths of a step are drawn: uniform (the reference: independent, so all B views
    # can land on one side) | stratified (one view in each of B equal slices of azimuth_range, at a
    # uniform place inside it, as threestudio's batch_uniform_azimuth: every step sees all sides)
    azimuth_sampling: Literal["uniform", "stratified"] = "uniform"
    # Camera distance range at step 0
    radius_range: tuple[float, float] = (5.2, 5.5)
    # Both ends of radius_range are multiplied by this every `decay_every` steps...
    radius_decay: float = 0.95
    # ...down to these floors (min end, max end)
    radius_floor: tuple[float, float] = (3.5, 5.0)
    # Vertical field of view range in radians at step 0
    fovy_range: tuple[float, float] = (0.32, 0.60)
    # The lower fovy bound is multiplied by this every `decay_every` steps...
    fovy_decay: float = 0.75
    # ...down to this floor (radians)
    fovy_floor: float = 0.16
    # Steps between two decays of radius and fovy
    decay_every: int = 500
    # Jitter (world units), as the reference: the camera centre moves U[-j/2, j/2) per axis; the
    # look-at target and the up vector get gaussian noise of std jitter_target / jitter_up
    jitter_center: float = 0.05
    jitter_target: float = 0.05
    jitter_up: float = 0.01
    # Fixed evaluation ring: radius, fovy (radians), polar angles (degrees)
    eval_radius: float = 3.5
    eval_fovy: float = 0.55
    eval_polars: tuple[float, ...] = (90.0, 60.0)


@dataclass
class RenderConfig:
    # Render size in pixels (the prior's input size; latent priors need a multiple of 8)
    width: int = 512
    height: int = 512
    # auto (gsplat on CUDA, PyTorch elsewhere) | gsplat | torch
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    # Near/far clipping planes (camera-space depth)
    near: float = 0.01
    far: float = 100.0
    # Low-pass filter added to every projected covariance (pixels^2), as 3DGS and gsplat do
    eps2d: float = 0.3


@dataclass
class PriorConfig:
    # tiny | a diffusers hub id | a local diffusers folder | a single .safetensors/.ckpt file
    name: str = "stabilityai/stable-diffusion-2-1-base"
    # auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    # VAE latent: mean (deterministic) or sample (the reference)
    latent: Literal["mean", "sample"] = "mean"
    # Pass local_files_only to diffusers: never touch the network
    offline: bool = False
    # For a single .safetensors/.ckpt file: a diffusers folder or hub id with the configs of the
    # same architecture ("" = let diffusers infer it; SD 2.x files then count as 768px v-prediction)
    single_file_config: str = ""
    # On CUDA, replay the denoiser's forward as CUDA graphs (same kernels, ~3x faster at batch 4
    # on an H100); false runs it eagerly. Ignored elsewhere.
    cuda_graphs: bool = True
    # Latent priors: the side (pixels) the renders are resized to before the VAE encoder; 0 = the
    # model's own (512 for SD 2.1-base). 256 runs the VAE and UNet at a quarter of the pixels (the
    # `fast` preset). A multiple of 64.
    resolution: int = 0
    # On CUDA, torch.compile the denoiser (inside its graphs) and the VAE encoder: ~25% faster steps
    # after 1-3 min of compilation the first time (cached on disk for later runs). Ignored elsewhere.
    compile: bool = False


@dataclass
class GuidanceConfig:
    # ism (Interval Score Matching) | sds (Score Distillation Sampling)
    method: Literal["ism", "sds"] = "ism"
    # Classifier-free guidance scale g
    scale: float = 7.5
    # Weight lambda on the guidance gradient
    lambda_guidance: float = 0.1
    # Negative prompt, used as the unconditional CFG branch
    negative_prompt: str = (
        "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
        "low-resolution, gloomy"
    )
    # Steps over which the timestep range and the interval anneal (warm goes 1 -> 0)
    warmup_iters: int = 1500
    # ISM interval delta_T at warm=1 and after warm-up (timestep units)
    delta_t_start: int = 100
    delta_t: int = 80
    # Rounding of warm * (delta_t_start - delta_t): ceil (reference Perp-Neg path) | floor
    delta_t_rounding: Literal["ceil", "floor"] = "ceil"
    # t ~ U[t_min, t_max) with t_max annealing from t_max_start to t_max_end
    t_min: int = 20
    t_max_start: int = 980
    t_max_end: int = 500
    # DDIM inversion stride delta_s to reach x_s and the most inversion calls
    delta_s: int = 200
    xs_inv_steps: int = 5
    # First timestep of the inversion (the reference q_samples z0 to t=1 first)
    t_first: int = 1
    # Skip the inversion call when s == t_first (x_s = x; identical to rounding)
    skip_identity_inversion: bool = True
    # mean over views (default) | sum over views (the reference)
    reduce: Literal["mean", "sum"] = "mean"
    # Offset-noise strength (reference 0.1; 0 disables)
    offset_noise: float = 0.1
    # SDS weighting w(t): constant (reference) | sds (1 - abar_t) | gamma
    sds_weighting: Literal["constant", "sds", "gamma"] = "constant"
    # Append ", front/side/back view" by azimuth and interpolate the embeddings
    view_prompts: bool = True
    # Perp-Neg (needs view_prompts)
    perp_neg: bool = True
    # Perp-Neg weights
    perp_neg_w: float = -2.0
    perp_neg_front_decay: float = 2.0
    perp_neg_side_decay: float = 10.0


@dataclass
class StrategyConfig:
    # Densify (clone/split) from this step, until this step, every this many steps
    densify_from: int = 100
    densify_until: int = 3000
    densify_every: int = 100
    # Mean screen-space (NDC) gradient norm above which a gaussian is cloned or split
    grad_threshold: float = 0.00075
    # Clone if max scale <= percent_dense * scene_extent, else split
    percent_dense: float = 0.003
    scene_extent: float = 3.5
    # Prune gaussians with opacity below this
    prune_opacity: float = 0.005
    # After this step also prune big ones: screen radius (pixels) and world scale
    prune_big_after: int = 300
    max_screen_radius: float = 20.0
    max_world_scale: float = 0.35
    # Reset all opacities every this many steps while step < reset_until
    opacity_reset_every: int = 300
    reset_until: int = 3000
    # Opacity value after a reset
    reset_opacity: float = 0.01
    # Densification statistics from all views of a batch (fix) or the last view (reference)
    stats_views: Literal["all", "last"] = "all"
    # Never grow past this many gaussians (0 = no cap)
    max_gaussians: int = 1_000_000
    # Multiply screen-space gradients by the number of rendered views B (gsplat does): undoes a
    # mean over views in the loss; set false when the loss sums over views (guidance.reduce=sum)
    grad_scale_views: bool = True


@dataclass
class OptimConfig:
    # Learning rates (start, end), log-linear over training; end == start is constant
    means_lr: tuple[float, float] = (5.6e-4, 5.6e-6)
    colors_lr: tuple[float, float] = (0.005, 0.003)
    opacities_lr: tuple[float, float] = (0.05, 0.05)
    scales_lr: tuple[float, float] = (0.005, 0.001)
    quats_lr: tuple[float, float] = (0.001, 0.0002)
    # Adam epsilon
    adam_eps: float = 1e-15


@dataclass
class TrainConfig:
    # Optimisation steps
    iters: int = 5000
    # Views rendered per step (B)
    batch: int = 4
    # Random seed (every random draw of the run derives from it)
    seed: int = 0
    # auto (cuda if available) | cpu | cuda | cuda:N
    device: str = "auto"
    # Regulariser weights: squared TV of RGB and disparity, mean gaussian scale
    lambda_tv: float = 1.0
    lambda_scale: float = 1.0
    # Probability that the normalised disparity map replaces the RGB as the guided image
    disparity_prob: float = 0.2
    # Probability that the white background is replaced (by a random colour or black, half each)
    bg_aug_prob: float = 0.66
    # Checkpoint every this many steps (0 = only at the end)
    checkpoint_every: int = 500
    # Preview grid every this many steps (0 = never)
    preview_every: int = 500
    # Stop after this many consecutive non-finite steps
    max_bad_steps: int = 20


@dataclass
class OutputConfig:
    # Turntable frames and size
    video_frames: int = 120
    video_size: int = 512
    # Frames per second of the turntable video
    video_fps: int = 30
    # Write turntable.mp4 / turntable.gif / views.png
    video: bool = True
    gif: bool = True
    # Write mesh.glb (density of the gaussians -> marching cubes; ism3d/export/mesh.py)
    mesh: bool = True
    # Mesh grid samples along the scene's longest side (CPU: ~10 s at 256 for 100k gaussians)
    mesh_resolution: int = 256
    # Mesh face budget after decimation (0 = keep every marching-cubes face)
    mesh_faces: int = 100_000
    # Turn the finished scene about the vertical (0/90/180/270 degrees) so that its front faces
    # azimuth 0, the turn chosen by the prior's view-conditioned denoising loss (ism3d/orient.py;
    # it uses the prior's view prompts whatever guidance.view_prompts says); needs init.sh_degree 0
    orient: bool = False
    # A turn is applied only if it lowers that loss by more than this fraction
    orient_margin: float = 0.003
    # Coordinate frame of gaussians.ply: "y-down" (the 3DGS/COLMAP convention, -y up and the
    # front towards -z: SuperSplat, splat-transform and gsplat viewers show it upright) or "z-up"
    # (the trainer's own frame, front +x: the files before this option); ism3d/frames.py
    frame: str = "y-down"
    # Pad gaussians.ply's f_rest with zero coefficients up to this SH degree (3 for viewers that
    # accept only degree-3 files; 0 = the scene's own degree)
    ply_sh_degree: int = 0
    # Write gaussians.spz (Niantic's SPZ: ~10x smaller than the PLY; ism3d/export/splats.py)
    spz: bool = True
    # Write viewer.html: one self-contained page that shows the splats offline with orbit controls
    viewer: bool = True
    # Bake a base-colour texture into mesh.glb (xatlas UV atlas, colour of the gaussian field at
    # each texel); false: vertex colours (ism3d/export/mesh_texture.py)
    mesh_texture: bool = True
    # Texture side in texels
    texture_size: int = 1024
    # Face budget of the textured mesh (the texture carries the colour detail; xatlas's unwrap
    # time grows faster than the faces: ~5 s at 20k faces, ~2 min at 100k on a 2-core CPU)
    texture_faces: int = 20_000


@dataclass
class Config:
    init: InitConfig = field(default_factory=InitConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---------------------------------------------------------------------------------------------
# Presets: name -> (one-line description, overrides applied on top of the defaults)
# ---------------------------------------------------------------------------------------------
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper": (
        "the LucidDreamer recipe: SD 2.1-base, 5000 iters, 4 views at 512x512, ISM (GPU)",
        {},
    ),
    "fast": (
        "paper with 1500 iters, 256x256 renders encoded at 256 (32x32 latents), one inversion "
        "call of stride 1000 (GPU)",
        {
            "train.iters": 1500,
            "render.width": 256,
            "render.height": 256,
            "prior.resolution": 256,
            "guidance.warmup_iters": 450,
            "guidance.delta_s": 1000,
            "guidance.xs_inv_steps": 1,
            "strategy.densify_until": 900,
            "strategy.reset_until": 900,
            "strategy.densify_from": 30,
            "strategy.densify_every": 30,
            "strategy.opacity_reset_every": 300,
            "strategy.prune_big_after": 90,
            "camera.decay_every": 150,
            "init.num_points": 20_000,
        },
    ),
    "toy": (
        "the shipped ToyWorld prior (32x32 pixels, offline; its words only), 135 iters of 8 views, "
        "one inversion call, no Perp-Neg: 2-3 min on a 2-core CPU",
        {
            "prior.name": "toy",
            "guidance.negative_prompt": "",
            "render.width": 32,
            "render.height": 32,
            # 8 views a step, one in each eighth of the azimuths, for half the steps: the same
            # renders and UNet rows as 4 views x 270 steps. Chairs IoU 0.52 -> 0.62 and no backrest
            # on the wrong side; 4 stratified views leave the chairs as they were, 16 views do worse;
            # the step-based schedules below (t warm-up, densification) are halved with the steps
            # (BENCHMARKS.md)
            "train.iters": 135,
            "train.batch": 8,
            "camera.azimuth_sampling": "stratified",
            "train.checkpoint_every": 50,
            "train.preview_every": 50,
            "init.num_points": 4000,
            # every learning rate 2x the reference's (colour: 8x at the start decaying to 2x), as
            # there are half the steps: IoU +0.016, PSNR +1.3 dB over 24 paired ToyWorld runs
            # against the same 135 x 8 recipe at the 4-view recipe's rates (BENCHMARKS.md)
            "optim.means_lr": (1.12e-3, 1.12e-5),
            "optim.colors_lr": (0.04, 0.006),
            "optim.opacities_lr": (0.1, 0.1),
            "optim.scales_lr": (0.01, 0.002),
            "optim.quats_lr": (0.002, 0.0004),
            "guidance.warmup_iters": 40,
            "guidance.delta_s": 1000,
            "guidance.xs_inv_steps": 1,
            # view prompts stay; Perp-Neg off: on ToyWorld it changes neither IoU, PSNR nor the
            # Janus rate (36 paired runs, BENCHMARKS.md) and it doubles the CFG call, which is
            # then half of a CPU step (4B rows instead of 2B)
            "guidance.perp_neg": False,
            # a run that ends turned (its front away from azimuth 0) is turned back by the
            # prior's view-conditioned loss: ISM from the true chair turned 180 degrees stays
            # turned (IoU 0.61), turned back 0.92; every preset run of 18 measured kept turn 0;
            # ~9 s on a 2-core CPU (BENCHMARKS.md, session 10)
            "output.orient": True,
            "strategy.densify_from": 25,
            "strategy.densify_until": 100,
            "strategy.densify_every": 25,
            "strategy.reset_until": 0,
            "strategy.prune_big_after": 25,
            "strategy.max_gaussians": 12000,
            # fixed framing, the eval ring's: the prior saw objects only at this distance and
            # field of view, so the distilled object's size is pinned (see toyworld/data.py)
            "camera.radius_range": (3.5, 3.5),
            "camera.radius_floor": (3.5, 3.5),
            "camera.fovy_range": (0.55, 0.55),
            "camera.fovy_floor": 0.55,
            # no look-at jitter: the prior is trained without it, so it pins where the object sits
            # to a fraction of a 32x32 pixel (with the reference's jitter of std 0.05 units, ~0.8
            # pixel, results drifted by up to 0.06 units; BENCHMARKS.md)
            "camera.jitter_center": 0.0,
            "camera.jitter_target": 0.0,
            "camera.jitter_up": 0.0,
            "output.video_size": 256,
            # a 128^3 grid is still 6x finer than a 32x32 training pixel (0.062 units at the
            # fixed framing); the mesh differs from the 256^3 one by ~0.012 units on average, and
            # takes ~1.5 s instead of 7-9 s on the 2-core CPU (BENCHMARKS.md)
            "output.mesh_resolution": 128,
        },
    ),
    "tiny": (
        "random-weight tiny pixel prior, 1k-3k gaussians, 32x32: for tests and smoke runs (CPU, seconds)",
        {
            "prior.name": "tiny",
            "train.iters": 30,
            "train.batch": 2,
            "train.checkpoint_every": 10,
            "train.preview_every": 10,
            "render.width": 32,
            "render.height": 32,
            "init.num_points": 1000,
            "strategy.max_gaussians": 3000,
            "guidance.warmup_iters": 10,
            "guidance.perp_neg": False,
            "strategy.densify_from": 5,
            "strategy.densify_until": 20,
            "strategy.densify_every": 5,
            "strategy.opacity_reset_every": 15,
            "strategy.reset_until": 20,
            "strategy.prune_big_after": 10,
            "camera.decay_every": 10,
            "output.video_frames": 60,
            "output.video_size": 64,
            "output.video_fps": 20,
            "output.mesh_resolution": 64,
            "output.mesh_faces": 5000,
        },
    ),
}
DEFAULT_PRESET = "toy"


# ---------------------------------------------------------------------------------------------
# Overrides, conversion and validation
# ---------------------------------------------------------------------------------------------
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (from YAML or a command-line string) to type `tp`, or raise ConfigError."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported union type")  # none used today
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list like a,b, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of `cfg` with `{"section.key": value}` applied (strings are parsed)."""
    cfg = dataclasses.replace(cfg, **{f.name: dataclasses.replace(getattr(cfg, f.name))
                                      for f in dataclasses.fields(cfg)})
    sections = _field_types(Config)
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(
                f"unknown config key {key!r}: keys look like section.name with section one of "
                f"{', '.join(sections)}"
            )
        section_name, name = parts
        section = getattr(cfg, section_name)
        types_ = _field_types(type(section))
        if name not in types_:
            raise ConfigError(
                f"unknown config key {key!r}: {section_name} has {', '.join(types_)}"
            )
        setattr(section, name, _coerce(key, value, types_[name]))
    return cfg


def parse_override_strings(items: list[str]) -> dict[str, str]:
    """`["a.b=1", "c.d=x=y"]` -> `{"a.b": "1", "c.d": "x=y"}`; a string without `=` is an error."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict (tuples as lists), ready for YAML/JSON."""
    def plain(v):
        return list(v) if isinstance(v, tuple) else v
    return {s.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s.name)).items()}
            for s in dataclasses.fields(cfg)}


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Inverse of `to_dict`, strict: unknown sections/keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError("a config file must hold a mapping of sections")
    flat = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        for k, v in values.items():
            flat[f"{section}.{k}"] = v
    return apply_overrides(base or Config(), flat)


def preset_config(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return apply_overrides(Config(), PRESETS[name][1])


def load_config_file(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return from_dict(data or {})


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate(cfg: Config, latent_prior: bool | None = None) -> None:
    """Reject impossible values with a message naming the key. `latent_prior` adds the /8 rule."""
    def need(ok: bool, key: str, why: str):
        if not ok:
            raise ConfigError(f"{key}: {why} (got {_get(cfg, key)!r})")

    t, g, r, c, s, i = cfg.train, cfg.guidance, cfg.render, cfg.camera, cfg.strategy, cfg.init
    need(t.iters >= 1, "train.iters", "must be at least 1")
    need(t.batch >= 1, "train.batch", "must be at least 1")
    need(t.seed >= 0, "train.seed", "must be >= 0")
    need(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device",
         "must be auto, cpu, cuda or cuda:N")
    for k in ("lambda_tv", "lambda_scale"):
        need(getattr(t, k) >= 0, f"train.{k}", "must be >= 0")
    for k in ("disparity_prob", "bg_aug_prob"):
        need(0 <= getattr(t, k) <= 1, f"train.{k}", "must be a probability in [0, 1]")
    need(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
    need(t.preview_every >= 0, "train.preview_every", "must be >= 0")
    need(t.max_bad_steps >= 1, "train.max_bad_steps", "must be at least 1")
    need(8 <= r.width <= 4096, "render.width", "must be between 8 and 4096")
    need(8 <= r.height <= 4096, "render.height", "must be between 8 and 4096")
    need(cfg.prior.resolution >= 0 and cfg.prior.resolution % 64 == 0, "prior.resolution",
         "must be 0 (the model's own) or a positive multiple of 64")
    if latent_prior:
        need(r.width % 8 == 0, "render.width", "must be a multiple of 8 for a latent prior")
        need(r.height % 8 == 0, "render.height", "must be a multiple of 8 for a latent prior")
    need(0 < r.near < r.far, "render.near", "must be > 0 and < render.far")
    need(r.eps2d >= 0, "render.eps2d", "must be >= 0")
    need(i.num_points >= (0 if i.kind == "file" else 1), "init.num_points", "must be positive")
    need(i.radius > 0, "init.radius", "must be > 0")
    need(0 < i.opacity < 1, "init.opacity", "must be in (0, 1)")
    need(0 <= i.sh_degree <= 3, "init.sh_degree", "must be 0..3")
    need(all(0 <= x <= 1 for x in i.color), "init.color", "components must be in [0, 1]")
    need(i.kind != "file" or bool(i.path), "init.path", "is required when init.kind=file")
    need(0 < c.polar_range[0] <= c.polar_range[1] < 180, "camera.polar_range", "must be 0 < lo <= hi < 180")
    need(c.azimuth_range[0] <= c.azimuth_range[1], "camera.azimuth_range", "must be lo <= hi")
    need(0 < c.radius_range[0] <= c.radius_range[1], "camera.radius_range", "must be 0 < lo <= hi")
    need(0 < c.fovy_range[0] <= c.fovy_range[1] < 3.1, "camera.fovy_range", "must be 0 < lo <= hi < pi")
    need(0 < c.radius_decay <= 1, "camera.radius_decay", "must be in (0, 1]")
    need(0 < c.fovy_decay <= 1, "camera.fovy_decay", "must be in (0, 1]")
    need(c.decay_every >= 1, "camera.decay_every", "must be at least 1")
    need(c.eval_radius > 0, "camera.eval_radius", "must be > 0")
    need(0 < c.eval_fovy < 3.1, "camera.eval_fovy", "must be in (0, pi)")
    need(g.scale >= 0, "guidance.scale", "must be >= 0")
    need(g.lambda_guidance > 0, "guidance.lambda_guidance", "must be > 0")
    need(g.warmup_iters >= 1, "guidance.warmup_iters", "must be at least 1")
    need(0 <= g.t_min < g.t_max_end <= g.t_max_start <= 1000, "guidance.t_min",
         "need 0 <= t_min < t_max_end <= t_max_start <= 1000")
    need(1 <= g.delta_t <= g.delta_t_start, "guidance.delta_t", "need 1 <= delta_t <= delta_t_start")
    need(g.delta_s >= 1, "guidance.delta_s", "must be at least 1")
    need(g.xs_inv_steps >= 1, "guidance.xs_inv_steps", "must be at least 1")
    need(0 <= g.t_first < g.t_min + 1, "guidance.t_first", "must be in [0, t_min]")
    need(g.offset_noise >= 0, "guidance.offset_noise", "must be >= 0")
    need(not g.perp_neg or g.view_prompts, "guidance.perp_neg", "needs guidance.view_prompts=true")
    need(s.densify_every >= 1, "strategy.densify_every", "must be at least 1")
    need(s.opacity_reset_every >= 1, "strategy.opacity_reset_every", "must be at least 1")
    need(s.reset_until >= 0, "strategy.reset_until", "must be >= 0 (0 = never reset)")
    need(s.grad_threshold > 0, "strategy.grad_threshold", "must be > 0")
    need(0 < s.reset_opacity < 1, "strategy.reset_opacity", "must be in (0, 1)")
    need(s.max_gaussians >= 0, "strategy.max_gaussians", "must be >= 0")
    o = cfg.optim
    for k in ("means_lr", "colors_lr", "opacities_lr", "scales_lr", "quats_lr"):
        need(all(v > 0 for v in getattr(o, k)), f"optim.{k}", "learning rates must be > 0")
    need(o.adam_eps > 0, "optim.adam_eps", "must be > 0")
    out = cfg.output
    need(out.video_frames >= 1, "output.video_frames", "must be at least 1")
    need(16 <= out.video_size <= 4096, "output.video_size", "must be between 16 and 4096")
    need(out.video_fps >= 1, "output.video_fps", "must be at least 1")
    need(16 <= out.mesh_resolution <= 1024, "output.mesh_resolution", "must be between 16 and 1024")
    need(out.mesh_faces >= 0, "output.mesh_faces", "must be >= 0 (0 = no decimation)")
    need(not out.orient or i.sh_degree == 0, "output.orient",
         "turns SH degree 0 scenes only: set init.sh_degree=0 or output.orient=false")
    need(0 <= out.orient_margin < 1, "output.orient_margin", "must be in [0, 1)")
    need(out.frame in ("y-down", "z-up"), "output.frame", "must be y-down or z-up")
    need(0 <= out.ply_sh_degree <= 3, "output.ply_sh_degree", "must be 0..3")
    need(16 <= out.texture_size <= 8192, "output.texture_size", "must be between 16 and 8192")
    need(out.texture_faces >= 0, "output.texture_faces", "must be >= 0 (0 = no decimation)")


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def describe_keys() -> str:
    """Every key with type, default and the comment above it, for `--help-config`."""
    import inspect
    lines = []
    for sec in dataclasses.fields(Config):
        cls = sec.default_factory  # type: ignore[misc]
        src = inspect.getsource(cls).splitlines()
        comments: dict[str, str] = {}
        pending: list[str] = []
        for line in src:
            s = line.strip()
            if s.startswith("#"):
                pending.append(s.lstrip("# "))
            elif ":" in s and not s.startswith(("class", "@", '"')):
                comments[s.split(":")[0]] = " ".join(pending)
                pending = []
        defaults = dataclasses.asdict(cls())
        lines.append(f"[{sec.name}]")
        for k, v in defaults.items():
            lines.append(f"  {sec.name}.{k} = {v!r}")
            if comments.get(k):
                lines.append(f"      {comments[k]}")
    return "\n".join(lines)
