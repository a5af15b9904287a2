"""CPU micro-benchmark behind BENCHMARKS.md "ism3d generate on the CPU" (session 5): the shipped
ToyWorld UNet per call at batch 4, 8 and 16, plain layout vs channels_last weights vs channels_last
weights and input, the three interleaved (the host's speed drifts), min / median of 15 calls.

    python benchmarks/calls_pixel_channels_last.py
"""
from __future__ import annotations

import copy
import time

import torch

from ism3d.priors.pixel import PixelPrior


def main() -> None:
    p = PixelPrior.from_pretrained("ism3d/assets/toyworld")
    cl = p.unet                                                   # the CPU prior is channels_last
    plain = copy.deepcopy(cl).to(memory_format=torch.contiguous_format)
    emb = p.embed(["a red cube, front view"])
    for B in (4, 8, 16):
        x = torch.randn(B, 3, 32, 32)
        t = torch.full((B,), 500)
        e = emb.expand(B, -1, -1).contiguous()
        cases = {"plain": (plain, x), "CL weights": (cl, x),
                 "CL weights+input": (cl, x.to(memory_format=torch.channels_last))}
        ts: dict[str, list[float]] = {k: [] for k in cases}
        with torch.no_grad():
            for u, xi in cases.values():
                u(xi, t, encoder_hidden_states=e)
            for r in range(15):
                order = list(cases.items()) if r % 2 else list(cases.items())[::-1]
                for k, (u, xi) in order:
                    t0 = time.perf_counter()
                    u(xi, t, encoder_hidden_states=e)
                    ts[k].append(1000 * (time.perf_counter() - t0))
        print(f"batch {B:2d}: " + "  ".join(f"{k} {min(v):.0f}/{sorted(v)[7]:.0f} ms" for k, v in ts.items()))


if __name__ == "__main__":
    main()
