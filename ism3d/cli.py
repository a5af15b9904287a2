"""Command line: parse, check, call. No logic of its own beyond turning errors into exit codes.

Exit codes: 0 done; 1 the run failed (e.g. diverged); 2 bad input (nothing heavy was started and no
output was written); 130 interrupted with Ctrl-C (a resumable checkpoint was written).
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import warnings
from pathlib import Path

from . import __version__
from . import config as C

EPILOG_GENERATE = """\
config overrides:
  Any config key can be set as section.key=value after the prompt, e.g.
    ism3d generate "a red cube" train.iters=200 guidance.scale=5 render.width=256
  `ism3d generate --help-config` lists every key with its default and meaning.
  Precedence: preset < --config file < flags (--iters, --seed, ...) < KEY=VALUE.

presets:
{presets}

outputs (in --out, default outputs/<prompt>):
  gaussians.ply  gaussians.spz  viewer.html  mesh.glb  turntable.mp4  turntable.gif  views.png
  config.yaml  summary.json  checkpoints/  previews/

run folders:
  One process writes a folder at a time (a lock the system drops when that process dies): a
  second --resume or --force on a folder in use exits 2 naming the live process. --resume
  continues from checkpoints/last.pt (prev.pt, the one before it, if last.pt is damaged), or
  from step 0 if the run was stopped before its first checkpoint. Checkpoints are read as data
  only: a file that would run code when loaded is refused.

exit codes: 0 done, 1 run failed (diverged, disk full: resumable), 2 bad input (nothing
written), 130 interrupted (resumable)
"""


EPILOG_EVAL = """\
examples:
  ism3d eval --prior tiny --quick --out /tmp/eval         smoke test (CPU, about a minute)
  ism3d eval --preset toy --iters 600 --ablation          the full benchmark (GPU)
  ism3d eval --preset toy --ablation --jobs 4             4 training processes on one GPU

outputs (in --out):
  report.md    a table per run, means per method, Janus rates, ISM >= SDS per prompt, targets
  report.json  every number (schema ism3d-eval/1)
  runs/<prompt>_<method>_s<seed>/  each run (gaussians.ply, config.yaml, summary.json,
               eval.json, eval_views.png: ground truth above the result)
  shards/<k>.log  with --jobs: each training process's output

