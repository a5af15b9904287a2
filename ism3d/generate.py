"""`generate`: prompt -> run folder. The one function the CLI, the web app and the batch runner call.

A run folder holds:
    gaussians.ply      standard 3DGS layout (any 3DGS viewer opens it; upright: output.frame)
    gaussians.spz      the same gaussians as Niantic's SPZ (output.spz)
    viewer.html        a self-contained offline viewer of the splats (output.viewer)
    mesh.glb           textured triangle mesh (output.mesh, output.mesh_texture)
    turntable.mp4/.gif the fixed evaluation ring, `output.video_frames` frames
    views.png          8 ring views in a 4x2 grid
    config.yaml        the fully resolved config (`--config DIR/config.yaml` reproduces the run)
    summary.json       prompt, seed, timings, memory, counts, versions (see `summary()`)
    checkpoints/       last.pt (resumable) and prev.pt (the one before it)
    .ism3d.lock        while a run is alive: its lock (ism3d/runlock.py)
    previews/          training previews

Order of work: everything that can be checked cheaply (config values, prompt, prior name, device,
output folder) is checked by `prepare()` BEFORE any model is loaded; only then `run()` loads the
prior and trains. Every file is written to a temporary name and renamed, so a failed or cancelled
run never leaves a half-written output and never destroys one from an earlier run.

One process writes a run folder at a time: `prepare()` takes the folder's lock (an flock the
kernel drops when the process dies) and `run()` releases it when it returns or fails; a second
run asking for a locked folder gets one line naming the live process (RunError, exit 2).
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import time
import unicodedata
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import __version__
from . import config as C
from .atomic import ensure_writable_dir, remove_stale_temps, write_text_atomic
from .runlock import LOCK_FILE, RunBusy, RunLock, lock_run_dir
from .train import TrainResult, load_resume_checkpoint, resolve_device, train

MAX_PROMPT_CHARS = 1000
# Bounds on config numbers that config.validate leaves open (a typo such as train.iters=1e21
# must be one line, not a crash an hour later).
MAX_ITERS = 10_000_000
MAX_INT = 100_000_000
MAX_SEED = 2**32 - 1


class RunError(ValueError):
    """Bad input found before heavy work: the CLI prints it and exits 2."""


@dataclass
class Plan:
    """A checked request, ready to run."""
    prompt: str
    cfg: C.Config
    preset: str
    out_dir: Path
    resume: bool
    device: torch.device
    # the run folder's lock, held from prepare() until run() ends (None: released)
    lock: RunLock | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        """Release the run folder's lock (run() does; call it if run() will not be called)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def slugify(prompt: str, max_len: int = 60) -> str:
    """A safe folder name from a prompt: lowercase ascii words joined by '_', never empty or '..'."""
    s = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:max_len].strip("_")
    return s or "run"


