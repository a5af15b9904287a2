"""How long does mesh export take, and what does the grid resolution cost in accuracy? (CPU)

    python benchmarks/bench_mesh.py                       # 100k gaussians, resolution 256
    python benchmarks/bench_mesh.py --n 100000 --resolution 512 --repeats 1
    python benchmarks/bench_mesh.py --ply RUN/gaussians.ply [--resolutions 256,192,128]
    python benchmarks/bench_mesh.py --texture 1024 --faces 20000 --repeats 1   # + UV atlas and bake
    python benchmarks/bench_mesh.py --quality --resolution 128 --faces 20000  # PSNR / IoU, JSON lines
    python benchmarks/bench_mesh.py --quality --ply RUN/gaussians.ply ...

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

Textured vs vertex colours (--quality): for each ToyWorld object (or --ply), the gaussians are
rendered on the eval ring (--views views at --size px, polar 90 and 60, white) and so is the
exported mesh, twice: with its vertex colours and with its baked texture (our own z-buffered numpy
rasteriser below, unlit, as the colours are baked). Prints the silhouette IoU, the PSNR inside
the union of the silhouettes (ism3d/eval/metrics.py, as `ism3d eval` scores; silhouette misses
dominate it) and the PSNR where both cover the pixel (colour alone), one JSON object per line.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from scipy.spatial import cKDTree

from ism3d.export.mesh import export_mesh, gaussians_to_mesh, texture_mesh, write_mesh
from ism3d.export.mesh_files import write_textured_mesh
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
    ap.add_argument("--texture", type=int, default=0, help="also unwrap + bake a TxT texture (0)")
    ap.add_argument("--quality", action="store_true",
                    help="instead: textured vs vertex-coloured mesh against the gaussians' renders")
    ap.add_argument("--views", type=int, default=8, help="--quality: views per ring (8)")
    ap.add_argument("--size", type=int, default=128, help="--quality: render size (128)")
    ap.add_argument("--project", action="store_true",
                    help="--quality: also bake by rendering the gaussians from 48 views (off the "
                         "eval ring) and projecting the images onto the texels")
    args = ap.parse_args()
    if args.quality:
        return quality(args)
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
                if args.texture:
                    tm = texture_mesh(mesh, g, args.texture, h=stats["h"])
                    stats["texture"] = time.perf_counter() - t1
                    t1 = time.perf_counter()
                    write_textured_mesh(tm, Path(tmp) / "m.glb")
                else:
                    stats["texture"] = 0.0
                    write_mesh(mesh, Path(tmp) / "m.glb")
                stats["write"] = time.perf_counter() - t1
                stats["total"] = time.perf_counter() - t0
                runs.append(stats)
        best = min(runs, key=lambda s: s["total"])
        stages = " ".join(f"{k} {best[k]:.2f}" for k in
                          ("density", "surface", "cleanup", "decimate", "colours", "texture",
                           "write"))
        print(f"{kind:5s} total {best['total']:.2f} s (median "
              f"{statistics.median(s['total'] for s in runs):.2f}) | {stages} | grid "
              f"{'x'.join(map(str, best['grid']))}, {best['mc_faces']} -> {best['faces']} faces, "
              f"watertight {mesh.is_watertight}")


# ---------------------------------------------------------------------------------------------
# --quality: render the mesh like the gaussians and compare
# ---------------------------------------------------------------------------------------------
def rasterise(verts, faces, viewmat, K, H, W):
    """Our own z-buffered rasteriser: (face [H, W] (-1 = empty), perspective-correct
    barycentrics [H, W, 3]) of the nearest triangle at each pixel centre (x + 0.5, y + 0.5)."""
    import numpy as np

    cam = verts @ viewmat[:3, :3].T + viewmat[:3, 3]                       # [V, 3]
    z = cam[:, 2]
    px = np.stack([cam[:, 0] / z * K[0, 0] + K[0, 2], cam[:, 1] / z * K[1, 1] + K[1, 2]], 1)
    tri, tz = px[faces], z[faces]                                          # [F, 3, 2], [F, 3]
    lo = np.clip(np.ceil(tri.min(1) - 0.5).astype(int), 0, [W - 1, H - 1])
    hi = np.clip(np.floor(tri.max(1) - 0.5).astype(int), -1, [W - 1, H - 1])
    span = hi - lo + 1
    side = 2 ** np.ceil(np.log2(np.maximum(span.max(1), 1))).astype(int)
    pix, dep, fid, bar = [], [], [], []
    for s in np.unique(side):
        sel = np.nonzero((side == s) & (span.min(1) > 0) & (tz.min(1) > 1e-3))[0]
        o = np.arange(s)
        xs = lo[sel, 0, None, None] + o[None, None, :] + 0.5                # [n, 1, s]
        ys = lo[sel, 1, None, None] + o[None, :, None] + 0.5                # [n, s, 1]
        t = tri[sel][:, :, :, None, None]                                   # [n, 3, 2, 1, 1]
        e = [(t[:, b, 0] - t[:, a, 0]) * (ys - t[:, a, 1]) - (t[:, b, 1] - t[:, a, 1]) * (xs - t[:, a, 0])
             for a, b in ((1, 2), (2, 0), (0, 1))]                          # ~ barycentrics
        area = e[0] + e[1] + e[2]
        inside = (((e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0)) | ((e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0)))
        inside &= np.abs(area) > 1e-12
        inside &= (xs - 0.5 <= hi[sel, 0, None, None]) & (ys - 0.5 <= hi[sel, 1, None, None])
        n, yy, xx = np.nonzero(inside)
        w = np.stack([e[k][n, yy, xx] for k in range(3)], 1) / area[n, yy, xx][:, None]
        wz = w / tz[sel][n]                                                 # perspective-correct
        pix.append((lo[sel, 1][n] + yy) * W + lo[sel, 0][n] + xx)
        dep.append(1.0 / wz.sum(1))
        fid.append(sel[n])
        bar.append(wz / wz.sum(1, keepdims=True))
    face = np.full(H * W, -1)
    bary = np.zeros((H * W, 3))
    if pix:
        pix, dep, fid, bar = map(np.concatenate, (pix, dep, fid, bar))
        order = np.lexsort((dep, pix))
        first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]]
        face[pix[first]], bary[pix[first]] = fid[first], bar[first]
    return face.reshape(H, W), bary.reshape(H, W, 3)


def quality(args) -> None:
    import json

    import numpy as np

    from ism3d.cameras import eval_ring
    from ism3d.eval.metrics import masked_mse, masked_psnr, psnr_from_mse, silhouette, silhouette_iou
    from ism3d.ply import load_ply
    from ism3d.render import render
    from ism3d.scene import activate
    from ism3d.toyworld.world import make_object

    if args.ply:
        params, deg = load_ply(args.ply)
        scenes = {Path(args.ply).parent.name or args.ply: activate(params, deg)}
    else:
        scenes = {f"{c} {f}": make_object(f, c) for f, c in
                  (("mug", "red"), ("house", "blue"), ("chair", "green"), ("torus", "yellow"))}
        scenes["striped ball"] = striped_ball()
    size = args.size
    cams = [eval_ring(args.views, size, size, 3.5, 0.55, polar=p) for p in (90.0, 60.0)]
    for name, g in scenes.items():
        g = Gaussians(*(t.detach().float() for t in (g.means, g.quats, g.scales, g.opacities, g.sh)),
                      g.sh_degree)
        stats: dict = {}
        t0 = time.perf_counter()
        mesh = gaussians_to_mesh(g, resolution=args.resolution, faces=args.faces, stats=stats)
        t1 = time.perf_counter()
        tm = texture_mesh(mesh, g, args.texture or 1024, h=stats["h"])
        t2 = time.perf_counter()
        kinds = ["vertex", "texture"]
        meshes = {"texture": tm}
        if args.project:
            from ism3d.export.mesh_texture import bake_texture, render_colour
            t3 = time.perf_counter()
            meshes["projected"] = bake_texture(np.asarray(mesh.vertices), np.asarray(mesh.faces),
                                               np.asarray(mesh.vertex_normals),
                                               render_colour(g),       # the product's render bake
                                               size=args.texture or 1024)
            proj_s = round(time.perf_counter() - t3, 2)
            kinds.append("projected")
        vc = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
        row = {"scene": name, "gaussians": len(g), "faces": len(mesh.faces),
               "texture": args.texture or 1024, "mesh_s": round(t1 - t0, 2),
               "texture_s": round(t2 - t1, 2)}
        if args.project:
            row["projected_s"] = proj_s
        res = {k: [[], []] for k in kinds + ["ref"]}
        for ring in cams:
            ref = render(g, ring, torch.ones(3), backend="torch")
            for k in range(len(ring.viewmats)):
                V, Kk = ring.viewmats[k].double().numpy(), ring.Ks[k].double().numpy()
                for kind in kinds:
                    tk = meshes.get(kind)
                    verts = np.asarray(mesh.vertices) if kind == "vertex" else tk.vertices
                    faces = np.asarray(mesh.faces) if kind == "vertex" else tk.faces
                    f, b = rasterise(verts, faces, V, Kk, size, size)
                    hit = f >= 0
                    rgb = np.ones((size, size, 3))
                    if kind == "vertex":
                        rgb[hit] = np.einsum("pk,pkc->pc", b[hit], vc[faces[f[hit]]])
                    else:
                        uv = np.einsum("pk,pkc->pc", b[hit], tk.uv[faces[f[hit]]])
                        rgb[hit] = sample(tk.texture, uv)
                    res[kind][0].append(torch.from_numpy(rgb).permute(2, 0, 1).float())
                    res[kind][1].append(torch.from_numpy(hit[None].astype(np.float32)))
            res["ref"][0].append(ref.rgb)
            res["ref"][1].append(ref.alpha)
        ref_rgb, ref_a = torch.cat(res["ref"][0]), torch.cat(res["ref"][1])
        for kind in kinds:
            rgb, a = torch.stack(res[kind][0]), torch.stack(res[kind][1])
            row[f"{kind}_psnr"] = round(float(masked_psnr(rgb, a, ref_rgb, ref_a)), 2)
            row[f"{kind}_iou"] = round(float(silhouette_iou(a, ref_a).mean()), 4)
            both = silhouette(a) & silhouette(ref_a)          # colour alone, where both cover
            row[f"{kind}_psnr_inside"] = round(float(psnr_from_mse(masked_mse(rgb, ref_rgb, both))), 2)
        print(json.dumps(row), flush=True)


def striped_ball(n: int = 20_000) -> Gaussians:
    """Colour detail finer than a 20k-face mesh: `make_scene("shell")` painted with 24 red/blue
    bands in longitude (each band ~0.13 wide at the equator, a few faces across)."""
    import math

    from ism3d.render.sh import SH_C0

    g = make_scene("shell", n, seed=1)
    lon = torch.atan2(g.means[:, 1], g.means[:, 0])
    red = (torch.floor(lon / (2 * math.pi) * 24) % 2 == 0)[:, None]
    rgb = torch.where(red, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9]))
    return Gaussians(g.means, g.quats, g.scales, g.opacities, ((rgb - 0.5) / SH_C0)[:, None], 0)


def sample(tex, uv):
    """Bilinear texture lookup, v = 0 at row 0 (glTF), texel centres at (i + 0.5) / T."""
    import numpy as np

    T = tex.shape[0]
    x, y = uv[:, 0] * T - 0.5, uv[:, 1] * T - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def c(yy, xx):
        return tex[np.clip(yy, 0, T - 1), np.clip(xx, 0, T - 1)] / 255.0
    return ((1 - fy) * ((1 - fx) * c(y0, x0) + fx * c(y0, x0 + 1))
            + fy * ((1 - fx) * c(y0 + 1, x0) + fx * c(y0 + 1, x0 + 1)))


if __name__ == "__main__":
    main()
