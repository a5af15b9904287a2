"""Ray backend of `ism3d batch`: each job is one Ray task holding the GPUs (or CPUs) it needs.

Ray places the tasks (`num_gpus=gpus_per_job`, `num_cpus=cpus_per_job`) and sets each task's
CUDA_VISIBLE_DEVICES, so a machine with k GPUs runs k jobs at once and a cluster runs them on
every node. The task body is `job.execute_job`, the same function the local pool runs. Tasks are
not retried by Ray (`max_retries=0`): the runner retries failed jobs itself, the same way for
both backends, and records every attempt.

Without `address` a private Ray instance is started on this machine and stops with the driver;
`address="auto"` or "HOST:PORT" joins a cluster started with `ray start` (every node needs ism3d
installed and ROOT on a shared filesystem).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import one_line
from .spec import BatchError, JobSpec


def _task(job: dict, root: str, attempt: int, cpus: int, gpus: float) -> dict:
    """The Ray task: one job in this Ray worker process."""
    if gpus == 0:
        # A CPU job must not see the node's GPUs (Ray leaves them visible to zero-GPU tasks).
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from .job import execute_job
    return execute_job(job, root, attempt=attempt, cpus=cpus)


class RayBackend:
    """Runs jobs as Ray tasks (see the module docstring).

    Args:
        root: the batch folder (on a shared filesystem for a multi-node cluster).
        address: None (start a private local Ray), "auto" or "HOST:PORT" (join a cluster).
        gpus_per_job: GPUs per task, may be fractional. None: 1 if the cluster has GPUs, else 0.
        cpus_per_job: CPUs per task (also the job's torch threads). None: 1.
        jobs: at most this many jobs at once. None: as many as the cluster's resources hold.
    """

    name = "ray"

    def __init__(self, root: Path, *, address: str | None = None,
                 gpus_per_job: float | None = None, cpus_per_job: int | None = None,
                 jobs: int | None = None):
        try:
            import ray
        except ImportError:
            raise BatchError("the Ray backend needs Ray: pip install 'ism3d[batch]' (or use "
                             "--backend local)") from None
        self.ray = ray
        self.root = Path(root).resolve()
        try:
            # "local": a new private instance even if `ray start` left one running here
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                     configure_logging=True, logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise BatchError(f"cannot start or reach Ray (--ray-address {address or 'local'}): "
                             f"{one_line(e)}") from None
        res = ray.cluster_resources()
        self.gpus_per_job = gpus_per_job if gpus_per_job is not None else (
            1 if res.get("GPU", 0) > 0 else 0)
        self.cpus_per_job = cpus_per_job or 1
        self.max_jobs = jobs
        # A GPU job gets a fresh worker process (max_calls=1): CUDA in a reused worker would
        # stay on the GPUs of its first task whatever Ray sets CUDA_VISIBLE_DEVICES to next.
        # (Ray only defaults to this when num_gpus is given here, not through .options().)
        self.remote = ray.remote(
            num_gpus=self.gpus_per_job, num_cpus=self.cpus_per_job, max_retries=0,
            retry_exceptions=False, max_calls=1 if self.gpus_per_job > 0 else 0)(_task)
        self.pending: dict = {}   # ObjectRef -> (job, attempt)

    def describe(self) -> str:
        res = self.ray.cluster_resources()
        return (f"ray: {len(self.ray.nodes())} node(s), {res.get('GPU', 0):g} GPU(s), "
                f"{res.get('CPU', 0):g} CPU(s); {self.gpus_per_job:g} GPU(s) and "
                f"{self.cpus_per_job} CPU(s) per job")

    def slots(self) -> int:
        """Jobs the cluster can hold at once now (at least 1: an autoscaler may add nodes)."""
        res = self.ray.cluster_resources()
        if self.gpus_per_job > 0:
            n = int(res.get("GPU", 0) / self.gpus_per_job + 1e-9)
        else:
            n = int(res.get("CPU", 0) / self.cpus_per_job + 1e-9)
        n = max(1, n)
        return min(n, self.max_jobs) if self.max_jobs else n

    def capacity(self) -> int:
        return max(0, self.slots() - len(self.pending))

    def running(self) -> int:
        return len(self.pending)

    def submit(self, job: JobSpec, attempt: int, extra: dict | None = None) -> None:
        ref = self.remote.remote({**job.to_wire(), **(extra or {})}, str(self.root), attempt,
                                 self.cpus_per_job, float(self.gpus_per_job))
        self.pending[ref] = (job, attempt)

    def wait(self) -> tuple[JobSpec, int, dict]:
        """Block until a running job ends; return (job, attempt, result)."""
        ray = self.ray
        done: list = []
        while not done:  # short waits, so the driver's signal handlers get to run
            done, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
        ref = done[0]
        job, attempt = self.pending.pop(ref)
        try:
            return job, attempt, ray.get(ref)
        except Exception as e:  # noqa: BLE001 (worker crash, node lost, out of memory, ...)
            first = (str(e).strip().splitlines() or [""])[0]
            return job, attempt, {"run": job.run, "status": "failed", "log": f"logs/{job.run}.log",
                                  "error": f"{type(e).__name__}: {first}".rstrip(": ")}

    def close(self) -> None:
        for ref in list(self.pending):
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        self.ray.shutdown()
