"""`ism3d score`: runs -> ring views -> CLIP embeddings -> metrics -> one report (+ run files).

    1. the caption set: the captions file's lines, then every scored run's prompt that is not
       among them (each run's own prompt must be a candidate), in that order, without repeats;
       embedded once;
    2. per run: its ring views (`runs.ring_views`: rendered, or read from an `ism3d render`
       folder), their image embeddings, the metrics of `metrics.run_metrics` against the caption
       set, the run's facts from summary.json (seconds, peak memory, ...) and its config;
    3. over runs (`metrics.aggregate`): all runs together, and per config group (runs whose
       config.yaml is the same but for the seed and the device), so that presets and guidances
       scored together are compared on the same captions and protocol.
Nothing is written here: `report.write_report` writes the report and the per-run files after
every run was scored.
"""
from __future__ import annotations

import datetime as _dt
import sys
import time
from typing import Callable

from . import metrics as M
from .clip import ClipScorer, ScoreError
from .runs import Run, ring_views

__all__ = ["FORMAT", "PROTOCOL", "read_captions", "caption_set", "score_runs", "config_groups",
           "paired"]

FORMAT = "ism3d-score/1"
PROTOCOL = (
    "Each run's gaussians are rendered on the fixed eval ring ({views} views evenly spaced in "
    "azimuth from the front, at the run's camera.eval_radius, camera.eval_fovy and "
    "camera.eval_polars[0], {size}x{size} px over white) or read from an `ism3d render` folder "
    "of the same ring; the CLIP's own processor prepares each view. CLIP score = mean over the "
    "views of the cosine similarity between the view's image embedding and the run's prompt's "
    "text embedding (a cosine in [-1, 1]; papers that print 100x this multiply by 100). "
    "Trimmed CLIP score = the same mean without the single best and the single worst view. "
    "CLIP R-precision over a caption set of {captions} captions (the captions file plus every "
    "scored prompt): views = the fraction of views whose own prompt has the highest cosine "
    "among all captions (ties count as misses), pooled over all views; runs = the fraction of "
    "runs whose mean image embedding (normalised mean of the views' unit embeddings) ranks its "
    "own prompt first. Chance level is 1/{captions}. Captions longer than the text tower's "
    "context are truncated.")
# config keys that do not change what a run makes
_NOT_CONFIG = {("train", "seed"), ("train", "device")}
# the settings every group shows, whether they differ or not
_SHOWN = ("prior.name", "guidance.method", "guidance.scale", "train.iters", "render.width")


