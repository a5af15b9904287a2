"""GroupNorm and GroupNorm + SiLU for channels-last tensors: our own Triton kernels, fwd and bwd.

Why: cuDNN's 3x3 convolutions run about twice as fast on channels-last (NHWC) tensors as on NCHW
ones, but PyTorch's GroupNorm (and inductor's) is slow on channels-last memory, which cancels the
gain in the SD UNet and VAE encoder (BENCHMARKS.md, "What limits it"). These kernels read NHWC
memory directly, so both networks can stay channels-last end to end. GroupNorm + SiLU is the
pattern of every ResNet block in both; fusing it saves a read and a write of the activation, and
the backward recomputes the SiLU input instead of storing it.

Layout: any x [N, C, *S] whose channels are innermost in memory (channels_last 4-D tensors, and
3-D [N, C, L] views of [N, L, C] memory, as in diffusers' attention), seen as X [N, L, C] with
L = prod(S), channel stride 1. G groups of CG = C / G channels; M = L * CG values per (n, g).

Math (mean and variance biased, as torch.nn.functional.group_norm; fp32 statistics for half
inputs, fp64 for fp64 inputs):
    forward:  1. per (n, g): mu, var over its M values; rstd = 1 / sqrt(var + eps)
              2. xhat = (x - mu) * rstd;  z = xhat * w_c + b_c;  y = z, or z * sigmoid(z) (SiLU)
    backward: 3. dz = dy, or dy * s * (1 + z (1 - s)) with s = sigmoid(z), z recomputed from x
              4. per (n, c): A = sum_L dz,  B = sum_L dz * xhat        (db = sum_n A, dw = sum_n B)
              5. per (n, g): m1 = sum_{c in g} w_c A / M,  m2 = sum_{c in g} w_c B / M
              6. dx = rstd * (w_c dz - m1 - xhat m2)
Step 1 is two kernels: per (n, tile of rows, tile of channels) a count, sum and centred sum of
squares (Chan's parallel formula merges the row tiles of one program), then per (n, g) the merge
of those partials; the sum-of-squares shortcut (E[x^2] - E[x]^2) is avoided on purpose, as it
loses the variance when |mean| >> std. Steps 3-5 are likewise a partial-sum kernel and a merge.

`group_norm_nhwc(x, weight, bias, groups, eps, silu)` is the differentiable entry point (a torch
custom op, so torch.compile and CUDA graphs see one opaque call); `FusedGroupNorm` is a drop-in
`nn.GroupNorm` that uses it when it can and `torch.nn.functional.group_norm` otherwise.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU installs without triton
    triton = None

__all__ = ["FusedGroupNorm", "channels_innermost", "group_norm_nhwc", "kernels_available", "nlc_view",
           "reference_group_norm"]


# read once, as `triton.jit` does when the kernels below are defined
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_available(x: Tensor) -> bool:
    """Whether the Triton kernels can run on `x`'s device: CUDA with triton, or Triton's CPU
    interpreter (TRITON_INTERPRET=1 when ism3d.kernels was imported: how the tests run them)."""
    if triton is None:
        return False
    return x.is_cuda or (x.device.type == "cpu" and _INTERPRETED)


def channels_innermost(t: Tensor) -> bool:
    """Whether t [N, C, *S] is laid out as [N, L, C] per sample (channel stride 1, the spatial
    dims dense behind it): channels_last 4-D tensors and transposed [N, L, C] 3-D ones. Reads
    shapes and strides only, so torch.compile traces it without a graph break."""
    if t.dim() < 3:
        return False
    c = t.shape[1]
    step = c
    for d in range(t.dim() - 1, 1, -1):
        if t.shape[d] != 1 and t.stride(d) != step:
            return False
        step *= t.shape[d]
    return t.stride(1) == 1 or c == 1


def nlc_view(t: Tensor) -> Tensor | None:
    """[N, C, *S] -> the same memory as [N, L, C] (channel stride 1), or None unless
    `channels_innermost(t)`."""
    if not channels_innermost(t):
        return None
    n, c = t.shape[:2]
    return t.movedim(1, -1).reshape(n, -1, c)  # a view: the memory is already [N, L, C]


def reference_group_norm(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float,
                         silu: bool) -> Tensor:
    """The torch twin: F.group_norm, then SiLU if asked (any layout, any device)."""
    y = F.group_norm(x, groups, weight, bias, eps)
    return F.silu(y) if silu else y


# ---------------------------------------------------------------------------------------------
# Triton kernels. Grids: tiles are (program 0: row block, program 1: channel block, program 2: n);
# merges are one program per (n, g).
# ---------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _fwd_partial(X, PCNT, PSUM, PM2, L, C, stride_n, stride_l, n_blk, tiles,
                     BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """Per (n, row block of `tiles` * BLOCK_L rows, channel tile): count, sum, centred M2."""
        lb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)                          # [BC]
        cmask = cols < C
        base = X + n.to(tl.int64) * stride_n
        cnt = tl.zeros([BLOCK_C], ACC)
        mean = tl.zeros([BLOCK_C], ACC)
        m2 = tl.zeros([BLOCK_C], ACC)
        for t in range(tiles):
            start = (lb * tiles + t) * BLOCK_L
            rows = start + tl.arange(0, BLOCK_L)                             # [BL]
            mask = (rows < L)[:, None] & cmask[None, :]
            x = tl.load(base + rows.to(tl.int64)[:, None] * stride_l + cols[None, :], mask=mask,
                        other=0.0).to(ACC)                                   # [BL, BC]
            n_t = tl.minimum(tl.maximum(L - start, 0), BLOCK_L).to(ACC)
            mu_t = tl.sum(x, axis=0) / tl.maximum(n_t, 1.0)                  # [BC]
            d = tl.where(mask, x - mu_t[None, :], 0.0)
            m2_t = tl.sum(d * d, axis=0)
            # Chan: merge (cnt, mean, m2) with (n_t, mu_t, m2_t)
            tot = cnt + n_t
            delta = mu_t - mean
            frac = n_t / tl.maximum(tot, 1.0)
            mean += delta * frac
            m2 += m2_t + delta * delta * cnt * frac
            cnt = tot
        out = (n * n_blk + lb).to(tl.int64) * C + cols
        tl.store(PCNT + out, cnt, mask=cmask)
        tl.store(PSUM + out, mean * cnt, mask=cmask)
        tl.store(PM2 + out, m2, mask=cmask)

    @triton.jit
    def _sum_partials(P1, P2, n, n_blk, C, ch, cmask, BLOCK_B: tl.constexpr, BLOCK_CG: tl.constexpr,
                      ACC: tl.constexpr):
        """Two partial buffers [N, n_blk, C] summed over row blocks, for sample n and channels ch:
        [BLOCK_B, BLOCK_CG] accumulators each (the caller reduces them)."""
        acc1 = tl.zeros([BLOCK_B, BLOCK_CG], ACC)
        acc2 = tl.zeros([BLOCK_B, BLOCK_CG], ACC)
        for b0 in range(0, n_blk, BLOCK_B):
            blk = b0 + tl.arange(0, BLOCK_B)
            m = (blk < n_blk)[:, None] & cmask[None, :]
            off = (n * n_blk + blk).to(tl.int64)[:, None] * C + ch[None, :]
            acc1 += tl.load(P1 + off, mask=m, other=0.0)
            acc2 += tl.load(P2 + off, mask=m, other=0.0)
        return acc1, acc2

    @triton.jit
    def _fwd_merge(PCNT, PSUM, PM2, MEAN, RSTD, C, CG, G, n_blk, eps,
                   BLOCK_B: tl.constexpr, BLOCK_CG: tl.constexpr, ACC: tl.constexpr):
        """Per (n, g): merge the partials of its channels -> mean, rstd."""
        pid = tl.program_id(0)
        n, g = pid // G, pid % G
        j = tl.arange(0, BLOCK_CG)
        ch = g * CG + j                                                      # [BCG]
        cmask = j < CG
        # 1. the group's count and mean
        s_acc, c_acc = _sum_partials(PSUM, PCNT, n, n_blk, C, ch, cmask, BLOCK_B, BLOCK_CG, ACC)
        total = tl.sum(tl.sum(c_acc, axis=1), axis=0)
        mean = tl.sum(tl.sum(s_acc, axis=1), axis=0) / total
        # 2. M2 = sum_i [m2_i + cnt_i (mu_i - mean)^2]
        m_acc = tl.zeros([BLOCK_B, BLOCK_CG], ACC)
        for b0 in range(0, n_blk, BLOCK_B):
            blk = b0 + tl.arange(0, BLOCK_B)
            m = (blk < n_blk)[:, None] & cmask[None, :]
            off = (n * n_blk + blk).to(tl.int64)[:, None] * C + ch[None, :]
            cnt = tl.load(PCNT + off, mask=m, other=0.0)
            mu = tl.load(PSUM + off, mask=m, other=0.0) / tl.maximum(cnt, 1.0)
            d = mu - mean
            m_acc += tl.where(m, tl.load(PM2 + off, mask=m, other=0.0) + cnt * d * d, 0.0)
        var = tl.sum(tl.sum(m_acc, axis=1), axis=0) / total
        tl.store(MEAN + pid, mean)
        tl.store(RSTD + pid, 1.0 / tl.sqrt(var + eps))

    @triton.jit
    def _channel_params(MEAN, RSTD, W, B, n, G, CG, cols, cmask, ACC: tl.constexpr):
        """mu, rstd of each column's group and its w, b: four [BLOCK_C] vectors in ACC."""
        grp = n * G + cols // CG
        return (tl.load(MEAN + grp, mask=cmask, other=0.0), tl.load(RSTD + grp, mask=cmask, other=0.0),
                tl.load(W + cols, mask=cmask, other=0.0).to(ACC), tl.load(B + cols, mask=cmask, other=0.0).to(ACC))

    @triton.jit
    def _fwd_apply(X, Y, MEAN, RSTD, W, B, L, C, CG, G, stride_n, stride_l,
                   SILU: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """y = silu?((x - mu) * rstd * w + b), one tile."""
        lb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = lb * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        mask = (rows < L)[:, None] & cmask[None, :]
        off = n.to(tl.int64) * stride_n + rows.to(tl.int64)[:, None] * stride_l + cols[None, :]
        x = tl.load(X + off, mask=mask, other=0.0).to(ACC)
        mu, rstd, w, b = _channel_params(MEAN, RSTD, W, B, n, G, CG, cols, cmask, ACC)
        # centred first, as the backward recomputes it (the folded x * (rstd w) + (b - mu rstd w)
        # measured no worse: fp32's stored mean bounds both)
        z = (x - mu[None, :]) * (rstd * w)[None, :] + b[None, :]
        if SILU:
            z = z / (1.0 + tl.exp(-z))
        tl.store(Y + off, z.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_dz(x, dy, mu, rstd, w, b, SILU: tl.constexpr):
        """dz (step 3) and xhat for one tile."""
        xhat = (x - mu[None, :]) * rstd[None, :]
        if SILU:
            z = xhat * w[None, :] + b[None, :]
            s = 1.0 / (1.0 + tl.exp(-z))
            dz = dy * s * (1.0 + z * (1.0 - s))
        else:
            dz = dy
        return dz, xhat

    @triton.jit
    def _bwd_partial(X, DY, MEAN, RSTD, W, B, PA, PB, L, C, CG, G, stride_n, stride_l, dstride_n, dstride_l,
                     n_blk, tiles, SILU: tl.constexpr, BLOCK_L: tl.constexpr,
                     BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """Per (n, row block, channel tile): sum dz and sum dz * xhat (step 4's partials)."""
        lb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        mu, rstd, w, b = _channel_params(MEAN, RSTD, W, B, n, G, CG, cols, cmask, ACC)
        sa = tl.zeros([BLOCK_C], ACC)
        sb = tl.zeros([BLOCK_C], ACC)
        for t in range(tiles):
            rows = (lb * tiles + t) * BLOCK_L + tl.arange(0, BLOCK_L)
            r64 = rows.to(tl.int64)[:, None]
            mask = (rows < L)[:, None] & cmask[None, :]
            x = tl.load(X + n.to(tl.int64) * stride_n + r64 * stride_l + cols[None, :], mask=mask,
                        other=0.0).to(ACC)
            dy = tl.load(DY + n.to(tl.int64) * dstride_n + r64 * dstride_l + cols[None, :], mask=mask,
                         other=0.0).to(ACC)
            dz, xhat = _bwd_dz(x, dy, mu, rstd, w, b, SILU)
            dz = tl.where(mask, dz, 0.0)
            sa += tl.sum(dz, axis=0)
            sb += tl.sum(dz * xhat, axis=0)
        out = (n * n_blk + lb).to(tl.int64) * C + cols
        tl.store(PA + out, sa, mask=cmask)
        tl.store(PB + out, sb, mask=cmask)

    @triton.jit
    def _bwd_merge(PA, PB, W, SA, SB, M1, M2, total, C, CG, G, n_blk,
                   BLOCK_B: tl.constexpr, BLOCK_CG: tl.constexpr, ACC: tl.constexpr):
        """Per (n, g): A, B per channel (for dw, db) and m1, m2 of the group (step 5)."""
        pid = tl.program_id(0)
        n, g = pid // G, pid % G
        j = tl.arange(0, BLOCK_CG)
        ch = g * CG + j
        cmask = j < CG
        a_acc, b_acc = _sum_partials(PA, PB, n, n_blk, C, ch, cmask, BLOCK_B, BLOCK_CG, ACC)
        a = tl.sum(a_acc, axis=0)                                            # [BCG]
        b = tl.sum(b_acc, axis=0)
        tl.store(SA + n * C + ch, a, mask=cmask)
        tl.store(SB + n * C + ch, b, mask=cmask)
        w = tl.load(W + ch, mask=cmask, other=0.0).to(ACC)
        tl.store(M1 + pid, tl.sum(w * a, axis=0) / total)
        tl.store(M2 + pid, tl.sum(w * b, axis=0) / total)

    @triton.jit
    def _bwd_apply(X, DY, DX, MEAN, RSTD, W, B, M1, M2, L, C, CG, G, stride_n, stride_l, dstride_n, dstride_l,
                   SILU: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """dx = rstd * (w dz - m1 - xhat m2), one tile (step 6); DX has X's strides."""
        lb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = lb * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        mask = (rows < L)[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)[:, None]
        off = n.to(tl.int64) * stride_n + r64 * stride_l + cols[None, :]
        x = tl.load(X + off, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + n.to(tl.int64) * dstride_n + r64 * dstride_l + cols[None, :], mask=mask,
                     other=0.0).to(ACC)
        mu, rstd, w, b = _channel_params(MEAN, RSTD, W, B, n, G, CG, cols, cmask, ACC)
        grp = n * G + cols // CG
        m1 = tl.load(M1 + grp, mask=cmask, other=0.0)
        m2 = tl.load(M2 + grp, mask=cmask, other=0.0)
        dz, xhat = _bwd_dz(x, dy, mu, rstd, w, b, SILU)
        dx = rstd[None, :] * (w[None, :] * dz - m1[None, :] - xhat * m2[None, :])
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=mask)

    KERNELS = {"fwd_partial": _fwd_partial, "fwd_merge": _fwd_merge, "fwd_apply": _fwd_apply,
               "bwd_partial": _bwd_partial, "bwd_merge": _bwd_merge, "bwd_apply": _bwd_apply}


# ---------------------------------------------------------------------------------------------
# Launch geometry
# ---------------------------------------------------------------------------------------------
def _acc(dtype: torch.dtype):
    """(triton accumulation dtype, torch dtype of the statistics): fp64 for fp64, else fp32."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _tiles(L: int, C: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_L, tiles, n_blk): channel tiles of the largest power of two <= 128 that
    divides C (else C rounded up to a power of two, at most 128), ~4K values a tile, and up to 16
    row tiles merged in one partial so that the merge reads few partials."""
    block_c = next((b for b in (128, 64, 32, 16) if C % b == 0), min(128, triton.next_power_of_2(C)))
    block_l = max(16, 4096 // block_c)
    tiles = max(1, min(16, L // (block_l * 64)))
    n_blk = triton.cdiv(L, block_l * tiles)
    return block_c, block_l, tiles, n_blk


def kernel_configs(L: int, c: int, groups: int, dtype: torch.dtype, silu: bool) -> dict[str, tuple[dict, int]]:
    """name -> (constexprs, num_warps) of each kernel for one problem: what the launches below
    use, and what `benchmarks/diagnostics.py kernels` compiles for Hopper on any machine."""
    acc, _ = _acc(dtype)
    block_c, block_l, _, _ = _tiles(L, c)
    # registers a thread on sm_90 (`diagnostics.py kernels`, Triton 3.6 and 3.9, no spills) set
    # the tiles: partials 4K values, 8 warps, a runtime loop over row tiles (55-103 registers;
    # 8K-value tiles took 130-255, an unrolled loop 255); elementwise passes 2K values, 4 warps
    # (64-96; 8K-value tiles took 152-185: one 8-warp program an SM); merges <= 1K a loop step
    tile = dict(BLOCK_L=block_l, BLOCK_C=block_c, ACC=acc)
    ew = dict(BLOCK_L=max(8, 2048 // block_c), BLOCK_C=block_c, ACC=acc)
    block_cg = triton.next_power_of_2(c // groups)
    merge = dict(BLOCK_B=min(64, max(8, 1024 // block_cg)), BLOCK_CG=block_cg, ACC=acc)
    return {"fwd_partial": (tile, 8), "fwd_merge": (merge, 4),
            "fwd_apply": (dict(SILU=silu, **ew), 4), "bwd_partial": (dict(SILU=silu, **tile), 8),
            "bwd_merge": (merge, 4), "bwd_apply": (dict(SILU=silu, **ew), 4)}


def kernel(name: str):
    """The Triton kernel behind a `kernel_configs` name."""
    return KERNELS[name]


def _apply_grid(configs: dict, L: int, c: int, n: int) -> tuple[int, int, int]:
    const = configs["fwd_apply"][0]
    return triton.cdiv(L, const["BLOCK_L"]), triton.cdiv(c, const["BLOCK_C"]), n


def _launch(configs: dict, name: str, grid: tuple, *args) -> None:
    const, warps = configs[name]
    kernel(name)[grid](*args, **const, num_warps=warps)


def _check(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> tuple[Tensor, int, int, int]:
    xv = nlc_view(x)
    n, c = x.shape[:2]
    if xv is None or c % groups or weight.shape != (c,) or bias.shape != (c,):
        raise ValueError(f"group_norm_nhwc needs channels-innermost x [N, C, ...] with C % groups == 0 and "
                         f"weight, bias [C]; got x {tuple(x.shape)} strides {x.stride()}, groups {groups}")
    return xv, n, xv.shape[1], c


# ---------------------------------------------------------------------------------------------
# The custom ops (opaque to torch.compile; replayable in CUDA graphs: no host syncs)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("ism3d::group_norm_nhwc", mutates_args=())
def _group_norm_fwd(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float,
                    silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    xv, n, L, c = _check(x, weight, bias, groups)
    _, sdt = _acc(x.dtype)
    block_c, _, tiles, n_blk = _tiles(L, c)
    cfg = kernel_configs(L, c, groups, x.dtype, silu)
    # 1. partials per (n, row block, channel), then the merge per (n, g)
    pcnt, psum, pm2 = (torch.empty((n, n_blk, c), device=x.device, dtype=sdt) for _ in range(3))
    _launch(cfg, "fwd_partial", (n_blk, triton.cdiv(c, block_c), n),
            xv, pcnt, psum, pm2, L, c, xv.stride(0), xv.stride(1), n_blk, tiles)
    mean = torch.empty((n, groups), device=x.device, dtype=sdt)
    rstd = torch.empty_like(mean)
    _launch(cfg, "fwd_merge", (n * groups,), pcnt, psum, pm2, mean, rstd, c, c // groups, groups, n_blk, eps)
    # 2. normalise (+ SiLU) into y, which keeps x's strides
    y = torch.empty_like(x)
    _launch(cfg, "fwd_apply", _apply_grid(cfg, L, c, n), xv, nlc_view(y), mean, rstd, weight, bias,
            L, c, c // groups, groups, xv.stride(0), xv.stride(1))
    return y, mean, rstd


@_group_norm_fwd.register_fake
def _(x, weight, bias, groups, eps, silu):
    sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    stats = x.new_empty((x.shape[0], groups), dtype=sdt)
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("ism3d::group_norm_nhwc_backward", mutates_args=())
def _group_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor,
                    silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    xv, n, L, c = _check(x, weight, bias, mean.shape[1])
    groups, cg = mean.shape[1], c // mean.shape[1]
    dyv = nlc_view(dy)
    if dyv is None:  # a gradient in another layout: one copy into x's
        dyv = dy.movedim(1, -1).reshape(n, L, c).contiguous()
    _, sdt = _acc(x.dtype)
    block_c, _, tiles, n_blk = _tiles(L, c)
    cfg = kernel_configs(L, c, groups, x.dtype, silu)
    strides = (xv.stride(0), xv.stride(1), dyv.stride(0), dyv.stride(1))
    # 4. partial sums of dz and dz * xhat, then per-channel sums and the group's m1, m2 (5.)
    pa, pb = (torch.empty((n, n_blk, c), device=x.device, dtype=sdt) for _ in range(2))
    _launch(cfg, "bwd_partial", (n_blk, triton.cdiv(c, block_c), n),
            xv, dyv, mean, rstd, weight, bias, pa, pb, L, c, cg, groups, *strides, n_blk, tiles)
    sa, sb = (torch.empty((n, c), device=x.device, dtype=sdt) for _ in range(2))
    m1, m2 = torch.empty_like(mean), torch.empty_like(mean)
    _launch(cfg, "bwd_merge", (n * groups,), pa, pb, weight, sa, sb, m1, m2, float(L * cg), c, cg, groups, n_blk)
    # 6. dx in x's layout
    dx = torch.empty_like(x)
    _launch(cfg, "bwd_apply", _apply_grid(cfg, L, c, n),
            xv, dyv, nlc_view(dx), mean, rstd, weight, bias, m1, m2, L, c, cg, groups, *strides)
    return dx, sb.sum(0).to(weight.dtype), sa.sum(0).to(bias.dtype)


@_group_norm_bwd.register_fake
def _(dy, x, weight, bias, mean, rstd, silu):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _groups, _eps, silu = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.silu = silu
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = _group_norm_bwd(dy, x, weight, bias, mean, rstd, ctx.silu)
    need = ctx.needs_input_grad
    return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None, None, None, None)


_group_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def group_norm_nhwc(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float = 1e-5,
                    silu: bool = False) -> Tensor:
    """GroupNorm (+ SiLU) of a channels-innermost x [N, C, *S] with the Triton kernels; y has x's
    strides. Differentiable in x, weight and bias. See the module docstring for the math.

    Example:
        >>> x = torch.randn(2, 64, 8, 8, device="cuda").to(memory_format=torch.channels_last)
        >>> y = group_norm_nhwc(x, torch.ones(64, device="cuda"), torch.zeros(64, device="cuda"), 32, silu=True)
    """
    return _group_norm_fwd(x, weight, bias, groups, eps, silu)[0]


class FusedGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (+ SiLU when `silu`) that runs our Triton kernels on channels-last inputs
    and F.group_norm (+ F.silu) on anything else. Same parameters and state-dict keys.

    `fast_calls` and `fallback_calls` count which path ran (tests check that a whole network
    stays channels-last)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, silu: bool = False,
                 device=None, dtype=None):
        super().__init__(num_groups, num_channels, eps, affine=True, device=device, dtype=dtype)
        self.silu = silu
        self.fast_calls = 0
        self.fallback_calls = 0

    @classmethod
    def replacing(cls, gn: nn.GroupNorm, silu: bool) -> "FusedGroupNorm":
        """A FusedGroupNorm sharing `gn`'s parameters (no copy)."""
        if not gn.affine:
            raise ValueError("FusedGroupNorm replaces affine GroupNorm layers only")
        new = cls(gn.num_groups, gn.num_channels, gn.eps, silu, device="meta")  # no storage
        new.weight, new.bias = gn.weight, gn.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        fast = kernels_available(x) and channels_innermost(x) and x.dtype == self.weight.dtype
        if not torch.compiler.is_compiling():  # counters would make dynamo recompile every call
            if fast:
                self.fast_calls += 1
            else:
                self.fallback_calls += 1
        if fast:
            return group_norm_nhwc(x, self.weight, self.bias, self.num_groups, self.eps, self.silu)
        return reference_group_norm(x, self.weight, self.bias, self.num_groups, self.eps, self.silu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", silu=True" if self.silu else "")
