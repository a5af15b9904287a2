"""Densification strategy on small synthetic scenes with hand-set gradients and radii."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ism3d.config import OptimConfig, StrategyConfig
from ism3d.schedules import make_optimizers
from ism3d.strategy import DensifyStrategy, StrategyError

W, H = 64, 32


def logit(p):
    return math.log(p / (1 - p))


def make_scene(rows, sh_degree=1, seed=0):
    """rows: dicts with scale (world, isotropic or 3 values), opacity, optional mean/quat."""
    g = torch.Generator().manual_seed(seed)
    n = len(rows)
    k1 = (sh_degree + 1) ** 2 - 1
    means = torch.randn(n, 3, generator=g)
    scales = torch.empty(n, 3)
    quats = torch.randn(n, 4, generator=g)
    for i, r in enumerate(rows):
        s = r["scale"]
        scales[i] = torch.log(torch.tensor(s if isinstance(s, (list, tuple)) else [s] * 3))
        if "mean" in r:
            means[i] = torch.tensor(r["mean"])
        if "quat" in r:
            quats[i] = torch.tensor(r["quat"])
    tensors = {
        "means": means, "scales": scales, "quats": quats,
        "opacities": torch.tensor([logit(r["opacity"]) for r in rows]),
        "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.randn(n, k1, 3, generator=g),
    }
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in tensors.items()})


def warm_optimizers(params, seed=1):
    """Optimizers with one Adam step taken, so every row has distinct, non-zero moments."""
    opts = make_optimizers(params, OptimConfig())
    g = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=g)
    for o in opts.values():
        o.step()
        o.zero_grad(set_to_none=True)
    return opts


def fake_info(grads, radii, device="cpu"):
    """grads [C, N, 2] (d loss / d pixel coords), radii [C, N]: a leaf means2d carrying .grad."""
    grads = torch.as_tensor(grads, dtype=torch.float32, device=device)
    means2d = torch.zeros(grads.shape, device=device, requires_grad=True)
    means2d.grad = grads.clone()
    return {"means2d": means2d,
            "radii": torch.as_tensor(radii, dtype=torch.int32, device=device),
            "width": W, "height": H, "n_cameras": grads.shape[0]}


def snapshot_moments(params, opts):
    return {k: {s: v.clone() for s, v in opts[k].state[params[k]].items()} for k in params}


def assert_aligned(params, opts, state):
    n = params["means"].shape[0]
    for k, p in params.items():
        assert p.shape[0] == n, k
        (group,) = opts[k].param_groups
        assert group["params"] == [p] and group["params"][0] is p, k
        st = opts[k].state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape, k
        assert len(opts[k].state) == 1, k   # no stale entries for replaced Parameters
    for k in ("grad2d", "count", "max_radii"):
        assert state[k].shape == (n,), k


def ndc_norm(g, n_views, scale_views=True):
    f = n_views if scale_views else 1
    return float(np.hypot(g[0] * W / 2 * f, g[1] * H / 2 * f))


# ---------------------------------------------------------------------------- the schedule
def test_schedule_steps_with_defaults():
    s = DensifyStrategy(StrategyConfig())
    # the reference's 1-based iterations 200, 300, ..., 2900 (iteration > 100, not at 100) are
    # our 0-based steps 199, ..., 2899; resets at iterations 300, ..., 2700 (< 3000)
    assert [t + 1 for t in range(5000) if s.is_densify_step(t)] == list(range(200, 3000, 100))
    assert [t + 1 for t in range(5000) if s.is_reset_step(t)] == [300, 600, 900, 1200, 1500, 1800,
                                                                  2100, 2400, 2700]
    # the reference's own loop, written out: `iteration > densify_from_iter and iteration %
    # densification_interval == 0` inside `iteration < densify_until_iter`
    ref = [it for it in range(1, 5001) if it < 3000 and it > 100 and it % 100 == 0]
    assert [t + 1 for t in range(5000) if s.is_densify_step(t)] == ref
    # the gsplat 1.5.3 expression this replaces never fires (a chained comparison)
    assert not any((t % 300 == 0 & t > 0) for t in range(1, 5000))


def test_opacity_reset_fires_exactly_at_scheduled_steps():
    cfg = StrategyConfig(opacity_reset_every=3, reset_until=10, densify_from=10**6,
                         densify_until=10**6 + 1)
    strat = DensifyStrategy(cfg)
    params = make_scene([{"scale": 0.01, "opacity": 0.5}, {"scale": 0.01, "opacity": 0.004}])
    opts = warm_optimizers(params)
    state = strat.init_state(2, "cpu")
    fired = []
    for step in range(16):
        with torch.no_grad():
            params["opacities"].copy_(torch.tensor([logit(0.5), logit(0.004)]))
        opts["opacities"].state[params["opacities"]]["exp_avg"].fill_(0.25)
        out = strat.post_backward(params, opts, state, step, fake_info(np.zeros((1, 2, 2)),
                                                                       [[1, 1]]))
        op = torch.sigmoid(params["opacities"].detach())
        if out["reset"]:
            fired.append(step)
            # lowered to reset_opacity, never raised; opacity moments zeroed (3DGS/gsplat)
            assert op[0] == pytest.approx(cfg.reset_opacity, rel=1e-6)
            assert op[1] == pytest.approx(0.004, rel=1e-6)
            assert not opts["opacities"].state[params["opacities"]]["exp_avg"].any()
        else:
            assert op[0] == pytest.approx(0.5, rel=1e-6)
            assert (opts["opacities"].state[params["opacities"]]["exp_avg"] == 0.25).all()
        assert_aligned(params, opts, state)
    assert fired == [2, 5, 8]                     # iterations 3, 6, 9


# ---------------------------------------------------------------------------- clone / split / prune
def test_clone_split_prune_and_adam_moments():
    cfg = StrategyConfig()   # clone if max scale <= 0.003 * 3.5 = 0.0105
    strat = DensifyStrategy(cfg, seed=3)
    rows = [
        {"scale": 0.005, "opacity": 0.5},    # 0: high grad, small  -> clone
        {"scale": [0.05, 0.02, 0.03], "opacity": 0.6},  # 1: high grad, large -> split
        {"scale": 0.005, "opacity": 0.001},  # 2: low opacity -> prune
        {"scale": 0.005, "opacity": 0.5},    # 3: low grad -> stays
        {"scale": 0.005, "opacity": 0.5},    # 4: high grad but never visible -> stays
    ]
    params = make_scene(rows)
    opts = warm_optimizers(params)
    old = {k: v.detach().clone() for k, v in params.items()}
    before = snapshot_moments(params, opts)
    state = strat.init_state(5, "cpu")
    big, small = [1e-3, -2e-3], [1e-6, 0.0]
    grads = [[big, big, small, small, big]]
    info = fake_info(grads, [[3, 3, 3, 3, 0]])
    stats = strat.post_backward(params, opts, state, 199, info)     # iteration 200

    assert stats == {"densified": True, "n_clone": 1, "n_split": 1, "n_prune": 1, "reset": False,
                     "n_gaussians": 6}
    assert_aligned(params, opts, state)
    # rows: survivors [0, 3, 4], the clone of 0, the 2 children of 1
    m = params["means"].detach()
    assert torch.equal(m[:3], old["means"][[0, 3, 4]])
    for k in ("means", "scales", "quats", "opacities", "sh0", "shN"):
        assert torch.equal(params[k].detach()[3], old[k][0]), k          # exact clone
    for k in ("quats", "opacities", "sh0", "shN"):
        assert torch.equal(params[k].detach()[4:], old[k][[1, 1]]), k    # children copy
    torch.testing.assert_close(params["scales"].detach()[4:],
                               torch.log(torch.exp(old["scales"][[1, 1]]) / 1.6))
    off = m[4:] - old["means"][1]
    assert (off.norm(dim=1) > 0).all() and (off.norm(dim=1) < 5 * 0.05).all()
    # Adam: survivors keep their moments, new rows start at zero, "step" unchanged
    for k in params:
        st = opts[k].state[params[k]]
        for s in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st[s][:3], before[k][s][[0, 3, 4]]), (k, s)
            assert not st[s][3:].any(), (k, s)
        assert torch.equal(st["step"], before[k]["step"])
    # statistics reset
    assert not state["grad2d"].any() and not state["count"].any() and not state["max_radii"].any()
    # the optimizers still step the new Parameters
    for p in params.values():
        p.grad = torch.ones_like(p)
    for o in opts.values():
        o.step()
    assert_aligned(params, opts, state)


def test_split_children_are_drawn_from_the_gaussian():
    """Children offsets x - mu have covariance R diag(s^2) R^T; deterministic per (seed, step)."""
    n = 3000
    s = [0.1, 0.02, 0.05]
    q = torch.tensor([0.8, 0.2, -0.4, 0.3])
    rows = [{"scale": s, "opacity": 0.5, "mean": [1.0, 2.0, 3.0], "quat": q.tolist()}] * n

    def run(seed, step):
        params = make_scene(rows)
        opts = make_optimizers(params, OptimConfig())
        strat = DensifyStrategy(StrategyConfig(), seed=seed)
        state = strat.init_state(n, "cpu")
        st = strat.post_backward(params, opts, state, step,
                                 fake_info(np.full((1, n, 2), 1e-3), np.ones((1, n))))
        assert st["n_split"] == n and st["n_gaussians"] == 2 * n
        return params

    p = run(0, 199)
    off = (p["means"].detach().double() - torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    # rotation matrix from the quaternion, computed independently (scipy uses x, y, z, w)
    from scipy.spatial.transform import Rotation
    qn = (q / q.norm()).double().numpy()
    R = Rotation.from_quat([qn[1], qn[2], qn[3], qn[0]]).as_matrix()
    cov_ref = R @ np.diag(np.square(s)) @ R.T
    cov = np.cov(off.numpy().T)
    assert np.abs(cov - cov_ref).max() < 0.08 * np.square(s).max()
    assert np.abs(off.numpy().mean(0)).max() < 4 * 0.1 / math.sqrt(2 * n)
    torch.testing.assert_close(p["scales"].detach(),
                               torch.log(torch.tensor(s) / 1.6).expand(2 * n, 3))
    assert torch.equal(run(0, 199)["means"], p["means"])
    assert not torch.equal(run(0, 299)["means"], p["means"])


def test_big_gaussians_pruned_only_after_prune_big_after():
    cfg = StrategyConfig()   # prune_big_after 300, max_screen_radius 20 px, max_world_scale 0.35
    rows = [{"scale": 0.5, "opacity": 0.5},    # world-big
            {"scale": 0.005, "opacity": 0.5},  # screen-big (radius 30 px)
            {"scale": 0.005, "opacity": 0.5}]  # fine
    radii = [[4, 30, 5]]
    zero = np.zeros((1, 3, 2))

    def run(cfg, step):
        params = make_scene(rows)
        opts = warm_optimizers(params)
        means = params["means"].detach().clone()
        strat = DensifyStrategy(cfg)
        state = strat.init_state(3, "cpu")
        stats = strat.post_backward(params, opts, state, step, fake_info(zero, radii))
        assert_aligned(params, opts, state)
        return stats, params, means

    stats, _, _ = run(cfg, 299)                    # iteration 300: densifies, not after 300
    assert stats["densified"] and stats["n_prune"] == 0 and stats["n_gaussians"] == 3
    stats, params, means = run(cfg, 399)
    assert stats["n_prune"] == 2
    assert torch.equal(params["means"].detach(), means[[2]])
    stats, params, means = run(replace(cfg, max_screen_radius=0.0), 399)  # screen test off
    assert stats["n_prune"] == 1
    assert torch.equal(params["means"].detach(), means[[1, 2]])


def test_max_gaussians_keeps_the_highest_gradients():
    cfg = StrategyConfig(max_gaussians=5)
    rows = [{"scale": 0.005, "opacity": 0.5}] * 4
    params = make_scene(rows)
    opts = warm_optimizers(params)
    means = params["means"].detach().clone()
    strat = DensifyStrategy(cfg)
    state = strat.init_state(4, "cpu")
    grads = [[[1e-3, 0], [3e-3, 0], [0, 0], [2e-3, 0]]]   # three candidates, room for one
    stats = strat.post_backward(params, opts, state, 199, fake_info(grads, [[1, 1, 1, 1]]))
    assert stats["n_clone"] == 1 and stats["n_gaussians"] == 5
    assert torch.equal(params["means"].detach()[4], means[1])
    assert_aligned(params, opts, state)
    # full: nothing grows
    state = strat.init_state(5, "cpu")
    stats = strat.post_backward(params, opts, state, 299,
                                fake_info(np.full((1, 5, 2), 1e-2), np.ones((1, 5))))
    assert stats["n_clone"] == 0 and stats["n_gaussians"] == 5


# ---------------------------------------------------------------------------- statistics
VIEW_GRADS = np.array([
    [[1e-4, 2e-4], [3e-5, 0.0], [1.0, 1.0]],      # view 0; gaussian 2 is not visible here
    [[0.0, 1e-4], [5.0, 5.0], [2e-5, 2e-5]],      # view 1; gaussian 1 is not visible here
])
VIEW_RADII = np.array([[3, 4, 0], [5, 0, 7]])


@pytest.mark.parametrize("views", ["all", "last"])
@pytest.mark.parametrize("scale_views", [True, False])
def test_statistics_all_vs_last_views(views, scale_views):
    cfg = StrategyConfig(stats_views=views, grad_scale_views=scale_views)
    strat = DensifyStrategy(cfg)
    state = strat.init_state(3, "cpu")
    params = make_scene([{"scale": 0.01, "opacity": 0.5}] * 3)
    opts = make_optimizers(params, OptimConfig())
    strat.post_backward(params, opts, state, 5, fake_info(VIEW_GRADS, VIEW_RADII))
    used = [0, 1] if views == "all" else [1]
    exp_g, exp_c, exp_r = np.zeros(3), np.zeros(3), np.zeros(3)
    for c in used:
        for i in range(3):
            if VIEW_RADII[c, i] > 0:
                exp_g[i] += ndc_norm(VIEW_GRADS[c, i], 2, scale_views)
                exp_c[i] += 1
                exp_r[i] = max(exp_r[i], VIEW_RADII[c, i])
    np.testing.assert_allclose(state["grad2d"].numpy(), exp_g, rtol=1e-6)
    np.testing.assert_array_equal(state["count"].numpy(), exp_c)
    np.testing.assert_array_equal(state["max_radii"].numpy(), exp_r)
    if views == "all":
        np.testing.assert_array_equal(exp_c, [2, 1, 1])
    else:
        np.testing.assert_array_equal(exp_c, [1, 0, 1])
    # a second call accumulates
    strat.post_backward(params, opts, state, 6, fake_info(VIEW_GRADS, VIEW_RADII))
    np.testing.assert_allclose(state["grad2d"].numpy(), 2 * exp_g, rtol=1e-6)
    np.testing.assert_array_equal(state["count"].numpy(), 2 * exp_c)


def test_all_views_densifies_what_last_view_misses():
    """A gaussian with a high gradient in view 0 only: cloned with 'all', not with 'last'."""
    grads = [[[2e-3, 0.0]], [[0.0, 0.0]]]
    radii = [[2], [2]]
    result = {}
    for views in ("all", "last"):
        params = make_scene([{"scale": 0.005, "opacity": 0.5}])
        opts = make_optimizers(params, OptimConfig())
        strat = DensifyStrategy(StrategyConfig(stats_views=views))
        state = strat.init_state(1, "cpu")
        result[views] = strat.post_backward(params, opts, state, 199, fake_info(grads, radii))
    # all: mean over 2 visits of |2e-3 * 32 * 2| = 0.064 >= 0.00075; last: 0
    assert result["all"]["n_clone"] == 1 and result["last"]["n_clone"] == 0


def test_radii_per_axis_and_no_stats_after_densify_until():
    cfg = StrategyConfig(densify_until=50)
    strat = DensifyStrategy(cfg)
    params = make_scene([{"scale": 0.01, "opacity": 0.5}] * 3)
    opts = make_optimizers(params, OptimConfig())
    state = strat.init_state(3, "cpu")
    info = fake_info(VIEW_GRADS, VIEW_RADII)
    info["radii"] = torch.stack([info["radii"], info["radii"] - 1], dim=-1)  # [C, N, 2]
    strat.post_backward(params, opts, state, 10, info)
    np.testing.assert_array_equal(state["max_radii"].numpy(), [5, 4, 7])
    g = state["grad2d"].clone()
    strat.post_backward(params, opts, state, 50, fake_info(VIEW_GRADS, VIEW_RADII))
    assert torch.equal(state["grad2d"], g)


def test_pre_backward_with_real_autograd():
    strat = DensifyStrategy(StrategyConfig())
    params = make_scene([{"scale": 0.01, "opacity": 0.5}] * 4)
    opts = make_optimizers(params, OptimConfig())
    state = strat.init_state(4, "cpu")
    # a toy "projection": pixel coords from the means, for 2 views
    means2d = torch.stack([params["means"][:, :2] * 10.0, params["means"][:, 1:] * 5.0])  # [2,4,2]
    info = {"means2d": means2d, "radii": torch.ones(2, 4, dtype=torch.int32), "width": W,
            "height": H}
    strat.pre_backward(info)
    (means2d.square().sum() * 1e-3).backward()
    expected = 2e-3 * means2d.detach()                                  # d loss / d means2d
    strat.post_backward(params, opts, state, 1, info)
    ref = (expected * torch.tensor([W / 2 * 2, H / 2 * 2])).norm(dim=-1).sum(0)
    torch.testing.assert_close(state["grad2d"], ref)
    # forgetting pre_backward leaves no gradient on a non-leaf means2d: a clear error
    m2 = params["means"][None, :, :2] * 1.0
    m2.sum().backward()
    with pytest.raises(StrategyError, match="pre_backward"):
        strat.post_backward(params, opts, state, 2, {"means2d": m2, "radii": torch.ones(1, 4),
                                                     "width": W, "height": H})


def test_misaligned_state_is_an_error():
    strat = DensifyStrategy(StrategyConfig())
    params = make_scene([{"scale": 0.01, "opacity": 0.5}] * 3)
    opts = make_optimizers(params, OptimConfig())
    with pytest.raises(StrategyError, match="grad2d"):
        strat.post_backward(params, opts, strat.init_state(2, "cpu"), 1,
                            fake_info(np.zeros((1, 3, 2)), np.ones((1, 3))))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_densify_on_cuda_matches_cpu_counts():
    rows = [{"scale": 0.005, "opacity": 0.5}, {"scale": 0.05, "opacity": 0.6},
            {"scale": 0.005, "opacity": 0.001}, {"scale": 0.005, "opacity": 0.5}]
    grads = [[[1e-3, 0], [1e-3, 0], [0, 0], [0, 0]], [[0, 1e-3], [0, 0], [0, 0], [0, 0]]]
    radii = [[2, 2, 2, 2], [2, 0, 2, 2]]
    out = {}
    for dev in ("cpu", "cuda"):
        params = make_scene(rows).to(dev)
        opts = make_optimizers(params, OptimConfig())
        for p in params.values():
            p.grad = torch.ones_like(p)
        for o in opts.values():
            o.step()
        strat = DensifyStrategy(StrategyConfig(), seed=1)
        state = strat.init_state(4, dev)
        info = fake_info(grads, radii, device=dev)
        out[dev] = strat.post_backward(params, opts, state, 299, info)
        assert_aligned(params, opts, state)
        assert all(v.device.type == dev for v in state.values())
        assert params["opacities"].device.type == dev
    assert out["cpu"] == out["cuda"]
    assert out["cpu"]["n_clone"] == 1 and out["cpu"]["n_split"] == 1 and out["cpu"]["reset"]
