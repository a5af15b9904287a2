"""The web app's jobs, without Gradio: request -> checked plan -> one run per device, with Cancel.

The app is built on the CLI's contract: a request becomes a `Config` exactly as `ism3d generate`
builds one (preset < form fields < KEY=VALUE overrides), `generate.prepare()` checks it before any
model loads, and `generate.run()` trains and exports into a run folder under the server's ROOT.

One job (numbered as in `JobManager._work`):
    1. wait for a free device (one job at a time per GPU; the CPU counts as one device)
    2. load the prior, or reuse the one loaded for the previous job on that device
    3. `run(plan, callback=...)`: the callback queues a progress event after every step and returns
       the job's cancel flag, so Cancel stops the run between two steps with a checkpoint written
    4. a terminal event: done (summary.json), stopped (progress.json + checkpoint, resumable) or
       error (one line; a folder this job created and left without results is removed)

Safety: run folder names come from `slugify(prompt)` plus `_2`, `_3`, ... when taken (created with
an atomic mkdir, so two jobs never share a folder and no earlier run is overwritten); a run picked
in the UI is named by its folder name and must be a direct child of ROOT; no output path ever comes
from a user field (the prior may be a local path: that only reads, as in the CLI).
"""
from __future__ import annotations

import json
import logging
import math
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from .. import config as C
from ..generate import MAX_PROMPT_CHARS, RunError, prepare, run, slugify
from ..priors import PriorError, PromptError, load_prior
from ..train import CHECKPOINT, Progress, TrainingDiverged, load_checkpoint

log = logging.getLogger("ism3d.app")

# Prompt length cap in the UI (the CLI's is generate.MAX_PROMPT_CHARS); CLIP reads 77 tokens anyway.
UI_MAX_PROMPT_CHARS = min(300, MAX_PROMPT_CHARS)
# Caps of the other free-text fields.
MAX_FIELD_CHARS = 1000
MAX_OVERRIDES_CHARS = 4000


class AppError(ValueError):
    """A bad request from the UI (field value, run name): shown as one line, nothing is started."""


# Errors a user can cause; shown as their one-line message (anything else is an internal error).
USER_ERRORS = (AppError, C.ConfigError, RunError, PriorError, PromptError, TrainingDiverged)


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------
# Requests -> Config
# --------------------------------------------------------------------------------------------
@dataclass
class JobRequest:
    """What the form sends. None (or "" for text) means "the preset's value"."""
    prompt: str
    preset: str = C.DEFAULT_PRESET
    negative: str | None = None
    prior: str | None = None
    guidance: str | None = None
    scale: float | None = None
    seed: int | float | None = None
    iters: int | float | None = None
    preview_every: int | float | None = None
    # KEY=VALUE config overrides, one or more per line (`ism3d generate --help-config` lists keys)
    overrides: str = ""


_NEXT_KEY = re.compile(r"\s+(?=[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*=)")


def parse_overrides(text: str) -> dict[str, str]:
    """KEY=VALUE items, one or several per line (a value may hold spaces: a new item starts only
    at `section.key=`); blank lines and lines starting with # are skipped. Raises ConfigError."""
    items: list[str] = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.extend(_NEXT_KEY.split(line))
    return C.parse_override_strings(items)


