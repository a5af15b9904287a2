"""The web app (`ism3d serve`): job logic and safety without a browser, and the Gradio server driven
through `gradio_client` (a real HTTP client on loopback). The browser test is test_app_browser.py."""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from servers import free_port
from ism3d import config as C
from ism3d.app.jobs import (UI_MAX_PROMPT_CHARS, AppError, JobManager, JobRequest, list_runs,
                            new_run_dir, parse_overrides, request_config, run_dir_of)
from ism3d.generate import MAX_PROMPT_CHARS

# Few steps, one view per step, small exports: a job takes seconds on a 2-core CPU.
FAST = "train.batch=1 output.video_frames=4 output.gif=false output.mesh=false"


def tiny(prompt: str = "a red cube", iters: int = 3, overrides: str = FAST, **kw) -> JobRequest:
    return JobRequest(prompt=prompt, preset="tiny", iters=iters, overrides=overrides, **kw)


# --------------------------------------------------------------------------------------------
# Pure job logic: folder names, path tricks, prompt cap, request -> config
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, name", [
    ("a red cube", "a_red_cube"),
    ("../../etc/passwd", "etc_passwd"),
    ("/abs/path/..", "abs_path"),
    ("..", "run"),
    ("C:\\Windows\\x", "c_windows_x"),
    ("   ", "run"),
])
def test_new_run_dir_is_a_safe_child_of_root(tmp_path, prompt, name):
    root = tmp_path / "root"
    d = new_run_dir(root, prompt)
    assert d == root / name and d.is_dir() and not any(d.iterdir())
    assert d.resolve().parent == root.resolve()


def test_new_run_dir_never_reuses_a_folder(tmp_path):
    root = tmp_path / "root"
    first = new_run_dir(root, "a red cube")
    (first / "gaussians.ply").write_text("earlier run")
    (root / "a_red_cube_2").mkdir()              # taken by something else
    dirs = [new_run_dir(root, "A red cube!") for _ in range(3)]
    assert [d.name for d in dirs] == ["a_red_cube_3", "a_red_cube_4", "a_red_cube_5"]
    assert (first / "gaussians.ply").read_text() == "earlier run"


def test_new_run_dir_concurrent_jobs_get_distinct_folders(tmp_path):
    got, lock = [], threading.Lock()

    def make():
        d = new_run_dir(tmp_path, "a blue mug")
        with lock:
            got.append(d.name)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(["a_blue_mug"] + [f"a_blue_mug_{k}" for k in range(2, 9)])


def test_run_dir_of_rejects_path_tricks(tmp_path):
    root = tmp_path / "root"
    ok = new_run_dir(root, "a red cube")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file.txt").write_text("x")
    assert run_dir_of(root, "a_red_cube") == ok.resolve()
    for bad in ["..", ".", "", "../outside", "a_red_cube/..", "/etc", "a\\b", "x\x00",
                "link", "file.txt", "missing", None]:
        with pytest.raises(AppError):
            run_dir_of(root, bad)


