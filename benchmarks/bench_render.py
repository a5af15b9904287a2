"""How fast is the renderer, per backend and scene size? Forward and forward+backward ms of
`ism3d.render.render`, 4 views per call.

    python benchmarks/bench_render.py --device cpu      # torch backend: 5k gaussians at 64x64, ...
    python benchmarks/bench_render.py --device cuda     # both backends, up to 100k at 512x512

Scenes are built here (no other ism3d module but the renderer): N points uniform in a ball of
radius 0.5, isotropic scales = mean distance to the 3 nearest neighbours, random rotations,
opacity U(0.1, 0.9), random degree-0 colours; C cameras on a ring at distance 3.5, fovy 0.55,
looking at the origin. Backward is of sum(rgb * v) + mean(depth) w.r.t. all gaussian parameters.
Prints the median and the best of --repeats runs after --warmup runs (the best is the figure to
quote on a shared CPU, where other processes inflate the median).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from ism3d.render import render
from ism3d.types import CameraBatch, Gaussians


def knn_mean_dist(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean distance of each point [n, 3] to its k nearest neighbours (scipy if present)."""
    try:
        from scipy.spatial import cKDTree
        dist, _ = cKDTree(x.numpy()).query(x.numpy(), k=k + 1)
        return torch.from_numpy(dist[:, 1:].mean(1))
    except ImportError:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        xd = x.to(dev, torch.float32)
        out = [torch.cdist(xd[i:i + 4096], xd).topk(k + 1, largest=False).values[:, 1:].mean(1)
               for i in range(0, len(x), 4096)]
        return torch.cat(out).double().cpu()


def make_ball(n: int, device, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    means = 0.5 * d * torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    scales = knn_mean_dist(means).clamp_min(1e-4)[:, None].expand(n, 3)
    G = Gaussians(means, torch.randn(n, 4, generator=g, dtype=torch.float64), scales.contiguous(),
                  0.1 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64),
                  torch.randn(n, 1, 3, generator=g, dtype=torch.float64), 0)
    return Gaussians(*(getattr(G, k).float().to(device).requires_grad_(True)
                       for k in ("means", "quats", "scales", "opacities", "sh")), 0)


def make_ring(views: int, size: int, device, radius: float = 3.5, fovy: float = 0.55) -> CameraBatch:
    f = 0.5 * size / math.tan(0.5 * fovy)
    vms = []
    for i in range(views):
        az, el = 2 * math.pi * i / views + 0.3, 0.25 * (-1) ** i
        eye = torch.tensor([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)],
                           dtype=torch.float64) * radius
        fwd = -eye / eye.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        right = right / right.norm()
        down = torch.linalg.cross(fwd, right)
        V = torch.eye(4, dtype=torch.float64)
        V[:3, :3] = torch.stack([right, down, fwd])
        V[:3, 3] = -V[:3, :3] @ eye
        vms.append(V)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    z = torch.zeros(views)
    return CameraBatch(torch.stack(vms).float(), K.expand(views, 3, 3).float().contiguous(), size, size,
                       z, z, torch.full((views,), radius)).to(device)


def time_ms(fn, repeats: int, warmup: int, device) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def bench(backend: str, n: int, size: int, views: int, device, repeats: int, warmup: int) -> dict:
    G, cams = make_ball(n, device), make_ring(views, size, device)
    bg = torch.ones(3, device=device)
    v = torch.randn(views, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)

    def fwd():
        with torch.no_grad():
            render(G, cams, bg, backend=backend)

    def fwd_bwd():
        out = render(G, cams, bg, backend=backend)
        ((out.rgb * v).sum() + out.depth.mean()).backward()
        for p in (G.means, G.quats, G.scales, G.opacities, G.sh):
            p.grad = None

    with torch.no_grad():
        out = render(G, cams, bg, backend=backend)
    row = {"backend": backend, "device": device.type, "N": n, "size": size, "views": views,
           "coverage": out.alpha.mean().item(), "mean_radius": out.info["radii"].float().mean().item()}
    t_f = time_ms(fwd, repeats, warmup, device)
    t_fb = time_ms(fwd_bwd, repeats, warmup, device)
    row.update(fwd_med=statistics.median(t_f), fb_med=statistics.median(t_fb), fb_best=min(t_fb))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--big", action="store_true", help="also 100k gaussians at 512x512 on CPU (slow)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if device.type == "cuda":
        cases = [("torch", 5_000, 64), ("gsplat", 5_000, 64), ("gsplat", 100_000, 512),
                 ("torch", 100_000, 512)]
    else:
        cases = [("torch", 5_000, 64), ("torch", 5_000, 128), ("torch", 20_000, 128),
                 ("torch", 20_000, 256)]
        if args.big:
            cases.append(("torch", 100_000, 512))
    print(f"device={device} threads={torch.get_num_threads()} views={args.views} "
          f"repeats={args.repeats} warmup={args.warmup}")
    print(f"{'backend':>7} {'N':>7} {'size':>5} {'cover':>6} {'radius':>6} {'fwd ms':>9} "
          f"{'fwd+bwd ms':>11} {'best':>9} {'best/view':>10}")
    for backend, n, size in cases:
        r = bench(backend, n, size, args.views, device, args.repeats, args.warmup)
        print(f"{backend:>7} {n:>7} {size:>5} {r['coverage']:>6.3f} {r['mean_radius']:>6.2f} "
              f"{r['fwd_med']:>9.1f} {r['fb_med']:>11.1f} {r['fb_best']:>9.1f} "
              f"{r['fb_best'] / args.views:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
