"""Micro-benchmark behind BENCHMARKS.md "GPU speed" (session 5): does inductor's autotuning
(`torch.compile(mode="max-autotune-no-cudagraphs")`, which times Triton convolution/GEMM templates
against cuDNN/cuBLAS for every shape) beat the default compile on the two networks of a paper step?
The VAE encoder forward+backward at 4x512^2 (our matmul attention, as the trainer runs it) and the
SD-2.1-base UNet forward at batch 4 and 16 (64^2 latents), fp16, random weights. Compilation time
printed. Run from the repository root on a CUDA machine:

    python benchmarks/calls_autotune.py [--skip-unet] [--default-only]
"""
# A scratch script (terse on purpose), like the other calls_*.py.
# ruff: noqa: E401, E402, E701, E702
import sys, time, torch
sys.path[:0] = ["tests", "benchmarks", "."]
from tiny_sd import sd21_base_configs
from diffusers import UNet2DConditionModel
from ism3d.priors.vae_attention import use_matmul_attention
from cuda_timing import median_ms as timeit
from vae_case import vae_case
dev = torch.device("cuda"); cfgs = sd21_base_configs()
case = vae_case()   # SD-2.1-base VAE, fp16, 4 x 512^2 on CUDA
vae, x, enc, fb, grad = case.vae, case.x, case.enc, case.fwd_bwd, case.input_grad
use_matmul_attention(vae.encoder)
g_ref = grad(enc)
print(f"vae eager fwd+bwd {timeit(fb(enc)):.1f} ms", flush=True)
MODES = ("default",) if "--default-only" in sys.argv else ("default", "max-autotune-no-cudagraphs")
for mode in MODES:
    torch._dynamo.reset()
    c = torch.compile(enc, dynamic=False, mode=mode)
    t0 = time.time(); fb(c)(); torch.cuda.synchronize(); ct = time.time() - t0
    rel = ((grad(c) - g_ref).norm() / g_ref.norm()).item()
    print(f"vae {mode} fwd+bwd {timeit(fb(c)):.1f} ms fwd {timeit(lambda: c(x)):.1f} ms "
          f"(compile {ct:.0f} s, grad rel diff vs eager {rel:.1e})", flush=True)
if "--skip-unet" in sys.argv: sys.exit(0)
vae.to("cpu"); torch.cuda.empty_cache()
with torch.device("cuda"):
    unet = UNet2DConditionModel.from_config(cfgs["unet"]).to(torch.float16).eval().requires_grad_(False)
for B in (4, 16):
    z = torch.randn(B, 4, 64, 64, device=dev, dtype=torch.float16)
    t = torch.full((B,), 500, device=dev); e = torch.randn(B, 77, 1024, device=dev, dtype=torch.float16)
    f = lambda u: (lambda: u(z, t, encoder_hidden_states=e).sample)
    with torch.no_grad():
        print(f"unet B={B} eager {timeit(f(unet)):.1f} ms", flush=True)
        for mode in MODES:
            torch._dynamo.reset()
            c = torch.compile(unet, dynamic=False, mode=mode)
            t0 = time.time(); f(c)(); torch.cuda.synchronize(); ct = time.time() - t0
            print(f"unet B={B} {mode} {timeit(f(c)):.1f} ms (compile {ct:.0f} s)", flush=True)
