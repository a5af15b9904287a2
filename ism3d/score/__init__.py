"""Measuring quality with CLIP: `ism3d score` (CLIP score, CLIP R-precision) and `ism3d bench`.

    clip.py      find (cheaply) and load a transformers CLIP; batched unit image/text embeddings
    metrics.py   CLIP score, its trimmed variant and R-precision, from embeddings (the formulas)
    runs.py      run folders: prompt, config, eval-ring views (rendered, or read from a ring folder)
    runner.py    runs x CLIP -> the report dict (caption set, per run, aggregate, config groups)
    report.py    score.json, score.md and RUN/clip_score.json, written atomically
    bench.py     the prompt set -> `ism3d batch` lines; the shipped objects30.txt
    command.py   the `score` and `bench` subcommands
"""
from .clip import DEFAULT_CLIP, ClipScorer, ScoreError, load_clip, resolve_clip
from .metrics import aggregate, run_metrics
from .runs import read_run_score

__all__ = ["DEFAULT_CLIP", "ClipScorer", "ScoreError", "aggregate", "load_clip", "read_run_score",
           "resolve_clip", "run_metrics"]
