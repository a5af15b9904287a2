"""The runs `ism3d score` reads: find them, read their prompt and config, get their ring views.

A run is a folder `ism3d generate` (or `ism3d batch`) finished: summary.json with status "done"
and the prompt, gaussians.ply, and config.yaml (the eval ring's radius, field of view and polar
angle come from its `camera` section; the defaults if it is missing). A ROOT is a folder whose
direct subfolders hold runs (e.g. a batch folder, or the web app's outputs/); stopped runs and
other folders in a ROOT are skipped and listed.

Views (`ring_views`): the run's gaussians rendered on the fixed eval ring (`cameras.eval_ring`:
`views` views evenly spaced in azimuth from the front, camera.eval_radius, camera.eval_fovy,
camera.eval_polars[0], the turntable's ring) at `size` x `size` over white, with
`export.views.render_views` (what `ism3d render` uses). If the run holds a folder of renders
written by `ism3d render RUN/gaussians.ply --out RUN/<renders>` (rgb_0.png .. rgb_{M-1}.png,
M a multiple of `views`), every (M / views)-th image is read instead: the same azimuths.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .clip import ScoreError

__all__ = ["Run", "find_runs", "read_run", "ring_views", "RUN_SCORE_FILE", "ply_stamp",
           "read_run_score", "score_text"]

RUN_SCORE_FILE = "clip_score.json"
_RGB = re.compile(r"^rgb_(\d+)\.png$")


@dataclass
class Run:
    """A finished run folder, read (not loaded)."""
    path: Path
    prompt: str
    summary: dict
    config: dict = field(default_factory=dict)   # config.yaml as sections (empty if missing)

    def camera(self, key: str, default):
        return self.config.get("camera", {}).get(key, default)


def read_run(folder: Path) -> Run | None:
    """The run in `folder`, or None if it holds no finished run."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status", "done") != "done" \
            or not isinstance(summary.get("prompt"), str) or not summary["prompt"].strip() \
            or not (folder / "gaussians.ply").is_file():
        return None
    config = {}
    if (folder / "config.yaml").is_file():
        import yaml
        try:
            data = yaml.safe_load((folder / "config.yaml").read_text())
            config = data if isinstance(data, dict) else {}
        except (OSError, yaml.YAMLError):
            config = {}
    return Run(folder, summary["prompt"].strip(), summary, config)


def find_runs(args: list[str]) -> tuple[list[Run], list[str]]:
    """RUN_OR_ROOT arguments -> (runs in argument order, then folder-name order; skipped notes).

    Raises:
        ScoreError: an argument that is not a folder, or a folder that is neither a finished run
        nor holds one (a stopped run says so), or no runs at all.
    """
    runs, skipped, seen = [], [], set()
    for arg in args:
        d = Path(arg)
        if not d.is_dir():
            raise ScoreError(f"{arg}: no such folder (give run folders or folders of runs)")
        run = read_run(d)
        if run is None and (d / "summary.json").is_file():
            raise ScoreError(f"{arg}: summary.json is not a finished run with a prompt and "
                             "gaussians.ply")
        if run is None and (d / "progress.json").is_file():
            raise ScoreError(f"{arg}: a stopped run (progress.json): finish it first with "
                             "ism3d generate ... --resume")
        found = [run] if run is not None else []
        if run is None:
            for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink()):
                r = read_run(sub)
                if r is not None:
                    found.append(r)
                elif (sub / "progress.json").is_file() or (sub / "summary.json").is_file():
                    skipped.append(f"{sub}: not a finished run")
            if not found:
                raise ScoreError(f"{arg}: not a run folder (no summary.json) and holds no "
                                 "finished run")
        for r in found:
            key = r.path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(r)
    return runs, skipped


def _render_folder(folder: Path, views: int) -> list[Path] | None:
    """rgb_{k}.png paths of the `views` ring azimuths from an `ism3d render` folder, or None."""
    if not folder.is_dir():
        return None
    ks = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _RGB.match(p.name)))
    M = len(ks)
    if M == 0 or ks != list(range(M)) or M % views:
        return None
    return [folder / f"rgb_{k * (M // views)}.png" for k in range(views)]


def ring_views(run: Run, views: int, size: int, device: str = "cpu",
               renders: str | None = "ring") -> tuple[np.ndarray, str]:
    """The run's `views` ring images, uint8 [V, S, S, 3], and where they came from.

    Returns:
        (images, source): source is "rendered" or the renders folder that was read.
    """
    import torch

    from ..cameras import eval_ring
    from ..export.views import render_views
    from ..ply import PlyError, load_ply
    from ..scene import activate

    if renders:
        files = _render_folder(run.path / renders, views)
        if files is not None:
            from PIL import Image
            imgs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
            if len({im.shape for im in imgs}) == 1:
                return np.stack(imgs), str(run.path / renders)
    try:
        params, sh_degree = load_ply(run.path / "gaussians.ply")
    except PlyError as e:
        raise ScoreError(f"{run.path}: {e}") from None
    polars = run.camera("eval_polars", [90.0]) or [90.0]
    cams = eval_ring(views, size, size, float(run.camera("eval_radius", 3.5)),
                     float(run.camera("eval_fovy", 0.55)), polar=float(polars[0]))
    with torch.no_grad():
        g = activate(params.to(device), sh_degree)
        images = render_views(g, cams, ("rgb",), background=(1.0, 1.0, 1.0))["rgb"]
    return images, "rendered"


def ply_stamp(run_dir: Path) -> dict:
    """Size and modification time of gaussians.ply: a score file of another PLY is stale."""
    st = (Path(run_dir) / "gaussians.ply").stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_run_score(run_dir: str | Path) -> dict | None:
    """RUN/clip_score.json if present, readable and of the run's current gaussians.ply, else
    None (what the batch gallery and the web app show)."""
    d = Path(run_dir)
    try:
        data = json.loads((d / RUN_SCORE_FILE).read_text())
        if not isinstance(data, dict) or data.get("ply") != ply_stamp(d):
            return None
    except (OSError, ValueError):
        return None
    return data


def score_text(run_dir: str | Path, short: bool = False) -> str | None:
    """One line for a UI, "CLIP score 0.2731 · R-precision 40% of views (MODEL, 120 views,
    31 captions)" (short: "CLIP 0.2731"), when the run has a current RUN/clip_score.json;
    else None."""
    rec = read_run_score(run_dir)
    if rec is None or rec.get("clip_score") is None:
        return None
    if short:
        return f"CLIP {rec['clip_score']:.4f}"
    views = len((rec.get("views") or {}).get("rank") or [])
    return (f"CLIP score {rec['clip_score']:.4f} · R-precision "
            f"{100 * (rec.get('r_precision_views') or 0):.0f}% of views ({rec.get('clip_model')}, "
            f"{views} views, {rec.get('captions')} captions)")