def _text(name: str, value, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AppError(f"{name} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise AppError(f"{name} contains a NUL character; remove it")
    if len(value) > limit:
        raise AppError(f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


def _whole(name: str, value) -> int | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise AppError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or not f.is_integer():
        raise AppError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def request_config(req: JobRequest) -> tuple[C.Config, str]:
    """Build the run's config from a form request: preset < fields < overrides (as the CLI).

    Args:
        req: the form values.
    Returns:
        (cfg, preset). Values are checked later by `generate.prepare` (C.validate).
    Raises:
        AppError: empty or too long prompt, unknown preset, a field of the wrong kind.
        ConfigError: a bad override (unknown key, wrong type).
    """
    # 1. prompt: non-empty, capped
    prompt = _text("the prompt", req.prompt, UI_MAX_PROMPT_CHARS).strip()
    if not prompt:
        raise AppError("the prompt is empty: type what to make, e.g. \"a red cube\"")
    # 2. preset
    if req.preset not in C.PRESETS:
        raise AppError(f"unknown preset {req.preset!r}: choose one of {', '.join(C.PRESETS)}")
    cfg = C.preset_config(req.preset)
    # 3. form fields (empty = the preset's value)
    prior = _text("the prior", req.prior, MAX_FIELD_CHARS).strip()
    negative = req.negative if req.negative is None else _text("the negative prompt",
                                                               req.negative, MAX_FIELD_CHARS)
    if req.guidance not in (None, "", "ism", "sds"):
        raise AppError(f"guidance must be ism or sds, got {req.guidance!r}")
    scale = None
    if req.scale not in (None, ""):
        try:
            scale = float(req.scale)
        except (TypeError, ValueError):
            raise AppError(f"the guidance scale must be a number, got {req.scale!r}") from None
    flags = {"prior.name": prior or None, "guidance.method": req.guidance or None,
             "guidance.scale": scale, "guidance.negative_prompt": negative,
             "train.seed": _whole("the seed", req.seed), "train.iters": _whole("iterations", req.iters),
             "train.preview_every": _whole("preview every", req.preview_every)}
    cfg = C.apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})
    # 4. KEY=VALUE overrides win
    overrides = _text("the overrides", req.overrides, MAX_OVERRIDES_CHARS)
    cfg = C.apply_overrides(cfg, parse_overrides(overrides))
    return cfg, req.preset


# --------------------------------------------------------------------------------------------
# Run folders under ROOT
# --------------------------------------------------------------------------------------------
def new_run_dir(root: str | Path, prompt: str) -> Path:
    """Create and return an empty folder ROOT/<slug> for a new run: `slugify(prompt)`, then
    `<slug>_2`, `<slug>_3`, ... if taken. mkdir is atomic, so concurrent jobs get distinct folders
    and an existing run is never reused or overwritten."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = slugify(prompt)
    for k in range(1, 10_000):
        path = root / (base if k == 1 else f"{base}_{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AppError(f"{root} holds too many runs named {base}_*; choose another output root")


def run_dir_of(root: str | Path, name: str) -> Path:
    """The folder of the run called `name` (a folder name picked in the UI), checked to be a real,
    direct child of ROOT: no separators, no '..', no symlink out of ROOT. Raises AppError."""
    if (not isinstance(name, str) or not name or name in (".", "..")
            or any(c in name for c in "/\\\x00")):
        raise AppError(f"{name!r} is not a run name: pick a run from the gallery")
    root = Path(root).resolve()
    path = root / name
    if path.is_symlink() or not path.is_dir() or path.resolve().parent != root:
        raise AppError(f"there is no run {name!r} in {root}: pick a run from the gallery")
    return path


@dataclass
class RunFiles:
    """The outputs a run folder holds (None where missing)."""
    ply: Path | None
    glb: Path | None
    mp4: Path | None
    gif: Path | None
    views: Path | None
    summary: Path | None
    progress: Path | None
    checkpoint: Path | None
    preview: Path | None          # the newest training preview


def run_files(run_dir: str | Path) -> RunFiles:
    d = Path(run_dir)

    def f(rel: str) -> Path | None:
        p = d / rel
        return p if p.is_file() else None

    previews = sorted((d / "previews").glob("step_*.png")) if (d / "previews").is_dir() else []
    return RunFiles(ply=f("gaussians.ply"), glb=f("mesh.glb"), mp4=f("turntable.mp4"),
                    gif=f("turntable.gif"), views=f("views.png"), summary=f("summary.json"),
                    progress=f("progress.json"), checkpoint=f(CHECKPOINT),
                    preview=previews[-1] if previews else None)


def read_record(run_dir: str | Path) -> dict | None:
    """summary.json (a finished run) or else progress.json (a stopped one), or None."""
    for name in ("summary.json", "progress.json"):
        p = Path(run_dir) / name
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                data.setdefault("status", "done" if name == "summary.json" else "stopped")
                return data
    return None


@dataclass
class RunInfo:
    """One gallery entry."""
    name: str
    path: Path
    prompt: str
    status: str                   # done | stopped | running
    step: int
    total: int
    updated: float                # seconds since the epoch (the record's mtime)
    image: Path | None            # views.png, else the newest preview


def list_runs(root: str | Path, active: dict[str, str] | None = None) -> list[RunInfo]:
    """Runs under ROOT with a summary.json or progress.json, plus the `active` ones ({folder name:
    prompt}, shown as running), newest first."""
    root, active = Path(root), active or {}
    if not root.is_dir():
        return []
    runs = []
    for d in root.iterdir():
        if d.is_symlink() or not d.is_dir():
            continue
        rec = read_record(d)
        if rec is None and d.name not in active:
            continue
        rec = rec or {}
        files = run_files(d)
        stamp = files.summary or files.progress or d
        runs.append(RunInfo(
            name=d.name, path=d, prompt=str(rec.get("prompt", active.get(d.name, d.name))),
            status="running" if d.name in active else str(rec.get("status", "stopped")),
            step=int(rec.get("iterations", 0) or 0),
            total=int(rec.get("iterations_planned", 0) or 0),
            updated=stamp.stat().st_mtime, image=files.views or files.preview))
    runs.sort(key=lambda r: (r.status == "running", r.updated, r.name), reverse=True)
    return runs


def _remove_if_empty(run_dir: Path) -> None:
    """Remove a folder this app created if it holds no result (only config.yaml or nothing)."""
    if run_dir.is_dir() and not any(p.is_file() and p.name != "config.yaml"
                                    for p in run_dir.rglob("*")):
        shutil.rmtree(run_dir, ignore_errors=True)


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
                and (self.run_dir / CHECKPOINT).is_file())


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
            if dev is not None:
                self._pool.put(dev)
            with self._lock:
                self._jobs.pop(job.id, None)
            job.events.put(final)       # last: the device is free when the UI hears the end


def saved_run(run_dir: Path) -> tuple[str, C.Config, str]:
    """(prompt, config, preset) of a stopped run, for resuming it. Raises AppError/ConfigError."""
    if (run_dir / "summary.json").is_file():
        raise AppError(f"run {run_dir.name!r} is finished: there is nothing to resume")
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise AppError(f"run {run_dir.name!r} has no checkpoint to resume from")
    cfg = C.load_config_file(run_dir / "config.yaml")
    rec = read_record(run_dir) or {}
    prompt = rec.get("prompt")
    if not isinstance(prompt, str):
        prompt = load_checkpoint(ckpt)["prompt"]
    return prompt, cfg, str(rec.get("preset", "custom"))
