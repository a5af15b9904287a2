"""Turntable videos, GIFs and view grids: what `ism3d generate` writes and `ism3d render` makes.

Every file is written atomically: the writer fills a hidden temporary file in the destination
folder (same extension, so the writer picks the right format), which is then renamed over the
destination with `os.replace`. A failure (or Ctrl-C) removes the temporary file and leaves any
existing destination untouched; a reader never sees a half-written video.

Frames are uint8 numpy arrays `[F, H, W, 3]` (RGB) throughout.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_write  # noqa: F401  (also re-exported as ism3d.export.atomic_write)
from ..cameras import eval_ring
from ..types import CameraBatch, Gaussians

VIDEO_EXTS = (".mp4", ".gif")
IMAGE_EXTS = (".png",)


class ExportError(ValueError):
    """An export argument is not acceptable (unknown extension, bad frame array...)."""


def _check_frames(frames) -> np.ndarray:
    frames = _as_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ExportError(f"frames must be a [F, H, W, 3] array with F >= 1, got {frames.shape}")
    return frames


def _as_uint8(a) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise ExportError(f"frames/images must be uint8 (0..255), got dtype {a.dtype}")
    return np.ascontiguousarray(a)


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad [F, H, W, 3] to even H and W by repeating the last row/column (yuv420p needs it)."""
    H, W = frames.shape[1:3]
    if H % 2 == 0 and W % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
def _write_mp4(frames: np.ndarray, path: str, fps: float) -> None:
    import imageio_ffmpeg

    frames = _even(frames)
    H, W = frames.shape[1:3]
    # H.264 in yuv420p plays everywhere (browsers, QuickTime); crf 18 is visually lossless;
    # faststart puts the index first so a browser can start playing before the download ends.
    writer = imageio_ffmpeg.write_frames(
        path, (W, H), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=1, output_params=["-crf", "18", "-movflags", "+faststart"],
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _write_gif(frames: np.ndarray, path: str, fps: float) -> None:
    from PIL import Image

    # Each frame gets its own 256-colour palette by fast octree quantisation, no dithering:
    # ~5 ms per 512^2 frame, where Pillow's default (adaptive median cut on save) takes ~0.75 s
    # with a slightly larger colour error (120 frames of 512^2 here: 96 s -> 0.7 s). Pillow merges
    # consecutive IDENTICAL frames into one longer frame (the timing is kept), so a still scene
    # gives fewer frames than it was given.
    images = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE,
                                          dither=Image.Dither.NONE) for f in frames]
    duration_ms = max(int(round(1000.0 / fps)), 20)  # GIF counts in 10 ms; < 20 ms plays slowly
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=duration_ms, loop=0)


def write_video(frames, path: str | os.PathLike, fps: float = 30) -> Path:
    """Write `[F, H, W, 3]` uint8 frames as .mp4 (H.264, yuv420p) or a looping .gif, atomically.

    Args:
        frames: `[F, H, W, 3]` uint8 RGB (numpy or a CPU/GPU tensor). For .mp4 an odd H or W is
            padded by one repeated row/column (H.264 yuv420p needs even sizes).
        path: destination; the extension picks the format.
        fps: frames per second.
    Returns:
        the destination path.
    """
    frames = _check_frames(frames)
    if fps <= 0:
        raise ExportError(f"fps must be > 0, got {fps}")
    ext = Path(path).suffix.lower()
    if ext == ".mp4":
        return atomic_write(path, lambda tmp: _write_mp4(frames, tmp, fps))
    if ext == ".gif":
        return atomic_write(path, lambda tmp: _write_gif(frames, tmp, fps))
    raise ExportError(f"unknown video extension {ext!r} for {path}: use one of {', '.join(VIDEO_EXTS)}")