exit codes: 0 done, 2 bad input (nothing trained), 130 interrupted (re-run to resume)
"""


def _presets_text() -> str:
    return "\n".join(f"  {k:<7} {v[0]}" + (" [default]" if k == C.DEFAULT_PRESET else "")
                     for k, v in C.PRESETS.items())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ism3d",
        description="Text to 3D Gaussian Splatting by Interval Score Matching (LucidDreamer).",
    )
    p.add_argument("--version", action="version", version=f"ism3d {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser(
        "generate", help="optimise a 3D asset for a text prompt",
        description="Optimise 3D gaussians so that renders from every side match PROMPT under a "
                    "text-to-image diffusion prior (ISM by default, or SDS).",
        epilog=EPILOG_GENERATE.format(presets=_presets_text()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt", nargs="?", help="what to make, e.g. \"a red cube\"")
    g.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides such as train.iters=200 (see --help-config)")
    g.add_argument("--out", metavar="DIR", help="run folder (default: outputs/<prompt as a name>)")
    g.add_argument("--preset", default=None, choices=list(C.PRESETS),
                   help=f"starting recipe (default: {C.DEFAULT_PRESET}; see below)")
    g.add_argument("--config", metavar="FILE.yaml",
                   help="a config file, e.g. a run's config.yaml to reproduce it")
    g.add_argument("--prior", metavar="NAME|HUB_ID|PATH",
                   help="diffusion prior: 'toy' (shipped ToyWorld), 'tiny', a diffusers hub id such as "
                        "stabilityai/stable-diffusion-2-1-base, a local diffusers folder or a "
                        "single .safetensors file")
    g.add_argument("--guidance", choices=["ism", "sds"], help="distillation method (default ism)")
    g.add_argument("--iters", type=int, metavar="N", help="optimisation steps")
    g.add_argument("--seed", type=int, metavar="N", help="random seed (default 0)")
    g.add_argument("--device", metavar="auto|cpu|cuda[:N]", help="where to run (default auto)")
    g.add_argument("--negative", metavar="TEXT", help="negative prompt (CFG's unconditional branch)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    g.add_argument("--force", action="store_true",
                   help="replace an existing run in the output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--help-config", action="store_true",
                   help="list every config key with its default and meaning, then exit")

    p._generate = g  # main() parses `generate` alone, intermixed
    r = sub.add_parser(
        "render",
        help="turntable, 8-view grid or per-view PNGs (rgb/depth/normal/alpha) of a 3DGS PLY",
        description="Render a standard 3DGS .ply on the fixed evaluation ring (starting at the "
                    "front, counter-clockwise seen from above). A folder gets one PNG per view "
                    "and mode, {mode}_{k}.png: the GPTEval3D layout (120 views at 512x512, "
                    "rgb and normal by default).")
    r.add_argument("ply", help="a 3DGS .ply (e.g. a run's gaussians.ply)")
    r.add_argument("--out", required=True, metavar="FILE.(mp4|gif|png)|DIR",
                   help="output: .mp4/.gif turntable, .png 8-view grid, or a folder of PNGs")
    r.add_argument("--mode", default=None, metavar="MODE[,MODE...]",
                   help="rgb, depth, normal or alpha; a folder takes several, comma-separated "
                        "(default: rgb for a file, rgb,normal for a folder)")
    r.add_argument("--views", "--frames", dest="views", type=int, default=120, metavar="N",
                   help="views on the ring: turntable frames or folder images (120; a .png grid "
                        "always shows 8)")
    r.add_argument("--size", type=int, default=512, metavar="S", help="image size in pixels (512)")
    r.add_argument("--radius", type=float, default=3.5, help="camera distance (3.5)")
    r.add_argument("--fovy", type=float, default=0.55, help="vertical field of view, radians (0.55)")
    r.add_argument("--polar", type=float, default=90.0, help="polar angle in degrees (90 = equator)")
    r.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]", help="where to render")
    r.add_argument("--frame", choices=["y-down", "z-up"], default="y-down",
                   help="frame of a PLY that does not name its own (ism3d's PLYs do): y-down, "
                        "the 3DGS convention of other tools (default), or z-up")

    from .export.command import add_parser as add_export_parser
    add_export_parser(sub)

    v = sub.add_parser(
        "eval", help="ToyWorld benchmark: ISM vs SDS against known 3D ground truth",
        description="Generate every ToyWorld prompt with ISM and with SDS at equal iterations "
                    "(same seeds and config otherwise), one prior loaded once, and score each "
                    "result against the true object rendered from the same ring of cameras: "
                    "silhouette IoU, PSNR inside the silhouettes, and for mug/house/chair a "
                    "Janus test (the asymmetric part on the wrong side or twice). Writes "
                    "DIR/report.md and DIR/report.json; runs live in DIR/runs/ and a finished "
                    "run is reused when the command is repeated.",
        epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for every run, e.g. guidance.scale=5 (see ism3d "
                        "generate --help-config)")
    v.add_argument("--out", default="outputs/eval", metavar="DIR",
                   help="benchmark folder (default outputs/eval)")
    v.add_argument("--prior", metavar="NAME|PATH",
                   help="diffusion prior (default: the preset's; 'tiny' for smoke runs)")
    v.add_argument("--preset", default=None, choices=list(C.PRESETS),
                   help="starting recipe of every run (default: toy, the shipped ToyWorld prior)")
    v.add_argument("--prompts", default=None, metavar="default|FILE.txt",
                   help="the prompt set: 'default' (12 prompts, every family, each asymmetric "
                        "one twice) or a file with one prompt per line")
    v.add_argument("--seeds", default=None, metavar="S[,S...]", help="seeds (default 0,1)")
    v.add_argument("--methods", default=None, metavar="M[,M...]",
                   help="guidance methods, from ism,sds (default both)")
    v.add_argument("--iters", type=int, metavar="N",
                   help="iterations of every run (default: the preset's)")
    v.add_argument("--views", type=int, default=None, metavar="N",
                   help="views per eval ring (16; --quick 8), one ring per camera.eval_polars")
    v.add_argument("--size", type=int, default=None, metavar="S",
                   help="eval render size in pixels (64; --quick 32)")
    v.add_argument("--ablation", action="store_true",
                   help="also run ISM with and without view prompts + Perp-Neg on the "
                        "asymmetric prompts and report both Janus rates")
    v.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help="where to run (default auto)")
    v.add_argument("--quick", action="store_true",
                   help="smoke test: 3 prompts, 1 seed, 20 iterations, 8 views at 32x32 "
                        "(explicit flags win)")
    v.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train the runs in N processes side by side, then score and report them "
                        "in this one (default 1). On a GPU the toy prior's small steps leave it "
                        "partly idle, so a few processes share it "
                        "(docs/experiments/toyworld-quality.md); on a CPU, more jobs than cores "
                        "gain nothing")
    v.add_argument("--shard", default=None, metavar="K/N",
                   help="only the runs whose index is K mod N, and no report: for spreading one "
                        "benchmark over processes or machines that share --out; the same command "
                        "without --shard then reuses every finished run and writes the report")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    p._eval = v  # main() parses `eval` intermixed (KEY=VALUE between options)
    from .batch.command import add_parser as add_batch_parser
    p._batch = add_batch_parser(sub)  # `batch` is parsed intermixed too
    from .score.command import add_parsers as add_score_parsers
    p._score, p._bench = add_score_parsers(sub)  # `bench` is parsed intermixed too

    s = sub.add_parser(
        "serve", help="web app: prompt, live progress, 3D viewer, downloads, gallery",
        description="Serve the web app (Gradio): type a prompt, watch it form, spin the result, "
                    "download it. Runs go to ROOT/<prompt> exactly as `ism3d generate` writes "
                    "them, one at a time per GPU. Needs the extra: pip install \"ism3d[app]\".")
    s.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (127.0.0.1: this machine only; 0.0.0.0: everyone who "
                        "can reach it)")
    s.add_argument("--port", type=int, default=7860, help="TCP port (7860)")
    s.add_argument("--out", default="outputs", metavar="ROOT",
                   help="folder of the runs (default outputs)")
    s.add_argument("--share", action="store_true",
                   help="also open a public Gradio share link (off by default)")
    return p


def build_config(args) -> tuple[C.Config, str]:
    """preset < --config < flags < KEY=VALUE. Raises ConfigError."""
    preset = args.preset or C.DEFAULT_PRESET
    cfg = C.preset_config(preset)
    if args.config:
        cfg = C.from_dict(_read_yaml(args.config), base=cfg)
    flags = {"prior.name": args.prior, "guidance.method": args.guidance,
             "train.iters": args.iters, "train.seed": args.seed, "train.device": args.device,
             "guidance.negative_prompt": args.negative}
    cfg = C.apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})
    cfg = C.apply_overrides(cfg, C.parse_override_strings(args.overrides))
    return cfg, preset


def _read_yaml(path: str) -> dict:
    from .safeyaml import load_yaml
    return load_yaml(path, "--config")


def _fail(msg: str, code: int = 2) -> int:
    print(f"ism3d: error: {msg}", file=sys.stderr)
    return code


def cmd_generate(args) -> int:
    from .generate import RunError, prepare, run
    from .priors import PriorError, PromptError
    from .train import TrainingDiverged

    if args.help_config:
        print(C.describe_keys())
        return 0
    # Overrides may have been taken as the prompt when the prompt comes later: keep it simple.
    if args.prompt is None:
        return _fail("missing PROMPT, e.g. ism3d generate \"a red cube\"")
    if "=" in args.prompt and args.prompt.split("=")[0].count(".") == 1 and " " not in args.prompt:
        return _fail(f"the first argument {args.prompt!r} looks like a KEY=VALUE override; "
                     "put the prompt first")
    out_existed = args.out is not None and Path(args.out).exists()
    try:
        cfg, preset = build_config(args)
        plan = prepare(args.prompt, cfg=cfg, preset=preset, out_dir=args.out,
                       resume=args.resume, force=args.force)
    except (C.ConfigError, RunError, PriorError, PromptError) as e:
        return _fail(str(e))
    out_existed = out_existed or plan.resume

    stop = {"flag": False}
    old = signal.signal(signal.SIGINT, _first_sigint_stops(stop))
    try:
        summary = run(plan, progress=not args.quiet, callback=lambda p: stop["flag"])
    except (PriorError, PromptError, C.ConfigError, RunError) as e:
        _cleanup_empty(plan.out_dir, out_existed)
        return _fail(str(e))
    except TrainingDiverged as e:
        return _fail(str(e), code=1)
    except OSError as e:
        # disk full, folder gone read-only...: the last checkpoint and outputs are intact
        _cleanup_empty(plan.out_dir, out_existed)
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return _fail(f"{line}; the last checkpoint is kept: free space (or fix the folder), then "
                     f"continue with --resume", code=1)
    except KeyboardInterrupt:
        return _fail("aborted", code=130)
    finally:
        signal.signal(signal.SIGINT, old)
    if summary["status"] != "done":
        print(f"ism3d: stopped at step {summary['iterations']}/{summary['iterations_planned']}; "
              f"continue with: ism3d generate {_quote(plan.prompt)} --out {plan.out_dir} --resume",
              file=sys.stderr)
        return 130
    made = ", ".join(n for n in summary["outputs"] if n not in ("checkpoints", "previews"))
    print(f"done in {summary['wall_seconds']:.1f} s ({summary['num_gaussians']} gaussians): "
          f"{plan.out_dir}/ {made}")
    return 0


def _first_sigint_stops(stop: dict):
    """A SIGINT handler: the first Ctrl-C sets stop["flag"] (the run stops between two steps and
    keeps a resumable checkpoint); a second one aborts at once."""
    def on_sigint(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print("\nism3d: stopping after this step (Ctrl-C again to abort)...", file=sys.stderr)
    return on_sigint


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def _cleanup_empty(out: Path, existed: bool) -> None:
    """Remove a run folder this invocation created if it failed before writing any result."""
    from .runlock import LOCK_FILE
    if existed or not out.is_dir():
        return
    keep = [p for p in out.rglob("*") if p.is_file() and p.name not in ("config.yaml", LOCK_FILE)]
    if not keep:
        shutil.rmtree(out, ignore_errors=True)


def cmd_render(args) -> int:
    from .export.views import MODES, render_eval
    from .ply import PlyError
    from .train import resolve_device

    out = Path(args.out)
    suffix = out.suffix.lower()
    folder = out.is_dir() or suffix == ""
    if not folder and suffix not in (".mp4", ".gif", ".png"):
        return _fail(f"--out must end in .mp4, .gif or .png, or name a folder (got {args.out!r})")
    modes = [m.strip() for m in (args.mode or ("rgb,normal" if folder else "rgb")).split(",")]
    bad = [m for m in modes if m not in MODES]
    if bad or not all(modes):
        return _fail(f"--mode {args.mode!r}: each mode must be one of {', '.join(MODES)}")
    if not folder and len(modes) != 1:
        return _fail(f"--mode: a {suffix} file shows one mode, got {len(modes)}; "
                     "write several to a folder")
    if not Path(args.ply).is_file():
        return _fail(f"no such file: {args.ply}")
    if args.views < 1 or not 16 <= args.size <= 4096:
        return _fail("--views must be >= 1 and --size between 16 and 4096")
    try:
        device = resolve_device(args.device)
        written = render_eval(args.ply, out, modes=modes, views=args.views, size=args.size,
                              radius=args.radius, fovy=args.fovy, polar=args.polar,
                              device=str(device), unmarked=args.frame)
    except (PlyError, C.ConfigError, ValueError) as e:
        return _fail(str(e))
    print(f"wrote {out}" + (f" ({len(written)} images)" if folder else ""))
    return 0


def cmd_export(args) -> int:
    from .export.command import cmd_export as run
    return run(args)


def cmd_eval(args) -> int:
    from .eval import bench as B
    from .generate import RunError
    from .priors import PriorError, PromptError

    try:
        spec = B.make_spec(out=args.out, preset=args.preset, prior=args.prior,
                           prompts=args.prompts, seeds=args.seeds, methods=args.methods,
                           iters=args.iters, views=args.views, size=args.size,
                           ablation=args.ablation, device=args.device, quick=args.quick,
                           overrides=args.overrides, shard=args.shard)
        if args.jobs < 1 or (args.jobs > 1 and args.shard is not None):
            raise B.EvalError("--jobs must be >= 1, and --jobs > 1 cannot be combined with --shard")
    except (B.EvalError, C.ConfigError) as e:
        return _fail(str(e))

    stop = {"flag": False}
    old = signal.signal(signal.SIGINT, _first_sigint_stops(stop))
    try:
        if args.jobs > 1:
            code = _eval_shards(spec, args.jobs, quiet=args.quiet)
            if code != 0 or stop["flag"]:
                return code or 130
        report = B.run_bench(spec, progress=not args.quiet, should_stop=lambda: stop["flag"],
                             log=lambda m: print(m, file=sys.stderr))
    except (B.EvalError, C.ConfigError, RunError, PriorError, PromptError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("aborted; re-run the same command to resume", code=130)
    finally:
        signal.signal(signal.SIGINT, old)
    if spec.shard is not None:
        if report["status"] != "done":
            print("ism3d: interrupted; re-run the same command to resume", file=sys.stderr)
            return 130
        print(f"shard {args.shard}: {len(report['runs'])} runs in {spec.out}/runs (no report: run "
              "the command without --shard to write it)")
        return 0
    if report["status"] != "done":
        print(f"ism3d: interrupted after {len(report['runs'])} runs; partial report in "
              f"{spec.out}/report.md; re-run the same command to resume", file=sys.stderr)
        return 130
    t = report["summary"]["targets"]
    line = f"wrote {spec.out}/report.md and report.json ({len(report['runs'])} runs)"
    if t is not None:
        line += (f"; ISM IoU {t['ism_iou']}, PSNR {t['ism_psnr']} dB: targets "
                 f"{'met' if t['met'] else 'not met'}")
    print(line)
    return 0


def _eval_shards(spec, jobs: int, quiet: bool) -> int:
    """`ism3d eval --jobs N`: the same benchmark as N `--shard k/N` processes side by side (each
    loads the prior once and trains its share of the runs into spec.out), their output in
    DIR/shards/k.log. Returns 0, or the first failing shard's exit code (130 if interrupted)."""
    import os
    import shlex
    import subprocess

    logs = spec.out / "shards"
    logs.mkdir(parents=True, exist_ok=True)
    argv = shlex.split(spec.command)[1:]                      # "eval" and its canonical flags
    env = dict(os.environ)
    # CPU threads shared out, unless the user chose them
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    if not quiet:
        print(f"ism3d eval: training in {jobs} processes (logs in {logs}/)...", file=sys.stderr)
    procs = []
    for k in range(jobs):
        with open(logs / f"{k}.log", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ism3d", *argv, "--shard", f"{k}/{jobs}", "--quiet"],
                stdout=log, stderr=subprocess.STDOUT, env=env))
    codes = []
    for proc in procs:
        while True:
            try:
                codes.append(proc.wait())
                break
            except KeyboardInterrupt:   # a second Ctrl-C: the shards got it too; wait for them
                continue
    for k, code in enumerate(codes):
        if code != 0:
            tail = (logs / f"{k}.log").read_text().strip().splitlines()[-1:] or [""]
            print(f"ism3d: error: shard {k}/{jobs} exited with {code}: {tail[0]}", file=sys.stderr)
            return code if code in (2, 130) else 1
    return 0


