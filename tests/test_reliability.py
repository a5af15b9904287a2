"""Reliability and security of run folders (issue #24): resume after a kill before the first
checkpoint, the run-folder lock (CLI, batch, web app), checkpoints read as data only, a damaged
last.pt. Runs are faults.FAST_RUN (6 steps, a checkpoint after each), compared byte for byte with
one uninterrupted run (faults.reference_run). Kill storms, a full disk and bad-input fuzzing are
in test_faults.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import faults
from faults import FAST_RUN, PROMPT, one_error_line, reference_run, same_ply
from ism3d import config as C
from ism3d.cli import main


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return reference_run(tmp_path_factory)


def fast_cfg() -> C.Config:
    from ism3d.cli import build_parser, build_config
    args = build_parser()._generate.parse_intermixed_args([PROMPT, *FAST_RUN])
    return build_config(args)[0]


# ------------------------------------------------------------------ 1. killed before a checkpoint
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_from_step_0(tmp_path,
                                                                              reference):
    out = tmp_path / "run"
    out.mkdir()
    # what a run killed during its first step leaves: its config.yaml, nothing else
    (out / "config.yaml").write_text(C.dump_yaml(fast_cfg()))
    with pytest.warns(UserWarning, match="starting it from step 0"):
        assert main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "--resume"]) == 0
    assert same_ply(out, reference)


def test_resume_without_checkpoint_refuses_another_config(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(C.dump_yaml(fast_cfg()))
    before = sorted(p.name for p in out.iterdir())
    code = main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "train.iters=7", "--resume"])
    assert code == 2
    assert "train.iters" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == before


# ------------------------------------------------------------------ 2. the run-folder lock
@pytest.mark.parametrize("flag", ["--force", "--resume"])
def test_a_folder_in_use_is_refused_with_the_live_pid(tmp_path, capsys, flag):
    from ism3d.runlock import lock_run_dir
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(C.dump_yaml(fast_cfg()))
    with lock_run_dir(out):            # a live run (this process) writes the folder
        code = main(["generate", PROMPT, "--out", str(out), *FAST_RUN, flag])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"pid {os.getpid()}" in line and "in use" in line
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_the_lock_dies_with_its_process(tmp_path):
    from ism3d.runlock import lock_holder
    out = tmp_path / "run"
    out.mkdir()
    code = ("import os, signal, sys; from ism3d.runlock import lock_run_dir; "
            "l = lock_run_dir(sys.argv[1]); print(os.getpid(), flush=True); sys.stdin.read(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(faults.ROOT)))
    pid = proc.stdout.readline().strip()
    assert lock_holder(out) == f"pid {pid}"
    proc.stdin.close()                  # it SIGKILLs itself: no cleanup code runs
    proc.wait()
    assert lock_holder(out) is None


def test_batch_and_web_app_honour_the_lock(tmp_path, reference):
    from ism3d.app.jobs import JobManager
    from ism3d.batch import BatchError, check_existing
    from ism3d.batch.job import execute_job
    from ism3d.batch.spec import load_jobs
    from ism3d.generate import RunError
    from ism3d.runlock import lock_run_dir

    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    cfg = fast_cfg()
    [job] = load_jobs(prompts, preset="tiny", config_data=C.to_dict(cfg))
    root = tmp_path / "batch"
    shutil.copytree(reference, root / job.run)      # a run that a live process is redoing
    (root / job.run / "summary.json").unlink()
    stamps = {p: p.read_bytes() for p in (root / job.run).rglob("*") if p.is_file()}
    with lock_run_dir(root / job.run):
        # batch --force: exit 2 before anything starts; a batch job: fails with one line
        with pytest.raises(BatchError, match=f"pid {os.getpid()}"):
            check_existing([job], root, str(prompts), replace=True)
        res = execute_job(job.to_wire(), str(root))
        assert res["status"] == "failed" and "in use" in res["error"], res
        # the web app: Resume of a run folder in use
        (root / job.run / "progress.json").write_text('{"prompt": "%s"}' % PROMPT)
        mgr = JobManager(root, devices=["cpu"])
        with pytest.raises(RunError, match="in use"):
            mgr.start(resume=job.run)
    after = {p: p.read_bytes() for p in (root / job.run).rglob("*") if p.is_file()
             and p.name not in ("progress.json", ".ism3d.lock")}
    assert after == {p: b for p, b in stamps.items() if p.name != ".ism3d.lock"}


# ------------------------------------------------------------------ 3. checkpoints are data only
class _RunsCode:
    """Unpickling this calls os.system (what a crafted checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, reference,
                                                                       capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()
    marker = tmp_path / "pwned"
    good = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**good, "params": {**good["params"], "x": _RunsCode(marker)}},
               out / "checkpoints" / "last.pt")
    code = main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "--resume"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "refusing" in line and "system" in line, line
    assert not marker.exists()
    # not even as the fallback of an unreadable last.pt
    shutil.copy(out / "checkpoints" / "last.pt", out / "checkpoints" / "prev.pt")
    (out / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "--resume"]) == 2
    assert "refusing" in one_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_data(reference):
    from ism3d.train import load_checkpoint
    ckpt = load_checkpoint(reference / "checkpoints" / "last.pt")

    def plain(x) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (torch.Tensor, str, int, float, bool))
    assert plain(ckpt) and ckpt["step"] == 6
    assert torch.load(reference / "checkpoints" / "prev.pt", weights_only=True)["step"] == 5


# ------------------------------------------------------------------ 4. a damaged last.pt
@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 cut short", "half"])
def test_damaged_last_checkpoint_resumes_from_prev_with_a_warning(tmp_path, reference, damage):
    out = tmp_path / "run"
    shutil.copytree(reference, out)           # last.pt: step 6 (the end), prev.pt: step 5
    (out / "summary.json").unlink()
    (out / "gaussians.ply").unlink()
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2] if damage == "half" else damage)
    with pytest.warns(UserWarning, match=r"unreadable.*prev\.pt \(step 5\)"):
        assert main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "--resume"]) == 0
    assert same_ply(out, reference)
    # the damaged file was replaced by a good one as the run went on
    assert torch.load(last, weights_only=True)["step"] == 6


def test_damaged_checkpoint_without_prev_is_one_line(tmp_path, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()
    (out / "checkpoints" / "prev.pt").unlink()
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    assert main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "unreadable" in line and "last.pt" in line
