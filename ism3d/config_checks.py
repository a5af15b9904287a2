"""`validate(cfg)`: the impossible values of a `Config`, each refused with a `ConfigError` naming the
key, before any model is loaded (`config.validate` is this function)."""
from __future__ import annotations

from typing import Any

from .config import Config, ConfigError


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
    for k in ("disparity_prob", "bg_aug_prob", "flip_prob"):
        need(0 <= getattr(t, k) <= 1, f"train.{k}", "must be a probability in [0, 1]")
    need(0 <= t.scale_aug <= 10, "train.scale_aug", "must be in [0, 10]")
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
    need(c.azimuth_range_max[0] <= c.azimuth_range_max[1], "camera.azimuth_range_max", "must be lo <= hi")
    need(c.azimuth_widen >= 1, "camera.azimuth_widen", "must be >= 1")
    need(0 < c.angle_gamma <= 10, "camera.angle_gamma", "must be in (0, 10]")
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
    need(0 <= g.t_min <= g.t_max_end <= g.t_max_start <= 999, "guidance.t_min",
         "need 0 <= t_min <= t_max_end <= t_max_start <= 999 (inclusive timesteps)")
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
    need(out.texture_bake in ("auto", "render", "field"), "output.texture_bake",
         "must be auto, render or field")


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)