def cmd_serve(args) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        print('ism3d serve needs the app extra: pip install "ism3d[app]"', file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        return _fail(f"--port must be between 1 and 65535 (got {args.port})")
    from .app.server import serve
    try:
        return serve(host=args.host, port=args.port, out_root=args.out, share=args.share)
    except OSError as e:
        return _fail(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}")


def cmd_batch(args) -> int:
    from .batch.command import cmd_batch as run
    return run(args)


def cmd_score(args) -> int:
    from .score.command import cmd_score as run
    return run(args)


def cmd_bench(args) -> int:
    from .score.command import cmd_bench as run
    return run(args)


_PACKAGE_DIR = Path(__file__).resolve().parent
_default_formatwarning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our own warnings as one line `ism3d: warning: ...`; other libraries' keep Python's format."""
    if Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
        return f"ism3d: warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    saved = warnings.formatwarning
    warnings.formatwarning = _format_warning   # for this command only (callers in-process keep theirs)
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = saved


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "generate":  # options may come between the prompt and KEY=VALUE items
        args = parser._generate.parse_intermixed_args(argv[1:])
        args.command = "generate"
    elif argv and argv[0] == "batch":
        args = parser._batch.parse_intermixed_args(argv[1:])
        args.command = "batch"
    elif argv and argv[0] == "bench":
        args = parser._bench.parse_intermixed_args(argv[1:])
        args.command = "bench"
    elif argv and argv[0] == "eval":
        args = parser._eval.parse_intermixed_args(argv[1:])
        args.command = "eval"
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return {"generate": cmd_generate, "render": cmd_render,
            "export": cmd_export, "eval": cmd_eval, "serve": cmd_serve,
            "batch": cmd_batch, "score": cmd_score, "bench": cmd_bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
