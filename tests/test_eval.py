"""`ism3d eval`: the metrics against hand computations, the Janus test on synthetic ToyWorld cases,
the report writer, resume, and the command end to end (CPU, tiny prior)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ism3d import cli
from ism3d import config as C
from ism3d.cameras import eval_ring
from ism3d.eval import bench as B
from ism3d.eval import janus as J
from ism3d.eval import metrics as M
from ism3d.render import render
from ism3d.toyworld.world import ASYMMETRIC, COLOURS, make_object
from ism3d.types import Gaussians

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def test_iou_of_known_masks():
    a = torch.zeros(3, 1, 4, 4)
    b = torch.zeros(3, 1, 4, 4)
    # view 0: a = 2x2 block, b = 2x3 block overlapping it in 2 pixels
    a[0, 0, 0:2, 0:2] = 1.0
    b[0, 0, 1:3, 1:3] = 0.9
    # view 1: identical 3-pixel masks, but one pixel of b sits exactly on the threshold (not in)
    a[1, 0, 0, 0:3] = 0.8
    b[1, 0, 0, 0:3] = 0.8
    b[1, 0, 0, 2] = 0.5
    # view 2: both empty -> 1 by definition
    iou = M.silhouette_iou(a, b)
    # view 0: |a|=4, |b|=4, a&b = {(1,1)} -> 1 / 7;  view 1: 2 / 3
    assert iou.dtype == torch.float64
    assert torch.allclose(iou, torch.tensor([1 / 7, 2 / 3, 1.0], dtype=torch.float64))


def _psnr_naive(x, y, m):
    """float64 loop over pixels and channels, independent of metrics.py."""
    se, n = 0.0, 0
    for c in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                if m[c, 0, i, j]:
                    for k in range(3):
                        se += (float(x[c, k, i, j]) - float(y[c, k, i, j])) ** 2
                        n += 1
    return 10 * math.log10(n / se)


def test_psnr_inside_the_union_of_the_silhouettes():
    g = torch.Generator().manual_seed(0)
    rgb_a, rgb_b = torch.rand(2, 3, 5, 6, generator=g), torch.rand(2, 3, 5, 6, generator=g)
    alpha_a, alpha_b = torch.zeros(2, 1, 5, 6), torch.zeros(2, 1, 5, 6)
    alpha_a[0, 0, :2, :3] = 1.0
    alpha_b[0, 0, 1:4, 2:5] = 1.0
    alpha_a[1, 0, 4, 5] = 0.7                       # one pixel only in view 1
    union = (alpha_a > 0.5) | (alpha_b > 0.5)
    assert M.union_mask(alpha_a, alpha_b).equal(union)
    # pooled over both views, and per view
    got = M.masked_psnr(rgb_a, alpha_a, rgb_b, alpha_b)
    assert float(got) == pytest.approx(_psnr_naive(rgb_a, rgb_b, union), rel=1e-12)
    per = M.masked_psnr(rgb_a, alpha_a, rgb_b, alpha_b, pooled=False)
    for v in range(2):
        want = _psnr_naive(rgb_a[v:v + 1], rgb_b[v:v + 1], union[v:v + 1])
        assert float(per[v]) == pytest.approx(want, rel=1e-12)
    # pixels outside the union never count
    rgb_c = rgb_b.clone()
    rgb_c[~union.expand(-1, 3, -1, -1)] = 0.0
    assert float(M.masked_psnr(rgb_a, alpha_a, rgb_c, alpha_b)) == float(got)


def test_psnr_closed_forms():
    x = torch.full((1, 3, 2, 2), 0.5)
    y = x.clone()
    y[0, :, 0, 0] = 0.625                           # one of 4 pixels off by 1/8 in every channel
    alpha = torch.ones(1, 1, 2, 2)
    # MSE = (1/64) / 4 = 1/256 -> PSNR = 10 log10(256) = 24.0824 dB
    assert float(M.masked_psnr(x, alpha, y, alpha)) == pytest.approx(10 * math.log10(256), 1e-12)
    assert float(M.masked_psnr(x, alpha, x, alpha)) == pytest.approx(100.0)   # capped, finite
    empty = torch.zeros(1, 1, 2, 2)
    assert math.isnan(float(M.masked_psnr(x, empty, y, empty)))


# ---------------------------------------------------------------------------------------------
# Janus test
# ---------------------------------------------------------------------------------------------
def _rotation(q):
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]],
                        dtype=torch.float64)


def test_mirror_x_reflects_means_and_covariances():
    gen = torch.Generator().manual_seed(0)
    n = 50
    g = Gaussians(means=torch.randn(n, 3, generator=gen), quats=torch.randn(n, 4, generator=gen),
                  scales=torch.rand(n, 3, generator=gen) + 0.1,     # anisotropic
                  opacities=torch.rand(n, generator=gen), sh=torch.randn(n, 1, 3, generator=gen))
    m = J.mirror_x(g)
    Mx = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.equal(m.means[:, 0], -g.means[:, 0])
    assert torch.equal(m.means[:, 1:], g.means[:, 1:])
    assert torch.equal(m.sh, g.sh) and torch.equal(m.scales, g.scales)
    for i in range(n):
        S2 = torch.diag(g.scales[i].double() ** 2)
        R, Rm = _rotation(g.quats[i].double()), _rotation(m.quats[i].double())
        assert torch.allclose(Rm @ S2 @ Rm.T, Mx @ (R @ S2 @ R.T) @ Mx, atol=1e-10)
        assert torch.det(Rm) == pytest.approx(1.0)


CAMS = eval_ring(8, 32, 32, 3.5, 0.55, polar=90.0)


def _render(g, bg):
    with torch.no_grad():
        out = render(g, CAMS, torch.full((3,), bg))
    return out.rgb, out.alpha


@pytest.fixture(scope="module")
def refs():
    return {f: J.janus_reference(f, make_object(f, "green"), lambda g: _render(g, 0.0),
                                 torch.tensor(COLOURS["green"])) for f in ASYMMETRIC}


def test_colour_split_reproduces_the_render(refs):
    """Step 0: b * U + F + (1 - alpha) in the GT's colour is the GT rendered on white."""
    for f in ASYMMETRIC:
        objs = J.janus_objects(f, make_object(f, "green"))
        img = refs[f].images(torch.tensor(COLOURS["green"]))
        for v in J.VARIANTS:
            rgb, alpha = _render(objs[v], 1.0)
            assert torch.allclose(img[v][:, :3], rgb, atol=2e-5), (f, v)
            assert torch.equal(img[v][:, 3:], alpha)
        assert int(refs[f].part_region.sum()) > 0 and int(refs[f].mirror_region.sum()) > 0


