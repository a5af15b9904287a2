"""ROOT/index.json and ROOT/index.html of `ism3d batch`, both written atomically.

index.json (format "ism3d-batch/1"):
    {"format", "prompts_file", "updated_at", "complete": no job pending or running,
     "counts": {status: n}, "runs": [one entry per prompt line, in file order]}
    an entry: line, prompt, seed, preset, negative_prompt, overrides (the line's own), run (folder),
    status (pending | running | done | failed | stopped), attempts, error, log, files (gif, ply,
    glb, mp4, views: paths relative to ROOT, only those that exist), wall_seconds,
    peak_memory_bytes, iterations, iterations_planned, num_gaussians, resumed_from_step,
    started_at, finished_at, placement {host, pid, cuda_visible_devices}; and, once `ism3d score`
    or `ism3d bench` scored the run, score {clip_model, clip_score, clip_score_trimmed,
    r_precision_views, r_precision_run, views, captions} (from RUN/clip_score.json).

index.html is a self-contained gallery of the same entries (turntable GIF, prompt, seed, time,
peak memory, status, error, links to the PLY/GLB and the log), with relative links, so ROOT can be
moved or served as it is. While jobs are pending it reloads itself every 20 seconds.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from ..atomic import write_text_atomic

FORMAT = "ism3d-batch/1"
STATUSES = ("pending", "running", "done", "failed", "stopped")
OUTPUT_FILES = {"gif": "turntable.gif", "mp4": "turntable.mp4", "views": "views.png",
                "ply": "gaussians.ply", "glb": "mesh.glb"}


def output_files(root: Path, run: str) -> dict[str, str]:
    """The run's outputs that exist, as paths relative to ROOT."""
    return {k: f"{run}/{name}" for k, name in OUTPUT_FILES.items() if (root / run / name).is_file()}


def make_index(entries: list[dict], prompts_file: str, updated_at: str) -> dict:
    counts = {s: sum(e["status"] == s for e in entries) for s in STATUSES}
    return {"format": FORMAT, "prompts_file": prompts_file, "updated_at": updated_at,
            "complete": counts["pending"] == 0 and counts["running"] == 0,
            "counts": counts, "runs": entries}


def write_index(root: Path, index: dict) -> None:
    """Write ROOT/index.json and ROOT/index.html (each to a temporary name, then renamed)."""
    root = Path(root)
    attach_scores(root, index)
    write_text_atomic(root / "index.json", json.dumps(index, indent=2) + "\n")
    write_text_atomic(root / "index.html", render_html(index))


SCORE_KEYS = ("clip_model", "clip_score", "clip_score_trimmed", "r_precision_views",
              "r_precision_run", "views", "captions")


def attach_scores(root: Path, index: dict) -> None:
    """Set entry["score"] from RUN/clip_score.json (`ism3d score`) where the run has a current
    one; leave entries without one as they are."""
    from ..score.runs import read_run_score

    for e in index.get("runs", []):
        rec = read_run_score(Path(root) / e["run"]) if e.get("run") else None
        if rec is not None:
            e["score"] = {k: (len(rec[k]["rank"]) if k == "views" else rec.get(k))
                          for k in SCORE_KEYS}
        else:
            e.pop("score", None)


def read_index(root: Path) -> dict | None:
    try:
        data = json.loads((Path(root) / "index.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def render_html(index: dict) -> str:
    esc = html.escape
    c = index["counts"]
    summary = ", ".join(f"{c[s]} {s}" for s in STATUSES if c.get(s))
    cards = "\n".join(_card(e) for e in index["runs"])
    refresh = "" if index["complete"] else '<meta http-equiv="refresh" content="20">\n'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
{refresh}<title>ism3d batch: {esc(Path(index['prompts_file']).name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1em; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em; }}
.card img {{ width: 100%; aspect-ratio: 1; object-fit: contain; background: #fff; }}
.empty {{ width: 100%; aspect-ratio: 1; display: flex; align-items: center;
          justify-content: center; background: #eee; color: #888; }}
.prompt {{ font-weight: 600; margin: .4em 0; }}
.meta, .links {{ font-size: .85em; color: #555; }}
.score {{ font-size: .85em; color: #235; }}
.error {{ font-size: .85em; color: #a00; white-space: pre-wrap; word-break: break-word; }}
.status {{ font-size: .8em; padding: 0 .4em; border-radius: 3px; color: #fff; }}
.done {{ background: #2a7; }} .failed {{ background: #c33; }} .running {{ background: #27c; }}
.pending {{ background: #999; }} .stopped {{ background: #c80; }}
</style></head><body>
<h1>ism3d batch</h1>
<p>{esc(index['prompts_file'])}: {esc(summary)} &middot; updated {esc(index['updated_at'])}</p>
<div class="grid">
{cards}
</div>
</body></html>
"""


def _card(e: dict) -> str:
    esc = html.escape
    files = e.get("files") or {}
    if "gif" in files:
        img = f'<img src="{esc(files["gif"])}" alt="{esc(e["prompt"])}" loading="lazy">'
    elif "views" in files:
        img = f'<img src="{esc(files["views"])}" alt="{esc(e["prompt"])}" loading="lazy">'
    else:
        img = f'<div class="empty">{esc(e["status"])}</div>'
    meta = [f"line {e['line']}", f"seed {e['seed']}", esc(e["preset"])]
    if e.get("wall_seconds") is not None:
        meta.append(_duration(e["wall_seconds"]))
    if e.get("peak_memory_bytes"):
        meta.append(f"peak {_bytes(e['peak_memory_bytes'])}")
    if e.get("attempts", 0) > 1:
        meta.append(f"{e['attempts']} attempts")
    sc = e.get("score")
    score = ""
    if sc and sc.get("clip_score") is not None:
        score = (f'<div class="score" title="{esc(str(sc.get("clip_model")))}, '
                 f'{sc.get("views")} views, {sc.get("captions")} captions">CLIP score '
                 f'{sc["clip_score"]:.4f} &middot; R-precision '
                 f'{100 * (sc.get("r_precision_views") or 0):.0f}% of views</div>')
    links = [f'<a href="{esc(files[k])}">{label}</a>' for k, label in
             (("ply", "PLY"), ("glb", "GLB"), ("mp4", "MP4")) if k in files]
    if e.get("log"):
        links.append(f'<a href="{esc(e["log"])}">log</a>')
    error = f'<div class="error">{esc(e["error"])}</div>' if e.get("error") else ""
    status = esc(e["status"])
    return (f'<div class="card" id="{esc(e["run"])}">{img}'
            f'<div class="prompt">{esc(e["prompt"])}</div>'
            f'<div class="meta"><span class="status {status}">{status}</span> '
            f'{" &middot; ".join(meta)}</div>{score}{error}'
            f'<div class="links">{" &middot; ".join(links)}</div></div>')


def _duration(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _bytes(n: int) -> str:
    for unit, k in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"
