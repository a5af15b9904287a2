"""Where does a training step's time go, below the trainer? The probes behind the GPU-speed
analysis (docs/experiments/gpu-speed.md), one subcommand each:

    python benchmarks/diagnostics.py flops                      # CPU, seconds
    python benchmarks/diagnostics.py calls [--compile] [--kernels]  # CUDA; --tiny: CPU smoke run
    python benchmarks/diagnostics.py trace --out /tmp/trace     # CUDA; --tiny: a CPU smoke run
    python benchmarks/diagnostics.py pixel-calls                # CPU, the shipped ToyWorld UNet
    python benchmarks/diagnostics.py group-norm                 # CUDA; our NHWC GroupNorm kernels
    python benchmarks/diagnostics.py kernels [--json F]         # any machine: those kernels for sm_90

flops        What can a `paper` step cost at least? FLOPs of the SD-2.1-base UNet per sample
             (64x64 and 32x32 latents) and of the VAE encoder forward and backward (input gradient
             only) per 512x512 / 256x256 image, counted with torch.utils.flop_counter on meta
             tensors (no weights, no GPU). Divide by the GPU's GEMM rate (`calls` prints it) for
             the floor of a step.
calls        How fast are the two networks per call, and what do graphs / compile / our matmul
             attention buy? The GPU's fp16 GEMM rate (8192^3 matmul); the SD-2.1-base UNet at
             batches 4, 8, 16 (64^2 latents, fp16): eager, as a CUDA graph (`GraphedCall`, what
             the trainer replays) and, with --compile, torch.compile'd inside the graph; the VAE
             encoder forward+backward at 4 x 512^2 (`quant_conv(encoder(x))`, as the prior calls
             it) with diffusers' SDPA attention and with ours (`use_matmul_attention`), eager and,
             with --compile, compiled, plus the fp16 gradient difference of the two attentions;
             with --kernels, the eager encoder's forward+backward kernel table with each
             attention (torch.profiler; SDPA's memory-efficient backward was the 17 ms kernel).
             With --channels-last, both networks again as `prior.channels_last` runs them
             (NHWC tensors, our fused GroupNorm kernels), and that encoder's input gradient
             against the NCHW one. Median of 15 timed calls after 3 warm-ups (CUDA events).
             Random weights of the exact architecture (speed does not depend on weight values).
trace        Where do the gaps in a real step lie? A torch.profiler trace (Chrome format,
             OUT/trace.json) of steps 7-9 of the `paper` preset in the real trainer, random
             SD-2.1-base weights, and each step's wall time; open it in chrome://tracing or
             Perfetto and sum the idle gaps of the CUDA stream.
pixel-calls  How long does one ToyWorld UNet call take on this CPU, and does channels_last still
             help? The shipped prior at batch 4, 8, 16: plain layout vs channels_last weights vs
             channels_last weights and input (what `PixelPrior` runs on the CPU), interleaved
             because a shared host's speed drifts; min / median of 15 calls.

group-norm   What do our NHWC GroupNorm(+SiLU) kernels cost against PyTorch's GroupNorm + SiLU,
             on NCHW and on channels-last tensors? Each shape of the SD UNet (batch 8) and VAE
             encoder (4 x 512^2), fp16: forward, and forward + backward (input gradient), with
             the effective bandwidth of ours (bytes it must move / time).

kernels      Do those kernels compile for Hopper, and with how many registers, how much shared
             memory and any spills? Each kernel configuration the launcher picks for the shapes
             of `group-norm` (fp16, bf16) is compiled for sm_90 by Triton's own compiler, no GPU
             needed, and read back with the cuobjdump Triton ships (`-res-usage`).
             tests/test_group_norm.py runs it: no spills, no stack.

`--tiny` runs `calls` and `trace` on the tiny random SD of the tests (tests/tiny_sd.py) on the
CPU: the same code path, meaningless times; it checks the script still runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from ism3d.priors.channels_last import use_channels_last  # noqa: E402


def median_ms(fn: Callable[[], object], device: torch.device, n: int = 15, warm: int = 3) -> float:
    """Call `fn` `warm` times, then time `n` calls (CUDA events on CUDA); the median, in ms."""
    for _ in range(warm):
        fn()
    if device.type != "cuda":
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(1000 * (time.perf_counter() - t0))
        return statistics.median(ts)
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def sd_configs(tiny: bool) -> dict[str, dict]:
    from tiny_sd import sd21_base_configs, tiny_sd_configs
    return tiny_sd_configs() if tiny else sd21_base_configs()


# --------------------------------------------------------------------------------------------
# flops
# --------------------------------------------------------------------------------------------
def cmd_flops(args) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = sd_configs(args.tiny)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"]).requires_grad_(False)
        vae = AutoencoderKL.from_config(cfg["vae"]).requires_grad_(False)
    dim = cfg["unet"]["cross_attention_dim"]
    for res in (64, 32):
        x, e = torch.randn(1, 4, res, res, device="meta"), torch.randn(1, 77, dim, device="meta")
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


# --------------------------------------------------------------------------------------------
# calls
# --------------------------------------------------------------------------------------------
def cmd_calls(args) -> None:
    from diffusers import UNet2DConditionModel

    dev = torch.device("cpu" if args.tiny else "cuda")
    dt = torch.float32 if args.tiny else torch.float16
    cfg = sd_configs(args.tiny)
    time_ms = lambda fn: median_ms(fn, dev, n=3 if args.tiny else 15)  # noqa: E731
    size = 64 if args.tiny else args.size                     # image size; latents are size / 8
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}",
          flush=True)
    # 1. the GPU's GEMM rate
    if dev.type == "cuda":
        a = torch.randn(8192, 8192, device=dev, dtype=dt)
        t = time_ms(lambda: a @ a)
        print(f"matmul 8192^3 fp16: {t:.2f} ms = {2 * 8192 ** 3 / t / 1e9:.0f} TFLOP/s", flush=True)
        del a
    # 2. the UNet per call
    with torch.device(dev):
        unet = UNet2DConditionModel.from_config(cfg["unet"]).to(dt).eval().requires_grad_(False)
    dim, lat = cfg["unet"]["cross_attention_dim"], size // 8
    fwd = lambda x, t, e: unet(x, t, encoder_hidden_states=e).sample  # noqa: E731
    for layout in ["NCHW"] + (["NHWC"] if args.channels_last else []):
        if layout == "NHWC":
            use_channels_last(unet)
        unet_calls(args, fwd, dev, dt, dim, lat, time_ms, layout)
    del unet, fwd
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    vae_calls(args, cfg, dev, dt, size, time_ms)


def unet_calls(args, fwd, dev, dt, dim: int, lat: int, time_ms, layout: str) -> None:
    """`calls` 2: the UNet per call at each batch: eager, graphed, compiled + graphed."""
    from ism3d.priors.cuda_graph import GraphedCall

    compiled = torch.compile(fwd, dynamic=False) if args.compile else None
    mf = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    for B in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(B, 4, lat, lat, device=dev, dtype=dt).contiguous(memory_format=mf)
        t = torch.full((B,), 500, device=dev, dtype=torch.long)
        e = torch.randn(B, 77, dim, device=dev, dtype=dt)
        with torch.no_grad():
            line = f"UNet {layout} batch {B:2d}: eager {time_ms(lambda: fwd(x, t, e)):.1f} ms"
            if dev.type == "cuda":
                g = GraphedCall(fwd)
                line += f", CUDA graph {time_ms(lambda: g(x, t, e)):.1f} ms"
            if compiled is not None:
                t0 = time.perf_counter()
                compiled(x, t, e)
                ct = time.perf_counter() - t0
                gc = GraphedCall(compiled) if dev.type == "cuda" else compiled
                line += f", compiled{' + graph' if dev.type == 'cuda' else ''} " \
                        f"{time_ms(lambda: gc(x, t, e)):.1f} ms (compile {ct:.0f} s)"
        print(line, flush=True)


def vae_calls(args, cfg: dict, dev, dt, size: int, time_ms) -> None:
    """`calls` 3: the VAE encoder forward + backward, SDPA vs matmul attention (vs NHWC)."""
    from diffusers import AutoencoderKL

    from ism3d.priors.vae_attention import use_matmul_attention

    with torch.device(dev):
        vae = AutoencoderKL.from_config(cfg["vae"]).to(dt).eval().requires_grad_(False)
    x = torch.randn(4, 3, size, size, device=dev, dtype=dt, requires_grad=True)
    w = torch.randn(4, 8, size // 8, size // 8, device=dev)        # fixed weights of the moments
    enc = lambda z: vae.quant_conv(vae.encoder(z))  # noqa: E731

    def fwd_bwd(f):
        def call():
            (f(x).float() * w).sum().backward()
            x.grad = None
        return call

    def input_grad(f) -> torch.Tensor:
        x.grad = None
        (f(x).float() * w).sum().backward()
        grad, x.grad = x.grad.float().clone(), None
        return grad

    def kernel_table(what: str) -> None:
        """--kernels: the eager encoder's forward+backward kernels, most time first."""
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CUDA] if dev.type == "cuda" else [ProfilerActivity.CPU]
        with profile(activities=acts) as prof:
            for _ in range(3):
                fwd_bwd(enc)()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        print(f"kernels, VAE encoder fwd+bwd x3, {what}:")
        print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=90))

    g_sdpa = input_grad(enc)
    print(f"VAE encoder 4x{size}^2 fwd+bwd, SDPA attention: eager {time_ms(fwd_bwd(enc)):.1f} ms",
          flush=True)
    if args.kernels:
        kernel_table("SDPA attention")
    layers = use_matmul_attention(vae.encoder)
    g_mm = input_grad(enc)
    rel = ((g_mm - g_sdpa).norm() / g_sdpa.norm()).item()
    line = (f"VAE encoder 4x{size}^2 fwd+bwd, matmul attention ({layers} layers): eager "
            f"{time_ms(fwd_bwd(enc)):.1f} ms, fwd {time_ms(lambda: enc(x)):.1f} ms; input gradient "
            f"vs SDPA: relative difference {rel:.1e}")
    def compiled() -> str:
        """--compile: the encoder compiled, forward+backward, and its compilation time."""
        if not args.compile:
            return ""
        c = torch.compile(enc, dynamic=False)
        t0 = time.perf_counter()
        fwd_bwd(c)()
        ct = time.perf_counter() - t0
        return f"; compiled {time_ms(fwd_bwd(c)):.1f} ms (compile {ct:.0f} s)"

    print(line + compiled(), flush=True)
    if args.kernels:
        kernel_table("matmul attention")
    if args.channels_last:
        use_channels_last(vae.encoder)
        vae.quant_conv.to(memory_format=torch.channels_last)
        x.data = x.data.contiguous(memory_format=torch.channels_last)
        g_cl = input_grad(enc)
        rel = ((g_cl - g_mm).norm() / g_mm.norm()).item()
        line = (f"VAE encoder 4x{size}^2 fwd+bwd, NHWC + fused GroupNorm: eager {time_ms(fwd_bwd(enc)):.1f} ms, "
                f"fwd {time_ms(lambda: enc(x)):.1f} ms; input gradient vs NCHW: relative difference {rel:.1e}")
        print(line + compiled(), flush=True)
        if args.kernels:
            kernel_table("NHWC + fused GroupNorm")


