"""How long does mesh export take, and what does the grid resolution cost in accuracy? (CPU)

    python benchmarks/bench_mesh.py                       # 100k gaussians, resolution 256
    python benchmarks/bench_mesh.py --n 100000 --resolution 512 --repeats 1
    python benchmarks/bench_mesh.py --ply RUN/gaussians.ply [--resolutions 256,192,128]

Synthetic scenes (default): `gaussians_to_mesh` + GLB write for N gaussians. Scenes are built
here: N points uniform on the sphere of radius 0.5 ("shell", a surface as a trained 3DGS object
has) or uniform in the ball ("ball", a volume); isotropic scales = mean distance to the 3 nearest
neighbours, random rotations, opacity 0.9, random degree-0 colours. Prints seconds per stage
(density grid, surface = closing + marching cubes, cleanup, decimation, colours, GLB write) for
the best of --repeats runs (the figure to quote on a shared CPU, where other processes inflate
the others) and the median total.

A real result (--ply): `export_mesh` of that 3DGS file at each of --resolutions (the first is the
reference) -- seconds and faces -- and the symmetric surface distance of each mesh to the first
one (50,000 surface samples each way; mean and 95th percentile, in world units). This is how the
`toy` preset's 128^3 was chosen (docs/experiments/cpu-main-job.md).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from scipy.spatial import cKDTree

from ism3d.export.mesh import export_mesh, gaussians_to_mesh, write_mesh
from ism3d.types import Gaussians


def make_scene(kind: str, n: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    u = torch.rand(n, 1, generator=g, dtype=torch.float64)
    r = 0.5 if kind == "shell" else 0.5 * u ** (1 / 3)
    means = d * r
    dist, _ = cKDTree(means.numpy()).query(means.numpy(), k=4)
    scales = torch.from_numpy(dist[:, 1:].mean(1)).clamp_min(1e-4)[:, None].expand(n, 3)
    return Gaussians(means.float(), torch.randn(n, 4, generator=g), scales.float().contiguous(),
                     torch.full((n,), 0.9), torch.randn(n, 1, 3, generator=g) * 0.5, 0)


def resolution_distances(ply: Path, resolutions: list[int], faces: int) -> None:
    """--ply: time and faces per resolution; surface distance of each mesh to the first one's."""
    import numpy as np
    import trimesh

    from ism3d.ply import load_ply
    from ism3d.scene import activate

    params, deg = load_ply(ply)
    g = activate({k: v.detach() for k, v in params.items()}, deg)
    samples = {}
    with tempfile.TemporaryDirectory() as d:
        for res in resolutions:
            path = Path(d) / f"m{res}.glb"
            t0 = time.perf_counter()
            export_mesh(g, path, resolution=res, faces=faces)
            dt = time.perf_counter() - t0
            mesh = trimesh.load(path, force="mesh")
            samples[res] = np.asarray(trimesh.sample.sample_surface(mesh, 50_000, seed=0)[0])
            line = f"resolution {res}: {dt:.1f} s, {len(mesh.faces)} faces"
            if res != resolutions[0]:
                a = cKDTree(samples[resolutions[0]]).query(samples[res])[0]
                b = cKDTree(samples[res]).query(samples[resolutions[0]])[0]
                both = np.concatenate([a, b])
                line += (f", distance to the {resolutions[0]}^3 mesh: mean {both.mean():.4f}, "
                         f"p95 {np.percentile(both, 95):.4f}")
            print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="gaussians (100000)")
    ap.add_argument("--resolution", type=int, default=256, help="grid resolution (256)")
    ap.add_argument("--faces", type=int, default=100_000, help="face budget (100000)")
    ap.add_argument("--kinds", default="shell,ball", help="scenes: shell,ball")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ply", type=Path, help="instead: a real result's gaussians.ply at --resolutions")
    ap.add_argument("--resolutions", default="256,192,128",
                    help="with --ply: grid resolutions, the first is the reference (256,192,128)")
    args = ap.parse_args()
    if args.ply:
        resolution_distances(args.ply, [int(r) for r in args.resolutions.split(",")], args.faces)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"n={args.n} resolution={args.resolution} faces={args.faces}")
    for kind in args.kinds.split(","):
        g = make_scene(kind, args.n)
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                stats: dict = {}
                t0 = time.perf_counter()
                mesh = gaussians_to_mesh(g, resolution=args.resolution, faces=args.faces,
                                         stats=stats)
                t1 = time.perf_counter()
                write_mesh(mesh, Path(tmp) / "m.glb")
                stats["write"] = time.perf_counter() - t1
                stats["total"] = time.perf_counter() - t0
                runs.append(stats)
        best = min(runs, key=lambda s: s["total"])
        stages = " ".join(f"{k} {best[k]:.2f}" for k in
                          ("density", "surface", "cleanup", "decimate", "colours", "write"))
        print(f"{kind:5s} total {best['total']:.2f} s (median "
              f"{statistics.median(s['total'] for s in runs):.2f}) | {stages} | grid "
              f"{'x'.join(map(str, best['grid']))}, {best['mc_faces']} -> {best['faces']} faces, "
              f"watertight {mesh.is_watertight}")


if __name__ == "__main__":
    main()
