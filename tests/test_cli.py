"""The product's contract: `ism3d generate` / `ism3d render` end to end on the CPU, as a user runs them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_FIELDS = {
    "prompt", "negative_prompt", "seed", "iterations", "guidance", "prior", "preset", "device",
    "wall_seconds", "seconds_per_iter", "peak_memory_bytes", "num_gaussians", "nonfinite_steps",
    "versions",
}


def ism3d(*args, cwd=None, timeout=300, env=None):
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "ism3d", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=e)


def read_ply_raw(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cube"
    r = ism3d("generate", "a red cube", "--preset", "tiny", "--out", str(out), "--quiet",
              "train.iters=12", "output.video_frames=60")
    assert r.returncode == 0, r.stderr
    return out, r


def test_generate_writes_every_output(tiny_run):
    out, r = tiny_run
    for name in ("gaussians.ply", "turntable.mp4", "turntable.gif", "views.png", "config.yaml",
                 "summary.json", "checkpoints/last.pt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_FIELDS <= summary.keys()
    assert summary["prompt"] == "a red cube" and summary["iterations"] == 12
    assert summary["preset"] == "tiny" and summary["guidance"] == "ism"
    assert {"ism3d", "torch", "diffusers", "gsplat"} <= summary["versions"].keys()
    # No temp files left behind anywhere in the run folder.
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_generated_ply_loads_and_matches_summary(tiny_run):
    from ism3d.ply import load_ply
    out, _ = tiny_run
    params, deg = load_ply(out / "gaussians.ply")
    summary = json.loads((out / "summary.json").read_text())
    assert params["means"].shape[0] == summary["num_gaussians"] > 0
    assert deg == 0


def test_turntable_has_enough_frames(tiny_run):
    import imageio.v3 as iio
    out, _ = tiny_run
    frames = iio.imread(out / "turntable.gif", index=None)
    assert frames.shape[0] >= 60
    grid = iio.imread(out / "views.png")
    assert grid.shape[0] * 2 == grid.shape[1]  # 4 x 2 grid of square views


def test_config_yaml_reproduces_the_run(tiny_run, tmp_path):
    out, _ = tiny_run
    again = tmp_path / "again"
    r = ism3d("generate", "a red cube", "--config", str(out / "config.yaml"), "--preset", "tiny",
              "--out", str(again), "--quiet")
    assert r.returncode == 0, r.stderr
    assert (again / "gaussians.ply").read_bytes() == (out / "gaussians.ply").read_bytes()


def test_existing_run_is_not_overwritten(tiny_run):
    out, _ = tiny_run
    before = (out / "gaussians.ply").read_bytes()
    r = ism3d("generate", "a red cube", "--preset", "tiny", "--out", str(out), "--quiet")
    assert r.returncode == 2
    assert "--resume" in r.stderr and "--force" in r.stderr
    assert (out / "gaussians.ply").read_bytes() == before


def test_render_subcommand(tiny_run, tmp_path):
    import imageio.v3 as iio
    out, _ = tiny_run
    gif = tmp_path / "t.gif"
    r = ism3d("render", str(out / "gaussians.ply"), "--out", str(gif), "--frames", "8",
              "--size", "32")
    assert r.returncode == 0, r.stderr
    assert iio.imread(gif, index=None).shape[:3] == (8, 32, 32)
    r = ism3d("render", str(tmp_path / "missing.ply"), "--out", str(gif))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_kill_and_resume_gives_identical_gaussians(tmp_path):
    args = ["--preset", "tiny", "--quiet", "--seed", "3", "train.iters=40",
            "train.checkpoint_every=5", "output.video=false", "output.gif=false"]
    ref = tmp_path / "ref"
    r = ism3d("generate", "a blue sphere", "--out", str(ref), *args)
    assert r.returncode == 0, r.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ism3d", "generate", "a blue sphere",
                             "--out", str(run), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run never wrote a checkpoint"
    assert not (run / "gaussians.ply").exists(), "killed too late to test resume"

    r = ism3d("generate", "a blue sphere", "--out", str(run), "--resume", *args)
    assert r.returncode == 0, r.stderr
    assert (run / "gaussians.ply").read_bytes() == (ref / "gaussians.ply").read_bytes()


@pytest.mark.parametrize("extra, needle", [
    (["guidance.scael=3"], "guidance.scael"),
    (["train.iters=-5"], "train.iters"),
    (["train.iters=many"], "train.iters"),
    (["--preset", "nonsense"], "nonsense"),
    (["--prior", "/no/such/model/folder"], "/no/such/model/folder"),
    (["--config", "/no/such/config.yaml"], "/no/such/config.yaml"),
    (["--device", "cuda:7"], "cuda"),
    (["render.width=100", "--prior", "PLACEHOLDER_SD"], "render.width"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, extra, needle, tiny_sd_dir):
    extra = [tiny_sd_dir if a == "PLACEHOLDER_SD" else a for a in extra]
    out = tmp_path / "never"
    r = ism3d("generate", "a red cube", "--out", str(out), "--quiet", *extra)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists()


def test_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    r = ism3d("generate", "a red cube", "--out", str(f), "--quiet")
    assert r.returncode == 2 and "not a folder" in r.stderr
    assert f.read_text() == "keep me"


def test_unreadable_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    r = ism3d("generate", "a red cube", "--config", str(bad), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_empty_prompt(tmp_path):
    r = ism3d("generate", "   ", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "empty" in r.stderr


def test_help_explains_every_flag():
    r = ism3d("generate", "--help")
    assert r.returncode == 0
    for flag in ("--out", "--preset", "--config", "--prior", "--guidance", "--iters", "--seed",
                 "--device", "--negative", "--resume", "--force", "KEY=VALUE", "paper", "fast",
                 "tiny"):
        assert flag in r.stdout, flag
    r = ism3d("generate", "--help-config")
    assert r.returncode == 0 and "guidance.scale" in r.stdout and "train.iters" in r.stdout


def test_renders_smaller_than_the_prior_warn_with_the_fix(tmp_path, tiny_run):
    # the tiny prior works at 32x32; 16x16 renders reach it upsampled, which a user should hear of
    r = ism3d("generate", "a red cube", "--preset", "tiny", "--out", str(tmp_path / "small"), "--quiet",
              "train.iters=2", "render.width=16", "render.height=16", "output.video=false",
              "output.gif=false", "output.mesh=false")
    assert r.returncode == 0, r.stderr
    assert "ism3d: warning: renders are 16x16 and the prior tiny works at 32x32" in r.stderr
    assert "UserWarning" not in r.stderr                   # one line, not Python's two
    assert "render.width=32 render.height=32" in r.stderr
    assert "upsampled" not in tiny_run[1].stderr           # 32x32 renders: no warning