def read_captions(path: str) -> list[str]:
    """One caption per line; blank lines and '#' lines skipped. Raises ScoreError."""
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise ScoreError(f"--captions {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ScoreError(f"--captions {path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ScoreError(f"--captions {path}: cannot read ({e.strerror or e})") from None
    lines = [s.strip() for s in text.splitlines()]
    caps = list(dict.fromkeys(s for s in lines if s and not s.startswith("#")))
    if not caps:
        raise ScoreError(f"--captions {path}: no captions (one per line; blank lines and '#' "
                         "lines are skipped)")
    return caps


def caption_set(captions: list[str], prompts: list[str]) -> list[str]:
    """Step 1: the captions, then the prompts not among them, without repeats."""
    out = list(dict.fromkeys([*captions, *prompts]))
    if len(out) < 2:
        raise ScoreError("R-precision needs at least 2 distinct captions: give a --captions file "
                         "with other prompts than the scored one(s)")
    return out


def config_groups(runs: list[dict]) -> list[dict]:
    """Runs with the same config (but for seed and device), in first-seen order:
    [{"label", "config_differs": {key: value}, "members": [run indices]}]. The label names the
    preset, the guidance and the keys that differ between groups."""
    keys, groups = [], {}
    for i, r in enumerate(runs):
        flat = {f"{s}.{k}": v for s, sec in (r.get("config") or {}).items()
                if isinstance(sec, dict) for k, v in sec.items() if (s, k) not in _NOT_CONFIG}
        key = repr(sorted(flat.items()))
        if key not in groups:
            groups[key] = {"flat": flat, "preset": r.get("preset"), "members": []}
            keys.append(key)
        groups[key]["members"].append(i)
    flats = [groups[k]["flat"] for k in keys]
    all_keys = sorted({k for f in flats for k in f})
    differ = [k for k in all_keys if len({repr(f.get(k)) for f in flats}) > 1]
    out = []
    for k in keys:
        g = groups[k]
        d = {key: g["flat"].get(key) for key in differ}
        method = g["flat"].get("guidance.method")
        parts = [str(g["preset"]), *([str(method)] if method else [])]
        extra = [f"{key}={_short(v)}" for key, v in d.items() if key != "guidance.method"]
        label = " ".join(parts + extra[:4]) + (f" (+{len(extra) - 4} keys)" if len(extra) > 4
                                               else "")
        out.append({"label": label, "config_differs": d, "members": g["members"],
                    "settings": {k: g["flat"][k] for k in _SHOWN if k in g["flat"]}})
    return out


def paired(runs: list[dict], groups: list[dict]) -> list[dict]:
    """Config A vs config B on the (prompt, seed) pairs both made (e.g. ISM vs SDS on the same
    prompts and seeds): for every two groups sharing at least one pair, the number of pairs where
    A's CLIP score is higher, and the mean difference A - B of CLIP score and view R-precision."""
    keyed = [{(runs[i]["prompt"], runs[i].get("seed")): runs[i] for i in g["members"]}
             for g in groups]
    out = []
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            shared = [k for k in keyed[a] if k in keyed[b]]
            if not shared:
                continue
            d = [keyed[a][k]["clip_score"] - keyed[b][k]["clip_score"] for k in shared]
            dr = [keyed[a][k]["r_precision_views"] - keyed[b][k]["r_precision_views"]
                  for k in shared]
            out.append({"a": groups[a]["label"], "b": groups[b]["label"], "pairs": len(shared),
                        "a_higher": sum(x > 0 for x in d), "b_higher": sum(x < 0 for x in d),
                        "mean_clip_score_diff": sum(d) / len(d),
                        "mean_r_precision_views_diff": sum(dr) / len(dr)})
    return out


def _short(v) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _facts(run: Run) -> dict:
    s, cfg = run.summary, run.config
    return {"run": str(run.path), "prompt": run.prompt, "seed": s.get("seed"),
            "preset": s.get("preset"), "guidance": s.get("guidance"), "prior": s.get("prior"),
            "guidance_scale": cfg.get("guidance", {}).get("scale"),
            "iterations": s.get("iterations"), "wall_seconds": s.get("wall_seconds"),
            "train_seconds": s.get("train_seconds"),
            "peak_memory_bytes": s.get("peak_memory_bytes"),
            "num_gaussians": s.get("num_gaussians"), "device": s.get("device")}


def score_runs(runs: list[Run], scorer: ClipScorer, captions: list[str], *, views: int = 120,
               size: int = 512, render_device: str = "cpu", renders: str | None = "ring",
               captions_file: str | None = None, skipped: list[str] | None = None,
               progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Score `runs` (steps 1-3 of the module docstring). Returns the report dict."""
    t0 = time.perf_counter()
    # 1. the caption set
    caps = caption_set(captions, [r.prompt for r in runs])
    index = {c: i for i, c in enumerate(caps)}
    cap_emb = scorer.embed_texts(caps)                                      # [K, D]
    truncated = scorer.truncated(caps)
    if truncated and log is not None:
        log(f"score: {len(truncated)} caption(s) longer than CLIP's {scorer.max_tokens} tokens "
            "are scored truncated")
    # 2. per run
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(runs) * views, desc="score", unit="view", dynamic_ncols=True,
                   file=sys.stderr)
    per_run, timing = [], {"render_seconds": 0.0, "embed_seconds": 0.0}
    try:
        for run in runs:
            t = time.perf_counter()
            images, source = ring_views(run, views, size, render_device, renders)
            t_r = time.perf_counter()
            emb = scorer.embed_images(images, None if bar is None else bar.update)  # [V, D]
            timing["render_seconds"] += t_r - t
            timing["embed_seconds"] += time.perf_counter() - t_r
            m = M.run_metrics(emb, cap_emb, index[run.prompt])
            per_run.append({**_facts(run), "views_source": source, **m,
                            "config": run.config})
    finally:
        if bar is not None:
            bar.close()
    # 3. over runs, and per config group
    groups = config_groups(per_run)
    for g in groups:
        members = [per_run[i] for i in g["members"]]
        g.update(M.aggregate(members))
        g["mean_wall_seconds"] = _mean([m.get("wall_seconds") for m in members])
        g["max_peak_memory_bytes"] = max((m.get("peak_memory_bytes") or 0 for m in members),
                                         default=0) or None
    return {
        "format": FORMAT,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "clip": scorer.describe(),
        "protocol": {"text": PROTOCOL.format(views=views, size=size, captions=len(caps)),
                     "views": views, "size": size, "background": "white",
                     "ring": "cameras.eval_ring at camera.eval_radius/eval_fovy/eval_polars[0]",
                     "clip_score": "mean over views of cos(image, own prompt)",
                     "clip_score_trimmed": "the same without the best and the worst view",
                     "r_precision_views": "fraction of all views whose own prompt ranks first",
                     "r_precision_runs": "fraction of runs whose mean embedding ranks its own "
                                         "prompt first",
                     "chance": 1.0 / len(caps)},
        "captions": {"count": len(caps), "file": captions_file, "truncated": truncated,
                     "list": caps},
        "aggregate": M.aggregate(per_run),
        "groups": groups,
        "paired": paired(per_run, groups),
        "runs": per_run,
        "skipped": list(skipped or []),
        "timing": {**{k: round(v, 3) for k, v in timing.items()},
                   "total_seconds": round(time.perf_counter() - t0, 3)},
    }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