@pytest.mark.parametrize("family", ASYMMETRIC)
@pytest.mark.parametrize("colour", ["green", "red"])
def test_janus_verdicts_on_synthetic_cases(refs, family, colour):
    """Another sampling of the object (seed 1), in the prompt's colour and in a wrong one:
    GT -> ok; GT + a mirrored copy of the part -> Janus (two copies); only the mirrored part ->
    Janus (flipped); GT without the part -> missing, not Janus."""
    objs = J.janus_objects(family, make_object(family, colour, seed=1))
    want = {"with": ("ok", False), "both": ("two copies", True), "mirrored": ("flipped", True),
            "without": ("missing", False)}
    for case, (verdict, janus) in want.items():
        r = J.janus_test(*_render(objs[case], 1.0), refs[family])
        assert (r.verdict, r.janus) == (verdict, janus), (family, colour, case, r.to_dict())
        assert r.part_views >= 2 and r.mirror_views >= 2
        assert np.allclose(r.colour, COLOURS[colour], atol=0.03)      # the fitted base colour


def test_without_colour_adaptation_a_wrong_wall_colour_reads_as_a_door(refs):
    """Why step 0 exists: a red house has no door, but its red wall is closer to the dark door
    than to the green wall; with colour adaptation it is (correctly) missing its door."""
    red = J.janus_objects("house", make_object("house", "red", seed=1))["without"]
    rgb, alpha = _render(red, 1.0)
    assert J.janus_test(rgb, alpha, refs["house"], adapt_colour=False).part_seen == 1.0
    assert J.janus_test(rgb, alpha, refs["house"]).verdict == "missing"


def test_symmetric_family_has_no_janus_objects():
    with pytest.raises(ValueError, match="no asymmetric part"):
        J.janus_objects("cube", make_object("cube", "red", n_points=200))


