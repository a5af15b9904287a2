"""How fast does each preset train on this machine, and where does a step's time go? Training
speed per preset: per-phase breakdown, ms/iteration, minutes per asset, peak memory,
side by side with a straightforward eager baseline of the same math (issue #11).

    python benchmarks/bench_speed.py [--presets paper,fast,toy] [--iters 40] [--warmup 8] [--model SD_FOLDER]
                                     [--rows optimized,nhwc,compiled,compiled_nhwc,baseline] [--json out.json]

Runs the real trainer (`ism3d.train.train`) with `ism3d.profiling` on: CUDA events around each
phase, no extra host syncs inside a step. Latent presets use random weights of the exact
SD-2.1-base architecture (built from configs, saved with save_pretrained and loaded through
`load_prior`, the path a hub id takes) unless --model names a folder; `toy` uses the shipped prior.

Rows:
  optimized  the defaults: denoiser replayed as CUDA graphs, all views in one render call, one
             host sync per step
  nhwc       optimized + `prior.channels_last` (UNet and VAE encoder channels-last, our fused
             GroupNorm + SiLU kernels)
  compiled   optimized + `prior.compile` (torch.compile of the denoiser inside its graphs and of
             the VAE encoder); its compilation time is reported as setup
  compiled_nhwc  compiled + `prior.channels_last`
  baseline   the same math done straightforwardly, as the reference does: eager denoiser calls,
             views rendered one by one (densification statistics of the last view, as the
             reference), diffusers' SDPA attention in the VAE encoder, eager everything

Minutes per asset: the timed steps come from the start of the schedule, where t (and so the
number of DDIM-inversion calls) is largest. The extrapolation replaces the timed steps' mean
inversion calls by the whole run's (`inversion_steps` for a t drawn per step from the real
schedule) at the measured cost per inversion call.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import ism3d.train as T  # noqa: E402
from ism3d import config as C  # noqa: E402
from ism3d import profiling  # noqa: E402
from ism3d.guidance.ism import inversion_steps  # noqa: E402
from ism3d.guidance.schedule import sample_t, warm  # noqa: E402
from ism3d.priors import load_prior  # noqa: E402
from ism3d.types import RenderOut  # noqa: E402

# row -> prior overrides
ROWS = {
    "optimized": {"prior.cuda_graphs": "true", "prior.compile": "false", "prior.channels_last": "false"},
    "nhwc": {"prior.cuda_graphs": "true", "prior.compile": "false", "prior.channels_last": "true"},
    "compiled": {"prior.cuda_graphs": "true", "prior.compile": "true", "prior.channels_last": "false"},
    "compiled_nhwc": {"prior.cuda_graphs": "true", "prior.compile": "true", "prior.channels_last": "true"},
    "baseline": {"prior.cuda_graphs": "false", "prior.compile": "false", "prior.channels_last": "false"},
}
PHASES = ["render_fwd", "encode_fwd", "inversion", "target", "cfg", "encode_bwd", "render_bwd",
          "host_sync", "optimizer", "densify"]


def render_views_one_by_one(render):
    """The reference's rendering: one rasterizer call per view; statistics of the last view."""
    def per_view(g, cams, bg, **kw):
        def view(i):                          # scale augmentation: view i's own scales [N, 3]
            return replace(g, scales=g.scales[i]) if g.scales.dim() == 3 else g
        outs = [render(view(i), cams[i:i + 1], bg[i:i + 1], **kw) for i in range(len(cams))]
        return RenderOut(rgb=torch.cat([o.rgb for o in outs]), alpha=torch.cat([o.alpha for o in outs]),
                         depth=torch.cat([o.depth for o in outs]), info=outs[-1].info)
    return per_view


