"""The web app's job manager, without Gradio: request -> checked plan -> one run per device, with Cancel.

The app is built on the CLI's contract: a request becomes a `Config` exactly as `ism3d generate`
builds one (form.py: preset < form fields < KEY=VALUE overrides), `generate.prepare()` checks it
before any model loads, and `generate.run()` trains and exports into a run folder under the
server's ROOT (runs.py: creating, naming and listing those folders).

One job (numbered as in `JobManager._work`):
    1. wait for a free device (one job at a time per GPU; the CPU counts as one device)
    2. load the prior, or reuse the one loaded for the previous job on that device
    3. `run(plan, callback=...)`: the callback queues a progress event after every step and returns
       the job's cancel flag, so Cancel stops the run between two steps with a checkpoint written
    4. a terminal event: done (summary.json), stopped (progress.json + checkpoint, resumable) or
       error (one line; a folder this job created and left without results is removed)

No output path ever comes from a user field (the prior may be a local path: that only reads, as
in the CLI). The names of form.py and runs.py are re-exported here for existing callers.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from .. import config as C
from ..generate import RunError, prepare, run
from ..priors import PriorError, PromptError, load_prior
from ..atomic import WriteError
from ..train import Progress, TrainingDiverged, has_checkpoint
from .form import (MAX_FIELD_CHARS, MAX_OVERRIDES_CHARS, UI_MAX_PROMPT_CHARS,  # noqa: F401
                   AppError, JobRequest, one_line, parse_overrides, request_config)
from .runs import (RunFiles, RunInfo, _remove_if_empty, list_runs, new_run_dir,  # noqa: F401
                   read_record, run_dir_of, run_files, saved_run)

log = logging.getLogger("ism3d.app")

# Errors a user can cause; shown as their one-line message (anything else is an internal error).
USER_ERRORS = (AppError, C.ConfigError, RunError, PriorError, PromptError, TrainingDiverged,
               WriteError)


# --------------------------------------------------------------------------------------------
# Priors: one loaded per device, reused while the next job asks for the same one
# --------------------------------------------------------------------------------------------
class PriorCache:
    """Keeps the last prior loaded on each device (loading Stable Diffusion takes a while)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_device: dict[str, tuple[str, object]] = {}
        self.loads = 0

    def get(self, cfg: C.PriorConfig, device: torch.device):
        key, dev = json.dumps(asdict(cfg), sort_keys=True), str(device)
        with self._lock:
            hit = self._by_device.get(dev)
            if hit is not None and hit[0] == key:
                return hit[1]
            self._by_device.pop(dev, None)      # free the old one before loading the next
        prior = load_prior(cfg, device)
        with self._lock:
            self._by_device[dev] = (key, prior)
            self.loads += 1
        return prior


