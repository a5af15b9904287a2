"""Micro-benchmark behind BENCHMARKS.md "GPU speed" (session 3): the SD-2.1-base UNet at batch 16 as a
CUDA graph (GraphedCall), eager and torch.compile'd inside the graph, with NCHW vs channels_last
weights and input. Run from the repository root on CUDA (argument: the batch):

    python benchmarks/calls_unet_channels_last.py 16
"""
# Kept as run (the timer now shared in cuda_timing.py) (a scratch script: terse on purpose).
# ruff: noqa: E401, E402, E701, E702, E731
import sys, time, torch
sys.path[:0] = ["tests", "."]
from tiny_sd import sd21_base_configs
from diffusers import UNet2DConditionModel
from ism3d.priors.cuda_graph import GraphedCall
dev = torch.device("cuda")
from cuda_timing import median_ms as timeit
with torch.device("cuda"):
    unet = UNet2DConditionModel.from_config(sd21_base_configs()["unet"]).to(torch.float16).eval().requires_grad_(False)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 16
z = torch.randn(B, 4, 64, 64, device=dev, dtype=torch.float16); e = torch.randn(B, 77, 1024, device=dev, dtype=torch.float16); t = torch.full((B,), 500, device=dev)
def fwd(x, tt, ee): return unet(x, tt, encoder_hidden_states=ee).sample
for cl in (False, True):
    if cl:
        unet.to(memory_format=torch.channels_last)
    fwd_in = (lambda x, tt, ee: fwd(x.contiguous(memory_format=torch.channels_last), tt, ee)) if cl else fwd
    with torch.no_grad():
        g = GraphedCall(fwd_in)
        print(f"B{B} cl={cl} graph {timeit(lambda: g(z, t, e)):.1f} ms", flush=True)
        torch._dynamo.reset()
        c = torch.compile(fwd_in, dynamic=False)
        t0 = time.time(); c(z, t, e); torch.cuda.synchronize(); ct = time.time() - t0
        gc = GraphedCall(c)
        print(f"B{B} cl={cl} compiled graph {timeit(lambda: gc(z, t, e)):.1f} ms (compile {ct:.0f} s)", flush=True)