def test_prompt_cap_and_bad_fields_raise_one_line_errors():
    assert UI_MAX_PROMPT_CHARS <= MAX_PROMPT_CHARS
    request_config(tiny("a " * (UI_MAX_PROMPT_CHARS // 2)))     # exactly at the cap: fine
    bad = [
        (tiny("x" * (UI_MAX_PROMPT_CHARS + 1)), AppError, "limit is 300"),
        (tiny("   "), AppError, "prompt is empty"),
        (JobRequest("a red cube", preset="huge"), AppError, "unknown preset"),
        (tiny(iters=2.5), AppError, "whole number"),
        (tiny(seed="abc"), AppError, "whole number"),
        (tiny(guidance="dds"), AppError, "ism or sds"),
        (tiny(negative="a\x00b"), AppError, "NUL"),
        (tiny(prior="p" * 1001), AppError, "limit is 1000"),
        (tiny(overrides="train.iters=abc"), C.ConfigError, "train.iters"),
        (tiny(overrides="nosuch.key=1"), C.ConfigError, "nosuch.key"),
        (tiny(overrides="just words"), C.ConfigError, "KEY=VALUE"),
    ]
    for req, err, needle in bad:
        with pytest.raises(err) as e:
            request_config(req)
        assert needle in str(e.value) and "\n" not in str(e.value), (req, str(e.value))


def test_parse_overrides():
    text = ("# a comment\n train.iters=5 guidance.scale=3\n\n"
            "guidance.negative_prompt=blurry, dark, ugly output.mesh=false\n")
    assert parse_overrides(text) == {
        "train.iters": "5", "guidance.scale": "3",
        "guidance.negative_prompt": "blurry, dark, ugly", "output.mesh": "false"}
    assert parse_overrides("") == {} and parse_overrides("  \n# x\n") == {}


def test_request_config_matches_the_cli_precedence():
    """The form builds the same config as `ism3d generate` (preset < fields < KEY=VALUE)."""
    from ism3d.cli import build_config

    req = JobRequest("a red cube", preset="tiny", negative="dark", prior="tiny", guidance="sds",
                     scale=5.0, seed=3.0, iters=7.0, preview_every=2,
                     overrides="train.iters=9\nguidance.delta_t=50")
    cfg, preset = request_config(req)
    args = SimpleNamespace(preset="tiny", config=None, prior="tiny", guidance="sds", iters=7,
                           seed=3, device=None, negative="dark",
                           overrides=["train.preview_every=2", "guidance.scale=5",
                                      "train.iters=9", "guidance.delta_t=50"])
    want, _ = build_config(args)
    assert preset == "tiny" and C.to_dict(cfg) == C.to_dict(want)
    assert cfg.train.iters == 9 and cfg.guidance.method == "sds" and cfg.train.seed == 3
    # Empty fields keep the preset's values.
    blank, _ = request_config(JobRequest("a red cube", preset="toy", prior="", negative=None,
                                         guidance="", scale=None, seed=None, iters=None))
    assert C.to_dict(blank) == C.to_dict(C.preset_config("toy"))


def test_preset_fields_fill_the_form_from_the_preset():
    from ism3d.app.server import preset_fields

    for name in C.PRESETS:
        cfg = C.preset_config(name)
        negative, prior, guidance, scale, iters, every = preset_fields(name)
        assert (negative, prior, guidance, scale, iters) == (
            cfg.guidance.negative_prompt, cfg.prior.name, cfg.guidance.method,
            cfg.guidance.scale, cfg.train.iters)
        # about 20 previews a run, never sparser than the preset's own interval
        assert 1 <= every <= cfg.train.preview_every and iters // every >= 20
    assert preset_fields("toy")[1:] == ("toy", "ism", 7.5, 135, 6)  # 135 // 20


def _fake_run(root: Path, name: str, record: str | None, data: dict, mtime: float,
              views: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if record:
        (d / record).write_text(json.dumps(data))
        os.utime(d / record, (mtime, mtime))
    if views:
        (d / "views.png").write_bytes(b"png")
    return d


def test_list_runs_newest_first_with_status(tmp_path):
    root = tmp_path / "root"
    _fake_run(root, "old_done", "summary.json", {"prompt": "old", "status": "done"}, 1000)
    stopped = _fake_run(root, "stopped", "progress.json",
                        {"prompt": "half", "status": "stopped", "iterations": 4,
                         "iterations_planned": 10}, 3000, views=False)
    (stopped / "previews").mkdir()
    for step in (2, 4):
        (stopped / "previews" / f"step_{step:06d}.png").write_bytes(b"png")
    _fake_run(root, "new_done", "summary.json", {"prompt": "new", "status": "done"}, 5000)
    _fake_run(root, "no_record", None, {}, 0)                     # not a finished/stopped run
    _fake_run(root, "broken", "summary.json", {}, 9000).joinpath("summary.json").write_text("{")
    (root / "link").symlink_to(root / "new_done")
    runs = list_runs(root)
    assert [r.name for r in runs] == ["new_done", "stopped", "old_done"]
    assert [r.status for r in runs] == ["done", "stopped", "done"]
    assert (runs[1].step, runs[1].total, runs[1].prompt) == (4, 10, "half")
    assert runs[0].image == root / "new_done" / "views.png"
    assert runs[1].image == stopped / "previews" / "step_000004.png"     # the newest preview
    # A run in progress is listed first, as running.
    running = list_runs(root, active={"no_record": "a red cube"})
    assert (running[0].name, running[0].status, running[0].prompt) == (
        "no_record", "running", "a red cube")


def test_cancel_drops_a_queued_request_before_it_starts(tmp_path):
    m = JobManager(tmp_path / "root", devices=["cpu"])
    assert m.cancel("alice") == "nothing to cancel"
    m.expect("alice")
    m.expect("bob")
    assert m.cancel("alice") == "dropped 1 queued run(s)"
    job = m.start(tiny(), owner="alice")
    ev = job.wait()
    assert (ev.kind, ev.message, ev.run_dir) == ("stopped", "cancelled before it started", None)
    assert not any((tmp_path / "root").iterdir())        # nothing was created
    # bob's request is not affected, and alice's next one runs again.
    assert m._take_expected("bob") is False
    m.expect("alice")
    assert m._take_expected("alice") is False


# --------------------------------------------------------------------------------------------
# The Gradio server, driven over HTTP on loopback
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ism3d.app.server import launch

    root = tmp_path_factory.mktemp("app") / "runs"
    manager = JobManager(root, devices=["cpu"])
    demo, url = launch(manager, port=free_port(), block=False, quiet=True)
    yield SimpleNamespace(manager=manager, url=url, demo=demo, root=manager.root)
    demo.close()


def _client(url: str):
    from gradio_client import Client
    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def _generate(client, prompt="a red cube", preset="tiny", prior="tiny", iters=3, preview=2,
              overrides=FAST):
    # form order: prompt, negative, preset, prior, guidance, scale, seed, iters, preview, overrides
    return client.submit(prompt, "", preset, prior, "ism", 7.5, 0, iters, preview, overrides,
                         api_name="/generate")


def _status(outputs) -> str:
    return outputs[0]


def test_server_is_loopback_only_and_not_shared(server):
    assert server.url.startswith("http://127.0.0.1:") and not server.demo.share
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for ip in others - {"127.0.0.1"}:
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=2).close()
    from ism3d.cli import build_parser
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.share, args.out) == ("127.0.0.1", 7860, False, "outputs")


def test_failed_runs_show_one_line_error_and_server_keeps_serving(server):
    client = _client(server.url)
    before = sorted(p.name for p in server.root.iterdir())
    cases = [
        ({"overrides": "train.iters=abc"}, "train.iters: expected an integer"),
        ({"prior": "/no/such/prior"}, "no such file or folder: /no/such/prior"),
        # the toy prior knows 23 words: the prompt is rejected after the prior loads
        ({"prompt": "a hamburger", "preset": "toy", "prior": "toy", "overrides": FAST},
         "does not know the word(s) hamburger"),
        ({"prompt": "x" * (UI_MAX_PROMPT_CHARS + 1)}, "the limit is 300"),
    ]
    for kw, needle in cases:
        out = _generate(client, **kw).result(timeout=120)
        status = _status(out)
        assert status.startswith("**Error:**") and needle in status and "\n" not in status, status
    # No half-made folder is left behind, and a good job still runs to the end.
    assert sorted(p.name for p in server.root.iterdir()) == before
    out = _generate(client, prompt="a green cone", iters=1).result(timeout=180)
    assert _status(out).startswith("Done `a_green_cone"), _status(out)


def test_two_queued_jobs_both_complete_one_at_a_time(server):
    from gradio_client.utils import Status

    a, b = _client(server.url), _client(server.url)
    peak_before = server.manager.peak_training
    # Hold the only device so job A waits inside its handler: B's place in the queue is then
    # observed however fast the machine trains (A alone could finish before B is polled).
    held = server.manager._pool.get(timeout=10)
    try:
        ja = _generate(a, prompt="a blue sphere", iters=4)
        deadline = time.monotonic() + 60
        while ja.status().code not in (Status.PROCESSING, Status.ITERATING):
            assert time.monotonic() < deadline, ja.status()
            time.sleep(0.05)
        jb = _generate(b, prompt="a blue sphere", iters=2)
        ranks = []
        while not ranks:
            assert time.monotonic() < deadline and not jb.done(), jb.status()
            st = jb.status()
            if st.code == Status.IN_QUEUE and st.rank is not None:
                ranks.append(st.rank)
            time.sleep(0.05)
    finally:
        server.manager._pool.put(held)
    while not (ja.done() and jb.done()):
        time.sleep(0.1)
    sa, sb = _status(ja.result()), _status(jb.result())
    assert sa.startswith("Done `a_blue_sphere`") and sb.startswith("Done `a_blue_sphere_2`"), (sa, sb)
    assert ranks and min(ranks) == 0            # the second job saw its place in the queue
    assert server.manager.peak_training == max(peak_before, 1) == 1   # never two at once
    from ism3d.ply import load_ply
    for name, iters in (("a_blue_sphere", 4), ("a_blue_sphere_2", 2)):
        summary = json.loads((server.root / name / "summary.json").read_text())
        params, _ = load_ply(server.root / name / "gaussians.ply")
        assert summary["status"] == "done" and summary["iterations"] == iters
        assert params["means"].shape[0] == summary["num_gaussians"]


def test_cancel_keeps_a_resumable_checkpoint_and_resume_finishes(server):
    from ism3d.train import CHECKPOINT, load_checkpoint

    ITERS = 40

    client = _client(server.url)
    job = _generate(client, prompt="a pink torus", iters=ITERS, preview=0)
    # Cancel (not queued, same session) as soon as training has made a step; ITERS steps leave
    # the cancel a margin of seconds even on a fast machine (6 did not: a run could finish first).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        outs = job.outputs()
        if outs and _status(outs[-1]).startswith("Step "):
            break
        time.sleep(0.05)
    note = client.predict(api_name="/cancel")
    assert note == "Cancel: stopping after the current step (the checkpoint is kept).", note
    status = _status(job.result(timeout=120))
    m = re.match(rf"Stopped `a_pink_torus` at step (\d+)/{ITERS}: the checkpoint is kept", status)
    assert m, status
    stopped_at = int(m.group(1))
    assert 1 <= stopped_at < ITERS
    run = server.root / "a_pink_torus"
    progress = json.loads((run / "progress.json").read_text())
    assert progress["status"] == "stopped" and progress["iterations"] == stopped_at
    assert load_checkpoint(run / CHECKPOINT)["step"] == stopped_at
    assert not (run / "summary.json").exists()
    # The gallery lists it as stopped; Resume (the session's selected run) continues it.
    gallery = [r for r in server.manager.gallery() if r.name == "a_pink_torus"]
    assert gallery and gallery[0].status == "stopped"
    resume = client.submit(api_name="/resume")
    steps = []
    while not resume.done():
        for o in resume.outputs():
            if _status(o).startswith("Step "):
                steps.append(int(_status(o).split()[1].split("/")[0]))
        time.sleep(0.1)
    final = _status(resume.result())
    assert final.startswith(f"Done `a_pink_torus`: {ITERS} steps"), final
    assert steps and min(steps) > stopped_at     # it continued, it did not start over
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["iterations"] == ITERS
    # Resuming a finished run is refused with one line.
    again = _status(client.submit(api_name="/resume").result(timeout=60))
    assert again == "**Error:** run 'a_pink_torus' is finished: there is nothing to resume", again


def test_server_shutdown_stops_runs_with_a_checkpoint(server):
    """What `ism3d serve` does on Ctrl-C: every running job stops after its step, resumable."""
    m = server.manager
    job = m.start(tiny("a cyan cone", iters=500), owner="shutdown")
    for ev in job.stream(min_interval=0.0):
        if ev.kind == "progress":
            break
    assert m.stop_all(timeout=120) == 1
    final = job.wait()
    assert final.kind == "stopped" and final.resumable and final.step < 500
    progress = json.loads((final.run_dir / "progress.json").read_text())
    assert progress["iterations"] == final.step and not m.active_runs()


def test_serve_without_gradio_says_how_to_install(monkeypatch, capsys):
    import importlib.util

    from ism3d import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else real(name, *a))
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == 'ism3d serve needs the app extra: pip install "ism3d[app]"\n'
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jobs_run_one_per_gpu_slot(tmp_path):
    """Each GPU is one slot: with 2 GPUs two jobs train at once, each on its own device."""
    devices = [f"cuda:{i}" for i in range(min(torch.cuda.device_count(), 2))]
    m = JobManager(tmp_path / "runs", devices=devices)
    # no mp4 (the GPU machine has no ffmpeg): the test is about device slots
    jobs = [m.start(tiny("a red cube", iters=30, overrides=FAST + " render.backend=torch output.video=false"),
                    owner=f"user{i}") for i in range(len(devices))]
    finals = [j.wait() for j in jobs]
    assert [f.kind for f in finals] == ["done"] * len(devices), [f.message for f in finals]
    assert m.peak_training == len(devices)
    assert sorted(m.priors._by_device) == devices          # one prior on each GPU
    for d in devices:
        assert torch.cuda.max_memory_allocated(d) > 0
