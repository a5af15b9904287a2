"""Micro-benchmark behind BENCHMARKS.md "GPU speed": VAE encoder forward+backward (4x512^2, fp16)
eager, with cudnn.benchmark and torch.compile; the SD-2.1-base UNet as a CUDA graph (GraphedCall)
and torch.compile'd inside the graph, at batch 4 and 16 (compilation time printed). Run from the
repository root on a CUDA machine:

    python benchmarks/calls_compile.py
"""
# Kept as run (the timer now shared in cuda_timing.py) for the figures (a scratch script: terse on purpose).
# ruff: noqa: E401, E402, E701, E702, F821
import sys, time, torch
sys.path.insert(0, "tests")
from tiny_sd import sd21_base_configs
from diffusers import UNet2DConditionModel, AutoencoderKL
from ism3d.priors.cuda_graph import GraphedCall
dev = torch.device("cuda")
cfgs = sd21_base_configs()
from cuda_timing import median_ms as timeit
with torch.device("cuda"):
    vae = AutoencoderKL.from_config(cfgs["vae"]).to(torch.float16).eval().requires_grad_(False)
def enc(x):
    return vae.quant_conv(vae.encoder(x))
x = torch.randn(4, 3, 512, 512, device=dev, dtype=torch.float16, requires_grad=True)
def fb(f):
    def g():
        y = f(x); y.float().square().sum().backward(); x.grad = None
    return g
print(f"vae eager fwd+bwd {timeit(fb(enc)):.1f} ms", flush=True)
torch.backends.cudnn.benchmark = True
print(f"vae eager cudnn.benchmark fwd+bwd {timeit(fb(enc)):.1f} ms", flush=True)
for mode in ("default",):
    torch._dynamo.reset()
    c = torch.compile(enc, mode=mode)
    t0 = time.time(); fb(c)(); torch.cuda.synchronize(); ct = time.time() - t0
    print(f"vae compile {mode}: compile {ct:.0f} s, fwd+bwd {timeit(fb(c)):.1f} ms", flush=True)
    if ct > 150: break
del vae; torch.cuda.empty_cache()
with torch.device("cuda"):
    unet = UNet2DConditionModel.from_config(cfgs["unet"]).to(torch.float16).eval().requires_grad_(False)
f = lambda x, t, e: unet(x, t, encoder_hidden_states=e).sample
torch._dynamo.reset()
fc = torch.compile(f, mode="default")
for B in (4, 16):
    xx = torch.randn(B, 4, 64, 64, device=dev, dtype=torch.float16)
    t = torch.full((B,), 500, device=dev, dtype=torch.long)
    e = torch.randn(B, 77, 1024, device=dev, dtype=torch.float16)
    g = GraphedCall(f); print(f"unet B={B} graph (cudnn.benchmark) {timeit(lambda: g(xx, t, e)):.1f} ms", flush=True)
    t0 = time.time()
    with torch.no_grad(): fc(xx, t, e)
    torch.cuda.synchronize(); ct = time.time() - t0
    gc = GraphedCall(fc); print(f"unet B={B} compiled+graph: compile {ct:.0f} s, {timeit(lambda: gc(xx, t, e)):.1f} ms", flush=True)
