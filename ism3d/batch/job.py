"""One batch job, run inside a worker process: the same function under Ray and the local pool.

`execute_job(job, root)`:
    1. sends the process's stdout/stderr (file descriptors 1 and 2, so warnings, C libraries and
       tracebacks too) to ROOT/logs/<run>.log, appending one header line per attempt;
    2. takes ROOT/.batch/<run>.lock (flock): a second process given the same run (e.g. a worker
       orphaned by a killed driver, still writing its last checkpoint) waits instead of racing;
    3. decides what the run folder needs: a finished run with this prompt and config is returned
       as it is (never touched); a checkpoint means resume; anything else starts from scratch;
    4. `generate.prepare` (which takes the run folder's own lock, ism3d/runlock.py: a folder that
       a live `ism3d generate` or web app job writes fails this job with one line naming it)
       + `generate.run`, logging progress every 5% of the steps and stopping
       (with a checkpoint) when asked: ROOT/.batch/STOP exists or `should_stop()` says so;
    5. returns a result dict; it never raises for a failed run (status "failed", one error line,
       the traceback in the log).

The worker's CUDA_VISIBLE_DEVICES (set by Ray or by the local pool) decides its GPUs; the job's
`train.device` (auto, cuda) then means the first of them. Torch uses `cpus` threads.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from .. import config as C
from ..errors import one_line

STOP_FILE = ".batch/STOP"


def execute_job(job: dict, root: str, *, attempt: int = 1, cpus: int = 1,
                should_stop: Callable[[], bool] | None = None) -> dict:
    """Run one job (a `JobSpec.to_wire()` dict) in this process. See the module docstring.

    Args:
        job: the job as `JobSpec.to_wire()` wrote it.
        root: the batch folder ROOT.
        attempt: 1 for the first try of this job in this batch invocation, 2 for the first retry...
        cpus: torch threads for the job.
        should_stop: polled between steps, besides ROOT/.batch/STOP; True stops the run with a
            resumable checkpoint.
    Returns:
        {"run", "status": done|stopped|failed (or pending: not begun, the batch was stopping),
         "error", "log", "started_at", "finished_at",
         "placement": {"host", "pid", "cuda_visible_devices"}, "resumed_from_step",
         "reused": bool (finished before, not run again)} plus the summary's numbers
        (wall_seconds, peak_memory_bytes, iterations, iterations_planned, num_gaussians).
    """
    root_p = Path(root)
    run = job["run"]
    log_rel = f"logs/{run}.log"
    result: dict = {"run": run, "status": "failed", "error": None, "log": log_rel,
                    "started_at": _now(), "placement": _placement()}
    (root_p / "logs").mkdir(parents=True, exist_ok=True)
    (root_p / ".batch").mkdir(parents=True, exist_ok=True)
    with _output_to(root_p / log_rel):
        print(f"=== ism3d batch {result['started_at']}: line {job['line']} {job['prompt']!r}, "
              f"attempt {attempt}, host {result['placement']['host']} pid {os.getpid()}, "
              f"CUDA_VISIBLE_DEVICES={result['placement']['cuda_visible_devices']}", flush=True)
        try:
            with _run_lock(root_p / ".batch" / f"{run}.lock"):
                result.update(_execute(job, root_p, cpus, _stopper(root_p, should_stop)))
        except KeyboardInterrupt:  # Ray's cancel: the last periodic checkpoint stays
            result.update(status="stopped", error="interrupted")
        except Exception as e:  # noqa: BLE001 (a failed job is a result, not a crash)
            traceback.print_exc()
            result["error"] = f"{type(e).__name__}: {one_line(e)}"
        finally:
            _release_memory()
        result["finished_at"] = _now()
        print(f"=== {result['status']}" + (f": {result['error']}" if result["error"] else ""),
              flush=True)
    return result


def _execute(job: dict, root: Path, cpus: int, stop: Callable[[], bool]) -> dict:
    import torch

    from ..generate import prepare, run
    from ..train import has_checkpoint

    torch.set_num_threads(max(1, cpus))
    cfg = C.from_dict(job["config"])
    out = root / job["run"]
    # 1. finished with this prompt and config: report it, touch nothing
    summary = finished_summary(out, job["prompt"], cfg)
    if summary is not None:
        print("already finished: nothing to do", flush=True)
        return {**_numbers(summary), "status": "done", "reused": True}
    # 2. a checkpoint of this config (stopped, killed, diverged): resume. Anything else starts
    #    from scratch (a folder of another config only gets here with --force); its old
    #    summary.json/progress.json go first, so an interrupted restart never looks finished.
    if stop():  # asked to stop before this job began: leave it for the next invocation
        print("not started: the batch is stopping", flush=True)
        return {"status": "pending"}
    resume = has_checkpoint(out) and _same_config(out, cfg) \
        and _recorded_prompt(out) in (None, job["prompt"])
    # prepare() takes the run folder's lock: a folder another live process writes fails the job
    plan = prepare(job["prompt"], cfg=cfg, preset=job["preset"], out_dir=out, resume=resume,
                   force=not resume)
    if not plan.resume:
        for name in ("summary.json", "progress.json"):
            (out / name).unlink(missing_ok=True)
    first: dict = {}
    every = max(1, cfg.train.iters // 20)

    def callback(p) -> bool:
        first.setdefault("step", p.step)
        if p.step % every == 0 or p.step == p.total:
            print(f"step {p.step}/{p.total} loss {p.loss:.4g} gaussians {p.num_gaussians} "
                  f"{p.seconds_per_iter:.3f} s/it", flush=True)
        return stop()

    print(f"{'resuming' if resume else 'starting'} {out}", flush=True)
    summary = run(plan, progress=False, callback=callback)
    start = first["step"] - 1 if first else summary["iterations"]
    return {**_numbers(summary), "status": summary["status"], "reused": False,
            "resumed_from_step": start if resume else None}


def finished_summary(out: Path, prompt: str, cfg: C.Config) -> dict | None:
    """The summary of a finished run in `out` made with exactly `prompt` and `cfg`, else None."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "done" \
            or summary.get("prompt") != prompt:
        return None
    return summary if _same_config(out, cfg) else None


