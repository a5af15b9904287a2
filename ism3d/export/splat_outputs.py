"""The splat files a finished run writes beside gaussians.ply (`generate.export_outputs`)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["write_splat_outputs"]


def write_splat_outputs(params, sh_degree: int, out_cfg, out: Path) -> list[Path]:
    """gaussians.spz (`output.spz`) and viewer.html (`output.viewer`) from world-frame raw
    parameters. Returns the written paths."""
    import warnings

    from .splats import SplatError, write_splats
    from .viewer import write_viewer

    written = []
    if len(params["means"]) == 0:            # an empty result is not a failed run: nothing to show
        return written
    try:
        if out_cfg.spz:
            written.append(write_splats(params, sh_degree, Path(out) / "gaussians.spz"))
        if out_cfg.viewer:
            written.append(write_viewer(params, Path(out) / "viewer.html", title=Path(out).name))
    except SplatError as e:
        warnings.warn(f"splat files not written: {e}", stacklevel=2)
    return written
