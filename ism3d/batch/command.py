"""`ism3d batch`: the subcommand's arguments and its entry point (cli.py delegates here).

Exit codes: 0 every prompt done; 1 some failed (recorded in ROOT/index.json with their error
line and log); 2 bad input (the prompts file, an option, a conflicting run folder: nothing
started); 130 stopped with Ctrl-C (running jobs checkpointed; re-run the same command to continue).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .. import config as C

EPILOG = """\
prompts file:
  .txt    one prompt per line
  .jsonl  one JSON object per line, e.g.
          {"prompt": "a red cube", "seed": 3, "preset": "fast",
           "negative_prompt": "blurry", "overrides": {"train.iters": 800}}
  Blank lines and '#' lines are skipped. The whole file is checked before anything starts.
  Config precedence: preset < --config < flags and KEY=VALUE < the line's seed/negative_prompt
  < the line's overrides.

outputs (in --out ROOT):
  ROOT/<prompt>_s<seed>/   one run folder per line, exactly as `ism3d generate` writes it
  ROOT/logs/<run>.log      each job's output, one header line per attempt
  ROOT/index.json          every line: status, attempts, error, timings, peak memory, files
  ROOT/index.html          a gallery of the same (turntable GIF, prompt, seed, time, links)
  Re-running the same command skips finished runs, resumes stopped or killed ones from their
  checkpoints and retries failed ones.

backends:
  ray    (pip install 'ism3d[batch]') one Ray task per job holding --gpus-per-job GPUs: k GPUs run
         k jobs at once. Without --ray-address a private Ray instance runs on this machine. On a
         cluster: `ray start --head --port 6379` on one node, `ray start --address HEAD:6379` on
         the others (same ism3d install, ROOT on a shared filesystem), then run with
         --ray-address auto (on a cluster node) or --ray-address HEAD:6379.
  local  no Ray: one worker process per GPU (CUDA_VISIBLE_DEVICES set per worker), or --jobs N
         workers on the CPU. Same folders, same index.
  auto   ray if it is installed, else local (default).

exit codes: 0 all done, 1 some failed, 2 bad input (nothing started), 130 stopped (re-run to resume)
"""


def add_parser(sub) -> argparse.ArgumentParser:
    b = sub.add_parser(
        "batch", help="many prompts, one run each, on Ray or a local pool (resumable, gallery)",
        description="Generate one 3D asset per line of a prompts file, several at once (one job "
                    "per GPU, or per CPU slot), with a live gallery in ROOT/index.html.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("prompts", metavar="PROMPTS.(txt|jsonl)", help="the prompts file")
    b.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for every line, e.g. train.iters=800 (see ism3d "
                        "generate --help-config)")
    b.add_argument("--out", required=True, metavar="ROOT", help="batch folder")
    b.add_argument("--preset", default=None, choices=list(C.PRESETS),
                   help=f"recipe of lines that name none (default: {C.DEFAULT_PRESET})")
    b.add_argument("--config", metavar="FILE.yaml", help="a config file applied to every line")
    b.add_argument("--prior", metavar="NAME|HUB_ID|PATH", help="diffusion prior of every line")
    b.add_argument("--guidance", choices=["ism", "sds"], help="distillation method")
    b.add_argument("--iters", type=int, metavar="N", help="optimisation steps")
    b.add_argument("--seed", type=int, metavar="N", help="seed of lines that give none")
    b.add_argument("--device", metavar="auto|cpu|cuda", help="device inside each job (auto)")
    b.add_argument("--negative", metavar="TEXT", help="negative prompt of lines that give none")
    b.add_argument("--backend", default="auto", choices=["auto", "ray", "local"],
                   help="ray, local (no Ray needed) or auto: ray if installed (default)")
    b.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="join a running Ray cluster (default: start a private one here)")
    b.add_argument("--gpus-per-job", type=float, metavar="G",
                   help="GPUs each job holds (default 1 if there are GPUs, else 0; 0.5 puts two "
                        "jobs on a GPU)")
    b.add_argument("--cpus-per-job", type=int, metavar="C",
                   help="CPU threads each job holds (default: ray 1; local: cores / workers)")
    b.add_argument("--jobs", type=int, metavar="N",
                   help="at most N jobs at once (default: one per GPU; local on the CPU: 1)")
    b.add_argument("--retries", type=int, default=1, metavar="N",
                   help="retry a failed job up to N times (default 1)")
    b.add_argument("--force", action="store_true",
                   help="replace run folders that hold another config or prompt")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    return b


def cmd_batch(args) -> int:
    from ..cli import _fail, _read_yaml
    from ..priors import PriorError, PromptError
    from . import (
        BatchError,
        check_existing,
        choose_backend,
        load_jobs,
        make_backend,
        request_stop,
        run_batch,
    )

    # 1. options, the prompts file, the run folders: all checked before anything starts
    if args.retries < 0 or (args.jobs is not None and args.jobs < 1) \
            or (args.gpus_per_job is not None and args.gpus_per_job < 0) \
            or (args.cpus_per_job is not None and args.cpus_per_job < 1):
        return _fail("need --retries >= 0, --jobs >= 1, --gpus-per-job >= 0 and "
                     "--cpus-per-job >= 1")
    root = Path(args.out)
    try:
        backend_name = choose_backend(args.backend, args.ray_address)
        config_data = _read_yaml(args.config) if args.config else None
        flags = {"prior.name": args.prior, "guidance.method": args.guidance,
                 "train.iters": args.iters, "train.seed": args.seed, "train.device": args.device,
                 "guidance.negative_prompt": args.negative}
        overrides = {k: v for k, v in flags.items() if v is not None}
        overrides.update(C.parse_override_strings(args.overrides))
        jobs = load_jobs(args.prompts, preset=args.preset, config_data=config_data,
                         overrides=overrides, gpus_per_job=args.gpus_per_job)
        if root.exists() and not root.is_dir():
            raise BatchError(f"--out {root} exists and is not a folder")
        check_existing(jobs, root, args.prompts, replace=args.force)
        _probe_writable(root)
    except (BatchError, C.ConfigError, PriorError, PromptError) as e:
        return _fail(str(e))

    # 2. the backend, then the jobs; the first Ctrl-C stops gracefully, a second aborts
    stop = {"flag": False}

    def on_sigint(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        request_stop(root)
        print("\nism3d batch: stopping: running jobs checkpoint and stop (Ctrl-C again to "
              "abort)...", file=sys.stderr)

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        backend = make_backend(backend_name, root, ray_address=args.ray_address,
                               gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job,
                               jobs=args.jobs)
        index = run_batch(jobs, root, backend, prompts_file=args.prompts, retries=args.retries,
                          progress=not args.quiet, should_stop=lambda: stop["flag"],
                          log=lambda m: print(m, file=sys.stderr))
    except BatchError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail(f"aborted; re-run the same command to continue ({root}/index.html)",
                     code=130)
    finally:
        signal.signal(signal.SIGINT, old)
    c = index["counts"]
    print(f"{c['done']} done, {c['failed']} failed"
          + (f", {c['stopped'] + c['pending']} not finished" if not index["complete"]
             or c["stopped"] else "") + f": {root / 'index.html'}")
    if stop["flag"] or c["stopped"] or c["pending"]:
        print("ism3d batch: stopped; re-run the same command to continue", file=sys.stderr)
        return 130
    return 1 if c["failed"] else 0


def _probe_writable(root: Path) -> None:
    from . import BatchError
    from ..atomic import ensure_writable_dir
    try:
        ensure_writable_dir(root)
    except OSError as e:
        raise BatchError(f"cannot write to --out {root}: {e.strerror or e}") from None
