"""Splat files other tools open: SPZ, antimatter15's .splat, and glTF with KHR_gaussian_splatting.

Our own encoders, written from the public specs (no maintained Python library was solid enough:
see docs in README's Outputs section). Each takes the trainer's world-frame raw parameters
(`ply.load_ply`), turns them into the format's frame (ism3d/frames.py) and writes atomically.

    format   frame    per gaussian (N of them)
    .spz     y-down   Niantic SPZ v3: gzip of a 16-byte header (magic "NGSP", version 3, N,
                      SH degree, 12 fractional bits, flags 0, 0), then by attribute: positions
                      (24-bit fixed point, x 4096), alphas (u8 sigmoid(opacity) 255), colours (u8
                      f_dc 0.15 255 + 127.5), scales (u8 (log s + 10) 16), rotations (4 bytes,
                      "smallest three": index of the largest |q| in (x, y, z, w) order in the top
                      2 bits, then three 10-bit fields of sign + 9-bit |q_i| / sqrt(1/2)), SH
                      (u8, coefficient-major, colour inner; 5 bits of precision for degree 1,
                      4 for higher, q = round(128 x) + 128 rounded to the bucket centre)
    .splat   y-down   32-byte records: position f32 x3, scale exp(log s) f32 x3, RGBA u8 (colour
                      0.5 + SH_C0 f_dc, alpha sigmoid(opacity)), rotation u8 x4 (w, x, y, z) as
                      round(128 q + 128); sorted by exp(sum log s) sigmoid(opacity), largest first,
                      as antimatter15's converter does (progressive loading). Degree 0 only.
    .glb     y-up     glTF 2.0, one POINTS primitive with the KHR_gaussian_splatting extension:
                      POSITION, KHR_gaussian_splatting:ROTATION (unit quaternion, x y z w),
                      :SCALE (linear, exp of log s), :OPACITY (sigmoid), :SH_DEGREE_0_COEF_0 (raw
                      f_dc) and :SH_DEGREE_l_COEF_n (n = 0..2l, m = n - l) for l <= degree, and
                      COLOR_0 (linear RGB + alpha, the point-cloud fallback); all float32
                      except COLOR_0 (normalised u8). Scale and opacity are stored activated, as
                      splat-transform 3.10 and three.js's loader read them.

SPZ's frame. Niantic's C++ library calls SPZ's frame RUB and flips y and z when it converts to
or from a PLY; PlayCanvas splat-transform (hence SuperSplat) and Spark read and write SPZ bytes in
the PLY's own frame. We follow the viewers (the file opens upright in them, like our PLY); the
price is that Niantic's `spz` command-line converter turns it upside down on its way to a PLY.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..frames import to_frame
from ..render.sh import SH_C0
from .mesh_files import srgb_to_linear
from .video import atomic_write

__all__ = ["SPLAT_EXTS", "SplatError", "spz_bytes", "splat_bytes", "splat_glb_bytes",
           "write_splats", "splat_order"]

SPLAT_EXTS = (".spz", ".splat", ".glb")
SPZ_MAGIC = 0x5053474E          # "NGSP"
SPZ_FRACTIONAL_BITS = 12
SPZ_COLOR_SCALE = 0.15
_SQRT1_2 = math.sqrt(0.5)


class SplatError(ValueError):
    """The gaussians cannot be written in the chosen format (e.g. positions out of SPZ's range)."""


def _arrays(params) -> dict[str, np.ndarray]:
    """float64 numpy views of raw params: means [N,3], log scales [N,3], quats [N,4] (w x y z),
    logit opacities [N], sh [N, K, 3]."""
    sh = torch.cat([params["sh0"].detach(), params["shN"].detach()], 1)
    return {"means": params["means"].detach().double().numpy(),
            "scales": params["scales"].detach().double().numpy(),
            "quats": params["quats"].detach().double().numpy(),
            "opacities": params["opacities"].detach().double().numpy(),
            "sh": sh.double().numpy()}


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _unit_quats(q: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(q, axis=1, keepdims=True)
    out = np.where(n > 0, q / np.where(n > 0, n, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    return out


# ---------------------------------------------------------------------------------------------
# SPZ
# ---------------------------------------------------------------------------------------------
def _spz_rotations(quats: np.ndarray) -> np.ndarray:
    """[N, 4] (w, x, y, z) -> [N, 4] bytes of SPZ v3's smallest-three packing."""
    q = _unit_quats(quats)[:, [1, 2, 3, 0]]                                # [N, 4] x y z w
    N = len(q)
    largest = np.argmax(np.abs(q), axis=1)                                 # [N]
    q = np.where(q[np.arange(N), largest][:, None] < 0, -q, q)             # largest >= 0
    comp = largest.astype(np.uint64)
    for i in range(4):
        keep = largest != i
        mag = np.floor(511.0 * np.abs(q[:, i]) / _SQRT1_2 + 0.5).astype(np.uint64)
        field = ((q[:, i] < 0).astype(np.uint64) << np.uint64(9)) | np.minimum(mag, 511)
        comp = np.where(keep, (comp << np.uint64(10)) | field, comp)
    return comp.astype("<u4").view(np.uint8).reshape(N, 4)


def _spz_sh(rest: np.ndarray) -> np.ndarray:
    """[N, K-1, 3] -> [N, (K-1)*3] bytes: bucket 8 (5 bits) for degree 1, 16 (4 bits) above."""
    q = np.round(rest * 128.0) + 128.0                                     # [N, K-1, 3]
    bucket = np.full(rest.shape[1], 16.0)
    bucket[:3] = 8.0
    b = bucket[None, :, None]
    q = np.floor((q + b // 2) / b) * b
    return np.clip(q, 0, 255).astype(np.uint8).reshape(len(rest), -1)


def spz_bytes(params, sh_degree: int) -> bytes:
    """Gaussians (raw parameters, already in the file's frame) as an SPZ v3 file."""
    a = _arrays(params)
    N = len(a["means"])
    fixed = np.round(a["means"] * (1 << SPZ_FRACTIONAL_BITS))              # [N, 3]
    if N and np.abs(fixed).max() >= (1 << 23):
        raise SplatError(f"positions beyond +-{(1 << 23) / (1 << SPZ_FRACTIONAL_BITS):g} m do not "
                         "fit SPZ's 24-bit fixed point")
    pos = fixed.astype("<i4").view(np.uint8).reshape(N, 3, 4)[:, :, :3].reshape(N, 9)
    parts = [
        struct.pack("<IIIBBBB", SPZ_MAGIC, 3, N, sh_degree, SPZ_FRACTIONAL_BITS, 0, 0),
        pos.tobytes(),
        _u8(_sigmoid(a["opacities"]) * 255.0).tobytes(),
        _u8(a["sh"][:, 0] * (SPZ_COLOR_SCALE * 255.0) + 0.5 * 255.0).tobytes(),
        _u8((a["scales"] + 10.0) * 16.0).tobytes(),
        _spz_rotations(a["quats"]).tobytes(),
        _spz_sh(a["sh"][:, 1:(sh_degree + 1) ** 2]).tobytes(),
    ]
    return gzip.compress(b"".join(parts), compresslevel=6, mtime=0)


# ---------------------------------------------------------------------------------------------
# .splat
# ---------------------------------------------------------------------------------------------
def splat_order(params) -> np.ndarray:
    """The record order of a .splat file: by exp(sum log s) sigmoid(opacity), largest first."""
    a = _arrays(params)
    importance = np.exp(a["scales"].sum(1)) * _sigmoid(a["opacities"])
    return np.argsort(-importance, kind="stable")


def splat_bytes(params) -> bytes:
    """Gaussians (raw parameters, in the file's frame) as antimatter15 .splat records (degree 0)."""
    a = _arrays(params)
    N = len(a["means"])
    rec = np.zeros(N, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4),
                             ("rot", "u1", 4)])
    rec["pos"] = a["means"]
    rec["scale"] = np.exp(a["scales"])
    rec["rgba"][:, :3] = _u8((0.5 + SH_C0 * a["sh"][:, 0]) * 255.0)
    rec["rgba"][:, 3] = _u8(_sigmoid(a["opacities"]) * 255.0)
    rec["rot"] = _u8(_unit_quats(a["quats"]) * 128.0 + 128.0)
    assert rec.itemsize == 32
    return rec[splat_order(params)].tobytes()


# ---------------------------------------------------------------------------------------------
# glTF KHR_gaussian_splatting
# ---------------------------------------------------------------------------------------------
def glb_pack(doc: dict, binary: bytes) -> bytes:
    """A GLB container: 12-byte header, JSON chunk (space-padded), BIN chunk (zero-padded)."""
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<4sII", b"glTF", 2, total),
                     struct.pack("<I4s", len(text), b"JSON"), text,
                     struct.pack("<I4s", len(binary), b"BIN\0"), binary])


def splat_glb_bytes(params, sh_degree: int) -> bytes:
    """Gaussians (raw parameters, in glTF's y-up frame) as a KHR_gaussian_splatting .glb."""
    a = _arrays(params)
    N = len(a["means"])
    colour = np.clip(0.5 + SH_C0 * a["sh"][:, 0], 0.0, 1.0)                # [N, 3] sRGB-encoded
    rgba = np.concatenate([_u8(srgb_to_linear(colour) * 255.0),
                           _u8(_sigmoid(a["opacities"])[:, None] * 255.0)], 1)
    attrs = [("POSITION", a["means"], "VEC3"),
             ("COLOR_0", rgba, "VEC4"),
             ("KHR_gaussian_splatting:ROTATION", _unit_quats(a["quats"])[:, [1, 2, 3, 0]], "VEC4"),
             ("KHR_gaussian_splatting:SCALE", np.exp(a["scales"]), "VEC3"),
             ("KHR_gaussian_splatting:OPACITY", _sigmoid(a["opacities"]), "SCALAR")]
    for l in range(sh_degree + 1):
        for n in range(2 * l + 1):
            attrs.append((f"KHR_gaussian_splatting:SH_DEGREE_{l}_COEF_{n}", a["sh"][:, l * l + n],
                          "VEC3"))
    blobs, accessors, views, attributes, offset = [], [], [], {}, 0
    for i, (name, data, kind) in enumerate(attrs):
        if data.dtype == np.uint8:
            raw = np.ascontiguousarray(data).tobytes()
            acc = {"componentType": 5121, "normalized": True}
        else:
            data = np.ascontiguousarray(data, dtype="<f4")
            raw = data.tobytes()
            acc = {"componentType": 5126}
        acc.update(bufferView=i, count=N, type=kind)
        if name == "POSITION":
            acc.update(min=data.min(0).tolist(), max=data.max(0).tolist())
        accessors.append(acc)
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(raw), "target": 34962})
        attributes[name] = i
        blobs.append(raw + b"\0" * (-len(raw) % 4))
        offset += len(blobs[-1])
    binary = b"".join(blobs)
    doc = {
        "asset": {"version": "2.0", "generator": "ism3d"},
        "extensionsUsed": ["KHR_gaussian_splatting"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{
            "attributes": attributes, "mode": 0,
            "extensions": {"KHR_gaussian_splatting": {
                "kernel": "ellipse", "colorSpace": "srgb_rec709_display",
                "sortingMethod": "cameraDistance", "projection": "perspective"}}}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    return glb_pack(doc, binary)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def write_splats(params, sh_degree: int, path: str | os.PathLike) -> Path:
    """Write world-frame raw gaussians as .spz, .splat or .glb (KHR_gaussian_splatting),
    atomically, each in its format's frame (module docstring)."""
    ext = Path(path).suffix.lower()
    if ext not in SPLAT_EXTS:
        raise SplatError(f"cannot write {path}: splat files end in {', '.join(SPLAT_EXTS)}")
    if len(params["means"]) == 0:
        raise SplatError("the scene holds no gaussians: nothing to write")
    if ext == ".spz":
        data = spz_bytes(to_frame(params, "y-down"), sh_degree)
    elif ext == ".splat":
        data = splat_bytes(to_frame(params, "y-down"))
    else:
        data = splat_glb_bytes(to_frame(params, "y-up"), sh_degree)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
