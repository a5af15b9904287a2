"""The training loop: the only owner of the step counter, the optimizers, the RNG and the schedules.

One step (numbered as in the code):
    1. learning rates for this step (pure functions of step)
    2. sample B orbit cameras (the spec's distribution and progressive schedule)
    3. background per view: white, or (bg_aug_prob) a random colour or black, half each; the
       coins of the step: disparity as the guided image (disparity_prob), horizontal flip
       (flip_prob)
    4. render all B views in one call; with scale_aug, each view with its own noisy scales
    5. guided image: the RGB render, or the normalised disparity as 3 channels; flipped
       horizontally with the step's coin (the gradient flows back through the flip)
    6. loss = guidance loss + r * (lambda_tv * (tv(rgb) + tv(disparity)) + lambda_scale *
       mean(scales seen by the renders)), r = 1 / B when the guidance is a mean over views
       (guidance.reduce=mean), else 1: the reference's ratios either way (spec, "Loss balance")
    7. backward through the guided image and the renderer
    8. ONE host sync per step: every loss/gradient finite? (and the logged scalars, read at once)
    9. a non-finite step is skipped (never reaches the parameters) and counted; otherwise the
       optimizer step, then densification (clone/split/prune/reset) with the render's statistics
       (strategy.densify_before_step: densification first, as the reference)
   10. checkpoint (atomic) every `checkpoint_every` steps; preview grid every `preview_every` steps

Every random draw comes from ONE torch.Generator seeded with `train.seed` and saved in each checkpoint,
so a run killed at any step and resumed ends with the same gaussians as an uninterrupted run (bit-
identical on the CPU; tests/test_cli.py checks it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from . import config as C
from . import profiling
from .atomic import atomic_write
from .cameras import eval_ring, sample_orbit
from .guidance import make_guidance
from .guidance.schedule import warm as warm_of_step
from .inits import init_from_config
from .profiling import phase
from .render import render
from .scene import activate
from .schedules import lr_for_step, make_optimizers, set_lrs
from .strategy import DensifyStrategy

CHECKPOINT = "checkpoints/last.pt"


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the last good state was kept."""


@dataclass
class TrainResult:
    params: torch.nn.ParameterDict
    sh_degree: int
    steps_done: int
    nonfinite_steps: int
    wall_seconds: float
    seconds_per_iter: float
    peak_memory_bytes: int
    logs: dict = field(default_factory=dict)


@dataclass
class Progress:
    """What a progress callback sees after each step (the web app and batch runner use it)."""
    step: int
    total: int
    loss: float
    num_gaussians: int
    seconds_per_iter: float
    preview_path: str | None = None
    # the step's logged scalars (loss terms, t, s, eps_calls, ...), as floats
    logs: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available else cpu; a CUDA device that does not exist raises ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise C.ConfigError(f"train.device: {name!r} asked for, but no CUDA GPU is available "
                                "(use --device cpu or auto)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise C.ConfigError(f"train.device: {name!r} does not exist "
                                f"({torch.cuda.device_count()} GPU(s) visible)")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise C.ConfigError(f"train.device: unknown device {name!r} (auto, cpu, cuda, cuda:N)")


# --------------------------------------------------------------------------------------------
# Small pure pieces of the step
# --------------------------------------------------------------------------------------------
def sample_backgrounds(batch: int, prob: float, gen: torch.Generator) -> Tensor:
    """[B, 3]: white, or with probability `prob` a random colour (half) or black (half)."""
    u = torch.rand(batch, 2, generator=gen)            # [B, 2]
    colours = torch.rand(batch, 3, generator=gen)      # [B, 3]
    bg = torch.ones(batch, 3)
    replace = u[:, 0] < prob
    black = u[:, 1] < 0.5
    bg[replace & black] = 0.0
    bg[replace & ~black] = colours[replace & ~black]
    return bg


