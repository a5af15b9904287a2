"""`ism3d score` / `ism3d bench`: the metrics against closed forms, the CLIP loader against
transformers' own forward pass, and both commands end to end with a tiny random CLIP (tiny_clip.py)
on tiny runs, as a user runs them."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ism3d.cli import main
from ism3d.score import metrics as M
from ism3d.score.clip import ScoreError, load_clip, resolve_clip

REPO = Path(__file__).resolve().parents[1]
# the tiny preset cut to seconds per run (as in test_batch.py): few steps and points, no video/mesh
FAST = ["train.iters=4", "train.checkpoint_every=2", "train.preview_every=0",
        "init.num_points=300", "output.video_frames=4", "output.video=false", "output.mesh=false"]


def unit(x):
    return torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------------------------------------
# Metrics on hand-made embeddings
# ---------------------------------------------------------------------------------------------
def test_r_precision_is_one_when_each_view_equals_its_caption():
    g = torch.Generator().manual_seed(0)
    caps = unit(torch.randn(7, 16, generator=g, dtype=torch.float64))      # [K, D]
    for own in range(7):
        views = caps[own].expand(5, -1).clone()                            # [V, D]
        m = M.run_metrics(views, caps, own)
        assert m["r_precision_views"] == 1.0 and m["r_precision_run"] == 1.0
        assert m["rank_run"] == 1 and m["views"]["rank"] == [1] * 5
        assert m["clip_score"] == pytest.approx(1.0, abs=1e-12)
        assert m["clip_score_trimmed"] == pytest.approx(1.0, abs=1e-12)


def test_r_precision_is_at_chance_for_unrelated_embeddings():
    # views independent of the captions: each of K captions ranks first with probability 1/K
    g = torch.Generator().manual_seed(1)
    K, V, runs, D = 5, 5, 4000, 8
    caps = unit(torch.randn(K, D, generator=g, dtype=torch.float64))
    per_run = [M.run_metrics(unit(torch.randn(V, D, generator=g, dtype=torch.float64)), caps,
                             i % K) for i in range(runs)]
    a = M.aggregate(per_run)
    sd_views, sd_runs = math.sqrt(0.2 * 0.8 / (runs * V)), math.sqrt(0.2 * 0.8 / runs)
    assert abs(a["r_precision_views"] - 1 / K) < 4 * sd_views, a
    assert abs(a["r_precision_runs"] - 1 / K) < 4 * sd_runs, a
    assert a["views"] == runs * V and a["runs"] == runs


def test_clip_score_trimmed_score_and_ranks_by_hand():
    # caption 0 = e0, caption 1 = e1; view v = s_v e0 + sqrt(1 - s_v^2) e1, so cos(view, own) = s_v
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4])
    c = np.sqrt(1 - s ** 2)                                # cos with caption 1
    views = torch.tensor(np.stack([s, c, np.zeros(5)], 1))
    caps = torch.eye(3, dtype=torch.float64)[:2]
    m = M.run_metrics(views, caps, own=0)
    assert m["views"]["clip_score"] == pytest.approx(list(s), abs=1e-12)
    assert m["clip_score"] == pytest.approx(0.38, abs=1e-12)            # (0.9+0.1+0.2+0.3+0.4)/5
    assert m["clip_score_trimmed"] == pytest.approx(0.3, abs=1e-12)     # without 0.9 and 0.1
    assert m["views"]["rank"] == [1, 2, 2, 2, 2]                        # only 0.9 > sqrt(1-0.81)
    assert m["r_precision_views"] == pytest.approx(0.2)
    # the mean embedding points at (0.38, mean c): closer to caption 1
    assert c.mean() > 0.38 and m["rank_run"] == 2 and m["r_precision_run"] == 0.0
    # fewer than 3 views: no trimmed score
    assert M.run_metrics(views[:2], caps, 0)["clip_score_trimmed"] is None


def test_a_tie_counts_as_a_miss_and_views_pool_over_runs():
    caps = torch.eye(2, dtype=torch.float64)
    tie = unit([[1.0, 1.0]])                                                # equal cosines
    assert M.run_metrics(tie, caps, 0)["views"]["rank"] == [2]
    hit, miss = unit([[1.0, 0.0]]), unit([[0.0, 1.0]])
    r1 = M.run_metrics(torch.cat([hit, hit, hit]), caps, 0)                # 3/3 views
    r2 = M.run_metrics(miss, caps, 0)                                      # 0/1 view
    a = M.aggregate([r1, r2])
    assert a["r_precision_views"] == pytest.approx(3 / 4)                  # pooled, not 1/2
    assert a["r_precision_runs"] == pytest.approx(1 / 2)
    assert a["clip_score"] == pytest.approx((1.0 + 0.0) / 2)


# ---------------------------------------------------------------------------------------------
# The CLIP loader
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from tiny_clip import make_tiny_clip
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", seed=0)


def test_loaded_clip_embeds_like_transformers_forward(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    scorer = load_clip(str(tiny_clip_dir), "cpu", batch_size=3)   # 7 images: 3 batches
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (7, 48, 40, 3), dtype=np.uint8)
    texts = ["a red cube", "the car", "a blue ball of the cat"]
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip_dir)
    inputs = proc(text=texts, images=list(images), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)                       # image_embeds / text_embeds: unit vectors
    torch.testing.assert_close(scorer.embed_images(images), out.image_embeds.double(),
                               atol=2e-6, rtol=0)
    torch.testing.assert_close(scorer.embed_texts(texts), out.text_embeds.double(),
                               atol=2e-6, rtol=0)
    d = scorer.describe()
    assert d["projection_dim"] == 16 and d["vision"] == {"layers": 2, "width": 32, "patch": 8,
                                                          "image_size": 32}


def test_resolve_clip_fails_fast_with_one_line(tmp_path, monkeypatch, tiny_clip_dir):
    assert resolve_clip(str(tiny_clip_dir)) == str(tiny_clip_dir.resolve())
    with pytest.raises(ScoreError, match="no such folder"):
        resolve_clip(str(tmp_path / "nope"))
    with pytest.raises(ScoreError, match="no config.json"):
        resolve_clip(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ScoreError, match="model_type 'siglip'"):
        resolve_clip(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    t = time.perf_counter()
    with pytest.raises(ScoreError, match="not available offline") as e:
        resolve_clip("openai/clip-vit-large-patch14")
    assert time.perf_counter() - t < 5 and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# End to end: `ism3d bench` makes two tiny runs and scores them; `ism3d score` on them
# ---------------------------------------------------------------------------------------------
def ism3d(*args, timeout=300, env=None):
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "ism3d", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=e)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory, tiny_clip_dir):
    d = tmp_path_factory.mktemp("bench")
    prompts = d / "prompts.txt"
    prompts.write_text("# two objects\na red cube\n\na blue ball\n")
    root = d / "root"
    r = ism3d("bench", str(prompts), "--preset", "tiny", "--clip", str(tiny_clip_dir),
              "--out", str(root), "--views", "4", "--size", "32", "--backend", "local",
              "--jobs", "1", "--cpus-per-job", "1", "--quiet", *FAST)
    assert r.returncode == 0, r.stderr
    return root, r


def test_bench_runs_the_batch_and_writes_one_scored_table(bench_root):
    root, r = bench_root
    assert (root / "prompts.jsonl").read_text().splitlines() == [
        '{"prompt": "a red cube", "seed": 0}', '{"prompt": "a blue ball", "seed": 0}']
    report = json.loads((root / "score.json").read_text())
    assert report["format"] == "ism3d-score/1" and report["bench"]["preset"] == "tiny"
    assert report["captions"]["list"] == ["a red cube", "a blue ball"]
    runs = {Path(x["run"]).name: x for x in report["runs"]}
    assert sorted(runs) == ["a_blue_ball_s0", "a_red_cube_s0"]
    for name, x in runs.items():
        summary = json.loads((root / name / "summary.json").read_text())
        assert x["wall_seconds"] == summary["wall_seconds"] > 0
        assert x["peak_memory_bytes"] == summary["peak_memory_bytes"]
        assert len(x["views"]["clip_score"]) == 4 and x["views_source"] == "rendered"
        assert x["config"]["train"]["iters"] == 4
        assert json.loads((root / name / "clip_score.json").read_text())["clip_score"] == \
            x["clip_score"]
    assert len(report["groups"]) == 1 and report["groups"][0]["label"] == "tiny ism"
    md = (root / "score.md").read_text()
    assert "| tiny ism | 2 |" in md and "| a red cube | 0 | tiny | ism |" in md
    assert "prior.name=tiny, guidance.method=ism, guidance.scale=" in md and "train.iters=4" in md
    index = json.loads((root / "index.json").read_text())
    assert all(e["score"]["clip_score"] == runs[e["run"]]["clip_score"] for e in index["runs"])
    page = (root / "index.html").read_text()
    assert page.count('class="score"') == 2 and "CLIP score" in page
    # re-running the same command trains nothing again (the batch reuses both runs)
    ply = (root / "a_red_cube_s0" / "gaussians.ply").stat().st_mtime_ns
    assert main(list(r.args[3:])) == 0
    assert (root / "a_red_cube_s0" / "gaussians.ply").stat().st_mtime_ns == ply


def test_score_matches_an_independent_render_and_clip(bench_root, tiny_clip_dir, tmp_path,
                                                      capsys):
    """The JSON's per-view CLIP scores = renders of the eval ring (made here) through
    transformers' CLIPModel forward, cosine with the prompt; R-precision from those numbers."""
    from transformers import CLIPModel, CLIPProcessor

    from ism3d.cameras import eval_ring
    from ism3d.export.views import render_views
    from ism3d.ply import load_ply
    from ism3d.scene import activate

    root, _ = bench_root
    caps = tmp_path / "caps.txt"
    caps.write_text("a green cone\na yellow torus\na red cube\n")
    out = tmp_path / "s" / "report.json"
    assert main(["score", str(root), "--clip", str(tiny_clip_dir), "--captions", str(caps),
                 "--views", "5", "--size", "40", "--out", str(out), "--quiet"]) == 0
    assert "2 run(s): CLIP score" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert (out.with_suffix(".md")).is_file()
    assert report["captions"]["list"] == ["a green cone", "a yellow torus", "a red cube",
                                          "a blue ball"]
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip_dir)
    for x in report["runs"]:
        params, sh = load_ply(Path(x["run"]) / "gaussians.ply")
        imgs = render_views(activate(params, sh), eval_ring(5, 40, 40, 3.5, 0.55, 90.0),
                            ("rgb",), background=(1, 1, 1))["rgb"]
        with torch.no_grad():
            o = model(**proc(text=report["captions"]["list"], images=list(imgs), padding=True,
                             return_tensors="pt"))
        sim = (o.image_embeds.double() @ o.text_embeds.double().T).numpy()      # [5, 4]
        own = report["captions"]["list"].index(x["prompt"])
        np.testing.assert_allclose(x["views"]["clip_score"], sim[:, own], atol=1e-5)
        assert x["clip_score"] == pytest.approx(sim[:, own].mean(), abs=1e-5)
        hits = (sim[:, own][:, None] > np.delete(sim, own, 1)).all(1)
        assert x["r_precision_views"] == pytest.approx(hits.mean())
    a = report["aggregate"]
    assert a["runs"] == 2 and a["views"] == 10
    assert a["clip_score"] == pytest.approx(np.mean([x["clip_score"] for x in report["runs"]]))


