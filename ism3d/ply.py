"""PLY files: the INRIA 3DGS layout for gaussians, and plain vertex reading for point clouds.

Our own reader/writer on numpy structured dtypes (no plyfile dependency).

3DGS layout (what INRIA's `save_ply`, gsplat's exporter and most viewers use): one element
`vertex` with N rows of float32 properties, binary_little_endian, in this order

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}  opacity
    scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

holding the raw (pre-activation) parameters: log scales, logit opacity, unnormalised (w, x, y, z)
quaternion, SH coefficients. K = (sh_degree + 1)^2. The normals are written as zeros.

f_rest order is channel-major, as INRIA writes it (it stores features_rest as [N, K-1, 3],
transposes to [N, 3, K-1] and flattens): all K-1 coefficients of R, then those of G, then B:

    f_rest_{c * (K-1) + k} = shN[:, k, c]        c in {0: R, 1: G, 2: B}, k in 0..K-2

Frame. Our writer marks the coordinate frame of the gaussians in the header, one comment line
`comment ism3d frame F` (F in y-down, z-up, y-up; ism3d/frames.py), and turns them from the
trainer's world (z-up) into F; `load_ply` reads the mark and turns them back, so every caller
sees the world frame whatever the file holds. A file without the mark (other tools' PLYs, ours
before the mark existed) is read in the frame the caller names (`unmarked=`, z-up by default:
the raw values).

Reading accepts ascii, binary_little_endian and binary_big_endian files with any scalar vertex
properties (`read_ply_vertices`); list properties (mesh faces) are parsed only to skip them.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write

__all__ = [
    "PlyError", "PlyElement", "PlyHeader", "read_ply_header", "read_ply_vertices",
    "gs_property_names", "is_gaussian_ply", "save_ply", "load_ply", "read_ply_frame",
]

GS_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")

# PLY scalar type names -> numpy type codes (without byte order).
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_MAX_HEADER_BYTES = 1 << 20


class PlyError(ValueError):
    """A PLY file is missing, unreadable, truncated, not a PLY, or lacks the needed properties."""


@dataclass
class PlyProperty:
    name: str
    dtype: str                      # numpy code without byte order, e.g. "f4"
    count_dtype: str | None = None  # set for list properties: the type of the length prefix


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[PlyProperty] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.properties]

    @property
    def has_lists(self) -> bool:
        return any(p.count_dtype is not None for p in self.properties)


@dataclass
class PlyHeader:
    path: str
    format: str              # ascii | binary_little_endian | binary_big_endian
    elements: list[PlyElement]
    data_offset: int         # byte offset of the first data byte (just after end_header\n)
    comments: list[str] = field(default_factory=list)   # text after `comment `, in order

    def element(self, name: str) -> PlyElement | None:
        return next((e for e in self.elements if e.name == name), None)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def read_ply_header(path: str | os.PathLike) -> PlyHeader:
    """Parse the header of a PLY file.

    Raises:
        PlyError: missing/unreadable file, no `ply` magic, or a malformed header.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            magic = f.readline(16)
            if magic.rstrip(b"\r\n") != b"ply":
                raise PlyError(f"{path}: not a PLY file (it does not start with 'ply')")
            lines: list[str] = []
            while True:
                raw = f.readline(_MAX_HEADER_BYTES)
                if not raw:
                    raise PlyError(f"{path}: truncated PLY header (no end_header line)")
                if f.tell() > _MAX_HEADER_BYTES:
                    raise PlyError(f"{path}: PLY header longer than 1 MiB (no end_header line)")
                try:
                    line = raw.decode("ascii").strip()
                except UnicodeDecodeError:
                    raise PlyError(f"{path}: PLY header holds non-ASCII bytes") from None
                if line == "end_header":
                    data_offset = f.tell()
                    break
                lines.append(line)
    except FileNotFoundError:
        raise PlyError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise PlyError(f"{path}: is a directory, not a PLY file") from None
    except OSError as e:
        raise PlyError(f"{path}: cannot read ({e.strerror or e})") from None

    fmt = None
    elements: list[PlyElement] = []
    comments: list[str] = []
    for line in lines:
        words = line.split()
        if words and words[0] == "comment":
            comments.append(line[len("comment"):].strip())
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise PlyError(f"{path}: unsupported PLY format line {line!r}")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyError(f"{path}: malformed PLY element line {line!r}")
            elements.append(PlyElement(words[1], int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise PlyError(f"{path}: PLY property before any element: {line!r}")
            if len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].properties.append(PlyProperty(words[2], _PLY_TYPES[words[1]]))
            elif (len(words) == 5 and words[1] == "list" and words[2] in _PLY_TYPES
                  and words[3] in _PLY_TYPES):
                elements[-1].properties.append(
                    PlyProperty(words[4], _PLY_TYPES[words[3]], _PLY_TYPES[words[2]]))
            else:
                raise PlyError(f"{path}: unsupported PLY property line {line!r}")
        else:
            raise PlyError(f"{path}: unknown PLY header line {line!r}")
    if fmt is None:
        raise PlyError(f"{path}: PLY header has no format line")
    return PlyHeader(path, fmt, elements, data_offset, comments)


def _skip_binary_element(buf: memoryview, offset: int, el: PlyElement, bo: str, path: str) -> int:
    """Byte offset just after element `el` starting at `offset` (row by row if it has lists)."""
    if not el.has_lists:
        return offset + el.count * sum(np.dtype(p.dtype).itemsize for p in el.properties)
    for _ in range(el.count):
        for p in el.properties:
            if p.count_dtype is None:
                offset += np.dtype(p.dtype).itemsize
                continue
            cdt = np.dtype(bo + p.count_dtype)
            if offset + cdt.itemsize > len(buf):
                raise PlyError(f"{path}: truncated PLY data in element {el.name!r}")
            n = int(np.frombuffer(buf, cdt, count=1, offset=offset)[0])
            offset += cdt.itemsize + n * np.dtype(p.dtype).itemsize
    return offset


def read_ply_vertices(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All scalar properties of the `vertex` element, by name, as native-endian numpy arrays.

    Works for ascii, binary_little_endian and binary_big_endian files; values keep their file
    dtype (float32 stays float32, uchar colours stay uint8). Other elements (e.g. faces) are
    skipped.

    Returns:
        {property name: array [N]}

    Raises:
        PlyError: not a PLY, no vertex element, list-valued vertex properties, or truncated data.
    """
    header = read_ply_header(path)
    path = header.path
    vertex = header.element("vertex")
    if vertex is None:
        raise PlyError(f"{path}: PLY file has no 'vertex' element")
    if vertex.has_lists:
        raise PlyError(f"{path}: PLY vertex element has list properties, which are not supported")
    names = vertex.names
    if len(set(names)) != len(names):
        raise PlyError(f"{path}: PLY vertex element repeats a property name")
    index = header.elements.index(vertex)
    try:
        with open(path, "rb") as f:
            f.seek(header.data_offset)
            data = f.read()
    except OSError as e:
        raise PlyError(f"{path}: cannot read ({e.strerror or e})") from None

    if header.format == "ascii":
        return _read_ascii_vertices(data, header, index, path)

    bo = _FORMATS[header.format]
    buf = memoryview(data)
    offset = 0
    for el in header.elements[:index]:
        offset = _skip_binary_element(buf, offset, el, bo, path)
    dtype = np.dtype([(p.name, bo + p.dtype) for p in vertex.properties])
    need = vertex.count * dtype.itemsize
    if offset + need > len(buf):
        raise PlyError(
            f"{path}: truncated PLY file: the vertex element needs {need} bytes, "
            f"{max(len(buf) - offset, 0)} are left")
    rows = np.frombuffer(buf, dtype, count=vertex.count, offset=offset)
    # Copy each column into a native-endian, writable array (exact for every type).
    return {p.name: rows[p.name].astype(np.dtype(p.dtype), copy=True) for p in vertex.properties}


def _read_ascii_vertices(data: bytes, header: PlyHeader, index: int, path: str) -> dict:
    try:
        lines = [ln for ln in data.decode("ascii").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise PlyError(f"{path}: ascii PLY body holds non-ASCII bytes") from None
    start = sum(el.count for el in header.elements[:index])  # one line per row in ascii PLY
    vertex = header.elements[index]
    rows = lines[start:start + vertex.count]
    if len(rows) < vertex.count:
        raise PlyError(f"{path}: truncated PLY file: expected {vertex.count} vertex lines, "
                       f"found {len(rows)}")
    nprop = len(vertex.properties)
    tokens = [ln.split() for ln in rows]
    bad = next((i for i, t in enumerate(tokens) if len(t) != nprop), None)
    if bad is not None:
        raise PlyError(f"{path}: vertex line {bad} has {len(tokens[bad])} values, "
                       f"expected {nprop}")
    table = np.array(tokens, dtype=object).reshape(vertex.count, nprop)
    out = {}
    for j, p in enumerate(vertex.properties):
        try:
            if p.dtype.startswith("f"):
                out[p.name] = np.array(table[:, j].astype(str), dtype=np.float64).astype(p.dtype)
            else:
                out[p.name] = np.array([int(v) for v in table[:, j]], dtype=p.dtype)
        except (ValueError, OverflowError):
            raise PlyError(f"{path}: vertex property {p.name!r} holds a non-numeric "
                           "value") from None
    return out


# ---------------------------------------------------------------------------------------------
# The 3DGS layout
# ---------------------------------------------------------------------------------------------
def gs_property_names(sh_degree: int) -> list[str]:
    """The INRIA 3DGS vertex property names, in file order, for SH degree `sh_degree`."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


_GS_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def _gs_degree(header: PlyHeader) -> int:
    """SH degree of a 3DGS PLY, or PlyError naming what is missing."""
    vertex = header.element("vertex")
    if vertex is None:
        raise PlyError(f"{header.path}: PLY file has no 'vertex' element")
    names = set(vertex.names)
    missing = [n for n in _GS_REQUIRED if n not in names]
    if missing:
        raise PlyError(f"{header.path}: not a 3D gaussian splatting PLY "
                       f"(missing properties {', '.join(missing)})")
    n_rest = sum(1 for n in names if n.startswith("f_rest_"))
    k = n_rest // 3 + 1
    deg = math.isqrt(k) - 1
    if n_rest % 3 or (deg + 1) ** 2 != k or any(f"f_rest_{i}" not in names for i in range(n_rest)):
        raise PlyError(f"{header.path}: {n_rest} f_rest_* properties do not match any SH degree "
                       f"(expected f_rest_0..f_rest_{{3*((d+1)^2-1)-1}})")
    return deg


def is_gaussian_ply(path: str | os.PathLike) -> bool:
    """True if `path` is a PLY whose vertices carry the 3DGS properties (reads the header only)."""
    header = read_ply_header(path)
    try:
        _gs_degree(header)
    except PlyError:
        return False
    return True


def save_ply(path: str | os.PathLike, params: Mapping[str, Tensor], sh_degree: int,
             frame: str = "z-up", pad_degree: int | None = None) -> None:
    """Write gaussians in the INRIA 3DGS layout (binary little-endian float32), atomically.

    Args:
        path: output file; parent folders are created. Written to a temporary file in the same
            folder, then moved over `path` (os.replace), so a reader never sees half a file.
        params: a ParameterDict (or dict of tensors) of raw parameters:
            means [N, 3], scales [N, 3] (log), quats [N, 4] (raw w x y z), opacities [N] (logit),
            sh0 [N, 1, 3], shN [N, K-1, 3] with K = (sh_degree + 1)^2.
        sh_degree: SH degree of the params (must match shN).
        frame: the file's frame (ism3d/frames.py): "z-up" writes the world-frame values as they
            are (bitwise), "y-down" (the 3DGS viewers' convention) or "y-up" turns them first.
            Either way the header says which (`comment ism3d frame F`).
        pad_degree: write at least this SH degree, the extra f_rest coefficients zero (some
            viewers accept only degree-3 files); None or <= sh_degree writes sh_degree.
    """
    from .frames import to_frame

    missing = [k for k in GS_KEYS if k not in params]
    if missing:
        raise ValueError(f"save_ply: params lack {', '.join(missing)}")
    if pad_degree is not None and not 0 <= pad_degree <= 3:
        raise ValueError(f"save_ply: pad_degree must be 0..3, got {pad_degree}")
    t = {k: params[k].detach().to("cpu", torch.float32) for k in GS_KEYS}
    if frame != "z-up":
        t = {k: v.to(torch.float32) for k, v in to_frame(t, frame).items()}
    if pad_degree is not None and pad_degree > sh_degree:
        n, k1 = t["shN"].shape[0], (pad_degree + 1) ** 2 - 1
        t["shN"] = torch.cat([t["shN"], torch.zeros(n, k1 - t["shN"].shape[1], 3)], 1)
        sh_degree = pad_degree
    n = t["means"].shape[0]
    k1 = (sh_degree + 1) ** 2 - 1
    assert t["means"].shape == (n, 3), t["means"].shape
    assert t["scales"].shape == (n, 3), t["scales"].shape
    assert t["quats"].shape == (n, 4), t["quats"].shape
    assert t["opacities"].shape == (n,), t["opacities"].shape
    assert t["sh0"].shape == (n, 1, 3), t["sh0"].shape
    assert t["shN"].shape == (n, k1, 3), (t["shN"].shape, sh_degree)

    # [N, P] float32 columns in file order; shN [N, K-1, 3] -> [N, 3, K-1] -> channel-major.
    cols = torch.cat([
        t["means"], torch.zeros(n, 3), t["sh0"].reshape(n, 3),
        t["shN"].transpose(1, 2).reshape(n, 3 * k1),
        t["opacities"][:, None], t["scales"], t["quats"],
    ], dim=1)
    names = gs_property_names(sh_degree)
    assert cols.shape == (n, len(names))
    body = np.ascontiguousarray(cols.numpy(), dtype="<f4").tobytes()
    head = "".join(["ply\n", "format binary_little_endian 1.0\n", f"comment ism3d frame {frame}\n",
                    f"element vertex {n}\n"]
                   + [f"property float {name}\n" for name in names] + ["end_header\n"])

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(head.encode("ascii"))
            f.write(body)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def read_ply_frame(path: str | os.PathLike) -> str | None:
    """The frame our writer marked in the header (`comment ism3d frame F`), or None."""
    from .frames import FRAMES

    for c in read_ply_header(path).comments:
        words = c.split()
        if len(words) == 3 and words[:2] == ["ism3d", "frame"] and words[2] in FRAMES:
            return words[2]
    return None


def load_ply(path: str | os.PathLike, unmarked: str = "z-up") -> tuple[torch.nn.ParameterDict, int]:
    """Read a 3DGS PLY (any PLY format) back into raw parameters, in the world frame (z-up).

    Returns:
        (params, sh_degree): a ParameterDict with means [N, 3], scales [N, 3], quats [N, 4],
        opacities [N], sh0 [N, 1, 3], shN [N, K-1, 3] (float32, on the CPU), and the SH degree
        given by the number of f_rest_* properties. A file written by `save_ply` in frame z-up
        reads back bitwise equal; one in another frame is turned back (float64, then rounded).
    Args:
        unmarked: the frame of a file without our mark (frames.FRAMES), e.g. "y-down" for a
            PLY made by another 3DGS tool.

    Raises:
        PlyError: not a PLY, truncated, or missing the 3DGS properties.
    """
    header = read_ply_header(path)
    deg = _gs_degree(header)
    v = read_ply_vertices(path)
    k1 = (deg + 1) ** 2 - 1

    def stack(names: list[str]) -> Tensor:  # [N, len(names)] float32
        return torch.from_numpy(np.stack([v[m].astype(np.float32) for m in names], axis=1))

    n = len(v["x"])
    rest = stack([f"f_rest_{i}" for i in range(3 * k1)]) if k1 else torch.zeros(n, 0)
    tensors = {
        "means": stack(["x", "y", "z"]),
        "scales": stack(["scale_0", "scale_1", "scale_2"]),
        "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": stack(["opacity"])[:, 0].contiguous(),
        "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        # channel-major [N, 3*(K-1)] -> [N, 3, K-1] -> [N, K-1, 3]
        "shN": rest.reshape(n, 3, k1).transpose(1, 2).contiguous(),
    }
    frame = read_ply_frame(path) or unmarked
    if frame != "z-up":
        from .frames import from_frame
        tensors = {k: v.to(torch.float32).contiguous() for k, v in from_frame(tensors, frame).items()}
    return torch.nn.ParameterDict({k: torch.nn.Parameter(x) for k, x in tensors.items()}), deg
