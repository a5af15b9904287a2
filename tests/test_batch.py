"""`ism3d batch`: the prompts file, the shared runner semantics on Ray and on the local pool, the
gallery. The end-to-end tests run the CLI as a user does (a subprocess driver) against a Ray
instance this module starts (`ray.init(num_cpus=2)`), with the tiny preset cut to a few steps."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ism3d import config as C
from ism3d.batch import BatchError, choose_backend, load_jobs
from ism3d.batch.gallery import make_index, render_html, write_index
from ism3d.batch.local_backend import gpu_slots

REPO = Path(__file__).resolve().parents[1]
# The tiny preset cut to seconds per job: few steps and points, a 4-frame GIF, no MP4, no mesh.
FAST = ["train.iters=4", "train.checkpoint_every=2", "train.preview_every=0",
        "init.num_points=300", "output.video_frames=4", "output.video=false", "output.mesh=false"]
# One job at a time on one thread: on a shared 2-core machine two workers only double the
# start-up cost (each imports torch and diffusers), and two OpenMP threads that spin while other
# processes hold the cores make a step up to 40x slower.
ONE_SLOT = ["--cpus-per-job", "1", "--jobs", "1"]
# Keys of an index that legitimately differ between two runs of the same input.
VOLATILE = {"updated_at", "started_at", "finished_at", "wall_seconds", "peak_memory_bytes",
            "placement"}


def batch(*args, timeout=240, env=None, popen=False):
    cmd = [sys.executable, "-m", "ism3d", "batch", *args]
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


def strip_volatile(x):
    if isinstance(x, dict):
        return {k: strip_volatile(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [strip_volatile(v) for v in x]
    return x


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not any(part.startswith(".") for part in p.relative_to(root).parts))


# ---------------------------------------------------------------------------------------------
# The prompts file (no jobs run)
# ---------------------------------------------------------------------------------------------
def test_jsonl_lines_resolve_with_precedence_and_stable_folder_names(tmp_path):
    f = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "a red cube"},
        "# a comment, then a blank line",
        "",
        {"prompt": "a red cube", "seed": 3, "negative_prompt": "dull",
         "overrides": {"train.iters": 9, "guidance.scale": "5"}},
        {"prompt": "A red cube!", "overrides": ["train.iters=11"]},   # same slug, same seed
        {"prompt": "a blue sphere", "preset": "toy", "seed": 1},
    ])
    jobs = load_jobs(f, preset="tiny", overrides={"train.iters": 7, "guidance.scale": 2.0})
    assert [j.line for j in jobs] == [1, 4, 5, 6]
    a, b, c, d = jobs
    # preset < command line < the line's own fields and overrides
    assert (a.cfg.train.iters, a.cfg.guidance.scale, a.cfg.train.seed) == (7, 2.0, 0)
    assert a.cfg.prior.name == "tiny" and a.preset == "tiny"
    assert (b.cfg.train.iters, b.cfg.guidance.scale, b.cfg.train.seed) == (9, 5.0, 3)
    assert b.cfg.guidance.negative_prompt == "dull" and b.negative_prompt == "dull"
    assert c.cfg.train.iters == 11
    assert d.preset == "toy" and d.cfg.prior.name == "toy" and d.cfg.train.iters == 7
    want = C.apply_overrides(C.preset_config("toy"), {"train.iters": 7, "guidance.scale": 2.0,
                                                       "train.seed": 1})
    assert C.to_dict(d.cfg) == C.to_dict(want)
    # folder names: slug + seed; the later of two colliding lines gets a hash of its own job
    assert [a.run, b.run, d.run] == ["a_red_cube_s0", "a_red_cube_s3", "a_blue_sphere_s1"]
    assert c.run.startswith("a_red_cube_s0_") and len(c.run) == len("a_red_cube_s0_") + 8
    # deterministic: the same file maps every line to the same folder again
    assert [j.run for j in load_jobs(f, preset="tiny", overrides={"train.iters": 7,
                                                                    "guidance.scale": 2.0})] \
        == [j.run for j in jobs]
    # and a job survives the trip to a worker process
    from ism3d.batch.spec import JobSpec
    back = JobSpec.from_wire(json.loads(json.dumps(b.to_wire())))
    assert C.to_dict(back.cfg) == C.to_dict(b.cfg) and back.run == b.run


def test_txt_file_is_one_prompt_per_line(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n\n# skipped\n  a blue ball  \n")
    jobs = load_jobs(f, preset="tiny")
    assert [(j.line, j.prompt, j.run) for j in jobs] == [(1, "a red cube", "a_red_cube_s0"),
                                                          (4, "a blue ball", "a_blue_ball_s0")]


@pytest.mark.parametrize("line, needle", [
    ('{"prompt": "a cube", "overrides": {"train.itrs": 5}}', "unknown config key 'train.itrs'"),
    ('{"prompt": "a cube", "overrides": {"train.iters": "many"}}',
     "train.iters: expected an integer"),
    ('{"prompt": "a cube", "overrides": {"train.iters": 0}}', "train.iters: must be at least 1"),
    ('{"prompt": "a cube", "seed": "7"}', '"seed" must be a whole number'),
    ('{"prompt": "a cube", "seed": -1}', '"seed" must be a whole number'),
    ('{"prompt": "a cube", "preset": "huge"}', "unknown preset 'huge'"),
    ('{"prompt": "   "}', "the prompt is empty"),
    ('{"prompt": 42}', '"prompt" must be a string'),
    ('{"prompt": "' + "x" * 1001 + '"}', "the prompt is 1001 characters long"),
    ('{"prompt": "a cube", "color": "red"}', "unknown key(s) 'color'"),
    ('{"seed": 1}', 'missing "prompt"'),
    ('{"prompt": "a cube",}', "not valid JSON"),
    ('["a cube"]', "must be a JSON object"),
    ('{"prompt": "a cube", "overrides": {"prior.name": "/no/such/prior"}}',
     "no such file or folder: /no/such/prior"),
    ('{"prompt": "a cube", "overrides": {"render.width": 36, "prior.name": "__DIR__"}}',
     "render.width: must be a multiple of 8 for a latent prior"),
    ('{"prompt": "a flying saucer", "preset": "toy"}', "does not know the word(s) flying, saucer"),
    ('{"prompt": "a cube", "overrides": {"train.device": "cuda:1"}}', "each job sees 1 GPU(s)"),
    ('{"prompt": "a cube", "seed": 0}', "the same prompt and config as line 1"),
])
def test_bad_line_is_one_error_naming_file_and_line(tmp_path, line, needle):
    # __DIR__: a folder that exists but is no pixel prior, so it counts as a latent (SD) prior
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a cube"}\n' + line.replace("__DIR__", str(tmp_path)) + "\n")
    with pytest.raises(BatchError) as e:
        load_jobs(f, preset="tiny", gpus_per_job=1)
    msg = str(e.value)
    assert msg.startswith(f"{f}:2: ") and needle in msg and "\n" not in msg, msg


@pytest.mark.parametrize("name, text, needle", [
    ("p.csv", "a cube\n", "must end in .txt"),
    ("p.txt", "\n# nothing\n", "no prompts"),
    ("p.txt", None, "no such file"),
])
def test_bad_file_is_one_error(tmp_path, name, text, needle):
    f = tmp_path / name
    if text is not None:
        f.write_text(text)
    with pytest.raises(BatchError, match=needle):
        load_jobs(f)


def test_cli_rejects_bad_file_with_exit_2_and_starts_nothing(tmp_path):
    f = write_lines(tmp_path / "p.jsonl", [{"prompt": "a red cube"}, {"prompt": "a blue ball"},
                                           {"prompt": "x", "overrides": {"guidance.scale": -1}}])
    out = tmp_path / "out"
    r = batch(str(f), "--out", str(out), "--preset", "tiny", "--backend", "local")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{f}:3: guidance.scale: must be >= 0" in lines[0], r.stderr
    assert not out.exists()


def test_conflicting_run_folder_is_exit_2_unless_force(tmp_path):
    f = write_lines(tmp_path / "p.jsonl", [{"prompt": "a red cube"}])
    out = tmp_path / "out"
    (out / "a_red_cube_s0").mkdir(parents=True)
    other = C.apply_overrides(C.preset_config("tiny"), {"train.iters": 99})
    (out / "a_red_cube_s0" / "config.yaml").write_text(C.dump_yaml(other))
    from ism3d.batch import check_existing
    jobs = load_jobs(f, preset="tiny")
    with pytest.raises(BatchError, match=r"p.jsonl:1: .*another config \(train.iters\); use "
                                         r"--force"):
        check_existing(jobs, out, str(f))
    check_existing(jobs, out, str(f), replace=True)  # --force: no error


# ---------------------------------------------------------------------------------------------
# Backend choice and GPU slots (no jobs run)
# ---------------------------------------------------------------------------------------------
def test_auto_backend_falls_back_to_local_without_ray(monkeypatch):
    import ism3d.batch as B
    monkeypatch.setattr(B, "ray_available", lambda: False)
    assert choose_backend("auto", None) == "local"
    with pytest.raises(BatchError, match="Ray is not installed"):
        choose_backend("ray", None)
    with pytest.raises(BatchError, match="Ray is not installed"):
        choose_backend("auto", "auto")
    monkeypatch.setattr(B, "ray_available", lambda: True)
    assert choose_backend("auto", None) == "ray"
    with pytest.raises(BatchError, match="--ray-address needs the Ray backend"):
        choose_backend("local", "10.0.0.1:6379")


def test_gpu_slots_give_each_job_its_own_gpus():
    gpus = ["0", "1", "2", "3"]
    assert gpu_slots(gpus, 1) == ["0", "1", "2", "3"]
    assert gpu_slots(gpus, 2) == ["0,1", "2,3"]
    assert gpu_slots(["4", "6", "7"], 2) == ["4,6"]
    assert gpu_slots(["0", "1"], 0.5) == ["0", "0", "1", "1"]
    for bad, msg in ((1.5, "whole number"), (0.3, "1/n"), (8, "only 4 GPU")):
        with pytest.raises(BatchError, match=msg):
            gpu_slots(gpus, bad)
    with pytest.raises(BatchError, match="no GPU is visible"):
        gpu_slots([], 0.5)


# ---------------------------------------------------------------------------------------------
# The gallery
# ---------------------------------------------------------------------------------------------
def test_gallery_escapes_text_and_links_outputs(tmp_path):
    runs = [{"line": 1, "prompt": 'a <script>alert("x")</script> cube', "seed": 0,
             "preset": "tiny", "run": "a_script_cube_s0", "status": "done", "attempts": 1,
             "error": None, "log": "logs/a_script_cube_s0.log", "wall_seconds": 75.2,
             "peak_memory_bytes": 3 * 2 ** 30,
             "files": {"gif": "a_script_cube_s0/turntable.gif",
                       "ply": "a_script_cube_s0/gaussians.ply",
                       "glb": "a_script_cube_s0/mesh.glb"}},
            {"line": 2, "prompt": "a & b", "seed": 4, "preset": "tiny", "run": "a_b_s4",
             "status": "failed", "attempts": 2, "error": "PriorError: bad <prior>",
             "log": "logs/a_b_s4.log", "files": {}}]
    index = make_index(runs, "p.jsonl", "2025-01-01T00:00:00+0000")
    assert index["counts"] == {"pending": 0, "running": 0, "done": 1, "failed": 1, "stopped": 0}
    assert index["complete"] is True
    page = render_html(index)
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    assert "a &amp; b" in page and "PriorError: bad &lt;prior&gt;" in page
    for link in ("a_script_cube_s0/turntable.gif", "a_script_cube_s0/gaussians.ply",
                 "a_script_cube_s0/mesh.glb", "logs/a_b_s4.log"):
        assert f'"{link}"' in page
    assert "1 min 15 s" in page and "peak 3.0 GiB" in page and "2 attempts" in page
    assert 'http-equiv="refresh"' not in page   # complete: no auto-reload
    runs[1]["status"] = "running"
    assert 'http-equiv="refresh"' in render_html(make_index(runs, "p.jsonl", "now"))
    write_index(tmp_path, index)
    assert json.loads((tmp_path / "index.json").read_text()) == index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "index.json"]


# ---------------------------------------------------------------------------------------------
# End to end on Ray and on the local pool
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_address():
    """A Ray instance for this module (2 CPUs, no dashboard); drivers join it by address."""
    import ray
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False,
             log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def three_prompts(tmp_path_factory):
    """Two good prompts and one whose prior is a folder that exists (so the file checks pass)
    but holds no Stable Diffusion model: its job fails when the worker loads the prior."""
    d = tmp_path_factory.mktemp("three")
    (d / "empty_prior").mkdir()
    return write_lines(d / "prompts.jsonl", [
        {"prompt": "a red cube"},
        {"prompt": "a blue <ball> & co", "seed": 2},
        {"prompt": "a broken prior", "overrides": {"prior.name": str(d / "empty_prior")}},
    ])


@pytest.fixture(scope="module")
def same_input_runs(request, three_prompts, tmp_path_factory):
    """The three prompts on the local pool and on Ray, both at once (they are independent, and
    the local one needs no Ray). The local pool sees two (pretend) GPUs, 5 and 7, and runs one
    job at a time, so its worker is pinned to GPU 5. Returns {backend: (ROOT, CompletedProcess)}."""
    d = tmp_path_factory.mktemp("same")
    common = [str(three_prompts), "--preset", "tiny", "--retries", "1", "--quiet", *ONE_SLOT,
              *FAST]
    procs = {"local": batch("--out", str(d / "local"), "--backend", "local", "--gpus-per-job",
                            "1", *common, env={"CUDA_VISIBLE_DEVICES": "5,7"}, popen=True)}
    runs = {}
    try:
        address = request.getfixturevalue("ray_address")  # Ray starts while the local run works
        procs["ray"] = batch("--out", str(d / "ray"), "--backend", "ray", "--ray-address",
                             address, *common, popen=True)
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            runs[name] = (d / name, subprocess.CompletedProcess(proc.args, proc.returncode, out,
                                                                err))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return runs


@pytest.fixture(scope="module")
def ray_run(same_input_runs):
    return same_input_runs["ray"]


def test_ray_batch_records_two_done_and_one_failed(ray_run, three_prompts):
    out, r = ray_run
    assert r.returncode == 1, r.stderr          # 1: some prompt failed
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["counts"]["done"] == 2 and index["counts"]["failed"] == 1
    good, good2, bad = index["runs"]
    assert [e["line"] for e in index["runs"]] == [1, 2, 3]
    for e in (good, good2):
        assert e["status"] == "done" and e["attempts"] == 1 and e["error"] is None
        assert e["iterations"] == 4 and e["num_gaussians"] > 0
        for key in ("gif", "ply", "views"):
            assert (out / e["files"][key]).is_file()
        summary = json.loads((out / e["run"] / "summary.json").read_text())
        assert summary["prompt"] == e["prompt"] and summary["seed"] == e["seed"]
        assert e["wall_seconds"] == summary["wall_seconds"] > 0
    assert good2["run"] == "a_blue_ball_co_s2"
    # the failure: one error line, its log, retried once (2 attempts), the others unaffected
    assert bad["status"] == "failed" and bad["attempts"] == 2
    assert bad["error"].startswith("PriorError: ") and "not a complete Stable Diffusion" \
        in bad["error"] and "\n" not in bad["error"]
    log = (out / bad["log"]).read_text()
    assert log.count("=== ism3d batch") == 2 and "Traceback" in log and bad["error"] in log
    assert "attempt 2" in log
    # the gallery lists all three, escaped, with the GIFs and downloads
    page = (out / "index.html").read_text()
    for e in index["runs"]:
        assert f'id="{e["run"]}"' in page
    assert "a blue &lt;ball&gt; &amp; co" in page and bad["error"].split(":")[0] in page
    assert f'src="{good["files"]["gif"]}"' in page and f'href="{good["files"]["ply"]}"' in page
    assert not [p for p in out.rglob(".*.tmp*")]   # atomic writes leave no temp files
    # the summary line on stdout
    assert "2 done, 1 failed" in r.stdout


def test_local_backend_gives_same_folders_and_index(same_input_runs):
    """The fallback without Ray: same folders and index as Ray for the same input, minus times."""
    ray_out, _ = same_input_runs["ray"]
    out, r = same_input_runs["local"]
    assert r.returncode == 1, r.stderr
    local = json.loads((out / "index.json").read_text())
    ray_index = json.loads((ray_out / "index.json").read_text())
    assert strip_volatile(local) == strip_volatile(ray_index)
    assert tree(out) == tree(ray_out)
    # each job ran on the worker that sees only the first GPU
    assert {e["placement"]["cuda_visible_devices"] for e in local["runs"]} == {"5"}
    for e in local["runs"]:
        head = (out / e["log"]).read_text().splitlines()[0]
        assert f"CUDA_VISIBLE_DEVICES={e['placement']['cuda_visible_devices']}" in head
    # identical inputs, identical results (the CPU run is deterministic)
    for e, f in zip(local["runs"], ray_index["runs"], strict=True):
        if e["status"] == "done":
            ply = e["files"]["ply"]
            assert (out / ply).read_bytes() == (ray_out / f["files"]["ply"]).read_bytes()


def test_killed_driver_resumes_and_never_redoes_finished_runs(ray_address, tmp_path):
    f = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "a red cube"},
        # 20 steps with a checkpoint after each: killed after its first one, 19 steps from done
        {"prompt": "a slow green cone", "overrides": {
            "train.iters": 20, "train.checkpoint_every": 1, "strategy.max_gaussians": 600}},
        {"prompt": "a blue ball"},
    ])
    out = tmp_path / "out"
    args = [str(f), "--out", str(out), "--preset", "tiny", "--ray-address", ray_address,
            "--quiet", *ONE_SLOT, *FAST]
    slow_ckpt = out / "a_slow_green_cone_s0" / "checkpoints" / "last.pt"
    # 1. start, wait for a finished run and a checkpoint of the slow one, kill the driver
    proc = batch(*args, popen=True)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            index = _read_json(out / "index.json")
            if index and index["counts"]["done"] >= 1 and slow_ckpt.is_file():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("no run finished in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    killed = json.loads((out / "index.json").read_text())
    assert not killed["complete"]
    slow = next(e for e in killed["runs"] if e["run"] == "a_slow_green_cone_s0")
    assert slow["status"] == "running"
    done_runs = [e["run"] for e in killed["runs"] if e["status"] == "done"]
    stamps = {p: p.stat().st_mtime_ns for d in done_runs for p in (out / d).rglob("*")}
    # 2. the same command again: the rest finish, finished runs are not touched
    assert done_runs
    r = batch(*args)
    assert r.returncode == 0, r.stderr
    final = json.loads((out / "index.json").read_text())
    assert final["complete"] and final["counts"]["done"] == 3
    assert {p: p.stat().st_mtime_ns for d in done_runs for p in (out / d).rglob("*")} == stamps
    slow = next(e for e in final["runs"] if e["run"] == "a_slow_green_cone_s0")
    assert slow["iterations"] == 20 and 0 < slow["resumed_from_step"] < 20
    assert slow["attempts"] == 2
    assert "resuming" in (out / slow["log"]).read_text()
    page = (out / "index.html").read_text()
    assert all(f'id="{e["run"]}"' in page for e in final["runs"])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_local_backend_pins_one_worker_per_gpu(monkeypatch, tmp_path):
    from ism3d.batch.local_backend import LocalBackend
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    b = LocalBackend(tmp_path)  # GPUs visible: 1 per job by default, one worker each
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in b.slots] == ["5", "7"]
    b = LocalBackend(tmp_path, gpus_per_job=2)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in b.slots] == ["5,7"]
    b = LocalBackend(tmp_path, gpus_per_job=0, jobs=3)  # CPU jobs see no GPU, share the cores
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in b.slots] == ["", "", ""]
    assert b.slots[0].env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 3))
    assert b.capacity() == 3 and b.running() == 0
    assert not list(tmp_path.iterdir())  # nothing is started before the first job


def test_help_documents_backends_and_cluster_recipe():
    r = subprocess.run([sys.executable, "-m", "ism3d", "batch", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for text in ("--ray-address", "--gpus-per-job", "--cpus-per-job", "--jobs", "--retries",
                 "--backend", "--force", ".jsonl", "ray start --head", "index.html",
                 "CUDA_VISIBLE_DEVICES"):
        assert text in r.stdout, text
