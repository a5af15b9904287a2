"""Custom models on the GPU: SDXL speed/memory, and the low-VRAM modes at the paper recipe.

    python benchmarks/bench_custom_models.py [--device cuda] [--iters 10] [--warmup 3] [--cap-gib 12]
    python benchmarks/bench_custom_models.py --tiny --device cpu      # smoke run of this script

Prints ONE JSON object on stdout (progress goes to stderr):
- "sdxl": one ISM guidance step (the `sdxl` preset's guidance: 4 views, no Perp-Neg) on random
  weights of the full SDXL base architecture (tests/tiny_sd.sdxl_base_configs), at 1024 and 512;
  ms per iteration (median) and peak GPU memory. The SDXL VAE runs in fp32 (its force_upcast);
  once more at 1024 with an fp16 VAE (what the fp16-fix VAE allows), and with prior.offload=model
  (its VAE-encoder checkpointing). A case that runs out of memory says so and the others go on.
- "offload": the paper recipe's guidance step (ISM + Perp-Neg, 4 views at 512) on random SD 2.1-base
  weights for prior.offload = none | model | sequential, and model + attention slicing.
- "cap": the same modes again under torch.cuda.set_per_process_memory_fraction(cap / total): does
  a step fit a `--cap-gib` (12) GB card? (CUDA's own context, ~0.5 GB, is outside the cap.)
The guidance step is the prior's side of a training step (VAE encoder forward + backward, all UNet
calls); the renderer and the gaussians add their own memory on top (small at 4 x 512^2).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ism3d import config as C  # noqa: E402
from ism3d.guidance import make_guidance  # noqa: E402
from ism3d.priors import customise  # noqa: E402


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def build_prior(kind: str, device: torch.device, dtype: torch.dtype, tiny: bool):
    """A prior of random weights built in memory (no disk round trip: the full SDXL is ~7 GB)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    import tiny_sd as T
    from ism3d.priors.sdxl import StableDiffusionXLPrior
    from ism3d.priors.stable_diffusion import StableDiffusionPrior

    tok1, tok2 = T.tiny_clip_tokenizer("1"), T.tiny_clip_tokenizer("2")
    # init on the device when it is a GPU: seconds instead of minutes for 3.5 B parameters
    where = device if device.type == "cuda" else torch.device("cpu")
    with torch.random.fork_rng(devices=[]), where:
        torch.manual_seed(0)
        if kind == "sdxl":
            cfg = T.tiny_sdxl_configs(len(tok1)) if tiny else T.sdxl_base_configs()
            te1 = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).to(dtype)
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])).to(dtype)
        else:
            cfg = T.tiny_sd_configs("2", len(tok1)) if tiny else T.sd21_base_configs()
            te1 = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).to(dtype)
        unet = UNet2DConditionModel(**cfg["unet"]).to(dtype)
        vae = AutoencoderKL(**cfg["vae"])
    sched = {k: v for k, v in cfg["scheduler"].items() if not k.startswith("_")}
    if kind == "sdxl":
        return StableDiffusionXLPrior(vae, unet, te1, te2, tok1, tok2, sched, device, dtype, name="random SDXL")
    return StableDiffusionPrior(vae, unet, te1, tok2, sched, device, dtype, name="random SD 2.1-base")


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_steps(prior, preset: str, views: int, size: int, iters: int, warmup: int, device) -> dict:
    """Median ms of one guidance step (forward + backward to the images) and peak memory."""
    gcfg = C.preset_config(preset).guidance
    guidance = make_guidance(prior, gcfg, "a photo of a hamburger")
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(views, 3, size, size, device=device, requires_grad=True)
    az = torch.linspace(-180, 180, views + 1)[1:].to(device)
    calls = [0]

    def step():  # warm cycles 1, 0.5, 0: the timing covers the whole t range
        warm = (2 - calls[0] % 3) / 2
        calls[0] += 1
        guidance(images, az, warm, gen).loss.backward()
        images.grad = None

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ms.append((time.perf_counter() - t0) * 1000)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"ms_per_iter": round(statistics.median(ms), 2), "ms_min": round(min(ms), 2),
            "peak_gib": None if peak is None else round(peak, 3), "views": views, "size": size}


def with_mode(prior, mode: str, slicing: bool, device):
    cfg = C.PriorConfig(name="random", offload=mode, attention_slicing=slicing)
    customise(prior, cfg)
    if mode == "none":
        prior.enable_cuda_graphs()  # what load_prior does by default (a no-op off CUDA)
    return prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cap-gib", type=float, default=12.0)
    ap.add_argument("--tiny", action="store_true", help="tiny random models at 64 px (CPU smoke run)")
    ap.add_argument("--skip-sdxl", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    views = 2 if args.tiny else 4
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "dtype": str(dtype), "iters": args.iters, "warmup": args.warmup,
           "sdxl": [], "offload": [], "cap": []}

    # 1. SDXL at 1024 and 512 (its own fp32 VAE), 1024 with an fp16 VAE, 1024 with offload=model
    if not args.skip_sdxl:
        cases = [(64, True, "none"), (128, True, "none"), (64, True, "model")] if args.tiny else \
            [(1024, True, "none"), (512, True, "none"), (1024, False, "none"), (1024, True, "model")]
        for size, upcast, mode in cases:
            free(device)
            row = {"resolution": size, "offload": mode}
            try:
                t0 = time.perf_counter()
                prior = build_prior("sdxl", device, dtype, args.tiny)
                if not upcast:  # the fp16-fix VAE's config: force_upcast false
                    prior.vae.to(dtype)
                    prior.vae_dtype = dtype
                prior.set_resolution(size)
                with_mode(prior, mode, False, device)
                row["vae_dtype"] = str(prior.vae_dtype)
                log(f"sdxl {size} (vae {prior.vae_dtype}, offload {mode}): built in {time.perf_counter() - t0:.1f} s")
                row.update(time_steps(prior, "sdxl", views, size, args.iters, args.warmup, device))
            except torch.OutOfMemoryError as e:
                row.update(error="out of memory: " + str(e).splitlines()[0][:160])
            prior = None
            out["sdxl"].append(row)
            log(row)

    # 2. SD 2.1-base, paper recipe, each low-VRAM mode
    size = 64 if args.tiny else 512
    modes = [("none", False), ("model", False), ("sequential", False), ("model", True)]
    for mode, slicing in modes:
        free(device)
        row = {"offload": mode, "attention_slicing": slicing}
        try:
            prior = with_mode(build_prior("sd", device, dtype, args.tiny), mode, slicing, device)
            row.update(time_steps(prior, "paper", views, size, args.iters, args.warmup, device))
        except torch.OutOfMemoryError as e:
            row.update(error="out of memory: " + str(e).splitlines()[0][:160])
        prior = None
        out["offload"].append(row)
        log(row)

    # 3. the same modes under a process memory cap
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        for mode, slicing in modes:
            free(device)
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total), device)
            rec = {"offload": mode, "attention_slicing": slicing, "cap_gib": args.cap_gib}
            try:
                prior = with_mode(build_prior("sd", device, dtype, args.tiny), mode, slicing, device)
                time_steps(prior, "paper", views, size, 2, 1, device)
                rec["fits"] = True
            except torch.OutOfMemoryError as e:
                rec.update(fits=False, error=str(e).splitlines()[0][:200])
            finally:
                prior = None
                torch.cuda.set_per_process_memory_fraction(1.0, device)
            rec["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            out["cap"].append(rec)
            log(rec)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
