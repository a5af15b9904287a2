"""Run folders under the web app's ROOT: create, name-check, list and read them.

Safety: run folder names come from `slugify(prompt)` plus `_2`, `_3`, ... when taken (created with
an atomic mkdir, so two jobs never share a folder and no earlier run is overwritten); a run picked
in the UI is named by its folder name and must be a direct child of ROOT (`run_dir_of`).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import config as C
from ..generate import slugify
from ..runlock import LOCK_FILE
from ..train import CHECKPOINT, has_checkpoint, load_resume_checkpoint
from .form import AppError

def new_run_dir(root: str | Path, prompt: str) -> Path:
    """Create and return an empty folder ROOT/<slug> for a new run: `slugify(prompt)`, then
    `<slug>_2`, `<slug>_3`, ... if taken. mkdir is atomic, so concurrent jobs get distinct folders
    and an existing run is never reused or overwritten."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = slugify(prompt)
    for k in range(1, 10_000):
        path = root / (base if k == 1 else f"{base}_{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AppError(f"{root} holds too many runs named {base}_*; choose another output root")


def run_dir_of(root: str | Path, name: str) -> Path:
    """The folder of the run called `name` (a folder name picked in the UI), checked to be a real,
    direct child of ROOT: no separators, no '..', no symlink out of ROOT. Raises AppError."""
    if (not isinstance(name, str) or not name or name in (".", "..")
            or any(c in name for c in "/\\\x00")):
        raise AppError(f"{name!r} is not a run name: pick a run from the gallery")
    root = Path(root).resolve()
    path = root / name
    if path.is_symlink() or not path.is_dir() or path.resolve().parent != root:
        raise AppError(f"there is no run {name!r} in {root}: pick a run from the gallery")
    return path


@dataclass
class RunFiles:
    """The outputs a run folder holds (None where missing)."""
    ply: Path | None
    glb: Path | None
    mp4: Path | None
    gif: Path | None
    views: Path | None
    summary: Path | None
    progress: Path | None
    checkpoint: Path | None
    preview: Path | None          # the newest training preview


def run_files(run_dir: str | Path) -> RunFiles:
    d = Path(run_dir)

    def f(rel: str) -> Path | None:
        p = d / rel
        return p if p.is_file() else None

    previews = sorted((d / "previews").glob("step_*.png")) if (d / "previews").is_dir() else []
    return RunFiles(ply=f("gaussians.ply"), glb=f("mesh.glb"), mp4=f("turntable.mp4"),
                    gif=f("turntable.gif"), views=f("views.png"), summary=f("summary.json"),
                    progress=f("progress.json"), checkpoint=f(CHECKPOINT),
                    preview=previews[-1] if previews else None)


def read_record(run_dir: str | Path) -> dict | None:
    """summary.json (a finished run) or else progress.json (a stopped one), or None."""
    for name in ("summary.json", "progress.json"):
        p = Path(run_dir) / name
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                data.setdefault("status", "done" if name == "summary.json" else "stopped")
                return data
    return None


@dataclass
class RunInfo:
    """One gallery entry."""
    name: str
    path: Path
    prompt: str
    status: str                   # done | stopped | running
    step: int
    total: int
    updated: float                # seconds since the epoch (the record's mtime)
    image: Path | None            # views.png, else the newest preview


def list_runs(root: str | Path, active: dict[str, str] | None = None) -> list[RunInfo]:
    """Runs under ROOT with a summary.json or progress.json, plus the `active` ones ({folder name:
    prompt}, shown as running), newest first."""
    root, active = Path(root), active or {}
    if not root.is_dir():
        return []
    runs = []
    for d in root.iterdir():
        if d.is_symlink() or not d.is_dir():
            continue
        rec = read_record(d)
        if rec is None and d.name not in active:
            continue
        rec = rec or {}
        files = run_files(d)
        stamp = files.summary or files.progress or d
        runs.append(RunInfo(
            name=d.name, path=d, prompt=str(rec.get("prompt", active.get(d.name, d.name))),
            status="running" if d.name in active else str(rec.get("status", "stopped")),
            step=int(rec.get("iterations", 0) or 0),
            total=int(rec.get("iterations_planned", 0) or 0),
            updated=stamp.stat().st_mtime, image=files.views or files.preview))
    runs.sort(key=lambda r: (r.status == "running", r.updated, r.name), reverse=True)
    return runs


def _remove_if_empty(run_dir: Path) -> None:
    """Remove a folder this app created if it holds no result (only config.yaml, the run lock
    or nothing)."""
    if run_dir.is_dir() and not any(p.is_file() and p.name not in ("config.yaml", LOCK_FILE)
                                    for p in run_dir.rglob("*")):
        shutil.rmtree(run_dir, ignore_errors=True)


def saved_run(run_dir: Path) -> tuple[str, C.Config, str]:
    """(prompt, config, preset) of a stopped run, for resuming it. Raises AppError/ConfigError."""
    if (run_dir / "summary.json").is_file():
        raise AppError(f"run {run_dir.name!r} is finished: there is nothing to resume")
    if not has_checkpoint(run_dir):
        raise AppError(f"run {run_dir.name!r} has no checkpoint to resume from")
    cfg = C.load_config_file(run_dir / "config.yaml")
    rec = read_record(run_dir) or {}
    prompt = rec.get("prompt")
    if not isinstance(prompt, str):
        ckpt, _ = load_resume_checkpoint(run_dir)     # data only; CheckpointError: one line
        prompt = ckpt["prompt"] if ckpt is not None else ""
    return prompt, cfg, str(rec.get("preset", "custom"))
