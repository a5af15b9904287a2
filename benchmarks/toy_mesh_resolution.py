"""The `toy` preset's mesh resolution (BENCHMARKS.md, session 5): `export_mesh` of one result at
grid resolutions 256, 192 and 128 on the CPU — seconds, faces — and the symmetric surface distance
of each mesh to the 256^3 one (50,000 surface samples each way; mean and 95th percentile).

    python benchmarks/toy_mesh_resolution.py RUN/gaussians.ply
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from ism3d.export.mesh import export_mesh
from ism3d.ply import load_ply
from ism3d.scene import activate


def main() -> None:
    params, deg = load_ply(sys.argv[1])
    g = activate({k: v.detach() for k, v in params.items()}, deg)
    samples = {}
    with tempfile.TemporaryDirectory() as d:
        for res in (256, 192, 128):
            path = Path(d) / f"m{res}.glb"
            t0 = time.perf_counter()
            export_mesh(g, path, resolution=res, faces=100_000)
            dt = time.perf_counter() - t0
            mesh = trimesh.load(path, force="mesh")
            samples[res] = np.asarray(trimesh.sample.sample_surface(mesh, 50_000, seed=0)[0])
            line = f"resolution {res}: {dt:.1f} s, {len(mesh.faces)} faces"
            if res != 256:
                a = cKDTree(samples[256]).query(samples[res])[0]
                b = cKDTree(samples[res]).query(samples[256])[0]
                both = np.concatenate([a, b])
                line += f", distance to the 256^3 mesh: mean {both.mean():.4f}, p95 {np.percentile(both, 95):.4f}"
            print(line)


if __name__ == "__main__":
    main()
