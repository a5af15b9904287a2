"""Profile behind BENCHMARKS.md "GPU speed" (session 3): matmul peak, one 3x3 conv forward vs
dgrad (NCHW and channels_last), GroupNorm+SiLU, the SD-2.1 VAE encoder forward+backward at 4x512^2
with a CUDA kernel table, conv dgrad written as a forward conv, and the UNet at batch 16 under each
SDPA backend. Output as run: docs/benchmarks/profile_vae_unet_h100.txt.

    python benchmarks/profile_vae_unet.py
"""
# Kept as run (the timer now shared in cuda_timing.py) (a scratch script: terse on purpose).
# ruff: noqa: E401, E402, E701, E702, F821
import sys, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, "tests")
from tiny_sd import sd21_base_configs
from diffusers import AutoencoderKL, UNet2DConditionModel
dev = torch.device("cuda")
print(torch.__version__, torch.cuda.get_device_name(), torch.backends.cudnn.version(), flush=True)
from cuda_timing import median_ms as timeit
# 1. matmul peak
A = torch.randn(8192, 8192, device=dev, dtype=torch.float16); B = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
t = timeit(lambda: A @ B); print(f"matmul 8192^3 fp16 {t:.2f} ms = {2*8192**3/t/1e9:.0f} TFLOP/s", flush=True)
del A, B
# 2. single conv 128->128 3x3 at 4x512^2: fwd, autograd dgrad, dgrad-as-forward
for cl in (False, True):
    x = torch.randn(4, 128, 512, 512, device=dev, dtype=torch.float16)
    w = torch.randn(128, 128, 3, 3, device=dev, dtype=torch.float16) * 0.03
    if cl: x = x.to(memory_format=torch.channels_last); w = w.to(memory_format=torch.channels_last)
    wt = w.flip(2, 3).transpose(0, 1).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    g = torch.randn_like(x)
    fl = 2 * 4 * 512 * 512 * 128 * 128 * 9
    tf = timeit(lambda: F.conv2d(x, w, padding=1))
    td = timeit(lambda: torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]))
    tt = timeit(lambda: F.conv2d(g, wt, padding=1))
    ref = torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]
    err = (ref.float() - F.conv2d(g, wt, padding=1).float()).abs().max().item()
    print(f"conv128 cl={cl}: fwd {tf:.2f} ms ({fl/tf/1e9:.0f} TF/s), dgrad {td:.2f} ms ({fl/td/1e9:.0f}), dgrad-as-fwd {tt:.2f} ms, maxdiff {err:.3g}", flush=True)
    del x, g
# 3. GroupNorm + SiLU fwd/bwd at 4x128x512^2
x = torch.randn(4, 128, 512, 512, device=dev, dtype=torch.float16, requires_grad=True)
gn = nn.GroupNorm(32, 128).to(dev, torch.float16).requires_grad_(False)
g = torch.randn_like(x)
def gnfb():
    y = F.silu(gn(x)); y.backward(g); x.grad = None
print(f"GN+SiLU fwd {timeit(lambda: F.silu(gn(x))):.2f} ms, fwd+bwd {timeit(gnfb):.2f} ms", flush=True)
del x, g
# 4. VAE encoder profile
with torch.device("cuda"):
    vae = AutoencoderKL.from_config(sd21_base_configs()["vae"]).to(torch.float16).eval().requires_grad_(False)
def enc(x): return vae.quant_conv(vae.encoder(x))
x = torch.randn(4, 3, 512, 512, device=dev, dtype=torch.float16, requires_grad=True)
def fb():
    y = enc(x); y.float().square().sum().backward(); x.grad = None
print(f"vae eager fwd {timeit(lambda: enc(x)):.1f} fwd+bwd {timeit(fb):.1f} ms", flush=True)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(3): fb()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90), flush=True)
# 5. dgrad-as-forward convs in the VAE encoder
x.grad = None; y = enc(x); y.float().square().sum().backward(); g0 = x.grad.clone(); x.grad = None
class ConvT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, wt, pad):
        ctx.save_for_backward(wt); ctx.pad = pad
        return F.conv2d(x, w, b, padding=pad)
    @staticmethod
    def backward(ctx, g):
        (wt,) = ctx.saved_tensors
        return F.conv2d(g, wt, None, padding=wt.shape[-1] - 1 - ctx.pad), None, None, None, None
n = 0
for m in vae.encoder.modules():
    if isinstance(m, nn.Conv2d) and m.stride == (1, 1) and m.groups == 1 and m.padding_mode == "zeros":
        m._wt = m.weight.flip(2, 3).transpose(0, 1).contiguous()
        m.forward = (lambda mm: (lambda inp: ConvT.apply(inp, mm.weight, mm.bias, mm._wt, mm.padding[0])))(m); n += 1
x.grad = None; y = enc(x); y.float().square().sum().backward(); g1 = x.grad.clone(); x.grad = None
print("grad rel diff", ((g1.float()-g0.float()).norm()/g0.float().norm()).item())
print(f"patched {n} convs; vae dgrad-as-fwd fwd+bwd {timeit(fb):.1f} ms", flush=True)
# 6. UNet B16 SDPA backends (eager)
from torch.nn.attention import sdpa_kernel, SDPBackend
with torch.device("cuda"):
    unet = UNet2DConditionModel.from_config(sd21_base_configs()["unet"]).to(torch.float16).eval().requires_grad_(False)
z = torch.randn(16, 4, 64, 64, device=dev, dtype=torch.float16); e = torch.randn(16, 77, 1024, device=dev, dtype=torch.float16); tt = torch.full((16,), 500, device=dev)
for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
    try:
        with sdpa_kernel([be]), torch.no_grad():
            print(f"unet B16 {be}: {timeit(lambda: unet(z, tt, encoder_hidden_states=e), n=8):.1f} ms", flush=True)
    except Exception as ex: print(be, "failed", repr(ex)[:200])
with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(2): unet(z, tt, encoder_hidden_states=e)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=90), flush=True)
