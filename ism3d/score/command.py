"""`ism3d score` and `ism3d bench`: their arguments and entry points (cli.py delegates here).

Exit codes: 0 done; 1 (bench) some prompt failed in the batch, the others were scored; 2 bad input
(a missing or unloadable CLIP, an empty captions file, a folder that holds no run, ...: one line,
nothing written); 130 interrupted (nothing written by the scorer).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import config as C
from .clip import DEFAULT_CLIP

EPILOG_SCORE = """\
what is measured (the DreamFusion / Dream Fields protocol, stated in every report):
  Each run's gaussians are rendered on the fixed eval ring (N views evenly spaced in azimuth from
  the front, the run's camera.eval_radius / eval_fovy / eval_polars[0], over white), or read from
  RUN/ring/ when `ism3d render RUN/gaussians.ply --out RUN/ring` wrote that ring.
  CLIP score          mean over the views of cos(view image embedding, own prompt embedding)
  trimmed CLIP score  the same without the single best and the single worst view
  R-precision views   fraction of all views whose own prompt has the highest cosine among the
                      caption set (the captions file plus every scored prompt); chance = 1/K
  R-precision runs    fraction of runs whose mean view embedding ranks its own prompt first

outputs:
  OUT.json            everything: CLIP model, protocol, captions, aggregate, per-config groups,
                      every run with per-view scores and ranks (format ism3d-score/1)
  OUT.md              the same as tables (by config, per asset)
  RUN/clip_score.json each run's own numbers (shown by the batch gallery and the web app)
  --out defaults to RUN_OR_ROOT/score.json for one argument, ./score.json for several.

examples:
  ism3d score outputs/ --clip openai/clip-vit-large-patch14
  ism3d score assets/ --clip /models/clip-vit-b32 --captions distractors.txt --views 30
  ism3d score runs/ism runs/sds --out ism_vs_sds.json      compare two batches on one caption set

exit codes: 0 done, 2 bad input (nothing written), 130 interrupted (nothing written)
"""

EPILOG_BENCH = """\
what it does:
  1. writes DIR/prompts.jsonl (every prompt x every seed) and runs it as
     `ism3d batch DIR/prompts.jsonl --out DIR --preset P ...` (resumes like batch: re-running the
     same command skips finished runs, resumes stopped ones, retries failed ones);
  2. scores every finished run as `ism3d score` does, the caption set being the prompt set
     (+ --captions): DIR/score.json, DIR/score.md, RUN/clip_score.json; DIR/index.html shows them.
  The table has CLIP score, trimmed CLIP score, R-precision, seconds and peak memory per asset
  (from summary.json) and per config. To compare presets or guidances, bench each into its own
  DIR with the same prompts and seeds, then `ism3d score DIR_A DIR_B --out cmp.json`.

examples:
  ism3d bench --preset fast --clip openai/clip-vit-large-patch14 --out bench/fast_ism
  ism3d bench --preset fast --guidance sds --clip openai/clip-vit-large-patch14 --out bench/fast_sds
  ism3d score bench/fast_ism bench/fast_sds --out bench/ism_vs_sds.json
  ism3d bench my_prompts.txt --preset paper --seeds 0,1,2 --clip /models/clip-l14 --out bench/paper

