"""What `ism3d batch` does with its jobs, the same for every backend (Ray or the local pool).

    1. check the run folders (`check_existing`): a folder that holds a run of another prompt or
       config is an error (exit 2) unless `--force` lets the job replace it;
    2. a finished run of the same prompt and config (summary.json + matching config.yaml) is
       reused: marked done, never touched, never sent to a worker;
    3. every other job goes to the backend while it has free slots; the worker resumes a run
       that has a checkpoint of the same config and starts the rest from scratch (`job.py`);
    4. a failed job (its error line and log path recorded) goes back to the end of the queue
       until it has had 1 + `retries` attempts in this invocation; the others carry on;
    5. ROOT/index.json and ROOT/index.html are rewritten (atomically) after every change, and a
       progress bar over prompts advances as each prompt reaches done or failed;
    6. a stop request (Ctrl-C: `request_stop`) writes ROOT/.batch/STOP: running jobs checkpoint
       and end as "stopped", queued ones stay "pending", and re-running the command continues.

Attempts are counted per run across invocations (read back from the previous index.json).
"""
from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

from .. import config as C
from .gallery import make_index, output_files, read_index, write_index
from .job import STOP_FILE, finished_summary
from .spec import BatchError, JobSpec

RESULT_KEYS = ("wall_seconds", "peak_memory_bytes", "iterations", "iterations_planned",
               "num_gaussians", "resumed_from_step", "started_at", "finished_at", "placement")


def check_existing(jobs: list[JobSpec], root: Path, prompts_file: str, *,
                   replace: bool = False) -> None:
    """Raise BatchError "FILE:LINE: ..." for the first job whose run folder holds a run of
    another config or prompt, unless `replace` (then that job starts it again from scratch);
    with `replace`, also for a folder that a live process writes (its run lock is held)."""
    import json

    from ..runlock import lock_holder

    for job in jobs:
        out = Path(root) / job.run
        if not out.is_dir():
            continue
        holder = lock_holder(out) if replace else None
        if holder:
            raise BatchError(f"{prompts_file}:{job.line}: {out} is in use by a running ism3d "
                             f"process ({holder}): --force cannot replace it while it runs")
        if replace:
            continue
        why = None
        if (out / "config.yaml").is_file():
            try:
                saved = C.to_dict(C.load_config_file(out / "config.yaml"))
            except C.ConfigError:
                saved = None
            want = C.to_dict(job.cfg)
            if saved is None:
                why = "an unreadable config.yaml"
            elif saved != want:
                keys = [f"{s}.{k}" for s in want for k in want[s]
                        if saved.get(s, {}).get(k) != want[s][k]]
                why = f"a run with another config ({', '.join(keys[:4])}" + \
                      (", ...)" if len(keys) > 4 else ")")
        for name in ("summary.json", "progress.json"):
            if why is None and (out / name).is_file():
                try:
                    prompt = json.loads((out / name).read_text()).get("prompt")
                except (OSError, ValueError, AttributeError):
                    prompt = None
                if prompt is not None and prompt != job.prompt:
                    why = f"a run of another prompt ({prompt!r})"
        if why:
            raise BatchError(f"{prompts_file}:{job.line}: {out} holds {why}; use --force to "
                             "replace it or --out to choose another folder")