def write_png(image, path: str | os.PathLike) -> Path:
    """Write one `[H, W, 3]` uint8 RGB image as PNG, atomically."""
    from PIL import Image

    image = _as_uint8(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ExportError(f"image must be [H, W, 3], got {image.shape}")
    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def views_grid(frames, cols: int = 4, fill: int = 255) -> np.ndarray:
    """Tile `[F, H, W, 3]` uint8 frames row by row into a `[rows*H, cols*W, 3]` image.

    rows = ceil(F / cols); empty cells are filled with `fill` (white by default).
    """
    frames = _check_frames(frames)
    if cols < 1:
        raise ExportError(f"cols must be at least 1, got {cols}")
    F, H, W, _ = frames.shape
    rows = -(-F // cols)
    grid = np.full((rows * H, cols * W, 3), fill, dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        grid[r * H:(r + 1) * H, c * W:(c + 1) * W] = frame
    return grid


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def to_uint8(rgb: Tensor) -> np.ndarray:
    """`[C, 3, H, W]` float in [0, 1] -> `[C, H, W, 3]` uint8 numpy (clamped, rounded)."""
    assert rgb.ndim == 4 and rgb.shape[1] == 3, rgb.shape
    return (rgb.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def render_ring_frames(gaussians: Gaussians, cams: CameraBatch, background, chunk: int = 8,
                       **render_kwargs) -> np.ndarray:
    """Render every camera of `cams`, `chunk` views per renderer call, without autograd.

    Args:
        gaussians: activated gaussians (on the device to render on).
        cams: F cameras (any device; moved to the gaussians' device chunk by chunk).
        background: `[3]` colour in [0, 1] (tensor or sequence).
        chunk: views per render call (bounds the memory).
        render_kwargs: passed to `ism3d.render.render` (backend, near, far, eps2d).
    Returns:
        frames: `[F, H, W, 3]` uint8 numpy.
    """
    from ..render import render

    if chunk < 1:
        raise ExportError(f"chunk must be at least 1, got {chunk}")
    device = gaussians.means.device
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)   # [3]
    assert bg.shape == (3,), bg.shape
    out = []
    for i in range(0, len(cams), chunk):
        part = cams[i:i + chunk].to(device)
        out.append(to_uint8(render(gaussians, part, bg, **render_kwargs).rgb))
    return np.concatenate(out, axis=0)


def render_turntable(ply_path: str | os.PathLike, out_path: str | os.PathLike, frames: int = 120,
                     size: int = 512, radius: float = 3.5, fovy: float = 0.55, polar: float = 90.0,
                     background: Sequence[float] = (1.0, 1.0, 1.0), device: str = "cpu",
                     fps: float = 30, backend: str = "auto", unmarked: str = "z-up") -> Path:
    """Render a 3DGS PLY on a ring of cameras and write a video or an 8-view grid.
    `unmarked`: the frame of a PLY that does not name its own (ply.load_ply).

    The extension of `out_path` picks the output: .mp4 / .gif -> a turntable of `frames` views
    (starting at the front, counter-clockwise seen from above); .png -> the 8 views at
    0, 45, ..., 315 degrees tiled 4 x 2.

    Args:
        ply_path: a standard (INRIA layout) 3DGS .ply file.
        out_path: destination file (.mp4, .gif or .png).
        frames: number of video frames (one full turn).
        size: frame width and height in pixels.
        radius, fovy, polar: camera distance, vertical FoV (radians), polar angle (degrees).
        background: RGB in [0, 1].
        device: torch device to render on.
        fps: video frame rate.
        backend: renderer backend (auto | gsplat | torch).
    Returns:
        the written path.
    Raises:
        ExportError: unknown extension (checked before anything is loaded or rendered).
    """
    from ..ply import load_ply
    from ..scene import activate

    ext = Path(out_path).suffix.lower()
    allowed = VIDEO_EXTS + IMAGE_EXTS
    if ext not in allowed:
        raise ExportError(f"cannot write {out_path}: the extension must be one of {', '.join(allowed)}")
    if frames < 1:
        raise ExportError(f"frames must be at least 1, got {frames}")
    params, sh_degree = load_ply(ply_path, unmarked=unmarked)
    params = params.to(device)
    gaussians = activate(params, sh_degree)
    n = 8 if ext in IMAGE_EXTS else frames
    cams = eval_ring(n, size, size, radius, fovy, polar)
    images = render_ring_frames(gaussians, cams, background, backend=backend)
    if ext in IMAGE_EXTS:
        return write_png(views_grid(images, cols=4), out_path)
    return write_video(images, out_path, fps)
