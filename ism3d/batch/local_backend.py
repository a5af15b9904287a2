"""Local backend of `ism3d batch`: a pool of worker processes on this machine, no Ray needed.

Slots: with GPUs, one worker per `gpus_per_job` GPUs (k GPUs, 1 per job -> k workers, each with
CUDA_VISIBLE_DEVICES set to its own GPU before Python starts; 0.5 per job -> two workers per GPU);
on the CPU, `jobs` workers (default 1), each with `cpus_per_job` torch threads (default: the
machine's cores shared out). This is what Ray does with `num_gpus`/`num_cpus` on one machine,
and the job itself is the same function (`job.execute_job`), so both backends give the same run
folders and index.

Each worker is `python -m ism3d.batch.local_backend ROOT`: it reads one JSON job per line on
stdin and answers one JSON result per line on its private copy of stdout (the job's own output
goes to its log). Workers live in their own session (Ctrl-C reaches only the driver, which stops
them through ROOT/.batch/STOP) and get SIGTERM if the driver dies (Linux: PR_SET_PDEATHSIG):
they then stop the running job with a checkpoint and exit. A worker that dies is reported as a
failed job ("the worker process died ...") and replaced for the next job.
"""
from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .spec import BatchError, JobSpec


@dataclass
class _Slot:
    env: dict[str, str]
    cpus: int
    proc: subprocess.Popen | None = None
    job: JobSpec | None = None
    attempt: int = 0
    err: object = field(default=None, repr=False)


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else all that torch counts."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 (no usable CUDA: no GPUs)
        return []


