"""Micro-benchmark behind BENCHMARKS.md "GPU speed" (session 3): the VAE encoder forward+backward at
4x512^2 with diffusers' SDPA attention vs ours (ism3d/priors/vae_attention.py), eager, compiled and
compiled channels_last; fp16 gradient agreement of the two. Run from the repository root on CUDA:

    python benchmarks/calls_vae_attention.py
"""
# Kept as run (the timer now shared in cuda_timing.py) (a scratch script: terse on purpose).
# ruff: noqa: E401, E402, E701, E702, F821
import sys, time, torch
sys.path[:0] = ["tests", "."]
from ism3d.priors.vae_attention import use_matmul_attention
from cuda_timing import median_ms as timeit
from vae_case import vae_case
case = vae_case()   # SD-2.1-base VAE, fp16, 4 x 512^2 on CUDA
vae, x, enc, fb, grad = case.vae, case.x, case.enc, case.fwd_bwd, case.input_grad
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