# --------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------
def cmd_trace(args) -> None:
    from torch.profiler import ProfilerActivity, profile, schedule

    from ism3d import config as C
    from ism3d import train as T
    from ism3d.priors import load_prior
    from tiny_sd import make_sd21_random, make_tiny_sd

    dev = "cpu" if args.tiny else "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = (make_tiny_sd if args.tiny else make_sd21_random)(Path(tmp) / "sd")
        over = {"prior.name": str(model), "train.iters": 12, "train.checkpoint_every": 0,
                "train.preview_every": 0, "train.device": dev}
        if args.tiny:
            over.update({"render.width": 64, "render.height": 64, "init.num_points": 500})
        cfg = C.apply_overrides(C.preset_config("paper"), over)
        prior = load_prior(cfg.prior, torch.device(dev))
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        prof = profile(activities=acts, schedule=schedule(wait=6, warmup=2, active=3))
        walls, last = [], [time.perf_counter()]

        def step_done(_p) -> None:
            if dev == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            walls.append(round((now - last[0]) * 1e3, 1))
            last[0] = now
            prof.step()

        prof.start()
        T.train(cfg, "a DSLR photo of a hamburger", prior, Path(tmp) / "run", progress=False,
                callback=step_done)
        prof.stop()
    prof.export_chrome_trace(str(out / "trace.json"))
    print(json.dumps({"step_wall_ms": walls, "trace": str(out / "trace.json")}))