# ---------------------------------------------------------------------------------------------
# Input checks, run list, summary and report
# ---------------------------------------------------------------------------------------------
def test_input_parsing():
    assert B.parse_seeds("0, 3") == [0, 3]
    for bad in ("0,x", "-1", "", "1,1", "0.5"):
        with pytest.raises(B.EvalError, match="--seeds"):
            B.parse_seeds(bad)
    assert B.parse_methods("sds") == ["sds"]
    with pytest.raises(B.EvalError, match="--methods"):
        B.parse_methods("ism,dds")
    assert B.check_prompt("An Orange chair") == ("orange", "chair")
    with pytest.raises(B.EvalError, match="dragon"):
        B.check_prompt("a red dragon")
    with pytest.raises(B.EvalError, match="exactly one colour"):
        B.check_prompt("a red blue cube")
    assert len(B.DEFAULT_PROMPTS) >= 12
    fams = {B.check_prompt(p)[1] for p in B.DEFAULT_PROMPTS}
    assert set(ASYMMETRIC) <= fams and len(fams) == 9


def test_make_spec_quick_defaults_and_precedence(tmp_path):
    q = B.make_spec(out=tmp_path / "q", quick=True, prior="tiny")
    assert (q.prompts, q.seeds, q.views, q.size) == (list(B.QUICK_PROMPTS), [0], 8, 32)
    assert q.base_cfg.train.iters == B.QUICK_ITERS and q.base_cfg.prior.name == "tiny"
    o = q.base_cfg.output
    assert not (o.video or o.gif or o.mesh) and q.base_cfg.train.preview_every == 0
    f = B.make_spec(out=tmp_path / "f", preset="tiny", seeds="0,1", iters=7, views=16, quick=True,
                    overrides=["output.mesh=true", "guidance.scale=5"])
    assert (f.seeds, f.views, f.base_cfg.train.iters) == ([0, 1], 16, 7)
    assert f.base_cfg.output.mesh and f.base_cfg.guidance.scale == 5.0
    assert "--iters 7" in f.command and "guidance.scale=5" in f.command
    full = B.make_spec(out=tmp_path / "d", preset="tiny")
    assert (full.prompts, full.seeds, full.methods) == (list(B.DEFAULT_PROMPTS), [0, 1],
                                                        ["ism", "sds"])
    assert full.base_cfg.train.iters == C.preset_config("tiny").train.iters


def test_build_runs_pairs_methods_and_merges_identical_ablation_runs(tmp_path):
    cfg = C.apply_overrides(C.preset_config("tiny"), {"guidance.view_prompts": True,
                                                     "guidance.perp_neg": True})
    spec = B.BenchSpec(out=tmp_path, prompts=["a red cube", "a blue mug"], seeds=[0, 1],
                       methods=["ism", "sds"], base_cfg=cfg, preset="tiny", ablation=True)
    runs = B.build_runs(spec)
    # cube: 2 methods x 2 seeds; mug: ism (= ism-vp, merged), sds, ism-novp, x 2 seeds
    assert len(runs) == 4 + 6
    mug_ism = [r for r in runs if r.prompt == "a blue mug" and r.method == "ism"]
    assert [r.labels for r in mug_ism] == [["ism", "ism-vp"]] * 2
    for r in runs:   # equal iterations, same config except the method's keys and the seed
        d = C.to_dict(r.cfg)
        assert d["train"]["iters"] == cfg.train.iters and d["train"]["seed"] == r.seed
        assert r.name == f"{r.prompt.replace(' ', '_')}_{r.method}_s{r.seed}"
    novp = next(r for r in runs if r.method == "ism-novp")
    assert not novp.cfg.guidance.view_prompts and not novp.cfg.guidance.perp_neg
    assert not novp.cfg.output.orient


def _row(name, prompt, labels, iou, psnr, janus=None, status="done"):
    return {"name": name, "prompt": prompt, "labels": labels, "method": labels[0], "seed": 0,
            "status": status, "reused": False, "iou": iou, "psnr": psnr,
            "janus": None if janus is None else {"janus": janus, "verdict": "two copies" if janus
                                                 else "ok", "part_seen": 1.0,
                                                 "mirror_seen": 1.0 if janus else 0.0}}


