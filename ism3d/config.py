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

from .presets import DEFAULT_PRESET, FAST, PAPER, PRESETS, REFERENCE_NEGATIVE  # noqa: F401 (re-exported)


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
    # Azimuth range in degrees at step 0; 0 = front (camera on +x), counter-clockwise seen from above
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    # Every `decay_every` iterations both azimuth bounds are multiplied by this (the reference's
    # phi_scale_up_factor, 1.5: its head configs start at +-80 degrees and widen to +-180)...
    azimuth_widen: float = 1.5
    # ...clamped to this range (the reference's max_phi_range); equal to azimuth_range: no widening
    azimuth_range_max: tuple[float, float] = (-180.0, 180.0)
    # Polar and azimuth are drawn as mid + half_width * sign * U^gamma: 1 = uniform in angle, > 1
    # concentrates the views towards the middle of each range (the reference's rand_cam_gamma)
    angle_gamma: float = 1.0
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
    # Iterations between two decays of radius and fovy (and widenings of the azimuth range); the
    # k-th takes effect at iteration k * decay_every, counted from 1 as the reference counts
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
    # Textual-inversion embeddings, each PATH or PATH:TOKEN (a .pt/.bin/.safetensors file in the
    # A1111 or diffusers layout, or a hub id); the token (the file's own if not given) then works in
    # the prompt, e.g. "a photo of <Taylor_Swift>". SDXL files hold clip_l and clip_g.
    textual_inversion: tuple[str, ...] = ()
    # LoRAs, each PATH_OR_HUB_ID or PATH_OR_HUB_ID:SCALE (scale 1 if not given; diffusers/peft or
    # kohya layout, UNet and text-encoder parts), fused into the weights once at load time
    lora: tuple[str, ...] = ()
    # Low-VRAM mode: none | model (text encoders wait on the CPU, the UNet leaves the GPU during
    # the VAE pass; the VAE encoder recomputes its activations in backward) | sequential (the same,
    # and the UNet streams to the GPU one block at a time: slowest, least memory). Not none turns
    # CUDA graphs and compile off.
    offload: Literal["none", "model", "sequential"] = "none"
    # Compute the UNet's attention in slices (less memory, somewhat slower)
    attention_slicing: bool = False
    # SD/SDXL: run the UNet and the VAE encoder on channels-last (NHWC) tensors, with ism3d's own
    # fused GroupNorm+SiLU Triton kernels on CUDA (cuDNN's NHWC convolutions are ~2x faster than
    # NCHW ones on an H100). Same values. Off until its GPU speed is measured (BENCHMARKS.md).
    channels_last: bool = False
    # A separate VAE folder or hub id replacing the model's own, e.g. the fp16-safe SDXL VAE
    # madebyollin/sdxl-vae-fp16-fix ("" = the model's own; SDXL's own runs in fp32 under fp16)
    vae: str = ""


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
    # Rounding of warm * (delta_t_start - delta_t): auto (the reference: ceil on its Perp-Neg
    # path, floor on its plain path) | ceil | floor
    delta_t_rounding: Literal["auto", "ceil", "floor"] = "auto"
    # t ~ UniformInt[t_min, t_max], both ends INCLUDED, with t_max annealing from t_max_start to
    # t_max_end (timestep units; the reference's index range [20, 500) is timesteps [21, 500])
    t_min: int = 21
    t_max_start: int = 980
    t_max_end: int = 500
    # DDIM inversion stride delta_s to reach x_s and the most inversion calls
    delta_s: int = 200
    xs_inv_steps: int = 5
    # First timestep of the inversion (the reference q_samples z0 to t=1 first); s never goes below
    t_first: int = 1
    # Skip the inversion call when s == t_first (x_s = x; identical to rounding)
    skip_identity_inversion: bool = True
    # mean over views (default) | sum over views (the reference)
    reduce: Literal["mean", "sum"] = "mean"
    # Offset-noise strength (reference 0.1; 0 disables)
    offset_noise: float = 0.1
    # SDS weighting w(t): gamma sqrt((1 - abar_t) / abar_t) (the reference's SDS path) |
    # dreamfusion (1 - abar_t) | constant (1)
    sds_weighting: Literal["gamma", "dreamfusion", "constant"] = "gamma"
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
    # Densify (clone/split) at iterations i (counted from 1, as the reference) with
    # densify_from < i < densify_until and i % densify_every == 0: 200, 300, ..., 2900 by default
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
    # At iterations after this one also prune big ones: world scale and (if > 0) screen radius in
    # pixels. The reference's 20 px screen test never fires (an INRIA 3DGS bug): paper sets 0
    prune_big_after: int = 300
    max_screen_radius: float = 20.0
    max_world_scale: float = 0.35
    # Reset all opacities at iterations i % opacity_reset_every == 0 with i < reset_until
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
    # Densify (and reset opacities) before the optimizer step, as the reference does: the replaced
    # parameters then skip that iteration's update; false: after it, as gsplat does
    densify_before_step: bool = False


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
    # Regulariser weights: loss = guidance + lambda_tv * (tv(rgb) + tv(disparity)) + lambda_scale *
    # mean(scales), tv(x) = 2 * per-pixel mean of squared neighbour differences (the reference's
    # balance). With guidance.reduce=mean the regularisers are divided by the views B as well, so
    # the ratios stay the reference's
    lambda_tv: float = 1.0
    lambda_scale: float = 1.0
    # Probability that the normalised disparity map replaces the RGB as the guided image
    disparity_prob: float = 0.2
    # The disparity map: reference (focal / (D + 10 (1 - alpha) + 1e-5), normalised by its min over
    # pixels with alpha >= 0.9 and its max, no gradient into depth through D) | foreground (1/depth
    # mapped to [0.1, 1] on the object, 0 off it: what the ToyWorld prior was trained on)
    disparity: Literal["reference", "foreground"] = "reference"
    # Probability of flipping a step's guided images horizontally (one coin for the batch; the
    # reference: 0.5)
    flip_prob: float = 0.0
    # Scale augmentation of training renders: scales * (1 + scale_aug * sqrt(0.2) / 4 * N(0, 1)),
    # clamped at 0, fresh per gaussian, axis and view; the scale regulariser sees the same noisy
    # scales; evaluation renders never (the reference: 1.0)
    scale_aug: float = 0.0
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
    # Face budget of the textured mesh, on top of mesh_faces (the texture carries the colour
    # detail; xatlas's unwrap time grows faster than the faces: ~1-5 s at 20k, ~2 min at 100k)
    texture_faces: int = 20_000
    # How the texture's colours are baked: "render" (the gaussians rendered from 48 views and
    # projected onto the surface: 2.5-2.9 dB closer to the gaussians' own renders, but 5-10 s of
    # rendering on a 2-core CPU for a toy scene, more with more gaussians), "field" (the gaussian field's colour at each texel: seconds), "auto"
    # (render on a GPU, field on the CPU)
    texture_bake: str = "auto"


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
    """A config file -> `Config`, read through safeyaml's limits (size, UTF-8, alias bombs)."""
    from .safeyaml import load_yaml
    return from_dict(load_yaml(path))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


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


# validate() lives in config_checks.py (it imports this module's classes, so it comes last)
from .config_checks import validate  # noqa: E402,F401
