"""Micro-benchmark behind BENCHMARKS.md "GPU speed": VAE encoder forward+backward (4 images, fp16)
at 512^2 and 256^2 eager, and channels_last + torch.compile at 512^2. Run from the repository
root on a CUDA machine:

    python benchmarks/calls_vae.py
"""
# Kept as run (the timer now shared in cuda_timing.py) for the figures (a scratch script: terse on purpose).
# ruff: noqa: E401, E402, E701, E702, F821
import sys, time, torch
sys.path.insert(0, "tests")
from tiny_sd import sd21_base_configs
from diffusers import AutoencoderKL
dev = torch.device("cuda")
from cuda_timing import median_ms as timeit
with torch.device("cuda"):
    vae = AutoencoderKL.from_config(sd21_base_configs()["vae"]).to(torch.float16).eval().requires_grad_(False)
def enc(x):
    return vae.quant_conv(vae.encoder(x))
for res in (512, 256):
    x = torch.randn(4, 3, res, res, device=dev, dtype=torch.float16, requires_grad=True)
    def fb(f):
        def g():
            y = f(x); y.float().square().sum().backward(); x.grad = None
        return g
    print(f"vae {res} eager fwd+bwd {timeit(fb(enc)):.1f} ms", flush=True)
vae = vae.to(memory_format=torch.channels_last)
x = torch.randn(4, 3, 512, 512, device=dev, dtype=torch.float16).to(memory_format=torch.channels_last).requires_grad_(True)
torch._dynamo.reset()
c = torch.compile(enc)
t0 = time.time(); y = c(x); y.float().sum().backward(); torch.cuda.synchronize()
print(f"vae channels_last compile {time.time()-t0:.0f} s", flush=True)
def g():
    y = c(x); y.float().square().sum().backward(); x.grad = None
print(f"vae channels_last compiled fwd+bwd {timeit(g):.1f} ms", flush=True)