def test_summary_and_report_files(tmp_path):
    rows = [_row("c_ism", "a red cube", ["ism"], 0.95, 27.0),
            _row("c_sds", "a red cube", ["sds"], 0.85, 21.0),
            _row("m_ism", "a blue mug", ["ism"], 0.91, 26.0, janus=False),
            _row("m_sds", "a blue mug", ["sds"], 0.93, 20.0, janus=True)]
    s = B.summarise(rows, ["ism", "sds"], ablation=False)
    assert s["per_method"]["ism"]["iou"] == pytest.approx(0.93)
    assert s["per_method"]["ism"]["psnr"] == pytest.approx(26.5)
    assert s["per_method"]["sds"]["janus_rate"] == 1.0
    assert s["per_method"]["ism"]["janus_rate"] == 0.0
    assert [b["ism_ge_sds"] for b in s["ism_vs_sds"]] == [True, False]   # mug: IoU 0.91 < 0.93
    assert s["targets"]["met"] is True
    s_fail = B.summarise(rows + [_row("x", "a red cube", ["ism"], None, None, status="failed")],
                         ["ism", "sds"], ablation=False)
    assert s_fail["per_method"]["ism"]["failed"] == 1 and s_fail["targets"]["met"] is False

    report = {"schema": B.REPORT_SCHEMA, "status": "done", "command": "ism3d eval --quick",
              "date": "2026-01-01T00:00:00+00:00", "machine": B.machine(), "wall_seconds": 1.0,
              "settings": {"preset": "tiny", "prior": "tiny", "iters": 5, "seeds": [0],
                           "methods": ["ism", "sds"], "ablation": False, "views": 8, "size": 32,
                           "polars": [90.0], "radius": 3.5, "fovy": 0.55},
              "runs": rows, "summary": s}
    j, m = B.write_report(report, tmp_path / "bench")
    back = json.loads(j.read_text())
    assert back == json.loads(json.dumps(report))
    assert {"schema", "status", "command", "date", "machine", "settings", "runs",
            "summary"} <= back.keys()
    md = m.read_text()
    for r in rows:
        assert f"| [{r['name']}](runs/{r['name']}/eval_views.png) |" in md
    assert "targets met: **yes**" in md and "ism3d eval --quick" in md
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["report.json", "report.md"]


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------
FAST = ["--preset", "tiny", "--prior", "tiny", "--views", "4", "--size", "16", "--quiet",
        "camera.eval_polars=90", "guidance.delta_s=1000", "guidance.xs_inv_steps=1"]


def test_eval_quick_end_to_end(tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "ism3d", "eval", "--quick", "--iters", "1",
                        "--out", str(out), *FAST], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    names = {f"{p.replace(' ', '_')}_{m}_s0" for p in B.QUICK_PROMPTS for m in ("ism", "sds")}
    assert {x["name"] for x in rep["runs"]} == names
    for n in names:
        for f in ("gaussians.ply", "summary.json", "config.yaml", "eval.json", "eval_views.png"):
            assert (out / "runs" / n / f).is_file(), (n, f)
        assert not (out / "runs" / n / "turntable.mp4").exists()
    for x in rep["runs"]:
        assert 0.0 <= x["iou"] <= 1.0 and x["psnr"] > 0 and x["iters"] == 1
        assert (x["janus"] is None) == (x["family"] not in ASYMMETRIC)
    md = (out / "report.md").read_text()
    assert all(n in md for n in names) and "ISM >= SDS" in md


def test_interrupted_eval_resumes_and_reuses(tmp_path):
    cfg = C.apply_overrides(C.preset_config("tiny"), {
        **B.EVAL_OVERRIDES, "train.iters": 3, "train.checkpoint_every": 1,
        "camera.eval_polars": "90", "guidance.delta_s": 1000, "guidance.xs_inv_steps": 1})
    spec = B.BenchSpec(out=tmp_path / "b", prompts=["a red mug"], seeds=[0], methods=["sds"],
                       base_cfg=cfg, preset="tiny", views=4, size=16)
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] >= 2

    rep = B.run_bench(spec, progress=False, should_stop=stop_after_two)
    run = spec.out / "runs" / "a_red_mug_sds_s0"
    assert rep["status"] == "interrupted" and rep["runs"] == []
    assert (spec.out / "report.md").is_file() and not (run / "summary.json").exists()
    assert json.loads((run / "progress.json").read_text())["iterations"] == 2
    rep = B.run_bench(spec, progress=False)               # resumes from the checkpoint
    assert rep["status"] == "done" and rep["runs"][0]["reused"] is False
    assert json.loads((run / "summary.json").read_text())["iterations"] == 3
    rep2 = B.run_bench(spec, progress=False)              # finished: reused, metrics cached
    assert rep2["runs"][0]["reused"] and rep2["runs"][0]["metrics_cached"]
    assert rep2["runs"][0]["iou"] == rep["runs"][0]["iou"]
    spec.base_cfg = C.apply_overrides(cfg, {"train.iters": 2})   # another config: trained again
    rep3 = B.run_bench(spec, progress=False)
    assert not rep3["runs"][0]["reused"] and rep3["runs"][0]["iters"] == 2


