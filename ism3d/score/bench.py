"""`ism3d bench`: a prompt set through `ism3d batch`, then `ism3d score` on what it made.

    1. check everything cheap first (exit 2, nothing written): the prompt set, the seeds, the
       CLIP (`clip.resolve_clip` plus a folder check), the captions file;
    2. DIR/prompts.jsonl: every prompt x every seed, one batch line each ({"prompt", "seed"});
       the same prompt set and seeds give the same file, so re-running resumes;
    3. `ism3d batch DIR/prompts.jsonl --out DIR --preset P ...`: the batch command itself (its
       checks, backends, resume, retries, Ctrl-C, gallery); bad input there removes the files
       step 2 created and exits 2;
    4. the runs the batch finished (DIR/index.json entries with status done) are scored with the
       caption set = the prompt set (+ --captions); DIR/score.json, DIR/score.md and each run's
       clip_score.json are written, and DIR/index.html is rewritten to show the scores.
Exit code: the batch's (0, or 1 when some prompt failed: the others are still scored; 130
stopped: nothing is scored), or 2 for bad input.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .clip import ScoreError

__all__ = ["DEFAULT_PROMPTS", "default_prompts_path", "parse_seeds", "read_prompt_set",
           "jsonl_text", "batch_argv"]

DEFAULT_PROMPTS = "objects30.txt"


def default_prompts_path() -> Path:
    """The shipped prompt set: 30 object prompts in the style of the DreamFusion gallery."""
    return Path(str(resources.files("ism3d") / "assets" / "prompts" / DEFAULT_PROMPTS))


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip() != ""]
    except ValueError:
        raise ScoreError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 0,1") \
            from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ScoreError(f"--seeds {text!r}: give distinct whole numbers >= 0, e.g. 0,1")
    return seeds


def read_prompt_set(path: str | Path) -> list[str]:
    """A .txt prompt set: one prompt per line, blank and '#' lines skipped, no repeats."""
    from .runner import read_captions

    path = Path(path)
    if path.suffix.lower() != ".txt":
        raise ScoreError(f"{path}: a prompt set is a .txt file, one prompt per line")
    try:
        return read_captions(str(path))
    except ScoreError as e:
        raise ScoreError(str(e).replace("--captions ", "")) from None


def jsonl_text(prompts: list[str], seeds: list[int]) -> str:
    """Step 2: prompts x seeds as batch lines, prompt-major."""
    return "".join(json.dumps({"prompt": p, "seed": s}) + "\n" for p in prompts for s in seeds)


def batch_argv(prompts_file: Path, out: Path, args) -> list[str]:
    """Step 3: the `ism3d batch` arguments of a bench invocation."""
    argv = [str(prompts_file), "--out", str(out), "--preset", args.preset]
    for flag, value in (("--prior", args.prior), ("--guidance", args.guidance),
                        ("--iters", args.iters), ("--device", args.device),
                        ("--config", args.config), ("--backend", args.backend),
                        ("--jobs", args.jobs), ("--gpus-per-job", args.gpus_per_job),
                        ("--cpus-per-job", args.cpus_per_job), ("--retries", args.retries)):
        if value is not None:
            argv += [flag, str(value)]
    if args.quiet:
        argv.append("--quiet")
    return argv + list(args.overrides)