# --------------------------------------------------------------------------------------------
# pixel-calls
# --------------------------------------------------------------------------------------------
def cmd_pixel_calls(args) -> None:
    import copy

    from ism3d.priors.pixel import PixelPrior

    p = PixelPrior.from_pretrained(str(ROOT / "ism3d/assets/toyworld"))
    cl = p.unet                                                   # the CPU prior is channels_last
    plain = copy.deepcopy(cl).to(memory_format=torch.contiguous_format)
    emb = p.embed(["a red cube, front view"])
    for B in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(B, 3, p.image_size, p.image_size)
        t = torch.full((B,), 500)
        e = emb.expand(B, -1, -1).contiguous()
        cases = {"plain": (plain, x), "CL weights": (cl, x),
                 "CL weights+input": (cl, x.to(memory_format=torch.channels_last))}
        ts: dict[str, list[float]] = {k: [] for k in cases}
        with torch.no_grad():
            for u, xi in cases.values():
                u(xi, t, encoder_hidden_states=e)
            for r in range(args.repeats):
                order = list(cases.items()) if r % 2 else list(cases.items())[::-1]
                for k, (u, xi) in order:
                    t0 = time.perf_counter()
                    u(xi, t, encoder_hidden_states=e)
                    ts[k].append(1000 * (time.perf_counter() - t0))
        print(f"batch {B:2d}: " + "  ".join(f"{k} {min(v):.0f}/{statistics.median(v):.0f} ms"
                                            for k, v in ts.items()), flush=True)


