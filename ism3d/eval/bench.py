"""`ism3d eval`: the ToyWorld 3D-quality benchmark (ISM vs SDS against known ground truth).

ToyWorld objects (ism3d/toyworld/world.py) have an exact 3D ground truth, so a text-to-3D run for
"a blue mug" can be scored by rendering the result and the true mug from the same cameras.

The benchmark, numbered as in `run_bench`:
    1. runs: every prompt x method (ism, sds) x seed, at EQUAL iterations and otherwise the same
       config; with `ablation`, ISM on the asymmetric prompts also with view prompts + Perp-Neg
       ("ism-vp") and without ("ism-novp", which also leaves `output.orient` off: turning the
       result by the prior's view prompts is view information too). Runs whose resolved config
       is identical are trained once (e.g. "ism" and "ism-vp" when the preset already uses view
       prompts and Perp-Neg);
    2. each run is trained in-process with ONE loaded prior (`generate.run(plan, prior=...)`),
       into DIR/runs/<prompt>_<method>_s<seed>/ without turntables or meshes; a folder whose
       summary.json says done and whose config.yaml equals the run's config is reused, an
       interrupted one is resumed from its checkpoint;
    3. metrics on the fixed eval ring(s) (`views` views per polar angle of camera.eval_polars,
       `size` pixels, camera.eval_radius / eval_fovy), the ground truth rendered with the same
       cameras (ism3d/eval/metrics.py): mean per-view silhouette IoU (alpha > 0.5) and PSNR inside
       the union of the silhouettes (both on white, pooled over the views); for the asymmetric
       families the Janus test (ism3d/eval/janus.py). Cached per run in eval.json, with a GT-vs-
       result picture eval_views.png;
    4. summary: means per method, Janus rates, ISM >= SDS per prompt, the targets (ISM mean IoU
       >= 0.9 and PSNR >= 25 dB), the ablation; DIR/report.json (every number) and DIR/report.md,
       both written atomically.

Where each step lives: 1 in `ism3d.eval.spec` (input, `make_spec`, `build_runs`), 2 here
(`train_run`, and `run_bench`, which drives all four), 3 in `ism3d.eval.scoring`, 4 in
`ism3d.eval.report`. Their public names are re-exported here (`from ism3d.eval import bench`).
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Callable

from .. import config as C
from ..batch.job import finished_summary as finished_run
from ..generate import RunError
from .report import (IOU_TARGET, PSNR_TARGET, REPORT_SCHEMA, machine, render_markdown, summarise,
                     write_report)
from .scoring import (METRICS_VERSION, Reference, Rings, evaluate_gaussians, evaluate_run,
                      make_reference)
from .spec import (ABLATION, DEFAULT_PROMPTS, EVAL_OVERRIDES, METHODS, QUICK_ITERS, QUICK_PROMPTS,
                   RESERVED_KEYS, BenchSpec, EvalError, RunSpec, build_runs, canonical_command,
                   check_prompt, load_prompts, make_spec, parse_methods, parse_seeds, parse_shard)

__all__ = [
    # ism3d.eval.spec (step 1)
    "DEFAULT_PROMPTS", "QUICK_PROMPTS", "QUICK_ITERS", "METHODS", "ABLATION", "EVAL_OVERRIDES",
    "RESERVED_KEYS", "EvalError", "BenchSpec", "RunSpec", "parse_seeds", "parse_methods",
    "parse_shard", "load_prompts", "check_prompt", "build_runs", "make_spec", "canonical_command",
    # here (step 2 and the driver)
    "finished_summary", "train_run", "run_bench",
    # ism3d.eval.scoring (step 3)
    "METRICS_VERSION", "Rings", "Reference", "make_reference", "evaluate_gaussians",
    "evaluate_run",
    # ism3d.eval.report (step 4)
    "IOU_TARGET", "PSNR_TARGET", "REPORT_SCHEMA", "summarise", "machine", "render_markdown",
    "write_report",
]


# ---------------------------------------------------------------------------------------------
# Training (step 2)
# ---------------------------------------------------------------------------------------------
def finished_summary(folder: Path, run: RunSpec) -> dict | None:
    """The summary of a finished run with this exact prompt and config in `folder` that left its
    gaussians.ply, or None (the same test as `ism3d batch`, plus the PLY the metrics read)."""
    summary = finished_run(folder, run.prompt, run.cfg)
    return summary if summary is not None and (folder / "gaussians.ply").is_file() else None


def train_run(run: RunSpec, folder: Path, prior, preset: str,
              callback: Callable | None = None) -> tuple[dict, bool]:
    """Train `run` into `folder`, or reuse a finished run there. Returns (summary, reused)."""
    from ..generate import prepare
    from ..generate import run as generate_run
    from ..train import CHECKPOINT

    summary = finished_summary(folder, run)
    if summary is not None:
        return summary, True
    # Stale results of another config must never pass for this run's, even if it is interrupted.
    for name in ("summary.json", "gaussians.ply", "eval.json", "eval_views.png"):
        (folder / name).unlink(missing_ok=True)
    plan = None
    if (folder / CHECKPOINT).is_file():
        try:
            plan = prepare(run.prompt, cfg=run.cfg, preset=preset, out_dir=folder, resume=True)
        except RunError:  # another config or prompt: start over
            plan = None
    if plan is None:
        plan = prepare(run.prompt, cfg=run.cfg, preset=preset, out_dir=folder, force=True)
    return generate_run(plan, prior=prior, progress=False, callback=callback), False


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
def run_bench(spec: BenchSpec, *, progress: bool = True,
              should_stop: Callable[[], bool] = lambda: False,
              log: Callable[[str], None] = print) -> dict:
    """Steps 1-4 of the module docstring. Returns the report dict (also written to spec.out).

    A stop request (`should_stop()` True, e.g. after Ctrl-C) ends the current run between two
    steps (it stays resumable) and writes a partial report with status "interrupted".

    Raises:
        EvalError, ConfigError, PriorError, PromptError: bad input, before any training.
    """
    from ..guidance.prompts import VIEW_SUFFIXES
    from ..priors import load_prior, resolve_prior
    from ..priors.pixel import is_pixel_prior
    from ..train import TrainingDiverged, resolve_device

    t0 = time.perf_counter()
    # 1. runs, every config checked before anything heavy
    runs = build_runs(spec)
    if spec.shard is not None:
        k, n = spec.shard
        runs = runs[k::n]
    cfg0 = spec.base_cfg
    loc = resolve_prior(cfg0.prior.name, offline=cfg0.prior.offline)
    for r in runs:
        C.validate(r.cfg, latent_prior=not (loc == "tiny" or is_pixel_prior(loc)))
    device = resolve_device(cfg0.train.device)
    prior = load_prior(cfg0.prior, device)
    for r in runs:  # every text a run will embed: the prompt (with view suffixes), the negative
        gd = r.cfg.guidance
        texts = [r.prompt + sfx for sfx in VIEW_SUFFIXES] if gd.view_prompts else [r.prompt]
        for text in texts + ([gd.negative_prompt] if gd.negative_prompt else []):
            prior.check_prompt(text)
    rings = Rings.from_config(cfg0, spec.views, spec.size, device)
    settings = {
        "preset": spec.preset, "prior": cfg0.prior.name, "iters": cfg0.train.iters,
        "seeds": spec.seeds, "methods": spec.methods, "ablation": spec.ablation,
        "prompts": spec.prompts, "views": spec.views, "size": spec.size,
        "polars": list(rings.polars), "radius": cfg0.camera.eval_radius,
        "fovy": cfg0.camera.eval_fovy, "device": str(device),
        "config": C.to_dict(cfg0),
    }
    refs: dict[str, Reference] = {}
    rows: list[dict] = []
    status = "done"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(runs), desc="eval", unit="run", dynamic_ncols=True)

    def report(status: str) -> dict:
        rep = {"schema": REPORT_SCHEMA, "status": status, "command": spec.command,
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "wall_seconds": round(time.perf_counter() - t0, 1),
               "settings": settings, "runs": rows,
               "summary": summarise(rows, spec.methods, spec.ablation)}
        if spec.shard is None:
            write_report(rep, spec.out)
        return rep

    try:
        for run in runs:
            folder = spec.out / "runs" / run.name
            if bar is not None:
                bar.set_postfix_str(run.name)

            def cb(p, _name=run.name):
                if bar is not None and (p.step % 10 == 0 or p.step == p.total):
                    bar.set_postfix_str(f"{_name} {p.step}/{p.total}")
                return should_stop()

            row = {"name": run.name, "prompt": run.prompt, "family": run.family,
                   "colour": run.colour, "labels": run.labels, "method": run.method,
                   "seed": run.seed, "folder": f"runs/{run.name}", "iters": run.cfg.train.iters}
            t_run = time.perf_counter()
            try:
                summary, reused = train_run(run, folder, prior, spec.preset, cb)
            except TrainingDiverged as e:
                rows.append({**row, "status": "failed", "error": str(e), "reused": False,
                             "iou": None, "psnr": None, "janus": None})
                log(f"ism3d eval: {run.name} failed: {e}")
                if bar is not None:
                    bar.update(1)
                continue
            if summary["status"] != "done":
                status = "interrupted"
                break
            def reference(_run=run) -> Reference:  # ground truth renders, once per prompt
                if _run.prompt not in refs:
                    refs[_run.prompt] = make_reference(_run.colour, _run.family, rings)
                return refs[_run.prompt]

            metrics, cached = evaluate_run(folder, reference, rings, spec)
            rows.append({**row, "status": "done", "reused": reused, "metrics_cached": cached,
                         "seconds": round(time.perf_counter() - t_run, 2),
                         "train_seconds": summary.get("train_seconds"),
                         "seconds_per_iter": summary.get("seconds_per_iter"),
                         "num_gaussians": summary.get("num_gaussians"),
                         "iou": metrics["iou"], "psnr": metrics["psnr"],
                         "janus": metrics["janus"], "per_polar": metrics["per_polar"],
                         "iou_per_view": metrics["iou_per_view"],
                         "psnr_per_view": metrics["psnr_per_view"]})
            if bar is not None:
                bar.update(1)
            report("running")  # so a long benchmark can be read (and survives a crash) midway
            if should_stop():
                status = "interrupted"
                break
    finally:
        if bar is not None:
            bar.close()
    return report(status)

