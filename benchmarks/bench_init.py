"""What does a text-to-3D initialisation cost? init.kind=shap-e on the exact openai/shap-e
architecture with random weights: time and memory of each step of the text-to-3D
initialisation (speed and memory do not depend on weight values).

    python benchmarks/bench_init.py [--device cuda] [--runs 2] [--grid 128] [--steps 64]

The random pipeline (prior 24 x 1024, CLIP ViT-L/14 text encoder, STF renderer; tests/
tiny_shap_e.py `make_shap_e_random`) is saved with `save_pretrained` into a temp folder and loaded
back by `ism3d.inits.shap_e.load_pipeline`, the code a hub id takes. Its decoder is set to a known
slab (random projections decode to an empty or noise mesh), so the mesh has a realistic size.
Timed steps, each synchronised, the `init` preset values otherwise (guidance 15, 64 Heun steps,
100,000 gaussians = 5,000 points x 20 copies):

    load      the five components from disk to the device (fp16 on CUDA)
    sample    64 Heun steps of the prior with classifier-free guidance (batch 2)
    decode    the STF field on a grid^3 lattice, marching cubes, vertex colours
    points    mesh -> scene frame -> 5,000 points on the surface (CPU)
    gaussians 20 jittered copies each, k-nearest-neighbour scales (CPU, `make_params`)

Run 1 is cold (CUDA/cuBLAS initialisation included), later runs warm; the first run is what a
`generate` call pays once. Peak = torch.cuda.max_memory_allocated over the step (the pipeline's
weights included). `--tiny` runs the same steps on the tiny test pipeline (a CPU smoke run).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ism3d.config import InitConfig
from ism3d.inits import shap_e as SE
from ism3d.inits.cloud import cloud_to_params


def timed(fn, device: torch.device):
    """(result, seconds, peak GiB) of fn() with the device synchronised around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return out, dt, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--runs", type=int, default=2, help="sample+decode+points runs (1st cold)")
    ap.add_argument("--grid", type=int, default=128, help="marching-cubes grid (pipeline: 128)")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--guidance", type=float, default=15.0)
    ap.add_argument("--points", type=int, default=100_000, help="gaussians (init.num_points)")
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--model", default="", help="existing Shap-E folder (default: build random)")
    ap.add_argument("--tiny", action="store_true", help="tiny test pipeline (CPU smoke run)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = InitConfig(kind="shap-e", steps=args.steps, shap_e_guidance=args.guidance,
                     shap_e_grid=args.grid, num_points=args.points, copies=args.copies,
                     use_colors=True)

    from tiny_shap_e import make_shap_e_random, make_tiny_shap_e
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if not path:
            path = str(Path(tmp) / "shap_e")
            t0 = time.perf_counter()
            (make_tiny_shap_e if args.tiny else make_shap_e_random)(path)
            print(f"built + saved random model in {time.perf_counter() - t0:.1f} s", flush=True)
        pipe, t_load, m_load = timed(lambda: SE.load_pipeline(path, device), device)
        n_params = sum(p.numel() for m in (pipe.prior, pipe.text_encoder, pipe.shap_e_renderer)
                       for p in m.parameters())
        dtype = next(pipe.prior.parameters()).dtype
        print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
              f"{n_params / 1e6:.1f} M parameters in {dtype}, grid {args.grid}, {args.steps} steps, "
              f"guidance {args.guidance}", flush=True)
        rows = [("load", "-", t_load, m_load, "")]
        for run in range(args.runs):
            tag = "cold" if run == 0 else "warm"
            lat, t_s, m_s = timed(partial(SE.sample_latent, pipe, "a hamburger.", cfg, run), device)
            (v, f, c), t_d, m_d = timed(partial(SE.decode_mesh, pipe, lat, args.grid), device)
            cloud, t_p, _ = timed(partial(SE.mesh_to_cloud, v, f, c, cfg, run), device)
            params, t_g, _ = timed(partial(cloud_to_params, cloud, cfg,
                                           torch.Generator().manual_seed(run)), torch.device("cpu"))
            rows += [("sample", tag, t_s, m_s, f"latent {tuple(lat.shape)}"),
                     ("decode", tag, t_d, m_d, f"{len(v):,} verts, {len(f):,} faces"),
                     ("points", tag, t_p, float("nan"), f"{len(cloud.points):,} points"),
                     ("gaussians", tag, t_g, float("nan"), f"{params['means'].shape[0]:,} gaussians")]
            total = t_s + t_d + t_p + t_g
            rows.append(("total w/o load", tag, total, max(m_s, m_d), ""))
        print("\n| step | run | seconds | peak GiB | notes |\n|---|---|---|---|---|")
        for name, tag, sec, peak, note in rows:
            print(f"| {name} | {tag} | {sec:.2f} | {peak:.2f} | {note} |")


if __name__ == "__main__":
    main()