# --------------------------------------------------------------------------------------------
# group-norm
# --------------------------------------------------------------------------------------------
GN_SHAPES = [(4, 128, 512, 512), (4, 256, 256, 256), (4, 512, 128, 128), (4, 512, 64, 64),
             (8, 320, 64, 64), (8, 640, 32, 32), (8, 1280, 16, 16), (8, 1280, 8, 8)]


def cmd_group_norm(args) -> None:
    from ism3d.kernels.group_norm import group_norm_nhwc, reference_group_norm

    dev, dt = torch.device("cuda"), torch.float16
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, fp16, GroupNorm(32) + SiLU; ms, "
          f"median of 15", flush=True)
    print(f"{'shape':<22}{'torch NCHW':>22}{'torch NHWC':>22}{'ours NHWC':>22}{'ours GB/s':>16}")
    for shape in GN_SHAPES:
        x = torch.randn(shape, device=dev, dtype=dt) * 2 + 1
        w, b = (torch.randn(shape[1], device=dev, dtype=dt) for _ in range(2))
        dy = torch.randn(shape, device=dev, dtype=dt)
        cells = []
        for name, xin, fn in (("torch NCHW", x, reference_group_norm),
                              ("torch NHWC", x.contiguous(memory_format=torch.channels_last), reference_group_norm),
                              ("ours NHWC", x.contiguous(memory_format=torch.channels_last), group_norm_nhwc)):
            xg = xin.detach().requires_grad_(True)
            with torch.no_grad():
                f = median_ms(lambda: fn(xin, w, b, 32, 1e-6, True), dev)
            fb = median_ms(lambda: torch.autograd.grad(fn(xg, w, b, 32, 1e-6, True), xg, dy), dev)
            cells.append((f, fb))
        nbytes = x.numel() * x.element_size()
        # ours must read x twice and write y (fwd); read x, dy twice each and write dx (bwd)
        gbs = (3 * nbytes / cells[2][0] + 8 * nbytes / cells[2][1]) / 2 / 1e6
        print(f"{'x'.join(map(str, shape)):<22}" + "".join(f"{f:>9.3f} / {fb:>9.3f}  " for f, fb in cells)
              + f"{gbs:>14.0f}", flush=True)


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
_DATA_PTRS = {"X", "Y", "DY", "DX", "W", "B"}                                     # the input's dtype
_STAT_PTRS = {"PCNT", "PSUM", "PM2", "MEAN", "RSTD", "PA", "PB", "SA", "SB", "M1", "M2"}  # fp32 (fp64)
_FLOAT_ARGS = {"eps", "total"}


