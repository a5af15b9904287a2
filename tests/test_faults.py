"""Faults a run must survive and bad input it must refuse (issue #24):

- a kill storm: SIGKILL at five points (before the first checkpoint, a torn temporary file, a
  complete one not yet renamed, between keeping prev.pt and the rename, during the final
  outputs), `--resume` after each: the final PLY is byte-identical to an uninterrupted run;
- a full disk (a 2 MB tmpfs, root only) during a checkpoint and during the final outputs: one
  line, exit 1, the last checkpoint and the earlier outputs intact, `--resume` finishes the run;
- bad-input fuzzing through the CLI, the batch prompts file and the web form: one line, exit 2
  (or the app's refusal), nothing written and nothing destroyed.

The longer versions (20 random kill points, the web app under load, Ray node loss) are
benchmarks/soak_reliability.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from faults import FAST_RUN, PROMPT, arm, generate, one_error_line, reference_run, same_ply
from ism3d.cli import main


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return reference_run(tmp_path_factory)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ------------------------------------------------------------------ kill storm
def test_kill_storm_ends_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    stderr = []
    for spec in ["torn:1", "written:2", "rotated:2", "torn:3", "export"]:
        r = generate(spec, out, resume=out.exists())
        assert r.returncode == -9, (spec, r.stderr)
        stderr.append(r.stderr)
    r = generate("none", out, resume=True)
    assert r.returncode == 0, r.stderr
    assert same_ply(out, reference)
    assert "starting it from step 0" in stderr[1]       # the first kill left no checkpoint
    assert not list(out.rglob(".*tmp*"))                # killed writers' files are cleaned up


# ------------------------------------------------------------------ disk full
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root: CI runs as root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (the CI container runs as root)")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_a_checkpoint(small_disk, reference, monkeypatch, capsys):
    out = small_disk / "run"
    arm(f"fill:{small_disk}:3", monkeypatch.setattr)       # the 3rd checkpoint meets ENOSPC
    assert main(["generate", PROMPT, "--out", str(out), *FAST_RUN]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "last.pt" in line and "--resume" in line
    ckpts = out / "checkpoints"
    assert torch.load(ckpts / "last.pt", weights_only=True)["step"] == 2     # intact
    assert torch.load(ckpts / "prev.pt", weights_only=True)["step"] == 1
    assert not list(out.rglob(".*tmp*")) and not (out / "gaussians.ply").exists()
    monkeypatch.undo()
    (small_disk / "filler").unlink()                       # space is freed
    assert main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "--resume"]) == 0
    assert same_ply(out, reference)


def test_disk_full_during_the_final_outputs(small_disk, reference, monkeypatch, capsys):
    out = small_disk / "run"
    shutil.copytree(reference, out)                        # a finished earlier run, replaced
    before = snapshot(out)
    arm(f"fill-export:{small_disk}", monkeypatch.setattr)
    assert main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "--force"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "gaussians.ply" in line
    after = snapshot(out)
    for name in ("gaussians.ply", "views.png", "summary.json"):
        assert after[name] == before[name], name             # the earlier outputs are intact
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    assert not list(out.rglob(".*tmp*"))
    monkeypatch.undo()
    (small_disk / "filler").unlink()
    assert main(["generate", PROMPT, "--out", str(out), *FAST_RUN, "--resume"]) == 0
    assert same_ply(out, reference)


# ------------------------------------------------------------------ bad-input fuzz
def _bomb(key: str) -> str:
    """A YAML 'billion laughs': 9 levels of 9 aliases (387 million values expanded) in `key`."""
    levels = ["&a [x,x,x,x,x,x,x,x,x]"] + [f"&{c} [{', '.join([f'*{p}'] * 9)}]"
                                          for p, c in zip("abcdefgh", "bcdefghi")]
    section, name = key.split(".")
    return f"{section}:\n  {name}: [{', '.join(levels)}]\n"


def _ply(n_header: int, rows, *, magic: bytes = b"ply") -> bytes:
    import numpy as np
    props = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0",
             "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    head = (magic + b"\nformat binary_little_endian 1.0\nelement vertex %d\n" % n_header
            + b"".join(b"property float %s\n" % p.encode() for p in props) + b"end_header\n")
    return head + np.asarray(rows, "<f4").reshape(-1, len(props)).tobytes()


def _gaussians(n: int, bad: float | None = None, col: int = 0):
    import numpy as np
    rows = np.zeros((n, 17), np.float32)
    rows[:, 13] = 1.0
    if bad is not None:
        rows[0, col] = bad
    return rows


# (id, extra CLI arguments, files to create {name: bytes or text}, a word the line must hold)
GENERATE_CASES = [
    ("prompt-empty", ["PROMPT="], {}, "empty"),
    ("prompt-blank", ["PROMPT=   \t "], {}, "empty"),
    ("prompt-10k", ["PROMPT=" + "a" * 10_000], {}, "10000 characters"),
    ("prompt-nul", ["PROMPT=a red\x00cube"], {}, "U+0000"),
    ("prompt-escape", ["PROMPT=a \x1b[31mred\x1b[0m cube"], {}, "U+001B"),
    ("prompt-bell", ["PROMPT=a red cube\x07"], {}, "U+0007"),
    ("prompt-newline", ["PROMPT=a red\ncube"], {}, "U+000A"),
    ("iters-nan", ["train.iters=nan"], {}, "train.iters"),
    ("iters-inf", ["train.iters=inf"], {}, "train.iters"),
    ("iters-huge", ["train.iters=1000000000000000000000"], {}, "train.iters"),
    ("iters-negative", ["train.iters=-5"], {}, "train.iters"),
    ("iters-float", ["train.iters=1.5"], {}, "train.iters"),
    ("iters-text", ["train.iters=many"], {}, "train.iters"),
    ("scale-nan", ["guidance.scale=nan"], {}, "guidance.scale"),
    ("scale-inf", ["guidance.scale=inf"], {}, "guidance.scale"),
    ("scale-huge-negative", ["guidance.scale=-1e300"], {}, "guidance.scale"),
    ("lr-inf", ["optim.means_lr=inf"], {}, "optim.means_lr"),
    ("fovy-inf", ["camera.eval_fovy=inf"], {}, "camera.eval_fovy"),
    ("polars-nan", ["camera.eval_polars=[nan]"], {}, "camera.eval_polars"),
    ("width-huge", ["render.width=100000000"], {}, "render.width"),
    ("width-negative", ["render.width=-32"], {}, "render.width"),
    ("seed-huge", ["train.seed=99999999999999999999999"], {}, "train.seed"),
    ("seed-negative", ["--seed", "-1"], {}, "train.seed"),
    ("seed-text", ["train.seed=abc"], {}, "train.seed"),
    ("bool-text", ["output.video=maybe"], {}, "output.video"),
    ("points-zero", ["init.num_points=0"], {}, "init.num_points"),
    ("max-gaussians-huge", ["strategy.max_gaussians=10000000000"], {}, "strategy.max_gaussians"),
    ("unknown-key", ["train.itres=5"], {}, "train.itres"),
    ("yaml-bomb-known-key", ["--config", "F/c.yaml"], {"c.yaml": _bomb("train.iters")},
     "expands to more than"),
    ("yaml-bomb-text-key", ["--config", "F/c.yaml"],
     {"c.yaml": _bomb("guidance.negative_prompt")}, "expands to more than"),
    ("yaml-wrong-type", ["--config", "F/c.yaml"], {"c.yaml": "train:\n  iters: [1, 2]\n"},
     "train.iters"),
    ("yaml-section-scalar", ["--config", "F/c.yaml"], {"c.yaml": "train: 5\n"}, "train"),
    ("yaml-list", ["--config", "F/c.yaml"], {"c.yaml": "- 1\n- 2\n"}, "mapping"),
    ("yaml-binary", ["--config", "F/c.yaml"], {"c.yaml": b"\xff\xfe\x00\x01"}, "UTF-8"),
    ("yaml-syntax", ["--config", "F/c.yaml"], {"c.yaml": "train: [unclosed\n"}, "not valid YAML"),
    ("yaml-huge", ["--config", "F/c.yaml"], {"c.yaml": "# " + "x" * 2_000_000 + "\n"}, "kB"),
    ("model-missing", ["--prior", "F/no/such/model"], {}, "no/such/model"),
    ("model-empty-folder", ["--prior", "F/empty"], {"empty/.keep": ""}, "empty"),
    ("model-text-safetensors", ["--prior", "F/m.safetensors"], {"m.safetensors": "hello"},
     "m.safetensors"),
    ("ply-truncated", ["init.kind=file", "init.path=F/g.ply"],
     {"g.ply": _ply(10, _gaussians(10))[:-400]}, "truncated"),
    ("ply-wrong-header", ["init.kind=file", "init.path=F/g.ply"],
     {"g.ply": _ply(10, _gaussians(10), magic=b"plx")}, "not a PLY"),
    ("ply-not-ply", ["init.kind=file", "init.path=F/g.ply"], {"g.ply": "hello"}, "not a PLY"),
    ("ply-nan", ["init.kind=file", "init.path=F/g.ply"],
     {"g.ply": _ply(10, _gaussians(10, float("nan")))}, "NaN"),
    ("ply-inf", ["init.kind=file", "init.path=F/g.ply"],
     {"g.ply": _ply(10, _gaussians(10, float("inf"), 10))}, "infinite"),
    ("ply-zero-gaussians", ["init.kind=file", "init.path=F/g.ply"],
     {"g.ply": _ply(0, _gaussians(0))}, "zero"),
    ("ply-promises-10M", ["init.kind=file", "init.path=F/g.ply"],
     {"g.ply": _ply(10_000_000, _gaussians(10))}, "truncated"),
    ("ply-missing", ["init.kind=file", "init.path=F/none.ply"], {}, "not found"),
]


@pytest.mark.parametrize("extra, files, needle", [c[1:] for c in GENERATE_CASES],
                         ids=[c[0] for c in GENERATE_CASES])
def test_bad_input_to_generate(tmp_path, capsys, extra, files, needle):
    """One line, exit 2; the output folder (an earlier run, replaced with --force) unchanged."""
    inputs = tmp_path / "inputs"
    for name, data in files.items():
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        (inputs / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    out = tmp_path / "run"
    out.mkdir()
    (out / "gaussians.ply").write_bytes(b"an earlier run's result")
    before = snapshot(out)
    prompt = next((a[len("PROMPT="):] for a in extra if a.startswith("PROMPT=")), PROMPT)
    extra = [a.replace("F/", f"{inputs}/") for a in extra if not a.startswith("PROMPT=")]
    code = main(["generate", prompt, "--out", str(out), "--force", "--preset", "tiny",
                 "--quiet", *extra])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and needle in line, line
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["gaussians.ply"]


BATCH_CASES = [
    ("empty-prompt", '{"prompt": ""}', "empty"),
    ("prompt-10k", json.dumps({"prompt": "a" * 10_000}), "10000 characters"),
    ("prompt-escape", json.dumps({"prompt": "a \x1b[2J cube"}), "U+001B"),
    ("prompt-not-text", '{"prompt": 5}', "string"),
    ("seed-nan", '{"prompt": "a red cube", "seed": NaN}', "seed"),
    ("seed-float", '{"prompt": "a red cube", "seed": 1.5}', "seed"),
    ("seed-negative", '{"prompt": "a red cube", "seed": -3}', "seed"),
    ("seed-huge", '{"prompt": "a red cube", "seed": 100000000000000000000}', "train.seed"),
    ("scale-infinity", '{"prompt": "a red cube", "overrides": {"guidance.scale": Infinity}}',
     "guidance.scale"),
    ("scale-nan", '{"prompt": "a red cube", "overrides": ["guidance.scale=nan"]}',
     "guidance.scale"),
    ("iters-huge", '{"prompt": "a red cube", "overrides": {"train.iters": 1e30}}', "train.iters"),
    ("iters-list", '{"prompt": "a red cube", "overrides": {"train.iters": [1]}}', "train.iters"),
    ("overrides-text", '{"prompt": "a red cube", "overrides": "train.iters=3"}', "overrides"),
    ("unknown-line-key", '{"prompt": "a red cube", "sede": 3}', "sede"),
    ("not-an-object", '["a red cube"]', "JSON object"),
    ("bad-json", '{"prompt": "a red cube"', "not valid JSON"),
    ("model-text-safetensors", '{"prompt": "a red cube", "overrides": {"prior.name": "F/m.safetensors"}}',
     "m.safetensors"),
]


@pytest.mark.parametrize("line, needle", [c[1:] for c in BATCH_CASES],
                         ids=[c[0] for c in BATCH_CASES])
def test_bad_input_to_batch(tmp_path, capsys, line, needle):
    (tmp_path / "m.safetensors").write_text("hello")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red cube"}\n' + line.replace("F/", f"{tmp_path}/") + "\n")
    root = tmp_path / "batch"
    code = main(["batch", str(prompts), "--out", str(root), "--preset", "tiny",
                 "--backend", "local", "--quiet"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and needle in line and "p.jsonl:2" in line, line
    assert not root.exists()


def test_batch_prompt_with_path_parts_stays_inside_root(tmp_path):
    from ism3d.batch.spec import load_jobs
    prompts = tmp_path / "p.txt"
    prompts.write_text("../../etc/passwd\n/abs/path a cube\n..\n")
    runs = [j.run for j in load_jobs(prompts, preset="tiny")]
    assert all("/" not in r and "\\" not in r and r not in (".", "..") for r in runs), runs


FORM_CASES = [
    ("prompt-empty", {"prompt": "  "}),
    ("prompt-long", {"prompt": "a" * 10_000}),
    ("prompt-nul", {"prompt": "a\x00b"}),
    ("prompt-escape", {"prompt": "a \x1b]0;title\x07 cube"}),
    ("seed-nan", {"seed": "nan"}),
    ("seed-inf", {"seed": float("inf")}),
    ("seed-fraction", {"seed": 1.5}),
    ("iters-huge", {"iters": 1e30}),
    ("iters-negative", {"iters": -1}),
    ("scale-nan", {"scale": "nan"}),
    ("scale-inf", {"scale": "inf"}),
    ("scale-text", {"scale": "loud"}),
    ("preset-path", {"preset": "../../etc"}),
    ("guidance-other", {"guidance": "dds"}),
    ("prior-missing", {"prior": "/no/such/model"}),
    ("prior-text-safetensors", {"prior": "F/m.safetensors"}),
    ("overrides-nan", {"overrides": "guidance.scale=nan"}),
    ("overrides-unknown", {"overrides": "train.itres=3"}),
    ("overrides-huge", {"overrides": "train.iters=99999999999"}),
    ("overrides-not-kv", {"overrides": "rm -rf /"}),
    ("negative-nul", {"negative": "blurry\x00"}),
]


@pytest.mark.parametrize("fields", [c[1] for c in FORM_CASES], ids=[c[0] for c in FORM_CASES])
def test_bad_input_to_the_web_form(tmp_path, fields):
    from ism3d.app.jobs import USER_ERRORS, JobManager, JobRequest
    (tmp_path / "m.safetensors").write_text("hello")
    root = tmp_path / "root"
    mgr = JobManager(root, devices=["cpu"])
    fields = {k: (v.replace("F/", f"{tmp_path}/") if isinstance(v, str) else v)
              for k, v in fields.items()}
    req = JobRequest(**{"prompt": PROMPT, "preset": "tiny", **fields})
    with pytest.raises(USER_ERRORS) as e:
        mgr.start(req)
    assert str(e.value).strip() and "\n" not in str(e.value).strip()
    assert list(root.iterdir()) == []                     # no folder is left behind


def test_fuzz_case_count():
    """The number of bad inputs tried (reported in the notes and BENCHMARKS)."""
    n = len(GENERATE_CASES) + len(BATCH_CASES) + len(FORM_CASES) + 3
    assert n >= 80, n
