"""How long does one guidance step take, and how much GPU memory? One guidance step (ISM and
SDS) at the paper recipe, on random weights of the exact SD-2.1-base architecture (speed and
memory do not depend on weight values).

    python benchmarks/bench_guidance.py [--device cuda] [--iters 30] [--views 4] [--size 512]

The random model is saved with `save_pretrained` into a temp folder and loaded back through
`ism3d.priors.load_prior`, the same code a hub id takes. Prints ms per step (median after warm-up)
and peak GPU memory per method.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ism3d import config as C  # noqa: E402
from ism3d.guidance import make_guidance  # noqa: E402
from ism3d.priors import load_prior  # noqa: E402
from bench_render import time_ms  # noqa: E402  (same timing for every benchmark)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--model", default="", help="existing diffusers folder (default: build random SD-2.1-base)")
    ap.add_argument("--tiny", action="store_true", help="tiny random SD (CPU smoke run of this script)")
    args = ap.parse_args()
    device = torch.device(args.device)

    from tiny_sd import make_sd21_random, make_tiny_sd
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if not path:
            path = str(Path(tmp) / "sd")
            t0 = time.perf_counter()
            (make_tiny_sd if args.tiny else make_sd21_random)(path)
            print(f"built + saved random model in {time.perf_counter() - t0:.1f} s", flush=True)
        cfg = C.preset_config("paper")
        cfg = C.apply_overrides(cfg, {"prior.name": path})
        t0 = time.perf_counter()
        prior = load_prior(cfg.prior, device)
        print(f"loaded prior in {time.perf_counter() - t0:.1f} s ({prior.dtype})", flush=True)
        n_unet = sum(p.numel() for p in prior.unet.parameters()) if hasattr(prior, "unet") else 0
        print(f"UNet parameters: {n_unet / 1e6:.1f} M", flush=True)

        rows = []
        for method, perp in (("ism", False), ("ism", True), ("sds", False)):
            gcfg = C.apply_overrides(cfg, {"guidance.method": method,
                                           "guidance.perp_neg": str(perp)}).guidance
            guidance = make_guidance(prior, gcfg, "a photo of a hamburger")
            gen = torch.Generator().manual_seed(0)
            images = torch.rand(args.views, 3, args.size, args.size, device=device,
                                requires_grad=True)
            az = torch.linspace(-180, 180, args.views + 1)[1:].to(device)
            calls = [0]

            def step():  # warm cycles 1, 0.5, 0 so the timing covers the whole t range
                warm = (2 - calls[0] % 3) / 2
                calls[0] += 1
                out = guidance(images, az, warm, gen)
                out.loss.backward()
                images.grad = None

            time_ms(step, args.warmup, 0, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ms = time_ms(step, args.iters, 0, device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            rows.append((f"{method}{' +perp-neg' if perp else ''}", statistics.median(ms),
                         min(ms), max(ms), peak))

        print(f"\nguidance step, {args.views} views at {args.size}x{args.size}, {device} "
              f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
              f"dtype {prior.dtype}, median of {args.iters} after {args.warmup} warm-up")
        print(f"{'method':<16}{'median ms':>10}{'min':>8}{'max':>8}{'peak GiB':>10}")
        for name, med, lo, hi, peak in rows:
            print(f"{name:<16}{med:>10.1f}{lo:>8.1f}{hi:>8.1f}{peak:>10.2f}")


if __name__ == "__main__":
    main()