def test_eval_jobs_trains_in_shards_and_matches_one_process(tmp_path):
    """--jobs 2: two `--shard k/2` processes train the runs, this one scores them all (every run
    reused); the numbers are those of the same benchmark in one process."""
    args = ["eval", "--quick", "--iters", "2", *FAST]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "ism3d", *args, "--out", str(tmp_path / "par"),
                        "--jobs", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    par = json.loads((tmp_path / "par" / "report.json").read_text())
    assert all(x["reused"] for x in par["runs"]) and len(par["runs"]) == 6
    for k in (0, 1):
        assert "shard %d/2: 3 runs" % k in (tmp_path / "par" / "shards" / f"{k}.log").read_text()
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    assert [x["name"] for x in par["runs"]] == [x["name"] for x in one["runs"]]
    for a, b in zip(par["runs"], one["runs"]):
        assert not b["reused"]
        assert a["iou"] == pytest.approx(b["iou"], abs=1e-3) and a["psnr"] == pytest.approx(b["psnr"], abs=0.01)


def test_shard_trains_only_its_runs_and_writes_no_report(tmp_path):
    cfg = C.apply_overrides(C.preset_config("tiny"), {
        **B.EVAL_OVERRIDES, "train.iters": 1, "camera.eval_polars": "90",
        "guidance.delta_s": 1000, "guidance.xs_inv_steps": 1})
    spec = B.BenchSpec(out=tmp_path / "b", prompts=["a red cube", "a blue sphere"], seeds=[0],
                       methods=["ism", "sds"], base_cfg=cfg, preset="tiny", views=4, size=16,
                       shard=(1, 2))
    names = [r.name for r in B.build_runs(spec)]
    rep = B.run_bench(spec, progress=False)
    assert [x["name"] for x in rep["runs"]] == names[1::2] == ["a_red_cube_sds_s0", "a_blue_sphere_sds_s0"]
    assert not (spec.out / "report.json").exists() and not (spec.out / "report.md").exists()
    assert sorted(p.name for p in (spec.out / "runs").iterdir()) == sorted(names[1::2])
    spec.shard = None                                     # the whole benchmark reuses the shard's runs
    rep = B.run_bench(spec, progress=False)
    assert [x["reused"] for x in rep["runs"]] == [i % 2 == 1 for i in range(len(names))]
    assert (spec.out / "report.json").is_file()
    assert B.parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b"):
        with pytest.raises(B.EvalError, match="--shard"):
            B.parse_shard(bad)


@pytest.mark.parametrize("args, needle", [
    (["--prompts", "PROMPTS_FILE"], "dragon"),
    (["--shard", "2/2"], "--shard"),
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "2", "--shard", "0/2"], "--jobs"),
    (["--seeds", "0,x"], "--seeds"),
    (["--methods", "ism,gan"], "--methods"),
    (["--views", "2"], "--views"),
    (["train.seed=3"], "--seeds"),
    (["guidance.scael=3"], "guidance.scael"),
    (["--prior", "/no/such/prior"], "/no/such/prior"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, needle):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na red dragon  # not a ToyWorld family\n")
    args = [str(prompts) if a == "PROMPTS_FILE" else a for a in args]
    out = tmp_path / "never"
    code = cli.main(["eval", "--quick", "--preset", "tiny", "--prior", "tiny", "--out", str(out),
                     "--quiet", *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_rings_and_janus_agree_with_cpu():
    """On CUDA the rings render with gsplat: the metrics and Janus verdicts match the CPU ones."""
    cfg = C.preset_config("tiny")
    out = {}
    for dev in ("cpu", "cuda"):
        rings = B.Rings.from_config(cfg, 8, 32, dev)
        ref = B.make_reference("green", "mug", rings)
        objs = J.janus_objects("mug", make_object("mug", "green", seed=1, device=dev))
        out[dev] = {k: B.evaluate_gaussians(objs[k], ref, rings)[0] for k in ("with", "both")}
    for k in ("with", "both"):
        cpu, gpu = out["cpu"][k], out["cuda"][k]
        assert gpu["iou"] == pytest.approx(cpu["iou"], abs=0.01)
        assert gpu["psnr"] == pytest.approx(cpu["psnr"], abs=1.0)
        assert gpu["janus"]["verdict"] == cpu["janus"]["verdict"]
    assert out["cuda"]["with"]["janus"]["verdict"] == "ok"
    assert out["cuda"]["both"]["janus"]["verdict"] == "two copies"