def reference_disparity(depth: Tensor, alpha: Tensor, Ks: Tensor) -> Tensor:
    """The reference's normalised disparity (spec "Disparity"), per view.

        1. D    = depth * alpha = sum_i w_i z_i          (render with depth_grad=False: no
                                                          gradient into z, only into the w_i)
        2. disp = focal / (D + 10 (1 - alpha) + 1e-5),   focal = fx / W = 1 / (2 tan(fovx / 2))
        3. lo   = min of disp over pixels with alpha >= 0.9 (transmittance <= 0.1; over all
                  pixels if there is none), hi = max over all pixels
        4. clamp((disp - lo) / (hi - lo), 0, 1)

    Args:
        depth: `[C, 1, H, W]` expected depth (sum w z / alpha, 0 where alpha ~ 0).
        alpha: `[C, 1, H, W]` accumulated opacity.
        Ks: `[C, 3, 3]` intrinsics (pixels).
    Returns:
        `[C, 1, H, W]` in [0, 1].
    """
    W = depth.shape[-1]
    focal = (Ks[:, 0, 0] / W).to(depth.dtype)[:, None, None, None]   # [C, 1, 1, 1]
    disp = focal / (depth * alpha + 10.0 * (1.0 - alpha) + 1e-5)       # [C, 1, H, W]
    solid = alpha >= 0.9
    big = torch.finfo(disp.dtype).max
    lo_solid = torch.where(solid, disp, big).amin(dim=(1, 2, 3), keepdim=True)
    lo = torch.where(solid.any(dim=(1, 2, 3), keepdim=True), lo_solid,
                     disp.amin(dim=(1, 2, 3), keepdim=True))
    hi = disp.amax(dim=(1, 2, 3), keepdim=True)
    return ((disp - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)


def normalised_disparity(depth: Tensor, alpha: Tensor) -> Tensor:
    """`train.disparity=foreground`: [C,1,H,W] expected depth and alpha -> [C,1,H,W] disparity in
    [0,1] per view, 0 off the object (what the ToyWorld prior's training data holds)."""
    fg = alpha > 1e-3
    disp = torch.where(fg, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    big = torch.finfo(depth.dtype).max
    lo = torch.where(fg, disp, torch.full_like(disp, big)).amin(dim=(1, 2, 3), keepdim=True)
    hi = disp.amax(dim=(1, 2, 3), keepdim=True)
    lo = torch.minimum(lo, hi)
    span = (hi - lo).clamp_min(1e-6)
    # Foreground mapped to [0.1, 1] so that the far side of the object stays distinct from the background.
    return torch.where(fg, 0.1 + 0.9 * (disp - lo) / span, torch.zeros_like(disp)) * alpha


def tv_loss(img: Tensor) -> Tensor:
    """The reference's total variation of `[B, C, H, W]` (spec "Loss balance"):

        tv = 2 * (sum(dy^2) / (C (H-1) W) + sum(dx^2) / (C H (W-1))) / B
    i.e. twice the per-pixel mean of the squared vertical plus horizontal differences.
    """
    dx = img[..., :, 1:] - img[..., :, :-1]
    dy = img[..., 1:, :] - img[..., :-1, :]
    return 2.0 * (dx.square().mean() + dy.square().mean())


def augment_scales(scales: Tensor, views: int, strength: float, gen: torch.Generator) -> Tensor:
    """Per-view noisy scales (the reference's scale augmentation, spec "Scale augmentation").

        scales_v = clamp(scales * (1 + strength * sqrt(0.2) / 4 * n_v), 0),  n_v ~ N(0, I)

    fresh per gaussian, axis and view. The noise is drawn on the scales' device from a seed
    drawn from the trainer's generator (one draw), so a run stays reproducible and resumable
    without moving B x N x 3 numbers from the CPU each step.

    Args:
        scales: `[N, 3]` activated scales (differentiable).
        views: B.
        strength: scale_aug (the reference's scale_aug_ratio, 1.0).
        gen: the trainer's CPU generator.
    Returns:
        `[B, N, 3]`.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    dev_gen = torch.Generator(device=scales.device).manual_seed(seed)
    n = torch.randn((views,) + tuple(scales.shape), generator=dev_gen, device=scales.device,
                    dtype=scales.dtype)                                    # [B, N, 3]
    return torch.clamp(scales[None] * (1.0 + strength * (0.2 ** 0.5) / 4.0 * n), min=0.0)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:  # noqa: BLE001 (not on every platform)
        return 0


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, *, cfg: C.Config, prompt: str, step: int, params, optimizers,
                    strategy_state: dict, gen: torch.Generator, nonfinite: int,
                    elapsed: float) -> None:
    atomic_write(path, lambda tmp: torch.save({
        "format": "ism3d-checkpoint-1",
        "config": C.to_dict(cfg),
        "prompt": prompt,
        "step": step,                                   # steps completed
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "strategy_state": {k: (v.cpu() if torch.is_tensor(v) else v)
                           for k, v in strategy_state.items()},
        "rng": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "nonfinite_steps": nonfinite,
        "elapsed_seconds": elapsed,
    }, tmp))


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise C.ConfigError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "ism3d-checkpoint-1":
        raise C.ConfigError(f"{path} is not an ism3d checkpoint")
    return ckpt


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train(cfg: C.Config, prompt: str, prior, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True, callback: Callable[[Progress], bool | None] | None = None
          ) -> TrainResult:
    """Optimise gaussians for `prompt` under `prior`; write checkpoints and previews to `out_dir`.

    Args:
        cfg: a validated `Config`.
        prompt: the text prompt (already checked by `prior.check_prompt`).
        prior: a loaded `DiffusionPrior` (ism3d.priors), on the training device.
        out_dir: the run folder; `checkpoints/last.pt` and `previews/` are written here.
        resume: continue from `out_dir/checkpoints/last.pt`.
        progress: show a tqdm bar.
        callback: called with a `Progress` after every step; returning True stops the run early
            (a checkpoint is written first, so it can be resumed). The CLI's Ctrl-C handler and the
            web app's Cancel use this, so a stop always lands between two complete steps.
    Returns:
        TrainResult with the final parameters and run statistics.
    """
    out_dir = Path(out_dir)
    t_cfg = cfg.train
    device = resolve_device(t_cfg.device)
    total = t_cfg.iters
    gen = torch.Generator().manual_seed(t_cfg.seed)
    torch.manual_seed(t_cfg.seed)

    # 0. state: parameters, optimizers, densification state; or all of it from the checkpoint
    start, nonfinite, elapsed_before = 0, 0, 0.0
    sh_degree = cfg.init.sh_degree
    # Screen-space gradients are scaled by B to undo a mean over views; not when the loss sums.
    strategy = DensifyStrategy(
        replace(cfg.strategy, grad_scale_views=cfg.strategy.grad_scale_views
                and cfg.guidance.reduce == "mean"), seed=t_cfg.seed)
    ckpt_path = out_dir / CHECKPOINT
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.to(device)) for k, v in ckpt["params"].items()})
        optimizers = make_optimizers(params, cfg.optim)
        for k, o in optimizers.items():
            o.load_state_dict(ckpt["optimizers"][k])
        state = {k: (v.to(device) if torch.is_tensor(v) else v)
                 for k, v in ckpt["strategy_state"].items()}
        gen.set_state(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        start, nonfinite = ckpt["step"], ckpt["nonfinite_steps"]
        elapsed_before = ckpt.get("elapsed_seconds", 0.0)
    else:
        # scene.py's kinds, or a cloud generated from text (ism3d/inits: out_dir/init_points.ply)
        params = init_from_config(cfg, prompt, out_dir, device, gen).to(device)
        optimizers = make_optimizers(params, cfg.optim)
        state = strategy.init_state(params["means"].shape[0], device)

    guidance = make_guidance(prior, cfg.guidance, prompt)
    W, H, B = cfg.render.width, cfg.render.height, t_cfg.batch
    reference_disp = t_cfg.disparity == "reference"
    # the regularisers follow the guidance's reduction over views, so the ratios stay the reference's
    reg_weight = 1.0 / B if cfg.guidance.reduce == "mean" else 1.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def checkpoint(step_done: int, elapsed: float) -> None:
        save_checkpoint(ckpt_path, cfg=cfg, prompt=prompt, step=step_done, params=params,
                        optimizers=optimizers, strategy_state=state, gen=gen,
                        nonfinite=nonfinite, elapsed=elapsed)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start, desc="ism3d", unit="it", dynamic_ncols=True)

    t0 = time.perf_counter()
    consecutive_bad = 0
    last_logs: dict = {}
    step = start
    try:
        for step in range(start, total):
            # 1. learning rates
            set_lrs(optimizers, lr_for_step(cfg.optim, step, total))
            # 2. cameras   3. backgrounds
            cams = sample_orbit(cfg.camera, step, B, W, H, gen).to(device)
            bg = sample_backgrounds(B, t_cfg.bg_aug_prob, gen).to(device)
            use_disparity = bool(torch.rand((), generator=gen) < t_cfg.disparity_prob)
            flip = bool(torch.rand((), generator=gen) < t_cfg.flip_prob)
            # 4. render (scale augmentation: every view its own noisy scales)
            gauss = activate(params, sh_degree)
            if t_cfg.scale_aug > 0:
                gauss = replace(gauss, scales=augment_scales(gauss.scales, B, t_cfg.scale_aug, gen))
            with phase("render_fwd"):
                out = render(gauss, cams, bg, backend=cfg.render.backend, near=cfg.render.near,
                             far=cfg.render.far, eps2d=cfg.render.eps2d,
                             depth_grad=not reference_disp)
            strategy.pre_backward(out.info)
            # 5. guided image, flipped with the step's coin
            disp = (reference_disparity(out.depth, out.alpha, cams.Ks) if reference_disp
                    else normalised_disparity(out.depth, out.alpha))     # [B,1,H,W]
            images = disp.expand(-1, 3, -1, -1) if use_disparity else out.rgb
            if flip:
                images = torch.flip(images, dims=(-1,))
            # 6. losses, at the reference's ratios
            g_out = guidance(images, cams.azimuth, warm_of_step(step, cfg.guidance.warmup_iters), gen)
            losses = {
                "guidance": g_out.loss,
                "tv": tv_loss(out.rgb) + tv_loss(disp),
                "scale": gauss.scales.mean(),
            }
            loss = losses["guidance"] + reg_weight * (t_cfg.lambda_tv * losses["tv"]
                                                      + t_cfg.lambda_scale * losses["scale"])
            for o in optimizers.values():
                o.zero_grad(set_to_none=True)
            # 7. backward (a non-finite loss only makes non-finite gradients, caught below)
            profiling.mark("bwd_start")
            if profiling.enabled():
                images.register_hook(lambda g: profiling.mark("bwd_images"))
            loss.backward()
            profiling.mark("bwd_end")
            profiling.span("encode_bwd", "bwd_start", "bwd_images")
            profiling.span("render_bwd", "bwd_images", "bwd_end")
            # 8. the step's one host sync: is everything finite? (+ the logged scalars)
            with phase("host_sync"):
                grads = [p.grad for p in params.values() if p.grad is not None]
                finite = torch.stack([torch.isfinite(loss)] + [torch.isfinite(g).all() for g in grads])
                scalars = {"loss": loss, **{f"loss_{k}": v for k, v in losses.items()},
                           **{k: v for k, v in g_out.logs.items() if torch.is_tensor(v)}}
                read = torch.stack([finite.all().float()] + [v.detach().float().reshape(())
                                                             for v in scalars.values()]).tolist()
            ok = read[0] == 1.0
            if not ok:
                # 9a. nothing non-finite reaches the parameters
                nonfinite += 1
                consecutive_bad += 1
                for o in optimizers.values():
                    o.zero_grad(set_to_none=True)
                if consecutive_bad >= t_cfg.max_bad_steps:
                    # params/optimizers were untouched by the bad steps: this is the last good state
                    checkpoint(step + 1, elapsed_before + time.perf_counter() - t0)
                    raise TrainingDiverged(
                        f"{consecutive_bad} consecutive steps with a non-finite loss or gradient "
                        f"(last at step {step + 1}); the last good state is kept in {ckpt_path}")
            else:
                consecutive_bad = 0
                # 9b. optimizer step, then densification (gsplat's order); or densification
                #     first (the reference's): the Parameters it replaces have no gradient, so
                #     they skip this step's update, as in the reference
                if cfg.strategy.densify_before_step:
                    with phase("densify"):
                        strategy.post_backward(params, optimizers, state, step, out.info)
                with phase("optimizer"):
                    for o in optimizers.values():
                        o.step()
                if not cfg.strategy.densify_before_step:
                    with phase("densify"):
                        strategy.post_backward(params, optimizers, state, step, out.info)

            done = step + 1
            elapsed = elapsed_before + time.perf_counter() - t0
            last_logs = {**g_out.logs, **dict(zip(scalars, read[1:]))}
            if not ok:
                last_logs["loss"] = float("nan")
            # 10. checkpoint and preview
            if t_cfg.checkpoint_every and done % t_cfg.checkpoint_every == 0 and done < total:
                checkpoint(done, elapsed)
            preview = None
            if t_cfg.preview_every and (done % t_cfg.preview_every == 0 or done == total):
                preview = str(write_preview(params, sh_degree, cfg, out_dir / "previews", done,
                                            device))
            n = params["means"].shape[0]
            sec_per_it = (time.perf_counter() - t0) / max(done - start, 1)
            if bar is not None:
                bar.set_postfix(loss=f"{last_logs['loss']:.4g}", n=n, t=last_logs.get("t", 0),
                                refresh=False)
                bar.update(1)
            if callback is not None and callback(Progress(done, total, last_logs["loss"], n,
                                                          sec_per_it, preview, last_logs)):
                checkpoint(done, elapsed)
                break
    finally:
        if bar is not None:
            bar.close()

    steps_done = max(step + 1, start) if total > start else start
    wall = elapsed_before + time.perf_counter() - t0
    checkpoint(steps_done, wall)
    return TrainResult(params=params, sh_degree=sh_degree, steps_done=steps_done,
                       nonfinite_steps=nonfinite, wall_seconds=wall,
                       seconds_per_iter=(time.perf_counter() - t0) / max(steps_done - start, 1),
                       peak_memory_bytes=_peak_memory(device), logs=last_logs)


@torch.no_grad()
def write_preview(params, sh_degree: int, cfg: C.Config, folder: Path, step: int,
                  device: torch.device) -> Path:
    """A 4x2 grid of the evaluation ring at the training resolution -> folder/step_000100.png (6-digit step)."""
    from .export.video import views_grid, write_png
    cams = eval_ring(8, cfg.render.width, cfg.render.height, cfg.camera.eval_radius,
                     cfg.camera.eval_fovy, polar=cfg.camera.eval_polars[0]).to(device)
    out = render(activate(params, sh_degree), cams, torch.ones(3, device=device),
                 backend=cfg.render.backend, near=cfg.render.near, far=cfg.render.far,
                 eps2d=cfg.render.eps2d)
    frames = (out.rgb.clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    path = folder / f"step_{step:06d}.png"
    folder.mkdir(parents=True, exist_ok=True)
    write_png(views_grid(frames, cols=4), path)
    return path