def request_stop(root: Path) -> None:
    """Ask every running job of the batch in ROOT to checkpoint and stop (safe in a signal
    handler: it only creates a file)."""
    path = Path(root) / STOP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def run_batch(jobs: list[JobSpec], root: Path, backend, *, prompts_file: str, retries: int = 1,
              progress: bool = True, should_stop: Callable[[], bool] | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run `jobs` on `backend` with the semantics of the module docstring.

    Args:
        jobs: checked jobs (`spec.load_jobs`), run folders checked (`check_existing`).
        root: the batch folder ROOT.
        backend: a `LocalBackend` or `RayBackend` (capacity / running / submit / wait / close).
        prompts_file: shown in the index and the gallery.
        retries: extra attempts for a failed job in this invocation.
        progress: show a progress bar over prompts.
        should_stop: polled between results; True stops the batch (see `request_stop`).
        log: where one-line messages go (default: nowhere).
    Returns:
        The final index (as written to ROOT/index.json).
    """
    root = Path(root)
    bar = None

    def say(message: str) -> None:
        if log is None:
            return
        if bar is None:
            log(message)
            return
        with bar.external_write_mode(file=sys.stderr):
            log(message)
    stop_file = root / STOP_FILE
    stop_file.unlink(missing_ok=True)  # a stale one from a driver that was killed
    previous = {e.get("run"): e for e in (read_index(root) or {}).get("runs", [])
                if isinstance(e, dict)}

    # 1. entries; finished runs are reused as they are
    entries: dict[str, dict] = {}
    queue: deque[JobSpec] = deque()
    for job in jobs:
        prev = previous.get(job.run) or {}
        e = {"line": job.line, "prompt": job.prompt, "seed": job.seed, "preset": job.preset,
             "negative_prompt": job.negative_prompt, "overrides": job.overrides, "run": job.run,
             "status": "pending", "attempts": int(prev.get("attempts") or 0), "error": None,
             "log": _log_path(root, job.run) or prev.get("log"), "files": {},
             **{k: prev.get(k) for k in RESULT_KEYS}}
        summary = finished_summary(root / job.run, job.prompt, job.cfg)
        if summary is not None:
            e.update(status="done", attempts=max(1, e["attempts"]),
                     **{k: summary.get(k) for k in RESULT_KEYS if k in summary})
            e["files"] = output_files(root, job.run)
        else:
            queue.append(job)
        entries[job.run] = e
    reused = len(jobs) - len(queue)

    def write() -> dict:
        index = make_index(list(entries.values()), prompts_file, _now())
        write_index(root, index)
        return index

    write()
    say(f"batch: {len(jobs)} prompt(s), {reused} already done, {len(queue)} to run; "
        f"{backend.describe()}")
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), initial=reused, desc="batch", unit="prompt",
                   dynamic_ncols=True)
    tries: dict[str, int] = {}
    stopping = False
    try:
        while queue or backend.running():
            # 2. fill the free slots
            if not stopping and should_stop is not None and should_stop():
                stopping = True
                request_stop(root)
                say("batch: stopping: running jobs checkpoint and stop; re-run to continue")
            while queue and not stopping and backend.capacity() > 0:
                job = queue.popleft()
                e = entries[job.run]
                tries[job.run] = tries.get(job.run, 0) + 1
                e.update(status="running", attempts=e["attempts"] + 1, error=None,
                         started_at=_now(), finished_at=None)
                backend.submit(job, e["attempts"])
                write()
            if not backend.running():
                break
            # 3. one result
            job, _, res = backend.wait()
            e = entries[job.run]
            e.update({k: res[k] for k in RESULT_KEYS if k in res})
            e.update(status=res["status"], error=res.get("error"), log=res.get("log", e["log"]),
                     files=output_files(root, job.run))
            e["finished_at"] = res.get("finished_at") or _now()
            if e["status"] == "pending":  # the batch stopped before the job began
                e.update(attempts=e["attempts"] - 1, started_at=None, finished_at=None)
            if e["status"] == "failed":
                if tries[job.run] <= retries and not stopping:
                    e["status"] = "pending"
                    queue.append(job)
                    say(f"batch: line {job.line} failed (attempt {tries[job.run]}), retrying: "
                        f"{e['error']}")
                else:
                    say(f"batch: line {job.line} failed: {e['error']} (log: {root / e['log']})")
            if bar is not None and e["status"] in ("done", "failed"):
                bar.update(1)
            if bar is not None:
                bar.set_postfix(running=backend.running(), failed=sum(
                    x["status"] == "failed" for x in entries.values()), refresh=False)
            write()
    except BaseException:
        # 4. aborted (a second Ctrl-C): what was running is resumable from its checkpoints
        for e in entries.values():
            if e["status"] == "running":
                e["status"] = "stopped"
        raise
    finally:
        if bar is not None:
            bar.close()
        backend.close()
        stop_file.unlink(missing_ok=True)
        index = write()
    return index


def _log_path(root: Path, run: str) -> str | None:
    rel = f"logs/{run}.log"
    return rel if (root / rel).is_file() else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
