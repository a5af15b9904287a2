"""`ism3d export`: the subcommand's arguments and its entry point (cli.py delegates here).

A 3DGS .ply in, another format out, chosen by --out's extension: a textured or vertex-coloured
mesh (.glb/.obj, export/mesh.py), splat files (.spz/.splat/.glb --kind splats, export/splats.py),
the offline viewer (.html, export/viewer.py) or the same gaussians re-framed or SH-padded (.ply).
Exit codes: 0 written; 2 bad input (one line, nothing written).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import config as C

__all__ = ["add_parser", "cmd_export", "EXPORT_EXTS"]


def add_parser(sub) -> argparse.ArgumentParser:
    out_defaults = C.OutputConfig()
    e = sub.add_parser(
        "export", help="mesh (.glb/.obj), splat files (.spz/.splat/.glb) or offline viewer (.html)",
        description="Write a standard 3DGS .ply in another format, chosen by --out's extension:\n"
                    "  .glb/.obj   textured triangle mesh (density of the gaussians -> marching "
                    "cubes -> decimation -> UV atlas -> base-colour texture baked from the "
                    "gaussians; the .obj gets its .mtl and .png beside it); y-up, front +Z, metres\n"
                    "  .spz        Niantic SPZ (gzip, quantised; ~10x smaller than the PLY)\n"
                    "  .splat      antimatter15's 32-byte records (SH degree 0)\n"
                    "  .glb        with --kind splats: glTF KHR_gaussian_splatting points\n"
                    "  .html       one self-contained page that shows the splats offline (orbit "
                    "controls; open it from disk)\n"
                    "  .ply        the same gaussians re-framed (--out-frame) or SH-padded (--sh-degree)\n"
                    "Splat files and the viewer open upright in SuperSplat, splat-transform and "
                    "gsplat viewers (README: Outputs).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("ply", help="a 3DGS .ply (a run's gaussians.ply or another tool's)")
    e.add_argument("--out", required=True, metavar="FILE.(glb|obj|spz|splat|html|ply)",
                   help="output file")
    e.add_argument("--kind", choices=["mesh", "splats"], default=None,
                   help="for .glb: a triangle mesh (default) or the gaussians as "
                        "KHR_gaussian_splatting points")
    e.add_argument("--frame", choices=["y-down", "z-up"], default="y-down",
                   help="frame of an input PLY that does not name its own (ism3d's PLYs do): "
                        "y-down, the 3DGS convention of other tools (default), or z-up for "
                        "ism3d runs made before the frame mark")
    e.add_argument("--out-frame", choices=["y-down", "z-up"], default=out_defaults.frame,
                   help=f"frame of a .ply output ({out_defaults.frame})")
    e.add_argument("--sh-degree", type=int, default=0, metavar="D",
                   help="a .ply output: pad f_rest with zeros up to SH degree D (0-3; 0 = keep)")
    e.add_argument("--texture", type=int, default=out_defaults.texture_size, metavar="T",
                   help=f"mesh: base-colour texture of TxT texels ({out_defaults.texture_size}; "
                        "0 = vertex colours, no texture)")
    e.add_argument("--bake", choices=["auto", "render", "field"], default="auto",
                   help="mesh: how the texture is baked: render (the gaussians rendered from 48 "
                        "views and projected; ~2 dB closer to the gaussians, slow on a CPU), field "
                        "(their colour at each texel; seconds), auto (render on a GPU, field on "
                        "the CPU; default)")
    e.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help="mesh: where --bake render renders (default auto)")
    e.add_argument("--resolution", type=int, default=out_defaults.mesh_resolution, metavar="N",
                   help="mesh: grid samples along the scene's longest side "
                        f"({out_defaults.mesh_resolution}; 512 for fine detail, slower)")
    e.add_argument("--faces", type=int, default=None, metavar="N",
                   help=f"mesh: face budget after decimation ({out_defaults.texture_faces} "
                        f"textured, {out_defaults.mesh_faces} with vertex colours; 0 = no "
                        "decimation)")
    e.add_argument("--threshold", type=float, default=0.5, metavar="T",
                   help="mesh: density level of the surface (0.5: matches the rendered "
                        "alpha > 0.5 silhouette; lower gives a fatter mesh)")
    e.add_argument("--min-opacity", type=float, default=0.01, metavar="O",
                   help="mesh: ignore gaussians less opaque than this (0.01)")
    e.add_argument("--keep-parts", type=float, default=0.1, metavar="F",
                   help="mesh: drop connected pieces smaller than F x the largest one's area "
                        "(0.1; 1 = largest piece only, 0 = keep all)")
    return e


def _fail(msg: str) -> int:
    print(f"ism3d: error: {msg}", file=sys.stderr)
    return 2


EXPORT_EXTS = (".glb", ".obj", ".spz", ".splat", ".html", ".htm", ".ply")


def cmd_export(args) -> int:
    from ..ply import PlyError
    from .mesh import MeshError, export_mesh_from_ply
    from .splats import SplatError

    out = Path(args.out)
    ext = out.suffix.lower()
    if ext not in EXPORT_EXTS:
        return _fail(f"--out must end in {', '.join(EXPORT_EXTS)} (got {args.out!r})")
    kind = args.kind or ("mesh" if ext in (".glb", ".obj") else "splats")
    if (kind == "mesh") != (ext in (".glb", ".obj")) and ext != ".glb":
        return _fail(f"--kind {kind} cannot write a {ext} file")
    if not Path(args.ply).is_file():
        return _fail(f"no such file: {args.ply}")
    if out.resolve() == Path(args.ply).resolve():
        return _fail("--out names the input file: choose another path")
    if kind == "splats" or ext == ".ply":
        if not 0 <= args.sh_degree <= 3:
            return _fail(f"--sh-degree must be 0..3 (got {args.sh_degree})")
        try:
            path, what = _export_splats(args, ext)
        except (PlyError, SplatError, ValueError) as e:
            return _fail(str(e))
        print(f"wrote {path}: {what}")
        return 0
    faces = args.faces if args.faces is not None else (
        C.OutputConfig().texture_faces if args.texture else C.OutputConfig().mesh_faces)
    if not 16 <= args.resolution <= 1024:
        return _fail(f"--resolution must be between 16 and 1024 (got {args.resolution})")
    if args.texture and not 16 <= args.texture <= 8192:
        return _fail(f"--texture must be 0 or between 16 and 8192 (got {args.texture})")
    if faces < 0 or args.threshold <= 0 or not 0 <= args.keep_parts <= 1 \
            or not 0 <= args.min_opacity < 1:
        return _fail("need --faces >= 0, --threshold > 0, --keep-parts in [0, 1] and "
                     "--min-opacity in [0, 1)")
    stats: dict = {}
    try:
        from ..train import resolve_device
        device = resolve_device(args.device)
        path = export_mesh_from_ply(args.ply, args.out, resolution=args.resolution,
                                    faces=faces, threshold=args.threshold,
                                    min_opacity=args.min_opacity, min_part=args.keep_parts,
                                    texture_size=args.texture, texture_bake=args.bake,
                                    device=device, unmarked=args.frame, stats=stats)
    except (PlyError, MeshError, C.ConfigError, ValueError) as e:
        return _fail(str(e))
    tex = f", {args.texture}x{args.texture} texture" if args.texture else ", vertex colours"
    print(f"wrote {path}: {stats['faces']} faces, {stats['vertices']} vertices "
          f"(grid {'x'.join(map(str, stats['grid']))}{tex})")
    return 0


def _export_splats(args, ext: str) -> tuple[Path, str]:
    """`ism3d export` to .spz / .splat / .glb (KHR_gaussian_splatting) / .html / .ply."""
    from ..ply import load_ply, save_ply
    from .splats import write_splats
    from .viewer import write_viewer

    params, deg = load_ply(args.ply, unmarked=args.frame)
    n = len(params["means"])
    if ext in (".html", ".htm"):
        return write_viewer(params, args.out, title=Path(args.ply).stem), f"{n} gaussians"
    if ext == ".ply":
        save_ply(args.out, params, deg, frame=args.out_frame, pad_degree=args.sh_degree)
        return Path(args.out), f"{n} gaussians, frame {args.out_frame}"
    return write_splats(params, deg, args.out), f"{n} gaussians"