def gpu_slots(gpus: list[str], gpus_per_job: float) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each slot: `gpus_per_job` >= 1 (a whole number) groups GPUs,
    < 1 (1/n) shares each GPU between n slots. Raises BatchError if no slot fits."""
    if gpus_per_job >= 1:
        if gpus_per_job != int(gpus_per_job):
            raise BatchError(f"--gpus-per-job {gpus_per_job:g}: use a whole number, or 1/n "
                             "(0.5, 0.25, ...) to share a GPU")
        g = int(gpus_per_job)
        if len(gpus) < g:
            raise BatchError(f"--gpus-per-job {g}: only {len(gpus)} GPU(s) visible")
        return [",".join(gpus[i * g:(i + 1) * g]) for i in range(len(gpus) // g)]
    share = round(1 / gpus_per_job)
    if abs(share * gpus_per_job - 1) > 1e-6:
        raise BatchError(f"--gpus-per-job {gpus_per_job:g}: a fraction must be 1/n "
                         "(0.5, 0.25, ...)")
    if not gpus:
        raise BatchError("--gpus-per-job > 0 but no GPU is visible; use --gpus-per-job 0")
    return [gpus[i // share] for i in range(len(gpus) * share)]


class LocalBackend:
    """Runs jobs on a pool of local worker processes (see the module docstring).

    Args:
        root: the batch folder.
        gpus_per_job: GPUs per job (0: CPU jobs). None: 1 if a GPU is visible, else 0.
        cpus_per_job: torch threads per job. None: cores / number of workers (at least 1).
        jobs: at most this many jobs at once. None: one per GPU slot, or 1 on the CPU.
    """

    name = "local"

    def __init__(self, root: Path, *, gpus_per_job: float | None = None,
                 cpus_per_job: int | None = None, jobs: int | None = None):
        self.root = Path(root).resolve()
        gpus = visible_gpus() if gpus_per_job is None or gpus_per_job > 0 else []
        if gpus_per_job is None:
            gpus_per_job = 1 if gpus else 0
        self.gpus_per_job = gpus_per_job
        if gpus_per_job > 0:
            devices = gpu_slots(gpus, gpus_per_job)
            if jobs is not None:
                devices = devices[:jobs]
        else:
            devices = [""] * (jobs or 1)  # "" hides every GPU from a CPU job
        n = len(devices)
        cpus = cpus_per_job or max(1, (os.cpu_count() or 1) // n)
        self.cpus_per_job = cpus
        threads = str(cpus)
        self.slots = [_Slot(env={**os.environ, "CUDA_VISIBLE_DEVICES": d,
                                 "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                 "PYTHONUNBUFFERED": "1"}, cpus=cpus)
                      for d in devices]
        self.sel = selectors.DefaultSelector()

    def describe(self) -> str:
        what = (f"{self.gpus_per_job:g} GPU(s) per job" if self.gpus_per_job > 0
                else f"{self.cpus_per_job} CPU thread(s) per job")
        return f"local pool: {len(self.slots)} worker(s), {what}"

    def capacity(self) -> int:
        return sum(s.job is None for s in self.slots)

    def running(self) -> int:
        return sum(s.job is not None for s in self.slots)

    def submit(self, job: JobSpec, attempt: int, extra: dict | None = None) -> None:
        i = next(i for i, s in enumerate(self.slots) if s.job is None)
        slot = self.slots[i]
        if slot.proc is None or slot.proc.poll() is not None:
            self._spawn(i)
        msg = {"job": {**job.to_wire(), **(extra or {})}, "attempt": attempt, "cpus": slot.cpus}
        slot.job, slot.attempt = job, attempt
        try:
            slot.proc.stdin.write(json.dumps(msg) + "\n")
            slot.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker died: wait() reports it

    def wait(self) -> tuple[JobSpec, int, dict]:
        """Block until a running job ends; return (job, attempt, result)."""
        while True:
            for key, _ in self.sel.select():
                slot = key.data
                if slot.job is None:  # an idle worker exited (e.g. killed): forget it
                    self._drop(slot)
                    continue
                line = slot.proc.stdout.readline()
                job, attempt = slot.job, slot.attempt
                slot.job = None
                if line:
                    return job, attempt, json.loads(line)
                code = slot.proc.wait()
                self._drop(slot)
                return job, attempt, {"run": job.run, "status": "failed",
                                      "log": f"logs/{job.run}.log",
                                      "error": f"the worker process died ({_exit_text(code)})"}

    def close(self) -> None:
        """Let idle workers exit (end of input); stop busy ones (SIGTERM: checkpoint, exit)."""
        for slot in self.slots:
            if slot.proc is None:
                continue
            if slot.job is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(OSError):
                slot.proc.stdin.close()
        for slot in self.slots:
            if slot.proc is not None:
                try:
                    slot.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    slot.proc.kill()
                    slot.proc.wait()
                self._drop(slot)

    def _spawn(self, i: int) -> None:
        slot = self.slots[i]
        (self.root / ".batch").mkdir(parents=True, exist_ok=True)
        slot.err = open(self.root / ".batch" / f"worker-{i}.log", "ab")
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", "ism3d.batch.local_backend", str(self.root), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slot.err, text=True,
            env=slot.env, start_new_session=True)
        self.sel.register(slot.proc.stdout, selectors.EVENT_READ, slot)

    def _drop(self, slot: _Slot) -> None:
        if slot.proc is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(slot.proc.stdout)
            for f in (slot.proc.stdin, slot.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            if slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()
        if slot.err is not None:
            slot.err.close()
        slot.proc, slot.err = None, None


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    """Get SIGTERM when the parent process dies (Linux only; elsewhere a no-op)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------------------------
def _serve(root: str, parent: int) -> int:
    """Worker loop: job JSON lines in on stdin, result JSON lines out; see the module docstring."""
    state = {"busy": False, "stop": False}

    def on_signal(signum, frame):
        state["stop"] = True
        if not state["busy"]:
            raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _die_with_parent()
    if os.getppid() != parent:  # the driver died before PDEATHSIG was armed
        return 0
    proto = os.fdopen(os.dup(1), "w")   # results go here; fd 1 now points at this worker's stderr
    os.dup2(2, 1)

    from .job import execute_job
    for line in sys.stdin:
        msg = json.loads(line)
        state["busy"] = True
        result = execute_job(msg["job"], root, attempt=msg["attempt"], cpus=msg["cpus"],
                             should_stop=lambda: state["stop"])
        state["busy"] = False
        try:
            proto.write(json.dumps(result) + "\n")
            proto.flush()
        except (BrokenPipeError, OSError):
            return 0
        if state["stop"]:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], int(sys.argv[2])))
