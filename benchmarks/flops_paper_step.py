"""FLOPs of the SD-2.1-base UNet per sample and of the VAE encoder forward and backward (input
gradient only) per image, counted with torch.utils.flop_counter on meta tensors (no weights, no
GPU, seconds on a CPU); behind the "What limits it" paragraph of BENCHMARKS.md "GPU speed".

    python benchmarks/flops_paper_step.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_sd import sd21_base_configs  # noqa: E402


def main() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfg = sd21_base_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"]).requires_grad_(False)
        vae = AutoencoderKL.from_config(cfg["vae"]).requires_grad_(False)
    for res in (64, 32):
        x, e = torch.randn(1, 4, res, res, device="meta"), torch.randn(1, 77, 1024, device="meta")
        with FlopCounterMode(display=False) as fc:
            unet(x, torch.tensor([500], device="meta"), encoder_hidden_states=e)
        print(f"UNet, one sample at {res}x{res} latents: {fc.get_total_flops() / 1e9:.1f} GFLOP")
    for res in (512, 256):
        x = torch.randn(1, 3, res, res, device="meta", requires_grad=True)
        with FlopCounterMode(display=False) as fc:
            y = vae.quant_conv(vae.encoder(x))
        fwd = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            y.sum().backward()
        print(f"VAE encoder, one {res}x{res} image: forward {fwd / 1e9:.1f} GFLOP, "
              f"backward {fc.get_total_flops() / 1e9:.1f} GFLOP")


if __name__ == "__main__":
    main()