def sdpa_attention(module: torch.nn.Module) -> None:
    """The reference's VAE encoder attention: diffusers' default SDPA processor (ours is matmuls)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0
    for m in module.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor2_0())


def expected_inversion_calls(gcfg: C.GuidanceConfig, iters: int, seed: int = 0) -> float:
    """Mean DDIM-inversion calls per step over a whole run (t drawn as the trainer draws it)."""
    gen = torch.Generator().manual_seed(seed)
    if gcfg.method != "ism":
        return 0.0
    n = 0
    for step in range(iters):
        _, s, _ = sample_t(warm(step, gcfg.warmup_iters), gcfg, gen)
        n += len(inversion_steps(s, gcfg))
    return n / iters


def run_one(cfg: C.Config, prior, device, warmup: int, iters: int, baseline: bool,
            asset_iters: int) -> dict:
    """Time `iters` steps after `warmup` of `cfg`'s run; extrapolate to `asset_iters` steps."""
    cfg = C.apply_overrides(cfg, {"train.iters": warmup + iters, "train.checkpoint_every": 0,
                                  "train.preview_every": 0, "train.device": str(device)})
    if baseline:
        cfg = replace(cfg, strategy=replace(cfg.strategy, stats_views="last"))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    steps: list[dict] = []
    last = [time.perf_counter()]

    def on_step(p: T.Progress) -> None:
        ph = profiling.collect()                          # syncs: the step's queued work is done
        now = time.perf_counter()
        steps.append({"wall": (now - last[0]) * 1e3, "inv": p.logs.get("inv_calls", 0.0),
                      "n": p.num_gaussians, **ph})
        last[0] = time.perf_counter()

    real_render = T.render
    profiling.enable(device)
    try:
        if baseline:
            T.render = render_views_one_by_one(real_render)
        t_train = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            prompt = "a red cube" if cfg.prior.name in ("toy", "tiny") else "a DSLR photo of a hamburger"
            T.train(cfg, prompt, prior, tmp, progress=False, callback=on_step)
        t_train = time.perf_counter() - t_train
    finally:
        T.render = real_render
        profiling.disable()
    timed = steps[warmup:]
    med = {k: statistics.median(s.get(k, 0.0) for s in timed) for k in ["wall", *PHASES]}
    mean_wall = statistics.fmean(s["wall"] for s in timed)
    inv_ms = sum(s.get("inversion", 0.0) for s in timed)
    inv_calls = sum(s["inv"] for s in timed)
    per_call = inv_ms / inv_calls if inv_calls else 0.0
    run_inv = expected_inversion_calls(cfg.guidance, asset_iters)
    per_asset_ms = (mean_wall + (run_inv - inv_calls / len(timed)) * per_call) * asset_iters
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"median_ms": med["wall"], "mean_ms": mean_wall, "phases_ms": {k: med[k] for k in PHASES},
            "inv_calls_timed": inv_calls / len(timed), "inv_calls_run": run_inv,
            "ms_per_inversion_call": per_call, "minutes_per_asset": per_asset_ms / 60e3,
            "peak_gib": peak, "gaussians": timed[-1]["n"],
            # time beyond the steady-state cost of all steps: graph capture, compilation, cuDNN
            "overhead_s": t_train - mean_wall / 1e3 * (warmup + len(timed))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="paper,fast,toy")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=40, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=8, help="untimed first steps (graph capture, cuDNN)")
    ap.add_argument("--model", default="", help="SD folder (default: random SD-2.1-base built here)")
    ap.add_argument("--tiny", action="store_true", help="tiny random SD instead (CPU smoke run)")
    ap.add_argument("--rows", default="optimized,nhwc,baseline",
                    help="comma list of: " + ", ".join(ROWS) + " (see above)")
    ap.add_argument("--overrides", default="", help="extra KEY=VALUE,KEY=VALUE for every row")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        ap.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    device = torch.device(args.device)
    extra = dict(kv.split("=", 1) for kv in args.overrides.split(",") if kv)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sd_path = args.model
        for preset in args.presets.split(","):
            cfg = C.preset_config(preset)
            if cfg.prior.name not in ("toy", "tiny") and not sd_path:
                from tiny_sd import make_sd21_random, make_tiny_sd
                sd_path = str(Path(tmp) / "sd")
                t0 = time.perf_counter()
                (make_tiny_sd if args.tiny else make_sd21_random)(sd_path)
                print(f"built + saved random SD in {time.perf_counter() - t0:.0f} s", flush=True)
            if cfg.prior.name not in ("toy", "tiny"):
                cfg = C.apply_overrides(cfg, {"prior.name": sd_path})
            cfg = C.apply_overrides(cfg, extra)
            for label in args.rows.split(","):
                base = label == "baseline"
                pcfg = C.apply_overrides(cfg, ROWS[label])
                t0 = time.perf_counter()
                prior = load_prior(pcfg.prior, device)
                if base and getattr(prior, "vae", None) is not None:
                    sdpa_attention(prior.vae.encoder)
                load_s = time.perf_counter() - t0
                r = run_one(pcfg, prior, device, args.warmup, args.iters, base, cfg.train.iters)
                r["setup_s"] = load_s + r["overhead_s"]     # load + capture/compile
                results[f"{preset}/{label}"] = r
                print(f"{preset:<6} {label:<9} median {r['median_ms']:7.1f} ms/it  "
                      f"{r['minutes_per_asset']:6.2f} min/asset  peak {r['peak_gib']:.2f} GiB  "
                      f"setup {r['setup_s']:.0f} s", flush=True)
                del prior

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{dev_name}, torch {torch.__version__}, median of {args.iters} steps after {args.warmup}")
    head = f"{'row':<18}{'ms/it':>8}{'min/asset':>10}{'peak GiB':>9}{'inv/it':>7}  " + " ".join(
        f"{p[:10]:>10}" for p in PHASES) + f"{'other':>8}"
    print(head)
    for name, r in results.items():
        other = r["median_ms"] - sum(r["phases_ms"].values())
        print(f"{name:<18}{r['median_ms']:>8.1f}{r['minutes_per_asset']:>10.2f}{r['peak_gib']:>9.2f}"
              f"{r['inv_calls_timed']:>7.2f}  " + " ".join(f"{r['phases_ms'][p]:>10.2f}" for p in PHASES)
              + f"{other:>8.1f}")
    for preset in args.presets.split(","):
        b = results.get(f"{preset}/baseline")
        for label in ROWS:
            a = results.get(f"{preset}/{label}")
            if a and b and a is not b:
                print(f"{preset} {label}: speed-up over the eager baseline {b['mean_ms'] / a['mean_ms']:.2f}x "
                      f"(mean ms/it)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev_name, "results": results}, indent=2))


if __name__ == "__main__":
    main()
