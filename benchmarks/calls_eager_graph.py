"""Micro-benchmark behind BENCHMARKS.md "GPU speed": SD-2.1-base UNet (random weights, built on
the GPU from configs) eager vs CUDA graph at batch 4/8/16 in fp16, fp16 channels_last and bf16;
VAE encoder forward+backward at 4x512^2 eager vs `make_graphed_callables`, contiguous and
channels_last. Run from the repository root on a CUDA machine:

    python benchmarks/calls_eager_graph.py
"""
# Kept as run (the timer now shared in cuda_timing.py) for the figures (a scratch script: terse on purpose).
# ruff: noqa: E401, E402, E701, E702, F821
import sys, time, torch
sys.path.insert(0, "tests")
from tiny_sd import sd21_base_configs
from diffusers import UNet2DConditionModel, AutoencoderKL
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
dev = torch.device("cuda")
cfgs = sd21_base_configs()

from functools import partial
from cuda_timing import median_ms
timeit = partial(median_ms, n=20)

def graph(fn, static_in):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): fn(*static_in)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn(*static_in)
    return g, out

t0 = time.time()
with torch.device("cuda"):
    unet = UNet2DConditionModel.from_config(cfgs["unet"]).eval().requires_grad_(False)
print(f"unet built in {time.time()-t0:.1f} s", flush=True)
for dtype, cl in ((torch.float16, False), (torch.float16, True), (torch.bfloat16, False)):
    unet = unet.to(dtype=dtype, memory_format=torch.channels_last if cl else torch.contiguous_format)
    for B in (4, 8, 16):
        x = torch.randn(B, 4, 64, 64, device=dev, dtype=dtype)
        t = torch.full((B,), 500, device=dev, dtype=torch.long)
        e = torch.randn(B, 77, 1024, device=dev, dtype=dtype)
        f = lambda x, t, e: unet(x, t, encoder_hidden_states=e).sample
        with torch.no_grad():
            me = timeit(lambda: f(x, t, e))
            g, _ = graph(f, (x, t, e))
            mg = timeit(g.replay)
        print(f"unet {str(dtype)[6:]} cl={cl} B={B}: eager {me:.1f} ms  graph {mg:.1f} ms", flush=True)
        del g

del unet; torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
with torch.device("cuda"):
    vae = AutoencoderKL.from_config(cfgs["vae"]).to(torch.float16).eval().requires_grad_(False)
def enc(x):
    h = vae.quant_conv(vae.encoder(x)) if vae.quant_conv is not None else vae.encoder(x)
    return h
for cl in (False, True):
    if cl: vae = vae.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 512, 512, device=dev, dtype=torch.float16, requires_grad=True)
    if cl: x = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    def fb():
        y = enc(x); y.float().square().sum().backward(); x.grad = None
    def fo():
        with torch.no_grad(): enc(x)
    print(f"vae enc cl={cl}: fwd {timeit(fo):.1f} ms  fwd+bwd {timeit(fb):.1f} ms", flush=True)
    ge = torch.cuda.make_graphed_callables(enc, (x,))
    def gfb():
        y = ge(x); y.float().square().sum().backward(); x.grad = None
    print(f"vae enc cl={cl} graphed fwd+bwd {timeit(gfb):.1f} ms  peak {torch.cuda.max_memory_allocated()/2**30:.2f} GiB", flush=True)