exit codes: 0 done, 1 some prompts failed (the rest scored), 2 bad input (nothing started),
130 stopped (re-run to resume)
"""


def _add_scoring_args(p: argparse.ArgumentParser, captions_help: str) -> None:
    p.add_argument("--clip", default=DEFAULT_CLIP, metavar="HUB_ID|PATH",
                   help=f"the CLIP model: a transformers hub id or a local folder holding a "
                        f"CLIPModel and its CLIPProcessor (default {DEFAULT_CLIP})")
    p.add_argument("--captions", metavar="FILE.txt", help=captions_help)
    p.add_argument("--views", type=int, default=120, metavar="N",
                   help="views on the eval ring per run (120, GPTEval3D's ring)")
    p.add_argument("--size", type=int, default=512, metavar="S",
                   help="render size in pixels (512; the CLIP processor then resizes)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="images per CLIP call (32)")
    p.add_argument("--renders", default="ring", metavar="NAME",
                   help="read RUN/NAME/rgb_*.png (an `ism3d render` ring folder) instead of "
                        "rendering, when it holds a multiple of N views (default ring; '' never)")
    p.add_argument("--offline", action="store_true",
                   help="never use the network for the CLIP (as HF_HUB_OFFLINE=1)")


def add_parsers(sub) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    s = sub.add_parser(
        "score", help="CLIP score and CLIP R-precision of finished runs (rendered eval ring)",
        description="Score finished runs with a CLIP model: render each run on the fixed eval "
                    "ring, embed the views, and compare them with the run's prompt (CLIP score) "
                    "and with a caption set (CLIP R-precision). Writes one JSON and one Markdown "
                    "table.",
        epilog=EPILOG_SCORE, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("paths", nargs="+", metavar="RUN_OR_ROOT",
                   help="a run folder, or a folder of run folders (a batch ROOT, outputs/)")
    _add_scoring_args(s, "distractor captions, one per line (the scored prompts are always "
                         "added; default: the shipped 30-prompt set, "
                         "ism3d/assets/prompts/objects30.txt)")
    s.add_argument("--out", metavar="FILE.json",
                   help="report (default RUN_OR_ROOT/score.json, or ./score.json for several); "
                        "the Markdown table goes next to it as .md")
    s.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help="where to render and run CLIP (default auto)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    b = sub.add_parser(
        "bench", help="a prompt set through `ism3d batch`, then `ism3d score`: one quality table",
        description="Generate every prompt of a prompt set (x seeds) with `ism3d batch`, then "
                    "score the results with CLIP: one table of CLIP score, R-precision, time and "
                    "peak memory per asset and per config.",
        epilog=EPILOG_BENCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("prompts", nargs="?", default=None, metavar="PROMPTS.txt",
                   help="one prompt per line (default: the shipped 30 object prompts, "
                        "ism3d/assets/prompts/objects30.txt)")
    b.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for every run (see ism3d generate --help-config)")
    b.add_argument("--preset", required=True, choices=list(C.PRESETS),
                   help="recipe of every run (the default prompt set needs a real prior: paper "
                        "or fast)")
    b.add_argument("--out", required=True, metavar="DIR", help="bench folder (a batch ROOT)")
    b.add_argument("--seeds", default="0", metavar="S[,S...]", help="seeds of every prompt (0)")
    b.add_argument("--prior", metavar="NAME|HUB_ID|PATH", help="diffusion prior of every run")
    b.add_argument("--guidance", choices=["ism", "sds"], help="distillation method")
    b.add_argument("--iters", type=int, metavar="N", help="optimisation steps")
    b.add_argument("--config", metavar="FILE.yaml", help="a config file applied to every run")
    b.add_argument("--device", default=None, metavar="auto|cpu|cuda",
                   help="device of the training jobs and of scoring (auto)")
    b.add_argument("--backend", default=None, choices=["auto", "ray", "local"],
                   help="batch backend (auto: ray if installed)")
    b.add_argument("--jobs", type=int, metavar="N", help="at most N batch jobs at once")
    b.add_argument("--gpus-per-job", type=float, metavar="G", help="GPUs each job holds")
    b.add_argument("--cpus-per-job", type=int, metavar="C", help="CPU threads each job holds")
    b.add_argument("--retries", type=int, default=None, metavar="N",
                   help="retry a failed job up to N times (batch's default 1)")
    _add_scoring_args(b, "distractor captions added to the prompt set (default: none)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    return s, b


def _check_scoring_args(args) -> None:
    from .clip import ScoreError
    if args.views < 1 or not 16 <= args.size <= 4096 or args.batch_size < 1:
        raise ScoreError("need --views >= 1, --size between 16 and 4096 and --batch-size >= 1")


def _device(name: str | None):
    from ..train import resolve_device
    return resolve_device(name or "auto")


def cmd_score(args) -> int:
    from ..cli import _fail
    from .bench import default_prompts_path
    from .clip import ScoreError, resolve_clip
    from .runner import caption_set, read_captions
    from .runs import find_runs

    # 1. everything cheap first: options, runs, captions, output, the CLIP's location
    try:
        _check_scoring_args(args)
        runs, skipped = find_runs(args.paths)
        captions = read_captions(args.captions or str(default_prompts_path()))
        caption_set(captions, [r.prompt for r in runs])      # at least 2 distinct captions
        out = Path(args.out) if args.out else \
            (Path(args.paths[0]) / "score.json" if len(args.paths) == 1 else Path("score.json"))
        if out.suffix.lower() != ".json":
            raise ScoreError(f"--out {out}: the report is a .json file (the table goes next to "
                             "it as .md)")
        if out.exists() and not out.is_file():
            raise ScoreError(f"--out {out} exists and is not a file")
        device = _device(args.device)
        loc = resolve_clip(args.clip, offline=args.offline)
    except (ScoreError, C.ConfigError, ValueError) as e:
        return _fail(str(e))
    return _score_and_write(runs, skipped, captions, out, args, device, loc,
                            captions_file=args.captions or "(shipped objects30.txt)")


def _score_and_write(runs, skipped, captions, out, args, device, loc, *, captions_file,
                     extra: dict | None = None, after=None) -> int:
    from ..cli import _fail
    from .clip import ScoreError, load_clip
    from .report import write_report
    from .runner import score_runs

    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    try:
        scorer = load_clip(args.clip, device, batch_size=args.batch_size, location=loc)
        report = score_runs(runs, scorer, captions, views=args.views, size=args.size,
                            render_device=str(device), renders=args.renders or None,
                            captions_file=captions_file, skipped=skipped,
                            progress=not args.quiet, log=say)
        if extra:
            report.update(extra)
        written = write_report(report, out)
    except ScoreError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot write the report: {e.strerror or e}")
    except KeyboardInterrupt:
        return _fail("aborted; nothing was written", code=130)
    if after is not None:
        after()
    a = report["aggregate"]
    print(f"{a['runs']} run(s): CLIP score {a['clip_score']:.4f}, R-precision "
          f"{100 * a['r_precision_views']:.1f}% of views, {100 * a['r_precision_runs']:.1f}% of "
          f"runs ({report['captions']['count']} captions): {written[0]} and {written[1]}")
    return 0


def cmd_bench(args) -> int:
    from ..atomic import write_text_atomic
    from ..batch.command import cmd_batch
    from ..batch.gallery import read_index, write_index
    from ..cli import _fail, build_parser
    from .bench import batch_argv, default_prompts_path, jsonl_text, parse_seeds, read_prompt_set
    from .clip import ScoreError, resolve_clip
    from .runner import read_captions
    from .runs import read_run

    # 1. cheap checks (exit 2, nothing written); a KEY=VALUE first is an override, not PROMPTS
    if args.prompts and "=" in args.prompts and not args.prompts.lower().endswith(".txt"):
        args.overrides, args.prompts = [args.prompts, *args.overrides], None
    prompts_path = Path(args.prompts) if args.prompts else default_prompts_path()
    try:
        _check_scoring_args(args)
        prompts = read_prompt_set(prompts_path)
        seeds = parse_seeds(args.seeds)
        extra_caps = read_captions(args.captions) if args.captions else []
        device = _device(args.device)
        loc = resolve_clip(args.clip, offline=args.offline)
        root = Path(args.out)
        if root.exists() and not root.is_dir():
            raise ScoreError(f"--out {root} exists and is not a folder")
    except (ScoreError, C.ConfigError, ValueError) as e:
        return _fail(str(e))

    # 2. DIR/prompts.jsonl (removed again, with DIR, if the batch rejects its input)
    jsonl = root / "prompts.jsonl"
    root_existed, jsonl_existed = root.exists(), jsonl.exists()
    text = jsonl_text(prompts, seeds)
    try:
        if not jsonl_existed or jsonl.read_text() != text:
            write_text_atomic(jsonl, text)
    except OSError as e:
        return _fail(f"cannot write to --out {root}: {e.strerror or e}")

    # 3. the batch, exactly as `ism3d batch` runs it
    batch_args = build_parser()._batch.parse_intermixed_args(batch_argv(jsonl, root, args))
    batch_args.command = "batch"
    code = cmd_batch(batch_args)
    if code == 2:
        if not jsonl_existed:
            jsonl.unlink(missing_ok=True)
        if not root_existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        return 2
    if code not in (0, 1):
        return code

    # 4. score the runs the batch finished
    index = read_index(root) or {"runs": []}
    runs = [r for e in index["runs"] if e.get("status") == "done"
            and (r := read_run(root / e["run"])) is not None]
    if not runs:
        return _fail("the batch finished no run: nothing to score", code=1)
    bench_info = {"bench": {"prompts_file": str(prompts_path), "prompts": len(prompts),
                            "seeds": seeds, "preset": args.preset,
                            "batch_command": "ism3d batch " + " ".join(
                                _quote(a) for a in batch_argv(jsonl, root, args)),
                            "batch_exit_code": code}}

    def refresh_gallery():
        idx = read_index(root)
        if idx is not None:
            write_index(root, idx)

    scored = _score_and_write(runs, [], [*extra_caps, *prompts], root / "score.json", args,
                              device, loc, captions_file=args.captions or str(prompts_path),
                              extra=bench_info, after=refresh_gallery)
    return scored if scored != 0 else code


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)