def compile_report(dtypes=(torch.float16, torch.bfloat16), arch: int = 90) -> list[dict]:
    """Compile every kernel configuration of GN_SHAPES for `arch`; registers, shared, local
    (spill) and stack bytes of each, from cuobjdump -res-usage. Needs TRITON_INTERPRET unset."""
    import re
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ism3d.kernels import group_norm as gn

    tname = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    rows, seen = [], set()
    for dtype in dtypes:
        acc = "fp64" if dtype == torch.float64 else "fp32"
        for n, c, h, w in GN_SHAPES:
            for name, (const, warps) in gn.kernel_configs(h * w, c, 32, dtype, True).items():
                key = (name, dtype, repr(sorted(const.items())), warps)
                if key in seen:
                    continue
                seen.add(key)
                fn = gn.kernel(name)
                sig = {a: "constexpr" if a in const else f"*{tname[dtype]}" if a in _DATA_PTRS
                       else f"*{acc}" if a in _STAT_PTRS else "fp32" if a in _FLOAT_ARGS else "i32"
                       for a in fn.arg_names}
                k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                   target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(k.asm["cubin"])
                    f.flush()
                    out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True,
                                         text=True, check=True).stdout
                use = {m[0]: int(m[1]) for m in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out)}
                rows.append({"kernel": name, "dtype": tname[dtype], "shape": f"{n}x{c}x{h}x{w}",
                             "const": {k_: str(v) for k_, v in const.items()}, "num_warps": warps, **use})
    return rows


def cmd_kernels(args) -> None:
    import os
    import warnings

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("diagnostics.py kernels compiles real kernels: unset TRITON_INTERPRET")
    warnings.filterwarnings("ignore", module="triton")
    rows = compile_report()
    print(f"{'kernel':<12}{'dtype':>6}  {'first shape':<16}{'warps':>6}{'REG':>5}{'SHARED':>8}{'LOCAL':>6}"
          f"{'STACK':>6}  constexprs")
    for r in rows:
        const = ", ".join(f"{k}={v}" for k, v in r["const"].items() if k != "ACC")
        print(f"{r['kernel']:<12}{r['dtype']:>6}  {r['shape']:<16}{r['num_warps']:>6}{r['REG']:>5}"
              f"{r['SHARED']:>8}{r['LOCAL']:>6}{r['STACK']:>6}  {const}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flops", help="FLOPs of the UNet and the VAE encoder (CPU, meta tensors)")
    f.add_argument("--tiny", action="store_true", help="the tiny test SD instead of SD-2.1-base")
    c = sub.add_parser("calls", help="UNet and VAE encoder per call, GEMM rate (CUDA)")
    c.add_argument("--batches", default="4,8,16", help="UNet batches (4,8,16)")
    c.add_argument("--size", type=int, default=512, help="VAE input size (512; 256 for `fast`)")
    c.add_argument("--compile", action="store_true", help="also torch.compile (minutes the first time)")
    c.add_argument("--kernels", action="store_true", help="also the VAE encoder's kernel table")
    c.add_argument("--tiny", action="store_true", help="tiny SD on the CPU: a smoke run")
    c.add_argument("--channels-last", action="store_true",
                   help="also both networks as prior.channels_last runs them (NHWC, fused GroupNorm)")
    t = sub.add_parser("trace", help="torch.profiler trace of 3 paper steps (CUDA)")
    t.add_argument("--out", default="/tmp/ism3d_trace", help="folder for trace.json")
    t.add_argument("--tiny", action="store_true", help="tiny SD on the CPU: a smoke run")
    p = sub.add_parser("pixel-calls", help="the ToyWorld UNet per call on the CPU")
    p.add_argument("--batches", default="4,8,16")
    p.add_argument("--repeats", type=int, default=15)
    sub.add_parser("group-norm", help="our NHWC GroupNorm kernels vs PyTorch's (CUDA)")
    k = sub.add_parser("kernels", help="compile those kernels for sm_90: registers, spills (any machine)")
    k.add_argument("--json", default="", help="also write the rows here")
    args = ap.parse_args(argv)
    {"flops": cmd_flops, "calls": cmd_calls, "trace": cmd_trace, "pixel-calls": cmd_pixel_calls,
     "group-norm": cmd_group_norm, "kernels": cmd_kernels}[args.cmd](args)


if __name__ == "__main__":
    main()