def test_score_reads_an_ism3d_render_ring_folder(bench_root, tiny_clip_dir, tmp_path):
    root, _ = bench_root
    run = root / "a_red_cube_s0"
    assert main(["render", str(run / "gaussians.ply"), "--out", str(tmp_path / "ring"),
                 "--views", "8", "--size", "32", "--mode", "rgb"]) == 0
    (run / "ring").symlink_to(tmp_path / "ring")
    try:
        args = ["score", str(run), "--clip", str(tiny_clip_dir), "--views", "4", "--size", "32",
                "--quiet"]
        assert main([*args, "--out", str(tmp_path / "read.json")]) == 0
        assert main([*args, "--renders", "", "--out", str(tmp_path / "made.json")]) == 0
    finally:
        (run / "ring").unlink()
    read = json.loads((tmp_path / "read.json").read_text())["runs"][0]
    made = json.loads((tmp_path / "made.json").read_text())["runs"][0]
    assert read["views_source"].endswith("ring") and made["views_source"] == "rendered"
    # views 0, 2, 4, 6 of the 8-view ring are the 4-view ring: the same pixels, the same scores
    np.testing.assert_allclose(read["views"]["clip_score"], made["views"]["clip_score"],
                               atol=1e-6)


@pytest.mark.parametrize("case", ["missing_clip", "offline_hub_clip", "bad_clip", "empty_captions",
                                  "not_a_run", "one_caption"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, bench_root, tiny_clip_dir,
                                                            tmp_path, capsys, monkeypatch):
    root, _ = bench_root
    run = root / "a_red_cube_s0"
    before = (run / "clip_score.json").read_bytes()
    out = tmp_path / "out" / "score.json"
    clip, extra, paths = str(tiny_clip_dir), [], [str(run)]
    if case == "missing_clip":
        clip = str(tmp_path / "no_clip")
    elif case == "offline_hub_clip":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
        clip = "openai/clip-vit-base-patch32"
    elif case == "bad_clip":           # looks right, but the weights are not a safetensors file
        bad = tmp_path / "bad_clip"
        bad.mkdir()
        for f in tiny_clip_dir.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        (bad / "model.safetensors").write_bytes(b"not weights")
        clip = str(bad)
    elif case == "empty_captions":
        (tmp_path / "caps.txt").write_text("# only a comment\n\n")
        extra = ["--captions", str(tmp_path / "caps.txt")]
    elif case == "not_a_run":
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "notes.txt").write_text("hi")
        paths = [str(tmp_path / "folder")]
    elif case == "one_caption":        # R-precision needs a second caption
        (tmp_path / "caps.txt").write_text("a red cube\n")
        extra = ["--captions", str(tmp_path / "caps.txt")]
    t = time.perf_counter()
    code = main(["score", *paths, "--clip", clip, *extra, "--out", str(out), "--quiet",
                 "--views", "3", "--size", "32"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("ism3d: error: "), err
    assert time.perf_counter() - t < 30
    assert not out.parent.exists()
    assert (run / "clip_score.json").read_bytes() == before


def test_bench_input_the_batch_rejects_is_exit_2_and_leaves_nothing(tiny_clip_dir, tmp_path,
                                                                     capsys):
    # the shipped prompt set with the ToyWorld prior: its vocabulary rejects the first line
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "toy", "--clip", str(tiny_clip_dir), "--out", str(out),
                 "--quiet"]) == 2
    assert "does not know the word(s)" in capsys.readouterr().err
    assert not out.exists()
    assert main(["bench", "--preset", "tiny", "--clip", str(tiny_clip_dir), "--out", str(out),
                 "--seeds", "0,x"]) == 2
    assert "--seeds" in capsys.readouterr().err and not out.exists()


