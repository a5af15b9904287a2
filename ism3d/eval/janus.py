"""Janus test for ToyWorld's asymmetric objects: is the asymmetric part on the wrong side, or twice?

A "Janus" result shows the feature that belongs to ONE side of the object (the mug's handle, the
house's door, the chair's backrest) at another azimuth as well, typically mirrored front <-> back.
ToyWorld objects without their part are mirror-symmetric under x -> -x (and so is the lighting,
world.py), so "the part on the wrong side" is exactly "the part mirrored through the plane x = 0".

The test compares a result's renders (RGB on white and alpha, 4 channels) with three ground-truth
objects rendered from the same cameras:

    A = GT                               (the part where it belongs)
    B = GT without the part              (world.asymmetric_part_mask)
    M = GT without the part + the part mirrored (x -> -x)

0. Colour adaptation. The question is where the part is, not whether the colour is right (PSNR
   judges colour): a red house for "a green house" must not count as having a door because a red
   wall is closer to the dark door than a green wall is. Rendering is linear in the gaussians'
   colours, and a ToyWorld gaussian's colour is either base * k_i (k_i = tint * shade, the
   object's colour) or a fixed colour f_i (the door). With U = render of the k_i (fixed ones black)
   and F = render of the f_i (others black), both on black, and alpha,
       rgb(b) = b * U + F + (1 - alpha)                   (on white, for any base colour b)
   b is fitted to the result by least squares per channel over the body pixels (inside B's
   silhouette, outside both regions below, all views pooled) and clamped to [0, 1]; the three
   references are then drawn in colour b (the GT's own colour when adaptation is off).
1. Regions, per view v, from the references in the GT's colour (d = max over the 4 channels):
       P_v = {d(A, B) > diff}  minus  {d(M, B) > diff}     where only the TRUE part shows
       Q_v = {d(M, B) > diff}  minus  {d(A, B) > diff}     where only a MIRRORED copy shows
   A region with fewer than `min_pixels` pixels does not count for that view (e.g. the handle hidden
   behind the mug, or the door seen edge-on). Removing the overlap makes each region evidence of
   one location only: a second copy is judged where the true part does not show.
2. Evidence in a region S of view v, with e(X) = mean over S and the 4 channels of |result - X|:
       true part:   s_v = (e(B) - e(A)) / (e(B) + e(A) + 1e-6)      on S = P_v
       mirror copy: s_v = (e(B) - e(M)) / (e(B) + e(M) + 1e-6)      on S = Q_v
   s_v in [-1, 1]: +1 the result looks exactly like the object with the part there, -1 exactly like
   the object without it. The part "shows" in view v if s_v > margin (0.1: a clear preference).
3. Over the views with a counted region:
       part_seen   = fraction of views whose P_v shows the part
       mirror_seen = fraction of views whose Q_v shows the part
   Janus = mirror_seen >= min_fraction (0.5): in most views where a mirrored copy would be visible,
   one is. Verdicts: "ok" (part, no mirror copy), "two copies" (Janus, part also where it belongs),
   "flipped" (Janus, only the mirrored copy: the part on the wrong side), "missing" (neither).

Limits: the test is pixel-aligned, so it assumes the result sits where the ground truth sits (the
ToyWorld prior is trained in that framing). A blob fat enough to cover both the true and the
mirrored region counts as showing both (it is, in the images, indistinguishable from two copies).
tests/test_eval.py checks the verdicts on the ground truth, the GT without its part, with a
mirrored copy added, with only the mirrored part, and on recoloured versions of each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..render.sh import SH_C0
from ..types import Gaussians

__all__ = ["JANUS_DIFF", "JANUS_MARGIN", "JANUS_MIN_FRACTION", "VARIANTS", "select", "concat",
           "mirror_x", "janus_objects", "split_colours", "JanusReference", "janus_reference",
           "region_scores", "JanusResult", "janus_test"]

JANUS_DIFF = 0.1          # a pixel belongs to a region if some channel changes by more than this
JANUS_MARGIN = 0.1        # s_v above this: the part shows in view v
JANUS_MIN_FRACTION = 0.5  # Janus if the mirrored copy shows in at least this fraction of views
VARIANTS = ("with", "without", "mirrored")  # A, B, M

# render_fn(gaussians) -> (rgb [C, 3, H, W] on BLACK, alpha [C, 1, H, W]) for one fixed camera set
RenderFn = Callable[[Gaussians], tuple[Tensor, Tensor]]


# ---------------------------------------------------------------------------------------------
# The ground-truth objects
# ---------------------------------------------------------------------------------------------
def select(g: Gaussians, keep: Tensor) -> Gaussians:
    """The gaussians where `keep` [N] (bool) is True."""
    assert keep.shape == (len(g),) and keep.dtype == torch.bool, (keep.shape, keep.dtype)
    return Gaussians(g.means[keep], g.quats[keep], g.scales[keep], g.opacities[keep], g.sh[keep],
                     g.sh_degree)


def concat(a: Gaussians, b: Gaussians) -> Gaussians:
    """All gaussians of `a` then all of `b` (same SH degree)."""
    assert a.sh_degree == b.sh_degree and a.sh.shape[1:] == b.sh.shape[1:], (a.sh.shape, b.sh.shape)
    return Gaussians(*(torch.cat([getattr(a, k), getattr(b, k)])
                       for k in ("means", "quats", "scales", "opacities", "sh")), a.sh_degree)


def mirror_x(g: Gaussians) -> Gaussians:
    """The mirror image through the plane x = 0 (x -> -x).

    1. means: (x, y, z) -> (-x, y, z)
    2. rotation R -> M R M with M = diag(-1, 1, 1), so the covariance R S^2 R^T -> M (R S^2 R^T) M.
       M R M is the rotation by the same angle about the axis -M a (an axis is a pseudovector), so
       the quaternion (w, x, y, z) -> (w, x, -y, -z).
    3. colour: SH degree 0 is view-independent, so it is kept; higher bands are refused.
    """
    if g.sh_degree != 0:
        raise ValueError(f"mirror_x: only SH degree 0 is supported, got degree {g.sh_degree}")
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=g.means.dtype, device=g.means.device)
    qflip = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=g.quats.dtype, device=g.quats.device)
    return Gaussians(g.means * flip, g.quats * qflip, g.scales.clone(), g.opacities.clone(),
                     g.sh.clone(), g.sh_degree)


def janus_objects(family: str, gt: Gaussians) -> dict[str, Gaussians]:
    """{"with": A, "without": B, "mirrored": M, "both": A + the mirrored part} of an asymmetric
    family's ground truth `gt` (`world.make_object`).

    Raises:
        ValueError: `family` has no asymmetric part, or its part mask is empty or everything.
    """
    from ..toyworld.world import ASYMMETRIC, asymmetric_part_mask

    if family not in ASYMMETRIC:
        raise ValueError(f"janus test: {family!r} has no asymmetric part; use one of "
                         f"{', '.join(ASYMMETRIC)}")
    part = asymmetric_part_mask(family, gt)                       # [N] bool
    if not bool(part.any()) or bool(part.all()):
        raise ValueError(f"janus test: the {family}'s part mask selects {int(part.sum())} of "
                         f"{len(gt)} gaussians")
    without = select(gt, ~part)
    mirrored_part = mirror_x(select(gt, part))
    return {"with": gt, "without": without, "mirrored": concat(without, mirrored_part),
            "both": concat(gt, mirrored_part)}


def _with_rgb(g: Gaussians, rgb: Tensor) -> Gaussians:
    return Gaussians(g.means, g.quats, g.scales, g.opacities, ((rgb - 0.5) / SH_C0)[:, None, :], 0)


def split_colours(g: Gaussians, base: Tensor, tol: float = 1e-3) -> tuple[Gaussians, Gaussians]:
    """Step 0: (unit, fixed) copies of `g` whose colours are k_i and f_i (the others black).

    A gaussian is the object's colour if rgb_i / base is the same in all channels (relative spread
    below `tol`): then k_i = that ratio; otherwise its colour is fixed (f_i = rgb_i, e.g. the door).

    Args:
        g: SH degree 0 gaussians.
        base: [3] the object's base colour (world.COLOURS), every channel > 0.
    """
    assert g.sh_degree == 0 and base.shape == (3,), (g.sh_degree, base.shape)
    rgb = (g.sh[:, 0] * SH_C0 + 0.5).clamp_min(0.0)               # [N, 3]
    ratio = rgb / base.to(rgb)                                    # [N, 3]
    hi, lo = ratio.amax(1), ratio.amin(1)                         # [N]
    body = (hi - lo) <= tol * hi.clamp_min(1e-6)                  # [N]
    k = torch.where(body, ratio.mean(1), torch.zeros_like(hi))    # [N]
    unit = k[:, None].expand(-1, 3)
    fixed = torch.where(body[:, None], torch.zeros_like(rgb), rgb)
    return _with_rgb(g, unit), _with_rgb(g, fixed)


# ---------------------------------------------------------------------------------------------
# Reference renders, regions and scores
# ---------------------------------------------------------------------------------------------
@dataclass
class JanusReference:
    """The three objects rendered from one camera set (step 0) and the regions of step 1."""
    unit: dict[str, Tensor]   # variant -> [C, 3, H, W] U on black
    fixed: dict[str, Tensor]  # variant -> [C, 3, H, W] F on black
    alpha: dict[str, Tensor]  # variant -> [C, 1, H, W]
    base: Tensor              # [3] the ground truth's base colour
    part_region: Tensor       # [C, 1, H, W] bool P
    mirror_region: Tensor     # [C, 1, H, W] bool Q
    body_region: Tensor       # [C, 1, H, W] bool: B's silhouette minus P and Q (colour fit)
    min_pixels: int

    def images(self, base: Tensor) -> dict[str, Tensor]:
        """variant -> [C, 4, H, W]: RGB on white in base colour `base` [3], then alpha."""
        b = base.to(self.unit["with"]).view(1, 3, 1, 1)
        return {v: torch.cat([b * self.unit[v] + self.fixed[v] + (1.0 - self.alpha[v]),
                              self.alpha[v]], dim=1) for v in VARIANTS}

    def fit_colour(self, rgb: Tensor) -> Tensor:
        """Step 0: least-squares base colour [3] in [0, 1] of the result `rgb` [C, 3, H, W] (on
        white) over the body pixels: b_c = sum(U_c y_c) / sum(U_c^2), y = rgb - F - (1 - alpha)."""
        m = self.body_region.to(rgb.dtype)                        # [C, 1, H, W]
        u = self.unit["without"]
        y = rgb - self.fixed["without"] - (1.0 - self.alpha["without"])
        num = (m * u * y).sum(dim=(0, 2, 3))                      # [3]
        den = (m * u * u).sum(dim=(0, 2, 3))                      # [3]
        if bool((den <= 1e-9).any()):
            return self.base.to(rgb)
        return (num / den).clamp(0.0, 1.0)


def janus_reference(
    family: str,
    gt: Gaussians,
    render_fn: RenderFn,
    base: Tensor,  # [3]
    diff: float = JANUS_DIFF,
    min_pixels: int | None = None,
) -> JanusReference:
    """Steps 0-1 of the module docstring for one camera set.

    Args:
        family: an asymmetric family (world.ASYMMETRIC).
        gt: its ground truth, `world.make_object(family, colour)`.
        render_fn: gaussians -> (rgb on black [C, 3, H, W], alpha [C, 1, H, W]), fixed cameras.
        base: [3] the ground truth's base colour, world.COLOURS[colour].
        diff: per-channel change that puts a pixel in a region.
        min_pixels: smallest region that counts in a view (default max(4, H * W / 1000)).
    """
    objs = janus_objects(family, gt)
    base = base.to(gt.means)
    unit, fixed, alpha = {}, {}, {}
    for v in VARIANTS:
        g_unit, g_fixed = split_colours(objs[v], base)
        unit[v], alpha[v] = render_fn(g_unit)
        if bool((g_fixed.sh[:, 0] * SH_C0 + 0.5 > 1e-6).any()):
            fixed[v] = render_fn(g_fixed)[0]
        else:
            fixed[v] = torch.zeros_like(unit[v])
    C, _, H, W = unit["with"].shape
    if min_pixels is None:
        min_pixels = max(4, (H * W) // 1000)
    ref = JanusReference(unit, fixed, alpha, base, part_region=torch.zeros(0),
                         mirror_region=torch.zeros(0), body_region=torch.zeros(0),
                         min_pixels=int(min_pixels))
    img = ref.images(base)
    true_px = (img["with"] - img["without"]).abs().amax(dim=1, keepdim=True) > diff   # [C,1,H,W]
    mirror_px = (img["mirrored"] - img["without"]).abs().amax(dim=1, keepdim=True) > diff
    ref.part_region = true_px & ~mirror_px
    ref.mirror_region = mirror_px & ~true_px
    ref.body_region = (alpha["without"] > 0.5) & ~true_px & ~mirror_px
    return ref


def region_scores(
    result: Tensor,     # [C, K, H, W] the result (RGB on white + alpha)
    with_part: Tensor,  # [C, K, H, W] the reference that has the part in the region
    without: Tensor,    # [C, K, H, W] the reference without it
    region: Tensor,     # [C, 1, H, W] bool
    min_pixels: int,
) -> Tensor:
    """Step 2: s_v = (e(without) - e(with)) / (e(without) + e(with) + 1e-6) per view.

    Returns:
        [C] float64 in [-1, 1]; NaN for a view whose region has fewer than `min_pixels` pixels.
    """
    assert result.shape == with_part.shape == without.shape and result.ndim == 4, \
        (result.shape, with_part.shape, without.shape)
    assert region.shape == (result.shape[0], 1, *result.shape[2:]), region.shape
    m = region.double()
    n = m.sum(dim=(1, 2, 3))                                                        # [C]
    r = result.double()
    e_with = ((r - with_part.double()).abs().mean(1, keepdim=True) * m).sum((1, 2, 3))
    e_without = ((r - without.double()).abs().mean(1, keepdim=True) * m).sum((1, 2, 3))
    e_with, e_without = e_with / n.clamp_min(1), e_without / n.clamp_min(1)
    s = (e_without - e_with) / (e_without + e_with + 1e-6)
    return torch.where(n >= min_pixels, s, torch.full_like(s, math.nan))


@dataclass
class JanusResult:
    part_views: int            # views where the true part's region counts
    part_seen: float           # fraction of them showing the part (NaN if none)
    mirror_views: int          # views where the mirrored region counts
    mirror_seen: float         # fraction of them showing a mirrored copy (NaN if none)
    janus: bool                # mirror_seen >= min_fraction
    verdict: str               # ok | two copies | flipped | missing
    colour: list[float]        # the fitted base colour b (step 0)
    part_scores: list[float]   # s_v per view (NaN: not counted)
    mirror_scores: list[float]

    def to_dict(self) -> dict:
        def num(x: float):
            return None if math.isnan(x) else round(float(x), 4)
        return {"janus": self.janus, "verdict": self.verdict,
                "part_views": self.part_views, "part_seen": num(self.part_seen),
                "mirror_views": self.mirror_views, "mirror_seen": num(self.mirror_seen),
                "colour": [num(x) for x in self.colour],
                "part_scores": [num(x) for x in self.part_scores],
                "mirror_scores": [num(x) for x in self.mirror_scores]}


def _fraction(scores: Tensor, margin: float) -> tuple[int, float]:
    ok = ~torch.isnan(scores)
    n = int(ok.sum())
    return n, (float((scores[ok] > margin).double().mean()) if n else math.nan)


def janus_test(
    rgb: Tensor,    # [C, 3, H, W] the result on WHITE, same cameras as `ref`
    alpha: Tensor,  # [C, 1, H, W] its alpha
    ref: JanusReference,
    margin: float = JANUS_MARGIN,
    min_fraction: float = JANUS_MIN_FRACTION,
    adapt_colour: bool = True,
) -> JanusResult:
    """Steps 0 and 2-3 of the module docstring: does the result show its part, and a mirrored copy?

    Args:
        rgb, alpha: renders of the result from the reference's cameras.
        ref: `janus_reference(...)` of the prompt's ground truth.
        margin: s_v above which the part shows in a view.
        min_fraction: fraction of counted views that decides.
        adapt_colour: draw the references in the result's fitted colour (step 0).
    Returns:
        JanusResult (fractions, verdict, fitted colour, per-view scores).
    """
    assert rgb.shape == ref.unit["with"].shape, (rgb.shape, ref.unit["with"].shape)
    assert alpha.shape == ref.alpha["with"].shape, (alpha.shape, ref.alpha["with"].shape)
    b = ref.fit_colour(rgb) if adapt_colour else ref.base.to(rgb)
    img = ref.images(b)
    res = torch.cat([rgb, alpha], dim=1)                                            # [C, 4, H, W]
    s_part = region_scores(res, img["with"], img["without"], ref.part_region, ref.min_pixels)
    s_mirror = region_scores(res, img["mirrored"], img["without"], ref.mirror_region,
                             ref.min_pixels)
    n_part, part_seen = _fraction(s_part, margin)
    n_mirror, mirror_seen = _fraction(s_mirror, margin)
    janus = n_mirror > 0 and mirror_seen >= min_fraction
    has_part = n_part > 0 and part_seen >= min_fraction
    if janus:
        verdict = "two copies" if has_part else "flipped"
    else:
        verdict = "ok" if has_part else "missing"
    return JanusResult(n_part, part_seen, n_mirror, mirror_seen, bool(janus), verdict,
                       b.tolist(), s_part.tolist(), s_mirror.tolist())
