"""Pure-PyTorch 3D Gaussian Splatting renderer (CPU or CUDA), the twin of gsplat 1.5.3 "classic".

Two stages, written to agree with gsplat 1.5.3 (`fully_fused_projection` then
`rasterize_to_pixels`, packed=False, rasterize_mode="classic"):

1. `project`: EWA splatting (Zwicker et al. 2002, as in 3DGS, Kerbl et al. 2023, eq. 5). Each
   gaussian is moved into camera space, its covariance pushed through the Jacobian J of the pinhole
   at its mean (the normalised x/z, y/z used inside J are clamped to 1.3 x the half field of view,
   plus the principal-point offset, as gsplat does), then blurred by eps2d * I. Gaussians with
   z outside [near, far], det <= 0, opacity < 1/255 or a box off the image get radius 0.
   The radius per axis is gsplat's tight, opacity-aware box: ceil(e * sqrt(cov2d_ii)) with
   e = min(3.33, sqrt(2 ln(255 o))), so no pixel outside the box can reach alpha >= 1/255.
2. `rasterize`: front-to-back alpha compositing, sparse (no dense N x H x W pass). Visible
   gaussians, sorted by depth per view, are cut into (gaussian, row) segments of their boxes; on
   each row the pixels that can reach alpha >= 1/255 form an interval (a quadratic inequality),
   which becomes (gaussian, pixel) pairs. Pairs are sorted by pixel (stable, so each pixel keeps
   the depth order), and transmittance is a segmented cumulative product (a float64 cumulative
   sum of log(1 - alpha)). A pixel stops at the first gaussian that would bring its transmittance
   to <= 1e-4 (that one is excluded, as in gsplat). Work is chunked over image rows so that about
   `pair_budget` box pairs exist at a time. The backward pass is analytic (`_Rasterize`), from
   the kept pairs only, so autograd stores two int32 per kept pair instead of a graph over all.

Notation (per pixel p, its kept gaussians i = 1..K in depth order):
    d_i     = mean2d_i - (p + 0.5)                       pixel centres at (x + 0.5, y + 0.5)
    sigma_i = 0.5 d_i^T Q_i d_i,  Q_i = conic = inverse(cov2d_i + eps2d I)
    a_i     = min(0.999, o_i exp(-sigma_i))              alpha, kept if a_i >= 1/255
    T_i     = prod_{j<i} (1 - a_j)                       transmittance before i
    w_i     = a_i T_i                                    blending weight
    out_p   = sum_i w_i f_i  (f = rgb and camera z),     alpha_p = 1 - T_{K+1} = sum_i w_i
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .sh import eval_sh

ALPHA_MIN = 1.0 / 255.0    # pairs below this alpha are skipped (gsplat ALPHA_THRESHOLD)
ALPHA_MAX = 0.999          # alpha is clamped here
T_MIN = 1e-4               # a pixel stops before its transmittance would drop to <= T_MIN
EXTEND_MAX = 3.33          # largest box half-size in standard deviations (gsplat)
PAIR_BUDGET = 1 << 21      # (gaussian, pixel) box pairs per chunk on CPU; bounds memory per chunk
PAIR_BUDGET_CUDA = 1 << 24  # the same on CUDA (fewer, larger kernels)


# ---------------------------------------------------------------------------------------------
# 1. Projection
# ---------------------------------------------------------------------------------------------
def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z) quaternions, any norm (normalised first) -> [..., 3, 3] rotations."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = R S S^T R^T [..., N, 3, 3] from (w, x, y, z) quaternions [N, 4] (any norm) and std
    devs [..., N, 3] (a leading camera axis broadcasts)."""
    R = quat_to_rotmat(quats)                                          # [N, 3, 3]
    M = R * scales[..., None, :]                                       # [..., N, 3, 3] = R S
    return M @ M.transpose(-1, -2)


