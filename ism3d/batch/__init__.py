"""`ism3d batch`: many prompts, one run folder each, on Ray or on a local pool of workers.

    spec.py           the prompts file (.txt / .jsonl) -> checked `JobSpec`s
    runner.py         the shared semantics: reuse finished runs, resume, retry, record, index
    job.py            one job inside a worker process (the same under both backends)
    ray_backend.py    one Ray task per job (`pip install 'ism3d[batch]'`)
    local_backend.py  a pool of local worker processes, one per GPU (or `--jobs` on the CPU)
    gallery.py        ROOT/index.json and ROOT/index.html
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .runner import check_existing, request_stop, run_batch
from .spec import BatchError, JobSpec, load_jobs

__all__ = ["BatchError", "JobSpec", "check_existing", "choose_backend", "load_jobs", "make_backend",
           "ray_available", "request_stop", "run_batch"]


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def choose_backend(name: str, ray_address: str | None) -> str:
    """"ray" or "local" for --backend auto|ray|local and --ray-address. Raises BatchError."""
    if name not in ("auto", "ray", "local"):
        raise BatchError(f"--backend {name!r}: choose auto, ray or local")
    if name == "local":
        if ray_address:
            raise BatchError("--ray-address needs the Ray backend; drop --backend local")
        return "local"
    if ray_available():
        return "ray"
    if name == "ray" or ray_address:
        raise BatchError("Ray is not installed: pip install 'ism3d[batch]', or use "
                         "--backend local (one worker per GPU on this machine)")
    return "local"


def make_backend(name: str, root: str | Path, *, ray_address: str | None = None,
                 gpus_per_job: float | None = None, cpus_per_job: int | None = None,
                 jobs: int | None = None):
    """A started backend: `RayBackend` (name "ray") or `LocalBackend` ("local")."""
    if name == "ray":
        from .ray_backend import RayBackend
        return RayBackend(Path(root), address=ray_address, gpus_per_job=gpus_per_job,
                          cpus_per_job=cpus_per_job, jobs=jobs)
    from .local_backend import LocalBackend
    return LocalBackend(Path(root), gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                        jobs=jobs)