def test_help_states_the_protocol(capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for needle in ("CLIP score", "trimmed CLIP score", "R-precision views", "R-precision runs",
                   "clip_score.json", "--captions"):
        assert needle in text, needle


def test_shipped_prompt_set_has_30_distinct_object_prompts():
    from ism3d.score.bench import default_prompts_path, read_prompt_set
    prompts = read_prompt_set(default_prompts_path())
    assert len(prompts) == 30 == len(set(prompts))
    assert all(p.startswith(("a DSLR photo of", "a zoomed out DSLR photo of")) for p in prompts)


def test_web_app_shows_the_score_of_a_scored_run(bench_root):
    pytest.importorskip("gradio")
    from ism3d.app.jobs import list_runs
    from ism3d.app.server import gallery_caption
    from ism3d.score.runs import score_text

    root, _ = bench_root
    runs = {r.name: r for r in list_runs(root)}
    rec = json.loads((root / "a_red_cube_s0" / "clip_score.json").read_text())
    assert gallery_caption(runs["a_red_cube_s0"]) == \
        f"a red cube · done · CLIP {rec['clip_score']:.4f}"
    line = score_text(root / "a_red_cube_s0")
    assert line.startswith(f"CLIP score {rec['clip_score']:.4f} · R-precision ")
    assert line.endswith(f"({rec['clip_model']}, {len(rec['views']['rank'])} views, "
                         f"{rec['captions']} captions)")
    # a score of other gaussians (the PLY changed since) is not shown
    ply = root / "a_blue_ball_s0" / "gaussians.ply"
    os.utime(ply, ns=(ply.stat().st_atime_ns, ply.stat().st_mtime_ns + 10 ** 9))
    assert score_text(ply.parent) is None
    assert gallery_caption(runs["a_blue_ball_s0"]) == "a blue ball · done"


def test_groups_by_config_and_pairs_on_shared_prompts_and_seeds():
    from ism3d.score.runner import config_groups, paired

    def run(prompt, seed, method, score, r):
        return {"prompt": prompt, "seed": seed, "preset": "fast", "clip_score": score,
                "r_precision_views": r,
                "config": {"guidance": {"method": method, "scale": 7.5},
                           "train": {"seed": seed, "device": "cuda", "iters": 1500}}}
    runs = [run("a", 0, "ism", 0.30, 1.0), run("b", 0, "ism", 0.20, 0.5),
            run("a", 1, "ism", 0.25, 0.0),                       # no sds twin: not paired
            run("a", 0, "sds", 0.28, 0.5), run("b", 0, "sds", 0.22, 0.5)]
    groups = config_groups(runs)
    assert [g["label"] for g in groups] == ["fast ism", "fast sds"]   # seed/device ignored
    assert [g["members"] for g in groups] == [[0, 1, 2], [3, 4]]
    assert groups[0]["config_differs"] == {"guidance.method": "ism"}
    [q] = paired(runs, groups)
    assert (q["pairs"], q["a_higher"], q["b_higher"]) == (2, 1, 1)
    assert q["mean_clip_score_diff"] == pytest.approx(((0.30 - 0.28) + (0.20 - 0.22)) / 2)
    assert q["mean_r_precision_views_diff"] == pytest.approx((0.5 + 0.0) / 2)


def test_find_runs_takes_runs_and_roots_and_skips_unfinished(tmp_path):
    from ism3d.score.runs import find_runs

    def run(path, status="done", prompt="a cup", ply=True):
        path.mkdir(parents=True)
        name = "summary.json" if status == "done" else "progress.json"
        (path / name).write_text(json.dumps({"status": status, "prompt": prompt}))
        if ply:
            (path / "gaussians.ply").write_bytes(b"ply")
        return path
    root = tmp_path / "root"
    run(root / "b_s0", prompt="b")
    run(root / "a_s0", prompt="a")
    run(root / "c_s0", status="stopped")
    (root / "logs").mkdir()
    single = run(tmp_path / "single", prompt="  one  ")
    runs, skipped = find_runs([str(single), str(root), str(root / "a_s0")])   # a_s0 once
    assert [(r.path.name, r.prompt) for r in runs] == [("single", "one"), ("a_s0", "a"),
                                                       ("b_s0", "b")]
    assert skipped == [f"{root / 'c_s0'}: not a finished run"]
    for bad, needle in ((root / "c_s0", "a stopped run"), (root / "logs", "holds no finished run"),
                        (run(tmp_path / "noply", ply=False), "summary.json is not a finished"),
                        (tmp_path / "missing", "no such folder")):
        with pytest.raises(ScoreError, match=needle):
            find_runs([str(bad)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_match_cpu(tiny_clip_dir):
    """The same views and captions on the GPU and on the CPU give the same embeddings (float32
    towers on both; cuBLAS vs CPU summation order only)."""
    g = np.random.default_rng(1)
    images = g.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    texts = ["a red cube", "a blue ball", "the car"]
    cpu, gpu = load_clip(str(tiny_clip_dir), "cpu"), load_clip(str(tiny_clip_dir), "cuda")
    torch.testing.assert_close(gpu.embed_images(images), cpu.embed_images(images), atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(gpu.embed_texts(texts), cpu.embed_texts(texts), atol=1e-4, rtol=0)
