"""The outputs of `ism3d score`: the report JSON, its Markdown table, and one file per run.

    OUT.json            the report (`runner.score_runs`): CLIP model, protocol, caption set,
                        aggregate, per-config groups, every run with per-view numbers
    OUT.md              the same as tables: by config, then per asset
    RUN/clip_score.json the run's own numbers, the CLIP and protocol they came from, and the
                        size/mtime of the gaussians.ply they score (what the batch gallery and
                        the web app show; ignored once the PLY changes)
Every file is written to a temporary name and renamed (ism3d/atomic.py), and only after every run
was scored, so a failed or interrupted score leaves the previous files as they were.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text_atomic
from .runs import RUN_SCORE_FILE, ply_stamp

__all__ = ["RUN_FORMAT", "markdown", "write_report", "run_record", "fmt_bytes"]

RUN_FORMAT = "ism3d-score-run/1"
_RUN_KEYS = ("clip_score", "clip_score_trimmed", "r_precision_views", "r_precision_run",
             "rank_run", "views_source", "views")


def run_record(report: dict, run: dict) -> dict:
    """The RUN/clip_score.json of one run of `report`."""
    return {"format": RUN_FORMAT, "created_at": report["created_at"],
            "clip_model": report["clip"]["name"], "clip": report["clip"],
            "captions": report["captions"]["count"], "views": report["protocol"]["views"],
            "size": report["protocol"]["size"], "chance": report["protocol"]["chance"],
            "prompt": run["prompt"], "ply": ply_stamp(Path(run["run"])),
            **{k: run[k] for k in _RUN_KEYS}}


def write_report(report: dict, out_json: Path, *, run_files: bool = True) -> tuple[Path, Path]:
    """OUT.json, OUT.md (same stem) and, with `run_files`, RUN/clip_score.json of every run."""
    out_json = Path(out_json)
    out_md = out_json.with_suffix(".md")
    if run_files:
        for run in report["runs"]:
            write_text_atomic(Path(run["run"]) / RUN_SCORE_FILE,
                              json.dumps(run_record(report, run), indent=1) + "\n")
    write_text_atomic(out_json, json.dumps(report, indent=1) + "\n")
    write_text_atomic(out_md, markdown(report))
    return out_json, out_md


def _f(x, digits=4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _secs(x) -> str:
    if x is None:
        return "–"
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"


def fmt_bytes(n) -> str:
    if not n:
        return "–"
    for unit, k in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    """The report as Markdown: header with the CLIP and protocol, a table per config group,
    a table per asset."""
    clip, p, a = report["clip"], report["protocol"], report["aggregate"]
    v = clip["vision"]
    lines = [
        "# CLIP scores",
        "",
        f"CLIP `{clip['name']}` (ViT {v['layers']} layers, width {v['width']}, patch "
        f"{v['patch']}, {v['image_size']} px; projection {clip['projection_dim']}); "
        f"{report['captions']['count']} captions (chance R-precision "
        f"{_pct(p['chance'])}); {p['views']} views at {p['size']} px per run; "
        f"{a['runs']} runs. Created {report['created_at']}.",
        "",
        p["text"],
        "",
        "## By config",
        "",
        "| config | runs | CLIP score | trimmed | R-precision (views) | R-precision (runs) | "
        "mean time per asset | max peak memory | settings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in report["groups"]:
        lines.append(f"| {_cell(g['label'])} | {g['runs']} | "
                     f"{_f(g['clip_score'])} | {_f(g['clip_score_trimmed'])} | "
                     f"{_pct(g['r_precision_views'])} | {_pct(g['r_precision_runs'])} | "
                     f"{_secs(g.get('mean_wall_seconds'))} | "
                     f"{fmt_bytes(g.get('max_peak_memory_bytes'))} | "
                     + _cell(", ".join(f"{k}={v}" for k, v in g.get("settings", {}).items()))
                     + " |")
    lines.append(f"| **all** | {a['runs']} | {_f(a['clip_score'])} | "
                 f"{_f(a['clip_score_trimmed'])} | {_pct(a['r_precision_views'])} | "
                 f"{_pct(a['r_precision_runs'])} | | | |")
    if report.get("paired"):
        lines += ["", "## Same prompts and seeds", "",
                  "| A | B | pairs | A higher | B higher | mean CLIP score A - B | "
                  "mean R-precision (views) A - B |", "|---|---|---|---|---|---|---|"]
        for q in report["paired"]:
            lines.append(f"| {_cell(q['a'])} | {_cell(q['b'])} | {q['pairs']} | {q['a_higher']} "
                         f"| {q['b_higher']} | {q['mean_clip_score_diff']:+.4f} | "
                         f"{100 * q['mean_r_precision_views_diff']:+.1f} points |")
    lines += ["", "## Per asset", "",
              "| prompt | seed | preset | guidance | CLIP score | trimmed | R-precision (views) "
              "| own-prompt rank (mean view) | time | peak memory | run |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(
            f"| {_cell(r['prompt'])} | {r.get('seed', '')} | {_cell(r.get('preset') or '')} | "
            f"{_cell(r.get('guidance') or '')} | {_f(r['clip_score'])} | "
            f"{_f(r['clip_score_trimmed'])} | {_pct(r['r_precision_views'])} | "
            f"{r['rank_run']} | {_secs(r.get('wall_seconds'))} | "
            f"{fmt_bytes(r.get('peak_memory_bytes'))} | {_cell(Path(r['run']).name)} |")
    if report.get("bench"):
        b = report["bench"]
        lines += ["", f"Bench: {b['prompts']} prompts from `{_cell(b['prompts_file'])}` x seeds "
                      f"{', '.join(map(str, b['seeds']))}, preset {b['preset']}; batch: "
                      f"`{_cell(b['batch_command'])}` (exit code {b['batch_exit_code']})."]
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(_cell(s) for s in report["skipped"])]
    return "\n".join(lines) + "\n"
