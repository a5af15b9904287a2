"""Mesh files (ism3d/export/mesh.py, last step): a world-frame mesh written as .glb or .obj in the
file frame (y-up, front +Z), atomically: vertex colours (`glb_bytes`, our own few lines) or a
baked texture (`textured_glb_bytes`; OBJ + MTL + PNG).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from .mesh_grid import MeshError
from .video import atomic_write

__all__ = ["MESH_EXTS", "WORLD_TO_FILE", "srgb_to_linear", "glb_bytes", "write_mesh",
           "textured_glb_bytes", "write_textured_mesh"]

MESH_EXTS = (".glb", ".obj")

# World (z-up, front +x) -> file (glTF / OBJ: y-up, front +Z). Rows are the file axes.
WORLD_TO_FILE = np.array([[0.0, 1.0, 0.0],
                          [0.0, 0.0, 1.0],
                          [1.0, 0.0, 0.0]])


def _check_ext(path) -> str:
    ext = Path(path).suffix.lower()
    if ext not in MESH_EXTS:
        raise MeshError(f"cannot write {path}: the mesh extension must be one of "
                        f"{', '.join(MESH_EXTS)}")
    return ext


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear (IEC 61966-2-1)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _pad4(b: bytes, fill: bytes) -> bytes:
    return b + fill * (-len(b) % 4)


def glb_bytes(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray,
              colors: np.ndarray | None) -> bytes:
    """A minimal binary glTF 2.0: one mesh, one triangle primitive, one node, one scene.

    Args:
        vertices: [V, 3] positions (file frame, metres), written as float32 with min/max.
        faces: [F, 3] vertex indices, counter-clockwise seen from outside (uint32).
        normals: [V, 3] unit normals (float32).
        colors: [V, 3] LINEAR vertex colours in [0, 1] (glTF's COLOR_0 is linear), or None;
            written as normalised unsigned bytes, alpha 255.
    Returns:
        the .glb file's bytes. The material is a plain dielectric (metallic 0, roughness 1,
        base colour white, so COLOR_0 is the colour): glTF's default material when none is
        given is fully metallic, which renders almost black without an environment map.
    """
    V, F = len(vertices), len(faces)
    assert vertices.shape == (V, 3) and normals.shape == (V, 3) and faces.shape == (F, 3)
    pos = np.ascontiguousarray(vertices, dtype="<f4")
    nrm = np.ascontiguousarray(normals, dtype="<f4")
    idx = np.ascontiguousarray(faces, dtype="<u4")
    blobs = [pos.tobytes(), nrm.tobytes()]
    attributes = {"POSITION": 0, "NORMAL": 1}
    accessors = [
        {"bufferView": 0, "componentType": 5126, "count": V, "type": "VEC3",
         "min": pos.min(0).tolist(), "max": pos.max(0).tolist()},
        {"bufferView": 1, "componentType": 5126, "count": V, "type": "VEC3"},
    ]
    if colors is not None:
        assert colors.shape == (V, 3), colors.shape
        rgba = np.full((V, 4), 255, dtype=np.uint8)
        rgba[:, :3] = np.round(np.clip(colors, 0.0, 1.0) * 255.0)
        attributes["COLOR_0"] = len(blobs)
        accessors.append({"bufferView": len(blobs), "componentType": 5121, "normalized": True,
                          "count": V, "type": "VEC4"})
        blobs.append(rgba.tobytes())
    accessors.append({"bufferView": len(blobs), "componentType": 5125, "count": 3 * F,
                      "type": "SCALAR", "min": [int(idx.min())], "max": [int(idx.max())]})
    blobs.append(idx.tobytes())
    views, offset = [], 0
    for i, blob in enumerate(blobs):
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob),
                      "target": 34963 if i == len(blobs) - 1 else 34962})
        offset += len(blob) + (-len(blob) % 4)
    binary = b"".join(_pad4(blob, b"\0") for blob in blobs)
    doc = {
        "asset": {"version": "2.0", "generator": "ism3d"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": attributes, "indices": len(blobs) - 1,
                                    "material": 0, "mode": 4}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                                                "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = _pad4(json.dumps(doc, separators=(",", ":")).encode("utf-8"), b" ")
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([
        struct.pack("<4sII", b"glTF", 2, total),
        struct.pack("<I4s", len(text), b"JSON"), text,
        struct.pack("<I4s", len(binary), b"BIN\0"), binary,
    ])


def write_mesh(mesh, path: str | os.PathLike) -> Path:
    """Write a world-frame mesh as .glb or .obj in the file frame (`WORLD_TO_FILE`), atomically.

    Colours: the mesh's vertex colours are the renders' (sRGB-encoded) colours. The OBJ stores
    them as they are (`v x y z r g b`, how OBJ readers take them); the GLB stores them linear,
    as glTF's COLOR_0 is defined, so that a viewer's sRGB output shows the same colour.

    Args:
        mesh: trimesh.Trimesh in world coordinates (z-up), optional uint8 vertex colours.
        path: destination (.glb or .obj); parent folders are created.
    Returns:
        the written path.
    """
    import trimesh

    ext = _check_ext(path)
    verts = np.asarray(mesh.vertices, dtype=np.float64) @ WORLD_TO_FILE.T      # [V, 3]
    faces = np.asarray(mesh.faces, dtype=np.int64)                             # [F, 3]
    colors = None
    if mesh.visual.kind == "vertex":
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0          # [V, 3] sRGB
    if ext == ".glb":
        # a rotation keeps winding and unit normals; degenerate spots get +Y, not NaN
        normals = np.asarray(mesh.vertex_normals, dtype=np.float64) @ WORLD_TO_FILE.T
        bad = ~np.isfinite(normals).all(1) | (np.linalg.norm(normals, axis=1) < 0.5)
        normals[bad] = (0.0, 1.0, 0.0)
        data = glb_bytes(verts, faces, normals, None if colors is None else srgb_to_linear(colors))
    else:
        out = trimesh.Trimesh(verts, faces, process=False)
        if colors is not None:
            out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=mesh.visual.vertex_colors)
        data = trimesh.exchange.obj.export_obj(out, include_normals=True, include_color=True,
                                               include_texture=False).encode("utf-8")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


# ---------------------------------------------------------------------------------------------
# Textured meshes (export/mesh_texture.py): GLB with a PBR base-colour texture, OBJ + MTL + PNG
# ---------------------------------------------------------------------------------------------
def textured_glb_bytes(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray,
                       uv: np.ndarray, png: bytes) -> bytes:
    """A binary glTF 2.0 with one textured triangle primitive.

    Args:
        vertices: [V, 3] file-frame positions; faces: [F, 3] (CCW from outside); normals: [V, 3]
        unit; uv: [V, 2] in [0, 1] with v = 0 at the image's top (glTF's UV origin);
        png: the base-colour image (sRGB-encoded, as glTF's baseColorTexture is defined).
    Returns:
        the .glb bytes. Material: pbrMetallicRoughness with baseColorTexture, metallic 0 and
        roughness 1 as plain factors (we know nothing of either, and glTF's default metallic 1
        renders a dielectric object near black), double-sided off (the surface is closed).
    """
    from .splats import glb_pack

    V, F = len(vertices), len(faces)
    assert vertices.shape == (V, 3) and normals.shape == (V, 3) and uv.shape == (V, 2)
    assert faces.shape == (F, 3)
    pos = np.ascontiguousarray(vertices, dtype="<f4")
    blobs = [pos.tobytes(), np.ascontiguousarray(normals, dtype="<f4").tobytes(),
             np.ascontiguousarray(uv, dtype="<f4").tobytes(),
             np.ascontiguousarray(faces, dtype="<u4").tobytes(), png]
    views, offset = [], 0
    for i, blob in enumerate(blobs):
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(blob)}
        if i < 4:
            view["target"] = 34963 if i == 3 else 34962
        views.append(view)
        offset += len(blob) + (-len(blob) % 4)
    binary = b"".join(b + b"\0" * (-len(b) % 4) for b in blobs)
    doc = {
        "asset": {"version": "2.0", "generator": "ism3d"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2},
                                    "indices": 3, "material": 0, "mode": 4}]}],
        "materials": [{"name": "baked", "pbrMetallicRoughness": {
            "baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"bufferView": 4, "mimeType": "image/png"}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": views,
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": V, "type": "VEC3",
             "min": pos.min(0).tolist(), "max": pos.max(0).tolist()},
            {"bufferView": 1, "componentType": 5126, "count": V, "type": "VEC3"},
            {"bufferView": 2, "componentType": 5126, "count": V, "type": "VEC2"},
            {"bufferView": 3, "componentType": 5125, "count": 3 * F, "type": "SCALAR",
             "min": [int(faces.min())], "max": [int(faces.max())]},
        ],
    }
    return glb_pack(doc, binary)


def _obj_text(vertices, faces, normals, uv, mtl_name: str) -> str:
    """OBJ with v / vt (v flipped: OBJ's UV origin is the bottom left) / vn and one material."""
    f1 = faces + 1
    lines = [f"# ism3d textured mesh: y-up, front +Z, metres\nmtllib {mtl_name}\nusemtl baked\n",
             "".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in vertices),
             "".join(f"vt {u:.6f} {1.0 - v:.6f}\n" for u, v in uv),
             "".join(f"vn {x:.5f} {y:.5f} {z:.5f}\n" for x, y, z in normals),
             "".join(f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}\n" for a, b, c in f1)]
    return "".join(lines)


def write_textured_mesh(tm, path: str | os.PathLike) -> Path:
    """Write a world-frame TexturedMesh as .glb (texture inside) or .obj (+ .mtl and .png beside
    it, same stem), in the file frame, each file atomically (the .obj last, so an .obj on disk
    always finds its material and image)."""
    from .mesh_texture import png_bytes

    ext = _check_ext(path)
    path = Path(path)
    verts = tm.vertices @ WORLD_TO_FILE.T
    normals = tm.normals @ WORLD_TO_FILE.T
    bad = ~np.isfinite(normals).all(1) | (np.linalg.norm(normals, axis=1) < 0.5)
    normals[bad] = (0.0, 1.0, 0.0)
    png = png_bytes(tm.texture)
    if ext == ".glb":
        data = textured_glb_bytes(verts, tm.faces, normals, tm.uv, png)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    png_path, mtl_path = path.with_suffix(".png"), path.with_suffix(".mtl")
    mtl = ("# ism3d baked base colour\nnewmtl baked\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
           f"map_Kd {png_path.name}\n")
    atomic_write(png_path, lambda tmp: Path(tmp).write_bytes(png))
    atomic_write(mtl_path, lambda tmp: Path(tmp).write_text(mtl))
    text = _obj_text(verts, tm.faces, normals, tm.uv, mtl_path.name)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
