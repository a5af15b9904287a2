"""Micro-benchmark behind BENCHMARKS.md "GPU speed" (session 3): the VAE encoder forward+backward at
4x512^2 with diffusers' SDPA attention vs ours (ism3d/priors/vae_attention.py), eager, compiled and
compiled channels_last; fp16 gradient agreement of the two. Run from the repository root on CUDA:

    python benchmarks/calls_vae_attention.py
"""
# Kept as run (the timer now shared in cuda_timing.py) (a scratch script: terse on purpose).
# ruff: noqa: E401, E402, E701, E702, F821
import sys, time, torch
sys.path[:0] = ["tests", "."]
from tiny_sd import sd21_base_configs
from diffusers import AutoencoderKL
from ism3d.priors.vae_attention import use_matmul_attention
dev = torch.device("cuda")
from cuda_timing import median_ms as timeit
with torch.device("cuda"):
    vae = AutoencoderKL.from_config(sd21_base_configs()["vae"]).to(torch.float16).eval().requires_grad_(False)
def enc(x): return vae.quant_conv(vae.encoder(x))
x = torch.randn(4, 3, 512, 512, device=dev, dtype=torch.float16, requires_grad=True)
w = torch.randn(4, 8, 64, 64, device=dev)
def fb(f):
    def g():
        y = f(x); (y.float() * w).sum().backward(); x.grad = None
    return g
def grad(f):
    x.grad = None; (f(x).float() * w).sum().backward(); g = x.grad.float().clone(); x.grad = None; return g
g_sdpa = grad(enc)
torch.cuda.reset_peak_memory_stats(); t = timeit(fb(enc)); m0 = torch.cuda.max_memory_allocated() / 2**30
print(f"sdpa   eager fwd+bwd {t:.1f} ms peak {m0:.2f} GiB", flush=True)
print("layers", use_matmul_attention(vae.encoder))
g_mm = grad(enc)
torch.cuda.reset_peak_memory_stats(); t = timeit(fb(enc)); m1 = torch.cuda.max_memory_allocated() / 2**30
print(f"matmul eager fwd+bwd {t:.1f} ms peak {m1:.2f} GiB; fwd {timeit(lambda: enc(x)):.1f} ms", flush=True)
print("fp16 grad rel diff matmul vs sdpa", ((g_mm - g_sdpa).norm() / g_sdpa.norm()).item(), flush=True)
c = torch.compile(enc, dynamic=False)
t0 = time.time(); fb(c)(); torch.cuda.synchronize(); print(f"compile {time.time()-t0:.0f} s")
print(f"matmul compiled fwd+bwd {timeit(fb(c)):.1f} ms", flush=True)
vae.to(memory_format=torch.channels_last); torch._dynamo.reset()
c2 = torch.compile(lambda z: enc(z.contiguous(memory_format=torch.channels_last)), dynamic=False)
t0 = time.time(); fb(c2)(); torch.cuda.synchronize(); print(f"compile cl {time.time()-t0:.0f} s")
print(f"matmul compiled channels_last fwd+bwd {timeit(fb(c2)):.1f} ms", flush=True)
