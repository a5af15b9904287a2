"""`ism3d score` cost: one run scored on 120 views at 512 px with the full ViT-L/14 CLIP
architecture, openai/clip-vit-large-patch14 (random weights: speed and memory do not depend on
weight values). Prints one JSON.

    python benchmarks/bench_score.py                                   # GPU: 120 views, 512 px
    python benchmarks/bench_score.py --device cpu --views 8 --gaussians 2000 --repeats 1 --no-cli

The CLIP (ViT-L/14 at 224 px: 24 layers, width 1024, patch 14; text 12 layers, width 768;
projection 768; tests/tiny_clip.py `clip_vit_l14_config`) is built from its config with random
weights and the openai image-processor settings (shortest side 224, bicubic, centre crop 224,
CLIP mean/std), saved with save_pretrained into a temp folder and loaded back by
`ism3d.score.clip.load_clip`, the code `--clip FOLDER` takes. (The tokenizer is the tiny offline
BPE of the tests: captions are short, so the text side costs the same order.) The run is a
synthetic finished run folder holding `--gaussians` random gaussians in a unit ball. Timed:

    load       the CLIP from disk to the device (float32)
    render     the eval ring (`runs.ring_views`, what `ism3d score` renders)
    embed      the views' image embeddings (`ClipScorer.embed_images`: the CLIP processor on the
               CPU + the vision tower, `--batch-size` images per call); `processor` is the
               processor's share, timed alone
    captions   the shipped 30 captions' text embeddings
    cli        the whole `ism3d score RUN --clip FOLDER` in this process (load + render + embed +
               write), unless --no-cli
render/embed/captions are the best of `--repeats` (the first includes CUDA/cuBLAS warm-up);
score_per_run_s = render + embed + captions.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ism3d import config as C
from ism3d.atomic import write_text_atomic
from ism3d.cli import main as cli_main
from ism3d.ply import save_ply
from ism3d.score.bench import default_prompts_path
from ism3d.score.clip import load_clip
from ism3d.score.runner import read_captions
from ism3d.score.runs import read_run, ring_views


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_clip(folder: Path) -> Path:
    from tiny_clip import clip_vit_l14_config, make_tiny_clip, tiny_processor

    tok = tiny_processor(224).tokenizer
    cfg = clip_vit_l14_config(bos=tok.bos_token_id, eos=tok.eos_token_id)
    return make_tiny_clip(folder, seed=0, image_size=224, config=cfg)


def make_run(folder: Path, n: int, seed: int = 0) -> Path:
    """A finished run folder: n random gaussians (unit ball, small, fairly opaque) + summary."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = dirs * torch.rand(n, 1, generator=g) ** (1 / 3)
    params = {"means": means,
              "scales": torch.full((n, 3), -3.5) + 0.3 * torch.randn(n, 3, generator=g),
              "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
              "opacities": torch.full((n,), 1.0), "sh0": 0.5 * torch.randn(n, 1, 3, generator=g),
              "shN": torch.zeros(n, 0, 3)}
    folder.mkdir(parents=True, exist_ok=True)
    save_ply(folder / "gaussians.ply", params, 0)
    write_text_atomic(folder / "config.yaml", C.dump_yaml(C.Config()))
    write_text_atomic(folder / "summary.json", json.dumps(
        {"status": "done", "prompt": read_captions(str(default_prompts_path()))[0], "seed": 0,
         "preset": "synthetic", "guidance": "ism", "num_gaussians": n}))
    return folder


def timed(fn, device: torch.device, repeats: int = 1):
    """(result of the last call, best seconds over `repeats` calls), device synchronised."""
    best, out = None, None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--views", type=int, default=120)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--gaussians", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3,
                    help="best of N for render/embed (the 1st warms up)")
    ap.add_argument("--no-cli", action="store_true",
                    help="skip the whole-command timing (it renders the ring once more)")
    args = ap.parse_args()
    device = torch.device(args.device)
    say = lambda m: print(f"bench_score: {m}", file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        clip_dir = make_clip(tmp / "clip")
        build_s = time.perf_counter() - t
        say(f"random ViT-L/14 CLIP saved in {build_s:.1f} s")
        run = read_run(make_run(tmp / "run", args.gaussians))
        captions = read_captions(str(default_prompts_path()))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        scorer, load_s = timed(lambda: load_clip(str(clip_dir), device,
                                                 batch_size=args.batch_size), device)
        say(f"loaded in {load_s:.1f} s")
        images, render_s = timed(lambda: ring_views(run, args.views, args.size, str(device),
                                                    renders=None)[0], device, args.repeats)
        say(f"rendered {args.views} views in {render_s:.2f} s")
        _, pre_s = timed(lambda: scorer.processor(images=list(images), return_tensors="pt"),
                         device)
        _, embed_s = timed(lambda: scorer.embed_images(images), device, args.repeats)
        _, text_s = timed(lambda: scorer.embed_texts(captions), device, args.repeats)
        say(f"embedded in {embed_s:.2f} s (processor {pre_s:.2f} s), captions {text_s:.2f} s")
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
        n_params = scorer.describe()["parameters"]
        scorer = None   # free it before the whole command loads its own
        cli_s = None
        if not args.no_cli:
            with contextlib.redirect_stdout(sys.stderr):   # stdout: the JSON only
                code, cli_s = timed(lambda: cli_main(
                    ["score", str(run.path), "--clip", str(clip_dir), "--views", str(args.views),
                     "--size", str(args.size), "--device", str(device), "--renders", "", "--quiet",
                     "--out", str(tmp / "score.json")]), device)
            assert code == 0

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    score_s = render_s + embed_s + text_s
    print(json.dumps({
        "what": "ism3d score, one run, random-weight openai/clip-vit-large-patch14 architecture",
        "device": dev, "views": args.views, "size": args.size, "gaussians": args.gaussians,
        "batch_size": args.batch_size, "clip_parameters": n_params,
        "build_random_clip_s": round(build_s, 2), "load_s": round(load_s, 2),
        "render_s": round(render_s, 3), "embed_images_s": round(embed_s, 3),
        "processor_s": round(pre_s, 3), "embed_captions_s": round(text_s, 3),
        "score_per_run_s": round(score_s, 3),
        "embed_ms_per_view": round(1000 * embed_s / args.views, 1),
        "cli_s": None if cli_s is None else round(cli_s, 2),
        "peak_gpu_gib": None if peak is None else round(peak, 2), "torch": torch.__version__},
        indent=1))


if __name__ == "__main__":
    main()