def project(
    means: Tensor,      # [N, 3]
    quats: Tensor,      # [N, 4]
    scales: Tensor,     # [N, 3] or [C, N, 3] (per view)
    opacities: Tensor,  # [N]
    viewmats: Tensor,   # [C, 4, 4]
    Ks: Tensor,         # [C, 3, 3]
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of N gaussians into C pinhole cameras (gsplat 1.5.3 fully_fused_projection).

    Returns:
        means2d [C, N, 2] pixel coordinates, conics [C, N, 3] (Q00, Q01, Q11) of the blurred
        cov2d's inverse, depths [C, N] camera z, radii [C, N, 2] int32 box half-sizes (0 = culled).
        Culled entries carry finite placeholder values and receive zero gradient.
    """
    C, N = viewmats.shape[0], means.shape[0]
    # 1. world -> camera: mu_c = R mu + t, Sigma_c = R Sigma R^T
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]                     # [C, 3, 3], [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]   # [C, N, 3]
    covar = quat_scale_to_covar(quats, scales)                         # [N or C, N, 3, 3]
    if covar.dim() == 3:
        covar = covar[None]                                            # [1, N, 3, 3]
    covar_c = R[:, None] @ covar @ R.transpose(-1, -2)[:, None]        # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)                                       # [C, N] each
    valid = (z >= near) & (z <= far)
    z = torch.where(valid, z, torch.ones_like(z))                      # keep culled ones finite

    # 2. Jacobian of the pinhole at the mean, with x/z and y/z clamped to the widened frustum
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]                      # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.clamp(x / z, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y / z, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(z)
    J = torch.stack([fx / z, zeros, -fx * tx / z**2,
                     zeros, fy / z, -fy * ty / z**2], dim=-1).reshape(C, N, 2, 3)

    # 3. cov2d = J Sigma_c J^T + eps2d I, its inverse (the conic), the projected mean
    cov2d = J @ covar_c @ J.transpose(-1, -2)                          # [C, N, 2, 2]
    a, b, c = cov2d[..., 0, 0] + eps2d, cov2d[..., 0, 1], cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    valid = valid & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)         # [C, N, 3]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # [C, N, 2]

    # 4. opacity-aware box radius (not differentiable), culling
    with torch.no_grad():
        o = opacities.detach()[None].expand(C, N)
        valid = valid & (o >= ALPHA_MIN)
        extend = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTEND_MAX)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        keep = valid & inside & ((rx > 0) | (ry > 0))
        radii = torch.stack([rx, ry], dim=-1).where(keep[..., None], 0).to(torch.int32)
    return means2d, conics, means_c[..., 2], radii


# ---------------------------------------------------------------------------------------------
# 2. Rasterization
# ---------------------------------------------------------------------------------------------
def _take(table: Tensor, idx: Tensor) -> Tensor:
    """Columns idx of a [k, n] table -> [k, len(idx)]: one 1-D index_select per row (fastest on CPU)."""
    out = table.new_empty((table.shape[0], len(idx)))
    for i in range(table.shape[0]):
        torch.index_select(table[i], 0, idx, out=out[i])
    return out


def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """[n] counts -> for each of the sum(counts) items: its owner in [0, n) and its rank inside it."""
    owner = torch.repeat_interleave(counts)
    start = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(len(owner), device=counts.device) - start.index_select(0, owner)


def _pixel_tables(local_key: Tensor, n_pix: int) -> tuple[Tensor, Tensor]:
    """For pairs sorted by pixel (keys in [0, n_pix)): index of each pixel's first and last pair.

    Pixels without pairs get a clamped, unused index.
    """
    counts = torch.bincount(local_key, minlength=n_pix)
    end = torch.cumsum(counts, 0)
    hi = max(len(local_key) - 1, 0)
    return (end - counts).clamp_max(hi), (end - 1).clamp(0, hi)


def _log_transmittance(alpha: Tensor, local_key: Tensor, first: Tensor, last: Tensor):
    """Segmented front-to-back log transmittance in float64.

    Returns log T before each pair [P], log T after each pair [P] and log T after each pixel's
    last pair [n_pix] (log T = sum of log(1 - alpha) over the pixel's earlier pairs).
    """
    log1m = torch.log1p(-alpha).double()
    S = torch.cumsum(log1m, 0)                        # inclusive running sum over all pairs
    base = (S - log1m).index_select(0, first)         # [n_pix] running sum before the pixel
    log_T_after = S - base.index_select(0, local_key)
    return log_T_after - log1m, log_T_after, S.index_select(0, last) - base


def _chunk_rows(x0, wx, row0, row1, budget):
    """Split the stacked image rows (C*H of them) into ranges holding <= ~budget box pairs each."""
    if len(x0) == 0:
        return []
    n_pairs = wx * (row1 - row0 + 1)
    if int(n_pairs.sum()) <= budget:
        return [(int(row0.min()), int(row1.max()))]
    n_rows = int(row1.max()) + 2
    diff = torch.zeros(n_rows, dtype=torch.int64, device=x0.device)
    diff.index_add_(0, row0, wx).index_add_(0, row1 + 1, -wx)
    per_row = torch.cumsum(diff, 0)[:-1]              # box pairs on each row
    chunk_of_row = (torch.cumsum(per_row, 0) - per_row) // budget
    _, counts = torch.unique_consecutive(chunk_of_row, return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    return [(e - n, e - 1) for e, n in zip(ends, counts.tolist())]


def _row_pairs(params_T, seg_gid, seg_row, seg_x0, seg_w, width, height, dtype):
    """The (gaussian, pixel) pairs of (gaussian, row) segments that can reach alpha >= 1/255.

    Along a row, with dx = mean_x - (px + 0.5) and dy fixed, sigma is a quadratic in dx:
    sigma = hA dx^2 + b dx + c0 (hA = Q00 / 2, b = Q01 dy, c0 = Q11 dy^2 / 2), and
    alpha >= 1/255 <=> sigma <= L = ln(255 o): an interval of dx, solved in float64 and widened by
    1e-3 px; alpha is then evaluated per pixel and tested exactly.

    Returns per pair: segment index [P], pixel = seg_x0 + t_lo[segment] + rank [P]; t_lo [S];
    raw alpha o exp(-sigma) [P] and whether it passes alpha >= 1/255 and sigma >= 0 [P].
    """
    p = _take(params_T, seg_gid).double()                              # [6, S]
    dy = p[1] - ((seg_row % height).double() + 0.5)
    dx0 = p[0] - (seg_x0.double() + 0.5)                               # dx at the segment's first pixel
    hA, b, c0 = 0.5 * p[2], p[3] * dy, 0.5 * p[4] * dy * dy
    disc = b * b - 4.0 * hA * (c0 - torch.log(p[5] / ALPHA_MIN))
    sq = disc.clamp_min(0).sqrt()
    t_lo = torch.ceil(dx0 - (sq - b) / (2.0 * hA) - 1e-3).clamp_min(0)
    t_hi = torch.minimum(torch.floor(dx0 + (sq + b) / (2.0 * hA) + 1e-3), (seg_w - 1).double())
    n = torch.where(disc >= 0, t_hi - t_lo + 1, 0).clamp_min(0).long()
    pair_seg, rank = _expand(n)                                        # [P]
    cf = _take(torch.stack([dx0 - t_lo, hA, b, c0, p[5]]).to(dtype), pair_seg)  # [5, P]
    dx = cf[0] - rank.to(dtype)
    sigma = dx * (cf[1] * dx + cf[2]) + cf[3]
    a_raw = cf[4] * torch.exp(-sigma)
    return pair_seg, rank, t_lo.long(), a_raw, (a_raw >= ALPHA_MIN) & (sigma >= 0)


class _Rasterize(torch.autograd.Function):
    """Composites projected gaussians; analytic backward from the kept (gaussian, pixel) pairs."""

    @staticmethod
    def forward(ctx, means2d, conics, feats, opacities, depths, radii, width, height, pair_budget):
        # means2d [C,N,2], conics [C,N,3], feats [C,N,D], opacities [C,N], depths [C,N], radii [C,N,2]
        C, N = radii.shape[:2]
        D = feats.shape[-1]
        dev, dtype = feats.device, feats.dtype
        n_pix = C * height * width
        assert n_pix < 2**31 and C * N < 2**31, "too many pixels or gaussians for int32 indices"
        params_T = torch.cat([means2d, conics, opacities[..., None]], -1).reshape(C * N, 6)
        params_T = params_T.T.contiguous()                                 # [6, C*N]
        feats_T = feats.reshape(C * N, D).T.contiguous()                  # [D, C*N]
        need_grad = any(ctx.needs_input_grad[:4])

        # 1. visible gaussians, view-major, front to back (stable: ties keep index order)
        vis = (radii > 0).all(-1)                                          # [C, N]
        order = torch.sort(torch.where(vis, depths, math.inf), dim=1, stable=True).indices
        gid = (order + torch.arange(C, device=dev)[:, None] * N).reshape(-1)
        gid = gid[vis.reshape(-1)[gid]]                                    # [M]

        # 2. pixel boxes: centres px + 0.5 within mean2d +- radius, clipped to the image
        mx, my = params_T[0].index_select(0, gid), params_T[1].index_select(0, gid)
        r = radii.reshape(C * N, 2).index_select(0, gid).to(dtype)
        x0 = torch.ceil(mx - r[:, 0] - 0.5).clamp_min(0).long()
        x1 = torch.floor(mx + r[:, 0] - 0.5).clamp_max(width - 1).long()
        y0 = torch.ceil(my - r[:, 1] - 0.5).clamp_min(0).long()
        y1 = torch.floor(my + r[:, 1] - 0.5).clamp_max(height - 1).long()
        ok = (x1 >= x0) & (y1 >= y0)
        gid, x0, wx = gid[ok], x0[ok], (x1 - x0 + 1)[ok]
        cam = gid // N
        row0, row1 = cam * height + y0[ok], cam * height + y1[ok]         # rows of the C*H stack

        out = torch.zeros(D, n_pix, dtype=dtype, device=dev)
        alpha_acc = torch.zeros(n_pix, dtype=torch.float64, device=dev)
        kept_gid, kept_key, chunk_sizes = [], [], []
        for ra, rb in _chunk_rows(x0, wx, row0, row1, pair_budget):
            # 3. gaussians touching rows [ra, rb] -> (gaussian, row) segments, in depth order
            sel = ((row0 <= rb) & (row1 >= ra)).nonzero().squeeze(1)
            r0 = row0[sel].clamp_min(ra)
            seg_g, seg_rank = _expand(row1[sel].clamp_max(rb) - r0 + 1)    # [S]
            seg_gid = gid[sel].index_select(0, seg_g)
            seg_x0 = x0[sel].index_select(0, seg_g)
            seg_row = r0.index_select(0, seg_g) + seg_rank
            # 4. -> (gaussian, pixel) pairs with alpha; pairs below 1/255 get alpha 0
            pair_seg, rank, t_lo, a_raw, hit = _row_pairs(
                params_T, seg_gid, seg_row, seg_x0, wx[sel].index_select(0, seg_g), width, height, dtype)
            alpha = torch.where(hit, a_raw.clamp_max(ALPHA_MAX), 0.0)
            seg_key = ((seg_row - ra) * width + seg_x0 + t_lo).int()       # pixel of rank 0
            key = seg_key.index_select(0, pair_seg) + rank.int()
            del a_raw, rank
            # 5. sort by pixel (stable: depth order inside a pixel), transmittance, early stop
            key, perm = torch.sort(key, stable=True)
            alpha, pair_seg, hit = (x.index_select(0, perm) for x in (alpha, pair_seg, hit))
            first, last = _pixel_tables(key, (rb - ra + 1) * width)
            log_T, log_T_after, _ = _log_transmittance(alpha, key, first, last)
            live = (hit & (log_T_after > math.log(T_MIN))).nonzero().squeeze(1)
            key = key.index_select(0, live) + ra * width
            pg = seg_gid.index_select(0, pair_seg.index_select(0, live))
            w = alpha.index_select(0, live).double() * torch.exp(log_T.index_select(0, live))
            # 6. accumulate w_i f_i and w_i
            wd = w.to(dtype)
            for ch in range(D):
                out[ch].index_add_(0, key, wd * feats_T[ch].index_select(0, pg))
            alpha_acc.index_add_(0, key, w)
            if need_grad:
                kept_gid.append(pg.int())
                kept_key.append(key)
                chunk_sizes.append(len(key))

        if need_grad:
            empty = torch.zeros(0, dtype=torch.int32, device=dev)
            ctx.save_for_backward(params_T, feats_T,
                                  torch.cat(kept_gid) if kept_gid else empty,
                                  torch.cat(kept_key) if kept_key else empty)
            ctx.meta = (C, N, D, width, height, chunk_sizes)
        out = out.T.reshape(C, height, width, D)
        return out, alpha_acc.to(dtype).reshape(C, height, width)

    @staticmethod
    def backward(ctx, v_out, v_alpha_img):
        params_T, feats_T, kept_gid, kept_key = ctx.saved_tensors
        C, N, D, width, height, chunk_sizes = ctx.meta
        dtype = feats_T.dtype
        v_out_T = v_out.reshape(-1, D).T.contiguous()                      # [D, C*H*W]
        v_alpha_img = v_alpha_img.reshape(-1).contiguous()
        v_params_T = torch.zeros_like(params_T)                            # [6, C*N]
        v_feats_T = torch.zeros_like(feats_T)                              # [D, C*N]
        for g, key in zip(kept_gid.split(chunk_sizes), kept_key.split(chunk_sizes)):
            if len(g) == 0:
                continue
            # 1. recompute the forward quantities of the kept pairs
            mx, my, qa, qb, qc, o = _take(params_T, g)                     # [K] each
            dx = mx - ((key % width).to(dtype) + 0.5)
            dy = my - (((key // width) % height).to(dtype) + 0.5)
            vis = torch.exp(-(0.5 * (qa * dx * dx + qc * dy * dy) + qb * dx * dy))
            a_raw = o * vis
            alpha = a_raw.clamp_max(ALPHA_MAX)
            k0 = int(key[0])
            local = key - k0
            first, last = _pixel_tables(local, int(key[-1]) - k0 + 1)
            log_T, _, log_T_final = _log_transmittance(alpha, local, first, last)
            T = torch.exp(log_T)
            w = alpha.double() * T
            f, vo = _take(feats_T, g), _take(v_out_T, key)                 # [D, K]
            va = v_alpha_img.index_select(0, key)
            # 2. d/d f_i = w_i v_out
            wd = w.to(dtype)
            for ch in range(D):
                v_feats_T[ch].index_add_(0, g, wd * vo[ch])
            # 3. d/d a_i = T_i (f_i.v) - (sum_{j>i} w_j f_j.v) / (1 - a_i) + v_alpha T_final / (1 - a_i)
            dot = (f * vo).sum(0).double()
            Q = torch.cumsum(w * dot, 0)
            behind = Q.index_select(0, last).index_select(0, local) - Q
            T_final = torch.exp(log_T_final).index_select(0, local)
            ra = 1.0 / (1.0 - alpha.double())
            v_a = (T * dot + (va.double() * T_final - behind) * ra).to(dtype)
            # 4. a = o exp(-sigma) (zero gradient where clamped at 0.999)
            v_a = v_a * (a_raw <= ALPHA_MAX)
            v_sigma = -a_raw * v_a
            grads = (v_sigma * (qa * dx + qb * dy),      # mean2d x
                     v_sigma * (qb * dx + qc * dy),      # mean2d y
                     0.5 * v_sigma * dx * dx,            # conic 00
                     v_sigma * dx * dy,                  # conic 01
                     0.5 * v_sigma * dy * dy,            # conic 11
                     vis * v_a)                          # opacity
            for i, gr in enumerate(grads):
                v_params_T[i].index_add_(0, g, gr)
        v_params = v_params_T.T.reshape(C, N, 6)
        return (v_params[..., :2], v_params[..., 2:5], v_feats_T.T.reshape(C, N, D), v_params[..., 5],
                None, None, None, None, None)


def rasterize(
    means2d: Tensor,    # [C, N, 2]
    conics: Tensor,     # [C, N, 3]
    feats: Tensor,      # [C, N, D]
    opacities: Tensor,  # [C, N]
    depths: Tensor,     # [C, N] sort key
    radii: Tensor,      # [C, N, 2] int
    width: int,
    height: int,
    pair_budget: int = PAIR_BUDGET,
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of projected gaussians (gsplat rasterize_to_pixels, classic).

    Returns:
        out [C, H, W, D] = sum_i w_i f_i and alpha [C, H, W] = 1 - final transmittance.
    """
    return _Rasterize.apply(means2d, conics, feats, opacities, depths.detach(), radii,
                            width, height, pair_budget)


# ---------------------------------------------------------------------------------------------
# 3. The whole render
# ---------------------------------------------------------------------------------------------
def render_torch(
    means: Tensor,      # [N, 3]
    quats: Tensor,      # [N, 4]
    scales: Tensor,     # [N, 3] or [C, N, 3] (per view)
    opacities: Tensor,  # [N]
    sh: Tensor,         # [N, K, 3]
    sh_degree: int,
    viewmats: Tensor,   # [C, 4, 4]
    Ks: Tensor,         # [C, 3, 3]
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = 0.3,
    depth_grad: bool = True,
    pair_budget: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Render C views; differentiable in every tensor input (depth_grad=False: the composited
    camera z is detached, so depth's gradient flows through the weights only).

    Returns:
        rgb [C, 3, H, W] premultiplied (no background), alpha [C, 1, H, W], depth [C, 1, H, W]
        (expected camera z, 0 where alpha <= 1e-6), means2d [C, N, 2], radii [C, N] int32.
    """
    C = viewmats.shape[0]
    if pair_budget is None:
        pair_budget = PAIR_BUDGET_CUDA if means.is_cuda else PAIR_BUDGET
    # 1. projection
    means2d, conics, depths, radii = project(means, quats, scales, opacities, viewmats, Ks,
                                             width, height, near, far, eps2d)
    # 2. colours: SH along (mean - camera centre), + 0.5, clamped at 0
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    campos = -(R.transpose(-1, -2) @ t[..., None])[..., 0]               # [C, 3]
    dirs = means[None] - campos[:, None]                                 # [C, N, 3]
    coeffs = sh[None].expand((C,) + sh.shape)                            # [C, N, K, 3]
    colors = torch.clamp_min(eval_sh(sh_degree, dirs, coeffs) + 0.5, 0.0)  # [C, N, 3]
    # 3. composite rgb and z together
    z = depths if depth_grad else depths.detach()
    feats = torch.cat([colors, z[..., None]], dim=-1)                    # [C, N, 4]
    out, alpha = rasterize(means2d, conics, feats, opacities[None].expand(C, -1), depths, radii,
                           width, height, pair_budget)
    rgb = out[..., :3].permute(0, 3, 1, 2)                               # [C, 3, H, W]
    alpha = alpha[:, None]                                               # [C, 1, H, W]
    depth_acc = out[..., 3][:, None]
    depth = torch.where(alpha > 1e-6, depth_acc / alpha.clamp_min(1e-6), torch.zeros_like(alpha))
    return rgb, alpha, depth, means2d, radii.max(dim=-1).values