def check_prompt_text(prompt) -> str:
    """The prompt, stripped; RunError if it is empty, too long or holds a control character
    (NUL, escape sequences, line breaks: they would reach logs, terminals and file names)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise RunError("the prompt is empty: give a text prompt, e.g. ism3d generate \"a red cube\"")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RunError(f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
    prompt = prompt.strip()
    bad = next((c for c in prompt if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise RunError(f"the prompt contains a control character (U+{ord(bad):04X}); use plain "
                       "text on one line")
    return prompt


def check_limits(cfg: C.Config) -> None:
    """ConfigError (one line naming the key) for a number no run can use: NaN or infinite
    floats, integers beyond MAX_INT (train.iters beyond MAX_ITERS, train.seed beyond MAX_SEED)."""
    for section, values in C.to_dict(cfg).items():
        for key, v in values.items():
            name = f"{section}.{key}"
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(x, bool):
                    continue
                if isinstance(x, float) and not math.isfinite(x):
                    raise C.ConfigError(f"{name}: must be a finite number (got {x!r})")
                cap = {"train.iters": MAX_ITERS, "train.seed": MAX_SEED}.get(name, MAX_INT)
                if isinstance(x, int) and abs(x) > cap:
                    raise C.ConfigError(f"{name}: must be at most {cap:,} (got {x:,})")


def check_prior_location(loc: str, folders: bool = True) -> None:
    """A local prior (resolve_prior's answer) that cannot be a model is one line now, not an
    error after the output folder is made: (`folders`) a folder with neither a pixel-prior
    config.json nor the parts of a Stable Diffusion folder; a .safetensors file whose header does
    not parse. Raises PriorError (the loader's own message for a folder)."""
    from .priors import PriorError
    from .priors.pixel import is_pixel_prior

    p = Path(loc)
    if loc == "tiny" or not p.exists() or is_pixel_prior(p):
        return
    if p.is_dir() and folders:
        from .priors.locate import missing_parts
        missing = missing_parts(p)
        if missing:
            raise PriorError(f"{p} is not a complete Stable Diffusion folder: missing "
                             f"{', '.join(missing)} (config or weights)")
    elif p.is_file() and p.suffix.lower() == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(p), framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PriorError(f"prior {p} is not a readable .safetensors file ({first})") from None


def check_init_file(init: C.InitConfig) -> None:
    """init.kind=file: read the file now (it is small next to a model) so that a missing,
    truncated, empty or non-finite one is one line before anything starts. Raises RunError."""
    from .ply import PlyError
    from .scene import SceneInitError, init_params

    try:
        params = init_params(init, torch.Generator().manual_seed(0))   # a throwaway generator
    except (SceneInitError, PlyError) as e:
        raise RunError(str(e).strip().splitlines()[0]) from None
    bad = [k for k, v in params.items() if not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"init.path {init.path}: the gaussians' {', '.join(bad)} hold NaN or "
                       "infinite values")


def prepare(prompt: str, *, cfg: C.Config, preset: str, out_dir: str | Path | None = None,
            out_root: str | Path = "outputs", resume: bool = False, force: bool = False) -> Plan:
    """Check everything that can be checked without loading a model. Raises ConfigError/RunError."""
    from .inits import check_init
    from .priors import resolve_prior
    from .priors.pixel import is_pixel_prior

    prompt = check_prompt_text(prompt)
    C.validate(cfg)
    check_limits(cfg)
    device = resolve_device(cfg.train.device)
    # PriorError (a ValueError) when missing: one clear line, in seconds, nothing loaded
    loc = resolve_prior(cfg.prior.name, offline=cfg.prior.offline)
    C.validate(cfg, latent_prior=not (loc == "tiny" or is_pixel_prior(loc)))
    check_prior_location(loc)
    # init.kind=shap-e/point-e: its model or package must be there unless resuming (exit 2)
    check_init(cfg.init, offline=cfg.prior.offline, need_model=not resume)
    if cfg.init.kind == "file" and not resume:
        check_init_file(cfg.init)

    out = Path(out_dir) if out_dir is not None else Path(out_root) / slugify(prompt)
    if out.exists() and not out.is_dir():
        raise RunError(f"output path {out} exists and is not a folder")
    # A live run in the folder? (its lock, taken now and held until run() ends)
    lock = _lock(out) if out.is_dir() else None
    try:
        resume = _check_folder(out, prompt, cfg, resume=resume, force=force)
        # Can we write there? Create it now (empty) and probe.
        try:
            ensure_writable_dir(out)
        except OSError as e:
            raise RunError(f"cannot write to output folder {out}: {e.strerror or e}") from None
        lock = lock or _lock(out)
        remove_stale_temps(out)             # what killed writers left (no live writer: locked)
    except BaseException:
        if lock is not None:
            lock.release()                  # (removes the lock file: the folder is as it was)
        raise
    return Plan(prompt=prompt, cfg=cfg, preset=preset, out_dir=out, resume=resume, device=device,
                lock=lock)


def _lock(out: Path) -> RunLock:
    try:
        return lock_run_dir(out)
    except RunBusy as e:
        raise RunError(str(e)) from None
    except OSError as e:
        raise RunError(f"cannot write to output folder {out}: {e.strerror or e}") from None


def _run_entries(out: Path) -> list[str]:
    """The names in `out` that belong to a run: not the lock, not killed writers' temporary
    files, not a write probe."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE
                  and not (p.name.startswith(".") and ".tmp" in p.name)
                  and not p.name.startswith(".write-test."))


def _check_folder(out: Path, prompt: str, cfg: C.Config, *, resume: bool, force: bool) -> bool:
    """Check that the run may go into `out` (the caller holds its lock if it exists). Returns
    whether to resume from a checkpoint: --resume on a folder whose run was stopped before its
    first checkpoint starts again from step 0 (with a warning). Raises RunError/CheckpointError."""
    if not resume:
        if _run_entries(out) and not force:
            raise RunError(f"output folder {out} already holds a run: use --resume to continue "
                           "it, --force to replace it, or --out to choose another folder")
        return False
    if not out.is_dir():
        raise RunError(f"--resume: there is no run in {out} (no such folder)")
    saved, note = load_resume_checkpoint(out)     # CheckpointError: one line, exit 2
    saved_cfg = C.from_dict(saved["config"]) if saved is not None else None
    if saved is None:
        # killed before its first checkpoint: only its config.yaml (and previews) may be there
        extra = [n for n in _run_entries(out) if n not in
                 ("config.yaml", "checkpoints", "previews", "init_points.ply")]
        if extra:
            raise RunError(f"--resume: no checkpoint in {out / 'checkpoints'} but the folder holds "
                           f"{extra[0]}: use --force to start the run again")
        if (out / "config.yaml").is_file():
            saved_cfg = C.load_config_file(out / "config.yaml")
    elif saved["prompt"] != prompt:
        raise RunError(f"--resume: {out} holds a run for {saved['prompt']!r}, not {prompt!r}")
    if saved_cfg is not None and C.to_dict(saved_cfg) != C.to_dict(cfg):
        diff = [f"{s}.{k}" for s, sec in C.to_dict(cfg).items() for k, v in sec.items()
                if C.to_dict(saved_cfg)[s][k] != v]
        raise RunError(f"--resume: the config differs from the saved run in {', '.join(diff)}; "
                       f"resume with --config {out / 'config.yaml'}")
    if saved is None:
        warnings.warn(f"--resume: {out} holds no checkpoint yet (the run was stopped before its "
                      "first one): starting it from step 0", stacklevel=2)
        return False
    if note:
        warnings.warn(note, stacklevel=2)
    return True





def run(plan: Plan, *, prior=None, progress: bool = True, callback=None) -> dict:
    """Load the prior (unless given), train, export everything. Returns the summary dict.
    Releases the run folder's lock (taken by prepare) when it returns or raises."""
    try:
        return _run(plan, prior=prior, progress=progress, callback=callback)
    finally:
        plan.release()


def _run(plan: Plan, *, prior, progress: bool, callback) -> dict:
    from .priors import load_prior

    cfg, out = plan.cfg, plan.out_dir
    t_start = time.perf_counter()
    if prior is None:
        prior = load_prior(cfg.prior, plan.device)
    prior.check_prompt(plan.prompt)
    w, h, size = cfg.render.width, cfg.render.height, prior.image_size
    if min(w, h) < size:
        warnings.warn(f"renders are {w}x{h} and the prior {prior.name} works at {size}x{size}: it sees "
                      f"them upsampled (softer targets; the fast preset's choice, as DreamGaussian's); "
                      f"render.width={size} render.height={size} renders at its size", stacklevel=2)
    write_text_atomic(out / "config.yaml", C.dump_yaml(cfg))
    result = train(cfg, plan.prompt, prior, out, resume=plan.resume, progress=progress,
                   callback=callback)
    finished = result.steps_done >= cfg.train.iters
    notes = {}
    if finished and cfg.output.orient:
        result, notes["orient"] = orient_result(result, cfg, plan.prompt, prior)
    if finished:
        notes.update(export_outputs(result, cfg, out, plan.device))
    summary = make_summary(plan, result, prior, time.perf_counter() - t_start, finished)
    summary.update(notes)
    write_text_atomic(out / "summary.json" if finished else out / "progress.json",
                      json.dumps(summary, indent=2) + "\n")
    return summary


def orient_result(result: TrainResult, cfg: C.Config, prompt: str, prior) -> tuple[TrainResult, dict]:
    """`output.orient`: turn the scene so that its front faces azimuth 0 (ism3d/orient.py)."""
    from .orient import choose_turn, turn_losses, turn_params
    from .scene import activate

    cam = cfg.camera
    losses = turn_losses(activate(result.params, result.sh_degree), prior, prompt,
                         radius=cam.eval_radius, fovy=cam.eval_fovy, polars=cam.eval_polars,
                         seed=cfg.train.seed)
    turn = choose_turn(losses, cfg.output.orient_margin)
    if turn:
        result = replace(result, params=turn_params(result.params, turn))
    return result, {"turn_degrees": turn, "losses": {str(k): round(v, 6) for k, v in losses.items()}}


def export_outputs(result: TrainResult, cfg: C.Config, out: Path, device: torch.device) -> dict:
    """Write gaussians.ply/.spz, viewer.html, views.png, turntable.mp4/.gif and mesh.glb. Returns
    notes for the summary (e.g. why no mesh could be made: an all-transparent result is not a
    failed run)."""
    from .cameras import eval_ring
    from .export.splat_outputs import write_splat_outputs
    from .export.video import render_ring_frames, views_grid, write_png, write_video
    from .ply import save_ply
    from .scene import activate

    o, cam = cfg.output, cfg.camera
    save_ply(out / "gaussians.ply", result.params, result.sh_degree, frame=o.frame,
             pad_degree=o.ply_sh_degree)
    write_splat_outputs(result.params, result.sh_degree, o, out)     # gaussians.spz, viewer.html
    g = activate(result.params, result.sh_degree)
    white = torch.ones(3, device=device)
    views = eval_ring(8, o.video_size, o.video_size, cam.eval_radius, cam.eval_fovy,
                      polar=cam.eval_polars[0]).to(device)
    write_png(views_grid(render_ring_frames(g, views, white), cols=4), out / "views.png")
    if o.video or o.gif:
        ring = eval_ring(o.video_frames, o.video_size, o.video_size, cam.eval_radius,
                         cam.eval_fovy, polar=cam.eval_polars[0]).to(device)
        frames = render_ring_frames(g, ring, white)
        if o.video:
            write_video(frames, out / "turntable.mp4", fps=o.video_fps)
        if o.gif:
            write_video(frames, out / "turntable.gif", fps=o.video_fps)
    if o.mesh:
        from .export.mesh import MeshError, export_mesh, face_budget
        try:
            export_mesh(g, out / "mesh.glb", resolution=o.mesh_resolution,
                        faces=face_budget(o), texture_size=o.texture_size if o.mesh_texture else 0,
                        texture_bake=o.texture_bake, device=device)
        except MeshError as e:
            return {"mesh_error": str(e)}
    return {}


def _versions() -> dict:
    import importlib.metadata as md
    v = {"ism3d": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("diffusers", "transformers", "gsplat"):
        try:
            v[name] = md.version(name)
        except md.PackageNotFoundError:
            v[name] = None
    return v


def make_summary(plan: Plan, result: TrainResult, prior, wall: float, finished: bool) -> dict:
    dev = plan.device
    device_desc = str(dev)
    if dev.type == "cuda":
        device_desc = f"{dev} ({torch.cuda.get_device_name(dev)})"
    else:
        device_desc = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    cfg = plan.cfg
    return {
        "status": "done" if finished else "stopped",
        "prompt": plan.prompt,
        "negative_prompt": cfg.guidance.negative_prompt,
        "seed": cfg.train.seed,
        "iterations": result.steps_done,
        "iterations_planned": cfg.train.iters,
        "guidance": cfg.guidance.method,
        "prior": cfg.prior.name,
        "prior_custom": getattr(prior, "custom", {}),  # textual inversion tokens, LoRAs, VAE, offload
        "preset": plan.preset,
        "device": device_desc,
        "wall_seconds": round(wall, 3),
        "train_seconds": round(result.wall_seconds, 3),
        "seconds_per_iter": round(result.seconds_per_iter, 5),
        "peak_memory_bytes": result.peak_memory_bytes,
        "num_gaussians": int(result.params["means"].shape[0]),
        "nonfinite_steps": result.nonfinite_steps,
        "versions": _versions(),
        "outputs": sorted(p.name for p in plan.out_dir.iterdir() if not p.name.startswith(".")),
    }