def default_devices() -> list[str]:
    """One slot per CUDA device, or the CPU as one slot."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------
EventKind = Literal["waiting", "started", "progress", "done", "stopped", "error"]
TERMINAL = ("done", "stopped", "error")


@dataclass
class JobEvent:
    """What the UI is told about a job."""
    kind: EventKind
    run_dir: Path | None = None
    step: int = 0
    total: int = 0
    loss: float = float("nan")
    num_gaussians: int = 0
    sec_per_iter: float = 0.0
    preview: str | None = None
    message: str = ""
    summary: dict | None = None

    @property
    def eta_seconds(self) -> float:
        """Training time left at the current speed (exports not included)."""
        return max(self.total - self.step, 0) * self.sec_per_iter

    @property
    def resumable(self) -> bool:
        return (self.kind == "stopped" and self.run_dir is not None
                and has_checkpoint(self.run_dir))


def status_text(ev: JobEvent) -> str:
    """One Markdown line for the status box."""
    name = f" `{ev.run_dir.name}`" if ev.run_dir is not None else ""
    if ev.kind == "waiting":
        return f"Waiting for a free device{name}..."
    if ev.kind == "started":
        return f"Started{name}: {ev.message or 'loading the prior'}..."
    if ev.kind == "progress":
        return (f"Step {ev.step}/{ev.total} · loss {ev.loss:.4g} · {ev.num_gaussians:,} gaussians"
                f" · {ev.sec_per_iter:.2f} s/step · ETA {_duration(ev.eta_seconds)}")
    if ev.kind == "done":
        s = ev.summary or {}
        return (f"Done{name}: {s.get('iterations', ev.step)} steps in "
                f"{s.get('wall_seconds', 0):.1f} s, {s.get('num_gaussians', ev.num_gaussians):,} "
                "gaussians" + (f" (no mesh: {s['mesh_error']})" if s.get("mesh_error") else ""))
    if ev.kind == "stopped":
        if ev.resumable:
            return (f"Stopped{name} at step {ev.step}/{ev.total}: the checkpoint is kept; "
                    "press Resume to continue")
        return f"Stopped: {ev.message}" if ev.message else "Stopped"
    return f"**Error:** {ev.message}"


def _duration(sec: float) -> str:
    sec = round(sec)
    return f"{sec // 60}m{sec % 60:02d}s" if sec >= 60 else f"{sec}s"


class Job:
    """One request in flight: a worker thread, a cancel flag and a queue of events."""

    def __init__(self, owner: str, prompt: str, run_dir: Path | None, plan=None,
                 created: bool = False):
        self.id = uuid.uuid4().hex[:12]
        self.owner = owner
        self.prompt = prompt
        self.run_dir = run_dir
        self.plan = plan
        self.created = created            # this job made run_dir (so it may remove it on failure)
        self.cancel = threading.Event()   # read by the train callback after every step
        self.events: queue.Queue[JobEvent] = queue.Queue()
        self.final: JobEvent | None = None
        self.thread: threading.Thread | None = None

    @classmethod
    def finished(cls, owner: str, event: JobEvent) -> Job:
        job = cls(owner, "", event.run_dir)
        job.events.put(event)
        return job

    def stop(self) -> None:
        """Ask the run to stop after its current step (a checkpoint is written)."""
        self.cancel.set()

    def on_progress(self, p: Progress) -> bool:
        """The train callback: queue an event, return the cancel flag (True stops the run)."""
        self.events.put(JobEvent("progress", self.run_dir, p.step, p.total, p.loss,
                                 p.num_gaussians, p.seconds_per_iter, p.preview_path))
        return self.cancel.is_set()

    def stream(self, min_interval: float = 0.5, poll: float = 0.1) -> Iterator[JobEvent]:
        """Events until the terminal one. Progress is coalesced to one event per `min_interval`
        seconds (the newest; it carries the newest preview seen since the last one)."""
        pending: JobEvent | None = None
        preview: str | None = None
        last = 0.0
        while True:
            try:
                ev = self.events.get(timeout=poll)
            except queue.Empty:
                ev = None
            if ev is not None and ev.kind == "progress":
                pending, preview = ev, ev.preview or preview
            elif ev is not None:
                if pending is not None and ev.kind in TERMINAL:
                    pending = None                  # the terminal event supersedes it
                yield ev
                if ev.kind in TERMINAL:
                    self.final = ev
                    return
            if pending is not None and time.monotonic() - last >= min_interval:
                yield replace(pending, preview=preview)
                pending, preview, last = None, None, time.monotonic()

    def wait(self) -> JobEvent:
        """Block until the job ends; returns the terminal event."""
        for _ in self.stream(min_interval=0.0):
            pass
        assert self.final is not None
        return self.final


class JobManager:
    """Runs jobs, one at a time per device, into run folders under ROOT.

    Args:
        root: the output root; every run folder is a direct child of it.
        devices: device slots ("cuda:0", ... or "cpu"); default: every CUDA device, else the CPU.
        priors: a PriorCache to share (default: a new one).
    """

    def __init__(self, root: str | Path, devices: list[str] | None = None,
                 priors: PriorCache | None = None):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.devices = list(devices) if devices is not None else default_devices()
        if not self.devices:
            raise ValueError("JobManager needs at least one device")
        self._pool: queue.Queue[str] = queue.Queue()
        for d in self.devices:
            self._pool.put(d)
        self.priors = priors or PriorCache()
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._expected: dict[str, int] = {}         # owner -> queued requests not started yet
        self._cancel_expected: dict[str, int] = {}  # owner -> how many of those to drop
        self.training_now = 0
        self.peak_training = 0                      # most jobs ever training at once

    # ---------------------------------------------------------------- owners (UI sessions)
    def expect(self, owner: str) -> None:
        """A request of `owner` entered the UI queue (so Cancel can drop it before it starts)."""
        with self._lock:
            self._expected[owner] = self._expected.get(owner, 0) + 1

    def _take_expected(self, owner: str) -> bool:
        """Consume one expected request of `owner`; True if it was cancelled meanwhile."""
        with self._lock:
            n = self._expected.get(owner, 0)
            if n == 0:
                return False
            self._expected[owner] = n - 1
            dropped = self._cancel_expected.get(owner, 0)
            if dropped:
                self._cancel_expected[owner] = dropped - 1
            for d in (self._expected, self._cancel_expected):
                if d.get(owner) == 0:
                    del d[owner]
            return dropped > 0

    def cancel(self, owner: str) -> str:
        """Stop `owner`'s running jobs after their current step and drop its queued ones.
        Returns one line saying what was done."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.owner == owner and not j.cancel.is_set()]
            for j in running:
                j.stop()
            queued = self._expected.get(owner, 0) - self._cancel_expected.get(owner, 0)
            if queued > 0:
                self._cancel_expected[owner] = self._expected[owner]
        parts = []
        if running:
            parts.append("stopping after the current step (the checkpoint is kept)")
        if queued > 0:
            parts.append(f"dropped {queued} queued run(s)")
        return "; ".join(parts) if parts else "nothing to cancel"

    def stop_all(self, timeout: float = 120.0) -> int:
        """Stop every running job after its current step and wait (at most `timeout` seconds in
        all) for their checkpoints: what the server does when it shuts down. Returns how many."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._expected.clear()
            self._cancel_expected.clear()
        for j in jobs:
            j.stop()
        deadline = time.monotonic() + timeout
        for j in jobs:
            if j.thread is not None:
                j.thread.join(max(deadline - time.monotonic(), 0.0))
        return len(jobs)

    def active_runs(self) -> dict[str, str]:
        """{run folder name: prompt} of the jobs running now."""
        with self._lock:
            return {j.run_dir.name: j.prompt for j in self._jobs.values() if j.run_dir is not None}

    def gallery(self) -> list[RunInfo]:
        return list_runs(self.root, self.active_runs())

    # ---------------------------------------------------------------- starting jobs
    def start(self, request: JobRequest | None = None, *, resume: str | None = None,
              owner: str = "") -> Job:
        """Check a request (or a run to resume) and start it on a worker thread.

        Args:
            request: a new run; or
            resume: the folder name (under ROOT) of a stopped run to continue.
            owner: the UI session, for Cancel.
        Returns:
            The Job (read `job.stream()`).
        Raises:
            AppError, ConfigError, RunError, PriorError: a bad request; nothing was started and
            no folder is left behind.
        """
        if (request is None) == (resume is None):
            raise ValueError("give a request or a run to resume, not both")
        if self._take_expected(owner):
            return Job.finished(owner, JobEvent("stopped", message="cancelled before it started"))
        if request is not None:
            cfg, preset = request_config(request)
            prompt = request.prompt.strip()
            run_dir, created = new_run_dir(self.root, prompt), True
        else:
            run_dir, created = run_dir_of(self.root, resume), False
            if run_dir.name in self.active_runs():
                raise AppError(f"run {run_dir.name!r} is running already")
            prompt, cfg, preset = saved_run(run_dir)
        try:
            plan = prepare(prompt, cfg=cfg, preset=preset, out_dir=run_dir,
                           resume=not created)
        except BaseException:
            if created:
                _remove_if_empty(run_dir)
            raise
        job = Job(owner, plan.prompt, run_dir, plan, created)
        with self._lock:
            self._jobs[job.id] = job
        job.thread = threading.Thread(target=self._work, args=(job,), name=f"ism3d-job-{job.id}",
                                      daemon=True)
        job.thread.start()
        return job

    def run_job(self, request: JobRequest | None = None, *, resume: str | None = None,
                owner: str = "", min_interval: float = 0.5) -> Iterator[JobEvent]:
        """`start()` then `stream()`, with a bad request turned into one error event."""
        try:
            job = self.start(request, resume=resume, owner=owner)
        except USER_ERRORS as e:
            yield JobEvent("error", message=one_line(e))
            return
        yield from job.stream(min_interval=min_interval)

    # ---------------------------------------------------------------- the worker
    def _acquire(self, job: Job) -> str | None:
        """1. A free device, or None if the job was cancelled while waiting."""
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            job.events.put(JobEvent("waiting", job.run_dir))
        while not job.cancel.is_set():
            try:
                return self._pool.get(timeout=0.2)
            except queue.Empty:
                pass
        return None

    def _work(self, job: Job) -> None:
        plan, cfg = job.plan, job.plan.cfg
        final = JobEvent("error", job.run_dir, message="internal error: the job ended early")
        dev = self._acquire(job)
        try:
            if dev is None or job.cancel.is_set():
                if job.created:
                    _remove_if_empty(job.run_dir)
                final = JobEvent("stopped", job.run_dir if not job.created else None,
                                 message="cancelled before it started")
                return
            with self._lock:
                self.training_now += 1
                self.peak_training = max(self.peak_training, self.training_now)
            try:
                # 2. the prior on this job's device ("auto" follows the slot; cudaSetDevice is
                # per thread, so "cuda" in this thread means the slot's GPU)
                if cfg.train.device == "auto" and dev.startswith("cuda"):
                    torch.cuda.set_device(torch.device(dev))
                    prior_device = torch.device(dev)
                else:
                    prior_device = plan.device
                job.events.put(JobEvent("started", job.run_dir, total=cfg.train.iters,
                                        message=f"loading the prior on {prior_device}"))
                prior = self.priors.get(cfg.prior, prior_device)
                # 3. train and export; the callback reads the cancel flag after every step
                summary = run(plan, prior=prior, progress=False, callback=job.on_progress)
            finally:
                with self._lock:
                    self.training_now -= 1
            # 4. the outcome
            kind = "done" if summary["status"] == "done" else "stopped"
            final = JobEvent(kind, job.run_dir, summary["iterations"],
                             summary["iterations_planned"], num_gaussians=summary["num_gaussians"],
                             sec_per_iter=summary["seconds_per_iter"], summary=summary)
        except USER_ERRORS as e:
            if job.created and not isinstance(e, TrainingDiverged):
                _remove_if_empty(job.run_dir)
            final = JobEvent("error", job.run_dir if job.run_dir.is_dir() else None,
                             message=one_line(e))
        except Exception as e:  # the server must keep serving
            log.exception("job %s (%r) failed", job.id, job.prompt)
            if job.created:
                _remove_if_empty(job.run_dir)
            final = JobEvent("error", job.run_dir if job.run_dir.is_dir() else None,
                             message=f"internal error ({type(e).__name__}): {one_line(e)}")
        finally:
            plan.release()              # the run folder's lock (run() released it if it ran)
            if dev is not None:
                self._pool.put(dev)
            with self._lock:
                self._jobs.pop(job.id, None)
            job.events.put(final)       # last: the device is free when the UI hears the end