def _same_config(out: Path, cfg: C.Config) -> bool:
    try:
        return C.to_dict(C.load_config_file(out / "config.yaml")) == C.to_dict(cfg)
    except C.ConfigError:
        return False


def _recorded_prompt(out: Path) -> str | None:
    """The prompt in the run's summary.json or progress.json, if it has one."""
    for name in ("summary.json", "progress.json"):
        try:
            data = json.loads((out / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("prompt"), str):
            return data["prompt"]
    return None


def _numbers(summary: dict) -> dict:
    keys = ("wall_seconds", "peak_memory_bytes", "iterations", "iterations_planned",
            "num_gaussians")
    out = {k: summary.get(k) for k in keys}
    if summary.get("mesh_error"):
        out["mesh_error"] = summary["mesh_error"]
    return out


def _release_memory() -> None:
    """Give the job's memory back before the worker takes the next job."""
    import gc
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _stopper(root: Path, should_stop: Callable[[], bool] | None) -> Callable[[], bool]:
    """True once ROOT/.batch/STOP exists or should_stop() says so; the file is looked at no more
    than twice a second (it may sit on a network filesystem)."""
    state = {"t": 0.0, "stop": False}

    def stop() -> bool:
        if should_stop is not None and should_stop():
            state["stop"] = True
        now = time.monotonic()
        if not state["stop"] and now - state["t"] >= 0.5:
            state["t"] = now
            state["stop"] = (root / STOP_FILE).exists()
        return state["stop"]
    return stop


@contextlib.contextmanager
def _output_to(path: Path):
    """Point file descriptors 1 and 2 at `path` (append) for the block, then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


@contextlib.contextmanager
def _run_lock(path: Path):
    """An exclusive flock on `path`, held for the block; released by the OS if the process dies."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that holds {path}", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _placement() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
