"""Exports: turntable video / GIF / view grid (video.py). Other exporters live beside it."""
from .video import (
    ExportError,
    atomic_write,
    render_ring_frames,
    render_turntable,
    views_grid,
    write_png,
    write_video,
)

__all__ = [
    "ExportError", "atomic_write", "render_ring_frames", "render_turntable", "views_grid",
    "write_png", "write_video",
]
