"""Adaptive density control of the gaussians (3DGS densification), as a strategy object.

The contract follows gsplat's (hyperparameters fixed at construction, running state in a plain
dict the trainer keeps and checkpoints, two hooks), with one fixed signature and our own code:

    strategy = DensifyStrategy(cfg.strategy)
    state = strategy.init_state(N, device)
    for step in range(iters):                     # 0-based, the step train.py passes everywhere
        out = render(...); strategy.pre_backward(out.info)
        loss.backward(); optimizer steps
        stats = strategy.post_backward(params, optimizers, state, step, out.info)

post_backward runs after the optimizer steps of its iteration (as in gsplat), or before them
(`densify_before_step`, as the reference): it replaces Parameters, and a fresh Parameter has no
.grad, so in that order the replaced parameters skip the iteration's update, as the reference's.

What one `post_backward(step)` does, in this order:
Iterations are counted as the reference counts them, from 1: iteration i = step + 1.

1. Statistics (while i < densify_until): for every visible (radii > 0) pair (view, gaussian)
   add the screen-space gradient norm, converted to NDC units, to grad2d and 1 to count:
       g_ndc = dL/dmeans2d * [W/2, H/2] (* B with grad_scale_views, undoing a mean over B views)
   stats_views="all" uses all B views (our fix); "last" only the last one (the reference).
   max_radii keeps the largest screen radius (pixels) seen since the last densification.
2. Densify, at iterations with densify_from < i < densify_until and i % densify_every == 0
   (the reference's test; with the defaults i = 200, 300, ..., 2900):
   with mean grad grad2d / count >= grad_threshold,
     - clone  if max(exp(scales)) <= percent_dense * scene_extent: an exact copy is appended;
     - split  otherwise: 2 children drawn from the gaussian, x = mu + R (s * z), z ~ N(0, I),
              with scales s / 1.6 (= s / (0.8 * 2), as 3DGS); the parent is removed.
   Capped by max_gaussians (highest mean gradients first). Then prune opacity < prune_opacity and,
   when i > prune_big_after, max(exp(scales)) > max_world_scale or max_radii >
   max_screen_radius (0 disables the screen test; the reference's screen test never fires,
   because it zeroes max_radii2D just before pruning: graphdeco-inria/gaussian-splatting#123).
   Then grad2d, count and max_radii are reset to 0.
3. Opacity reset, at iterations with i % opacity_reset_every == 0 and i < reset_until (written
   out; gsplat 1.5.3's `step % n == 0 & step > 0` never fires):
   opacity = min(opacity, reset_opacity), done on the logits.

Every row edit keeps the Adam state aligned: surviving rows keep exp_avg / exp_avg_sq, new rows
(clones, split children) start at zero, Adam's "step" is kept. The opacity reset zeroes the
opacity moments (as 3DGS and gsplat do). Parameters are replaced in the ParameterDict and in
their optimizer (one Adam per name, one param_group with one parameter, as schedules.py builds).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .config import StrategyConfig
from .render.torch_backend import quat_to_rotmat

__all__ = ["DensifyStrategy", "StrategyError", "SPLIT_CHILDREN", "SPLIT_SCALE_DIV"]

# 3DGS densify_and_split: N = 2 samples, scales divided by 0.8 * N = 1.6.
SPLIT_CHILDREN = 2
SPLIT_SCALE_DIV = 0.8 * SPLIT_CHILDREN


class StrategyError(ValueError):
    """Params, optimizers, state and render info do not fit together."""


class DensifyStrategy:
    """Clone / split / prune / opacity reset of a gaussian ParameterDict (see the module doc)."""

    def __init__(self, cfg: StrategyConfig, seed: int = 0):
        """
        Args:
            cfg: the StrategyConfig (thresholds and schedule).
            seed: seeds the split samples; the draw at `step` uses seed and step only, so a
                resumed run splits exactly as an uninterrupted one.
        """
        if cfg.stats_views not in ("all", "last"):
            raise StrategyError(f"strategy.stats_views: {cfg.stats_views!r} is not all or last")
        self.cfg = cfg
        self.seed = seed

    # ------------------------------------------------------------------ schedule (pure)
    def is_densify_step(self, step: int) -> bool:
        """Densify after 0-based `step`: its iteration i = step + 1 has
        densify_from < i < densify_until and i % densify_every == 0."""
        c, i = self.cfg, step + 1
        return c.densify_from < i < c.densify_until and i % c.densify_every == 0

    def is_reset_step(self, step: int) -> bool:
        """Reset opacities after 0-based `step`: i = step + 1, i % every == 0, i < reset_until."""
        c, i = self.cfg, step + 1
        return i % c.opacity_reset_every == 0 and i < c.reset_until

    # ------------------------------------------------------------------ hooks
    def init_state(self, n: int, device) -> dict[str, Tensor]:
        """Running statistics: grad2d [N] (sum of NDC grad norms), count [N] (visits),
        max_radii [N] (pixels)."""
        return {k: torch.zeros(n, device=device) for k in ("grad2d", "count", "max_radii")}

    def pre_backward(self, info: dict[str, Any]) -> None:
        """Keep the gradient of info["means2d"] [C, N, 2] (a non-leaf tensor) after backward."""
        m = info["means2d"]
        if m.requires_grad and not m.is_leaf:
            m.retain_grad()

    @torch.no_grad()
    def post_backward(self, params: torch.nn.ParameterDict,
                      optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Tensor],
                      step: int, info: dict[str, Any]) -> dict[str, Any]:
        """Update statistics and, at scheduled steps, densify/prune and reset opacities.

        Args:
            params: raw gaussian parameters (edited in place: Parameters are replaced).
            optimizers: one optimizer per parameter name (their state is kept aligned).
            state: from `init_state`, edited in place.
            step: 0-based iteration index.
            info: the render's info: "means2d" [C, N, 2] with .grad, "radii" [C, N] (or
                [C, N, 2]) pixels, 0 = not visible, "width", "height".

        Returns:
            {"densified": bool, "n_clone", "n_split", "n_prune": int, "reset": bool,
             "n_gaussians": int}
        """
        c = self.cfg
        n = params["means"].shape[0]
        for k in ("grad2d", "count", "max_radii"):
            if state[k].shape != (n,):
                raise StrategyError(f"strategy state {k!r} has shape {tuple(state[k].shape)}, "
                                    f"expected ({n},): state and params are out of step")
        stats: dict[str, Any] = {"densified": False, "n_clone": 0, "n_split": 0, "n_prune": 0,
                                 "reset": False}
        if step + 1 < c.densify_until:
            self._accumulate(state, info, n)
        if self.is_densify_step(step):
            stats["n_clone"], stats["n_split"] = self._grow(params, optimizers, state, step)
            stats["n_prune"] = self._prune(params, optimizers, state, step)
            for k in ("grad2d", "count", "max_radii"):
                state[k].zero_()
            stats["densified"] = True
        if self.is_reset_step(step):
            self._reset_opacity(params, optimizers)
            stats["reset"] = True
        stats["n_gaussians"] = params["means"].shape[0]
        return stats

    # ------------------------------------------------------------------ 1. statistics
    def _accumulate(self, state: dict[str, Tensor], info: dict[str, Any], n: int) -> None:
        means2d = info["means2d"]
        grad = means2d.grad if (means2d.is_leaf or means2d.retains_grad) else None
        if grad is None:
            raise StrategyError("info['means2d'].grad is None: call strategy.pre_backward(info) "
                                "before loss.backward()")
        radii = info["radii"]
        if radii.dim() == 3:                      # [C, N, 2] per-axis radii -> the larger one
            radii = radii.max(dim=-1).values
        grad = grad.reshape(-1, n, 2)             # [C, 1, N, 2] when rendered with per-view scales
        radii = radii.reshape(-1, n)
        n_views = grad.shape[0]
        assert grad.shape == (n_views, n, 2), (grad.shape, n)
        assert radii.shape == (n_views, n), (radii.shape, n)
        if self.cfg.stats_views == "last":
            grad, radii = grad[-1:], radii[-1:]
        # 1. pixel gradient -> NDC gradient (NDC = 2 px / W - 1), times B to undo a view mean
        scale = grad.new_tensor([info["width"] / 2.0, info["height"] / 2.0])
        if self.cfg.grad_scale_views:
            scale = scale * n_views
        norms = (grad.float() * scale).norm(dim=-1)              # [C', N]
        norms = torch.nan_to_num(norms, nan=0.0, posinf=0.0)     # never poison the sums
        # 2. visible (view, gaussian) visits
        radii = radii.to(norms.dtype)
        vis = radii > 0                                          # [C', N]
        state["grad2d"] += torch.where(vis, norms, 0.0).sum(dim=0)
        state["count"] += vis.sum(dim=0).to(state["count"].dtype)
        state["max_radii"] = torch.maximum(state["max_radii"],
                                           torch.where(vis, radii, 0.0).amax(dim=0))

    # ------------------------------------------------------------------ 2. densify and prune
    def _grow(self, params, optimizers, state, step: int) -> tuple[int, int]:
        c = self.cfg
        n = params["means"].shape[0]
        grads = state["grad2d"] / state["count"].clamp_min(1.0)          # [N] mean NDC norm
        high = (grads >= c.grad_threshold) & (state["count"] > 0)
        small = torch.exp(params["scales"]).amax(dim=-1) <= c.percent_dense * c.scene_extent
        is_clone, is_split = high & small, high & ~small
        # cap: each clone or split adds one gaussian; keep the highest mean gradients
        if c.max_gaussians > 0:
            budget = max(c.max_gaussians - n, 0)
            cand = torch.nonzero(is_clone | is_split).squeeze(1)
            if cand.numel() > budget:
                order = torch.argsort(grads[cand], descending=True, stable=True)
                keep = torch.zeros_like(is_clone)
                keep[cand[order[:budget]]] = True
                is_clone &= keep
                is_split &= keep
        ci = torch.nonzero(is_clone).squeeze(1)                          # [Nc]
        si = torch.nonzero(is_split).squeeze(1)                          # [Ns]
        if ci.numel() == 0 and si.numel() == 0:
            return 0, 0

        # split children: x = mu + R (s * z), z ~ N(0, I); scales s / 1.6
        means = params["means"].detach()
        s = torch.exp(params["scales"].detach()[si])                     # [Ns, 3]
        rot = quat_to_rotmat(params["quats"].detach()[si])              # [Ns, 3, 3]
        gen = torch.Generator(device=means.device)
        gen.manual_seed((self.seed * 1_000_003 + step) % (2**63))
        z = torch.randn((SPLIT_CHILDREN, si.numel(), 3), generator=gen,
                        device=means.device, dtype=means.dtype)          # [2, Ns, 3]
        offsets = torch.einsum("sij,ksj->ksi", rot, z * s)               # [2, Ns, 3]
        child = {
            "means": (means[si][None] + offsets).reshape(-1, 3),         # [2 Ns, 3]
            "scales": torch.log(s / SPLIT_SCALE_DIV).repeat(SPLIT_CHILDREN, 1),
        }

        def new_rows(name: str, x: Tensor) -> Tensor:                  # [Nc + 2 Ns, ...]
            kids = child.get(name)
            if kids is None:
                kids = x[si].repeat(SPLIT_CHILDREN, *([1] * (x.dim() - 1)))
            return torch.cat([x[ci], kids.to(x.dtype)], dim=0)

        keep = torch.nonzero(~is_split).squeeze(1)
        self._edit_rows(params, optimizers, keep, new_rows)
        n_new = ci.numel() + SPLIT_CHILDREN * si.numel()
        zeros = state["grad2d"].new_zeros(n_new)
        state["grad2d"] = torch.cat([state["grad2d"][keep], zeros])
        state["count"] = torch.cat([state["count"][keep], zeros])
        # a clone has its parent's footprint; a child has not been seen yet
        r = state["max_radii"]
        state["max_radii"] = torch.cat([r[keep], r[ci], r.new_zeros(SPLIT_CHILDREN * si.numel())])
        return int(ci.numel()), int(si.numel())

    def _prune(self, params, optimizers, state, step: int) -> int:
        c = self.cfg
        prune = torch.sigmoid(params["opacities"]) < c.prune_opacity
        if step + 1 > c.prune_big_after:
            prune |= torch.exp(params["scales"]).amax(dim=-1) > c.max_world_scale
            if c.max_screen_radius > 0:
                prune |= state["max_radii"] > c.max_screen_radius
        n_prune = int(prune.sum())
        if n_prune:
            keep = torch.nonzero(~prune).squeeze(1)
            self._edit_rows(params, optimizers, keep, None)
            for k in ("grad2d", "count", "max_radii"):
                state[k] = state[k][keep]
        return n_prune

    # ------------------------------------------------------------------ 3. opacity reset
    def _reset_opacity(self, params, optimizers) -> None:
        cap = math.log(self.cfg.reset_opacity / (1.0 - self.cfg.reset_opacity))  # logit
        new = params["opacities"].detach().clamp(max=cap)
        self._replace(params, optimizers, "opacities", new, torch.zeros_like)

    # ------------------------------------------------------------------ parameter surgery
    def _edit_rows(self, params, optimizers, keep: Tensor,
                   new_rows: Callable[[str, Tensor], Tensor] | None) -> None:
        """Every parameter -> cat(x[keep], new_rows(name, x)); moments -> cat(m[keep], 0)."""
        for name in list(params.keys()):
            x = params[name].detach()
            extra = new_rows(name, x) if new_rows is not None else x[:0]

            def moment(m: Tensor, extra=extra) -> Tensor:
                return torch.cat([m[keep], m.new_zeros((extra.shape[0],) + m.shape[1:])])

            self._replace(params, optimizers, name, torch.cat([x[keep], extra]), moment)

    @staticmethod
    def _replace(params, optimizers, name: str, data: Tensor,
                 moment: Callable[[Tensor], Tensor]) -> None:
        """Swap params[name] for a new Parameter holding `data`, in the ParameterDict and in
        its optimizer; per-row optimizer state (tensors shaped like the old parameter) goes
        through `moment`, everything else (Adam's "step") is kept."""
        old = params[name]
        new = torch.nn.Parameter(data, requires_grad=old.requires_grad)
        params[name] = new
        opt = optimizers.get(name)
        if opt is None:
            return
        found = False
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                if p is old:
                    group["params"][i] = new
                    found = True
        if not found:
            raise StrategyError(f"the optimizer for {name!r} does not hold params[{name!r}]")
        st = opt.state.pop(old, None)
        if st is not None:
            opt.state[new] = {k: (moment(v) if torch.is_tensor(v) and v.dim() > 0
                                  and v.shape == old.shape else v)
                              for k, v in st.items()}
