"""Question: do run folders, the web app and batch survive faults for longer than the CI tests
look (issue #24)? Four bounded soaks on this machine (CPU, loopback only), one JSON line each:

    storm   a FAST_RUN (tests/faults.py) SIGKILLed at N points (default 20): seeded random
            times from outside plus exact points inside checkpoint writes (torn temporary file,
            complete but not renamed, between keeping prev.pt and the rename, during the final
            outputs); `--resume` after each. Every finished run must be byte-identical to an
            uninterrupted one.
    app     the web app on 127.0.0.1 with C gradio_client clients (default 20) for S seconds
            (default 150) submitting, cancelling and resuming tiny jobs; path traversal through
            the file routes. Every job must end done/stopped/error, every folder must be a
            finished or resumable run, queue ranks never grow, memory stays bounded.
    ray     `ism3d batch` on a real two-node Ray cluster on 127.0.0.1 (`ray start --head` +
            `ray start --address` with its own --num-cpus); the worker node's raylet and workers
            are SIGKILLed mid-job. Every line must end done (rescheduled) or resumable, the
            index consistent, no run lost or duplicated.
    local   the same with the local backend, its worker process SIGKILLed mid-job.
    memory  does a long-serving web app's memory grow, and where? (a) `ism3d serve` in its own
            process, C clients (default 4) submitting tiny jobs for S seconds: the server's
            resident memory every 10 s; (b) the JobManager alone (no Gradio), 400 tiny jobs in
            this process: resident memory and the Python heap growth (tracemalloc) per 100 jobs.

Run (from the repository root):
    python benchmarks/soak_reliability.py all            # ~10-15 minutes on a 2-core CPU
    python benchmarks/soak_reliability.py storm --kills 20
    python benchmarks/soak_reliability.py app --clients 20 --seconds 150
    python benchmarks/soak_reliability.py ray
    python benchmarks/soak_reliability.py local
    python benchmarks/soak_reliability.py memory --clients 4 --seconds 420
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import faults  # noqa: E402  (tests/faults.py: the fault-injecting CLI wrapper)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                PYTHONUNBUFFERED="1")


# ------------------------------------------------------------------------------------ storm
def soak_storm(kills: int = 20, seed: int = 0, iters: int = 12) -> dict:
    """Kill a run at `kills` points, resume after each; compare every finished run."""
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="soak-storm-"))
    extra = [f"train.iters={iters}"]
    ref = work / "reference"
    t0 = time.time()
    r = faults.generate("none", ref, *extra)
    assert r.returncode == 0, r.stderr
    ref_ply = (ref / "gaussians.ply").read_bytes()
    one_run = time.time() - t0
    points = ["torn", "written", "rotated", "export", "timed"]
    delivered, finished, identical, cycles, log = 0, 0, 0, 0, []
    out = work / "run0"
    while delivered < kills:
        kind = points[delivered % len(points)] if delivered < len(points) else rng.choice(points)
        resume = out.exists()
        if kind == "timed":
            cmd = faults.command("none", "generate", faults.PROMPT, "--out", str(out),
                                 *faults.FAST_RUN, *extra, *(["--resume"] if resume else []))
            proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            delay = rng.uniform(0.5, one_run)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
            code = proc.returncode
            spec = f"timed:{delay:.1f}s"
        else:
            spec = kind if kind == "export" else f"{kind}:{rng.randint(1, 3)}"
            r = faults.generate(spec, out, *extra, resume=resume)
            code, err = r.returncode, r.stderr
        log.append((spec, code))
        if code == -signal.SIGKILL:
            delivered += 1
        elif code == 0:                 # the run got to the end before the kill: compare, next
            finished += 1
            identical += (out / "gaussians.ply").read_bytes() == ref_ply
            cycles += 1
            out = work / f"run{cycles}"
        else:
            raise AssertionError(f"{spec}: exit {code}: {err.strip()[-500:]}")
    r = faults.generate("none", out, *extra, resume=out.exists())
    assert r.returncode == 0, r.stderr
    finished += 1
    identical += (out / "gaussians.ply").read_bytes() == ref_ply
    leftovers = [str(p) for p in work.rglob(".*tmp*")]
    shutil.rmtree(work, ignore_errors=True)
    return {"soak": "storm", "kills": delivered, "kill_points": [s for s, c in log if c == -9],
            "runs_finished": finished, "bit_identical": identical, "temp_files_left": leftovers,
            "iters": iters, "seconds": round(time.time() - t0, 1),
            "ok": identical == finished and not leftovers}


# ------------------------------------------------------------------------------------ app
EXPECTED_REFUSALS = ("is finished: there is nothing to resume", "is running already", "in use by")


def soak_app(clients: int = 20, seconds: float = 150, seed: int = 0) -> dict:
    import urllib.error
    import urllib.request

    from gradio_client import Client
    from gradio_client.utils import Status
    from servers import free_port

    from ism3d.app.jobs import JobManager
    from ism3d.app.server import launch

    work = Path(tempfile.mkdtemp(prefix="soak-app-"))
    (work / "secret.txt").write_text("outside ROOT")
    manager = JobManager(work / "runs", devices=["cpu"])
    demo, url = launch(manager, port=free_port(), block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    fast = ("train.batch=1 train.preview_every=0 init.num_points=300 output.video=false "
            "output.gif=false output.mesh=false output.video_size=32 train.checkpoint_every=1")
    stop_at = time.time() + seconds
    lock = threading.Lock()
    stats = {"submitted": 0, "cancels": 0, "resumes": 0, "done": 0, "stopped": 0, "error": 0,
             "expected_refusals": 0, "dropped_from_queue": 0, "rank_grew": 0, "unfinished": 0}
    errors: list[str] = []
    rss: list[int] = []

    def count(key, n=1):
        with lock:
            stats[key] += n

    def client_loop(k: int):
        rng = random.Random(seed * 1000 + k)
        c = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        while time.time() < stop_at:
            action = rng.random()
            stopped = [r.name for r in manager.gallery() if r.status == "stopped"]
            if action < 0.2 and stopped:
                job = c.submit(rng.choice(stopped), api_name="/resume")
                count("resumes")
            else:
                words = rng.choice(["red cube", "blue ball", "green cone", "small house"])
                job = c.submit(f"a {words}", "", "tiny", "tiny", "sds", 7.5, rng.randint(0, 3),
                               rng.randint(2, 5), 0, fast, api_name="/generate")
                count("submitted")
            cancel_after = rng.uniform(1, 20) if rng.random() < 0.3 else None
            t0, last_rank = time.time(), None
            while not job.done():
                st = job.status()
                if st.code == Status.IN_QUEUE and st.rank is not None:
                    if last_rank is not None and st.rank > last_rank:
                        count("rank_grew")
                    last_rank = st.rank
                if cancel_after is not None and time.time() - t0 > cancel_after:
                    if st.code == Status.IN_QUEUE:
                        job.cancel()                   # still in Gradio's queue: drop it
                    else:
                        c.predict(api_name="/cancel")  # running: stop after this step
                    count("cancels")
                    cancel_after = None
                if time.time() > stop_at + 240:
                    count("unfinished")
                    return
                time.sleep(0.2)
            if job.status().code == Status.CANCELLED:
                count("dropped_from_queue")
                continue
            try:
                status = job.result()[0]
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            kind = ("done" if status.startswith("Done") else "error" if "Error" in status
                    else "stopped")
            count(kind)
            # a run picked from the gallery that another client resumed meanwhile: the right
            # one-line refusal, not a failure
            if kind == "error" and any(w in status for w in EXPECTED_REFUSALS):
                count("expected_refusals")
            elif kind == "error":
                errors.append(status[:200])

    def sample_memory():
        page = os.sysconf("SC_PAGE_SIZE")
        while time.time() < stop_at + 60:
            with open("/proc/self/statm") as f:        # resident set now (Linux)
                rss.append(int(f.read().split()[1]) * page)
            time.sleep(2)

    t0 = time.time()
    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True)
               for k in range(clients)]
    mem = threading.Thread(target=sample_memory, daemon=True)
    mem.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    # path traversal through the file routes
    base = url.rstrip("/")
    probes = ["/gradio_api/file=/etc/passwd", f"/gradio_api/file={work}/secret.txt",
              f"/gradio_api/file={manager.root}/../secret.txt",
              "/gradio_api/file=..%2F..%2F..%2Fetc%2Fpasswd", "/file=/etc/passwd",
              f"/gradio_api/file={manager.root}/%2e%2e/secret.txt",
              "/gradio_api/file=%2Fetc%2Fshadow", "/static/../../../../etc/passwd",
              "/assets/..%2F..%2F..%2Fetc%2Fpasswd"]
    traversal = {}
    for p in probes:
        try:
            with urllib.request.urlopen(base + p, timeout=10) as resp:
                body = resp.read()
                traversal[p] = resp.status if b"root:" not in body and b"outside ROOT" not in body \
                    else "LEAKED"
        except urllib.error.HTTPError as e:
            traversal[p] = e.code
    demo.close()
    manager.stop_all()
    # every folder: finished (summary.json) or resumable (progress.json + a checkpoint)
    orphans = []
    for d in manager.root.iterdir():
        if (d / "summary.json").is_file():
            continue
        if (d / "progress.json").is_file() and any((d / "checkpoints").glob("*.pt")):
            continue
        orphans.append(d.name)
    ok_traversal = all(v in (400, 403, 404, 405) for v in traversal.values())
    out = {"soak": "app", "clients": clients, "seconds": round(time.time() - t0, 1), **stats,
           "folders": sum(1 for _ in manager.root.iterdir()), "orphan_folders": orphans,
           "peak_training_at_once": manager.peak_training,
           "rss_mb_start_end_max": [round(rss[0] / 2**20), round(rss[-1] / 2**20),
                                     round(max(rss) / 2**20)] if rss else None,
           "traversal": traversal, "unexpected_errors": errors[:5],
           "ok": ok_traversal and not orphans and not errors and stats["unfinished"] == 0
           and stats["rank_grew"] == 0 and manager.peak_training == 1}
    shutil.rmtree(work, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------ memory
def _rss_mb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS")).split()[1]) // 1024


def soak_memory(clients: int = 4, seconds: float = 420, manager_jobs: int = 400) -> dict:
    """(a) the served app in its own process under load; (b) the JobManager alone."""
    import gc
    import tracemalloc

    from gradio_client import Client
    from servers import free_port

    from ism3d.app.jobs import JobManager, JobRequest

    fast = "train.batch=1 output.video_frames=4 output.gif=false output.mesh=false output.video_size=32"
    work = Path(tempfile.mkdtemp(prefix="soak-memory-"))
    # (a) `ism3d serve` as a user runs it
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "ism3d", "serve", "--port", str(port), "--out",
                            str(work / "served")], env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(120):
        try:
            Client(url, verbose=False, analytics_enabled=False, download_files=False)
            break
        except Exception:  # noqa: BLE001  (not up yet)
            time.sleep(1)
    stop_at, done, samples = time.time() + seconds, [0], []

    def client_loop(k: int):
        rng = random.Random(k)
        c = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        while time.time() < stop_at:
            words = rng.choice(["red cube", "blue ball", "green cone", "small house"])
            c.submit(f"a {words}", "", "tiny", "tiny", "sds", 7.5, rng.randint(0, 3), rng.randint(2, 5), 0,
                     fast, api_name="/generate").result()
            done[0] += 1

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    t0 = time.time()
    while any(t.is_alive() for t in threads):
        samples.append((round(time.time() - t0), _rss_mb(srv.pid), done[0]))
        time.sleep(10)
    srv.terminate()
    srv.wait(timeout=30)
    after_first = next((mb for _, mb, n in samples if n >= 20), samples[-1][1])
    served = {"jobs": done[0], "rss_mb_idle": samples[0][1], "rss_mb_after_20_jobs": after_first,
              "rss_mb_end": samples[-1][1], "rss_mb_max": max(mb for _, mb, _ in samples),
              "mb_per_1000_jobs_after_20": round((samples[-1][1] - after_first) * 1000
                                                 / max(1, done[0] - 20), 1)}
    # (b) our job layer alone: train + export tiny runs, no Gradio
    manager = JobManager(work / "direct", devices=["cpu"])

    def jobs(n: int) -> None:
        for i in range(n):
            manager.start(JobRequest(prompt="a red cube", preset="tiny", iters=3, overrides=fast, seed=i % 4)).wait()

    jobs(30)
    gc.collect()
    tracemalloc.start()
    rss = [_rss_mb()]
    for _ in range(manager_jobs // 100):
        jobs(100)
        gc.collect()
        rss.append(_rss_mb())
    heap_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    shutil.rmtree(work, ignore_errors=True)
    direct = {"jobs": manager_jobs, "rss_mb_per_100_jobs": rss, "python_heap_growth_mb": round(heap_mb, 1)}
    return {"soak": "memory", "clients": clients, "seconds": seconds, "served": served, "job_manager": direct,
            "ok": direct["python_heap_growth_mb"] < 20 and rss[-1] - rss[0] < 50}


# ------------------------------------------------------------------------------------ batch
def _prompts(folder: Path, n: int) -> Path:
    words = ["red cube", "blue ball", "green cone", "small house", "tall chair", "white mug"]
    path = folder / "prompts.txt"
    path.write_text("".join(f"a {words[i % len(words)]} {i}\n" for i in range(n)))
    return path


BATCH_ARGS = ["--preset", "tiny", "--quiet", "--retries", "2", "train.iters=20", "train.batch=1",
              "train.checkpoint_every=1", "train.preview_every=0", "init.num_points=300",
              "output.video=false", "output.gif=false", "output.mesh=false",
              "output.video_size=32", "--guidance", "sds"]


def _check_index(root: Path, n: int) -> dict:
    index = json.loads((root / "index.json").read_text())
    runs = index["runs"]
    names = [e["run"] for e in runs]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in
                     ("logs", ".batch"))
    return {"lines": len(runs), "statuses": {s: c for s, c in index["counts"].items() if c},
            "attempts": sorted(e["attempts"] for e in runs),
            "duplicates": len(names) - len(set(names)), "folders": len(folders),
            "consistent": len(runs) == n and len(set(names)) == n and sorted(names) == folders
            and all((root / e["run"] / "summary.json").is_file() == (e["status"] == "done")
                    for e in runs)}


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def soak_local(n: int = 4) -> dict:
    work = Path(tempfile.mkdtemp(prefix="soak-local-"))
    root = work / "out"
    cmd = [sys.executable, "-m", "ism3d", "batch", str(_prompts(work, n)), "--out", str(root),
           "--backend", "local", "--jobs", "1", "--cpus-per-job", "1", *BATCH_ARGS]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    kills = 0
    while proc.poll() is None and kills < 2:      # SIGKILL the worker twice, mid-job
        ckpts = list(root.glob("*/checkpoints/last.pt")) if root.is_dir() else []
        workers = _children(proc.pid)
        if ckpts and workers and len(ckpts) > kills:
            time.sleep(1.0)
            for w in workers:
                os.kill(w, signal.SIGKILL)
            kills += 1
        time.sleep(0.3)
    _, err = proc.communicate(timeout=1800)
    res = {"soak": "local", "prompts": n, "worker_kills": kills, "exit": proc.returncode,
           "seconds": round(time.time() - t0, 1), **_check_index(root, n)}
    res["ok"] = res["exit"] == 0 and res["consistent"] and res["statuses"] == {"done": n}
    if not res["ok"]:
        res["stderr_tail"] = err.strip()[-400:]
    shutil.rmtree(work, ignore_errors=True)
    return res


def soak_ray(n: int = 4) -> dict:
    work = Path(tempfile.mkdtemp(prefix="soak-ray-"))
    root = work / "out"
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = 6391
    # Ray 2.60 clusters started by `ray start` authenticate nodes and drivers with a token
    # (~/.ray/auth_token, made here for local use if missing); short health checks so that the
    # killed node is declared dead in seconds
    env = dict(_env(), RAY_AUTH_MODE="token", RAY_health_check_period_ms="1000",
               RAY_health_check_timeout_ms="2000", RAY_health_check_failure_threshold="3")
    if not (Path.home() / ".ray" / "auth_token").is_file():
        subprocess.run([ray, "get-auth-token", "--generate"], env=env, capture_output=True)
    head = subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "1",
                           "--include-dashboard=false", "--disable-usage-stats"], env=env,
                          capture_output=True, text=True)
    if head.returncode != 0:
        return {"soak": "ray", "ok": False, "why": "ray start --head failed: "
                + head.stderr.strip()[-300:]}
    before = set(_raylets())
    t0 = time.time()
    try:
        node = subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2",
                               "--disable-usage-stats"], env=env, capture_output=True, text=True)
        if node.returncode != 0:
            return {"soak": "ray", "ok": False, "why": "ray start --address failed: "
                    + node.stderr.strip()[-300:]}
        worker_raylets = sorted(set(_raylets()) - before)
        cmd = [sys.executable, "-m", "ism3d", "batch", str(_prompts(work, n)), "--out", str(root),
               "--backend", "ray", "--ray-address", f"127.0.0.1:{port}", "--cpus-per-job", "1",
               *BATCH_ARGS]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        killed = None
        while proc.poll() is None and killed is None and time.time() - t0 < 900:
            running = _running_on(root)
            if running and worker_raylets:
                # the worker node: its raylet and every process under it (its task workers)
                victims = [p for r in worker_raylets for p in _tree(r)]
                for p in victims:
                    with _suppress():
                        os.kill(p, signal.SIGKILL)
                killed = len(victims)
            time.sleep(0.5)
        _, err = proc.communicate(timeout=1800)
        res = {"soak": "ray", "prompts": n, "nodes": 2, "worker_node_processes_killed": killed,
               "exit": proc.returncode, "seconds": round(time.time() - t0, 1),
               **_check_index(root, n)}
        res["ok"] = bool(killed) and res["consistent"] and res["statuses"] == {"done": n}
        if not res["ok"]:
            res["stderr_tail"] = err.strip()[-400:]
        return res
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _running_on(root: Path) -> bool:
    """A job has written its first checkpoint (it is mid-run on some node)."""
    return root.is_dir() and any(root.glob("*/checkpoints/last.pt"))


def _raylets() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "raylet/raylet"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=["storm", "app", "ray", "local", "memory", "all"])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=150)
    p.add_argument("--prompts", type=int, default=4)
    a = p.parse_args()
    runs = {"storm": lambda: soak_storm(a.kills), "app": lambda: soak_app(a.clients, a.seconds),
            "ray": lambda: soak_ray(a.prompts), "local": lambda: soak_local(a.prompts),
            "memory": lambda: soak_memory(a.clients, a.seconds)}
    ok = True
    for name in ([n for n in runs if n != "memory"] if a.which == "all" else [a.which]):
        res = runs[name]()
        ok &= bool(res.get("ok"))
        print(json.dumps(res), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
