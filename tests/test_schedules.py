"""LR schedules against closed forms; optimizer layout."""
import math

import pytest
import torch

from ism3d.config import OptimConfig
from ism3d.schedules import lr_for_step, log_linear, make_optimizers, set_lrs


def test_log_linear_closed_form():
    start, end, total = 5.6e-4, 5.6e-6, 5000
    assert log_linear(0, total, start, end) == pytest.approx(start, rel=1e-14)
    assert log_linear(total, total, start, end) == pytest.approx(end, rel=1e-14)
    # midpoint = geometric mean; a quarter in = start^(3/4) end^(1/4)
    mid, quarter = math.sqrt(start * end), start ** 0.75 * end ** 0.25
    assert log_linear(total / 2, total, start, end) == pytest.approx(mid, rel=1e-13)
    assert log_linear(1250, total, start, end) == pytest.approx(quarter, rel=1e-13)
    # constant per-step ratio (end / start)^(1 / total)
    r = (end / start) ** (1 / total)
    for s in (1, 17, 4999):
        assert log_linear(s, total, start, end) / log_linear(s - 1, total, start, end) == \
            pytest.approx(r, rel=1e-12)
    # clamped outside [0, total]
    assert log_linear(-5, total, start, end) == pytest.approx(start, rel=1e-14)
    assert log_linear(2 * total, total, start, end) == pytest.approx(end, rel=1e-14)
    # start == end is exactly constant
    assert log_linear(123, total, 0.05, 0.05) == 0.05


def test_log_linear_rejects_bad_input():
    with pytest.raises(ValueError):
        log_linear(0, 0, 1e-3, 1e-4)
    with pytest.raises(ValueError):
        log_linear(0, 10, 0.0, 1e-4)


def test_lr_for_step_maps_every_parameter():
    cfg = OptimConfig()
    total = 5000
    # the schedule runs on the reference's 1-based iteration = step + 1: step -1 would be the
    # start rates, step total/2 - 1 the geometric mean, the last step (total - 1) the end rates
    lr0, lrm, lr1 = (lr_for_step(cfg, s - 1, total) for s in (0, total // 2, total))
    assert set(lr0) == {"means", "sh0", "shN", "opacities", "scales", "quats"}
    expect = {"means": cfg.means_lr, "sh0": cfg.colors_lr, "opacities": cfg.opacities_lr,
              "scales": cfg.scales_lr, "quats": cfg.quats_lr}
    for name, (a, b) in expect.items():
        assert lr0[name] == pytest.approx(a, rel=1e-14)
        assert lr1[name] == pytest.approx(b, rel=1e-14)
        assert lrm[name] == pytest.approx(math.sqrt(a * b), rel=1e-13)
    for lr in (lr0, lrm, lr1):
        assert lr["shN"] == pytest.approx(lr["sh0"] / 20, rel=1e-15)
    # the spec's numbers: xyz 5.6e-4 -> 5.6e-6, colour 0.005 -> 0.003, opacity 0.05 constant
    assert lr0["means"] == pytest.approx(5.6e-4) and lr1["means"] == pytest.approx(5.6e-6)
    assert lrm["opacities"] == 0.05
    assert lr1["sh0"] == pytest.approx(0.003)


def make_params(n=5):
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(n, 3)),
        "scales": torch.nn.Parameter(torch.randn(n, 3)),
        "quats": torch.nn.Parameter(torch.randn(n, 4)),
        "opacities": torch.nn.Parameter(torch.randn(n)),
        "sh0": torch.nn.Parameter(torch.randn(n, 1, 3)),
        "shN": torch.nn.Parameter(torch.zeros(n, 0, 3)),
    })


def test_make_optimizers_layout_and_set_lrs():
    cfg = OptimConfig(adam_eps=1e-15)
    params = make_params()
    opts = make_optimizers(params, cfg)
    assert set(opts) == set(params.keys())
    lr0 = lr_for_step(cfg, 0, 10)
    assert lr0["means"] == pytest.approx(log_linear(1, 10, *cfg.means_lr), rel=1e-14)
    for name, opt in opts.items():
        assert isinstance(opt, torch.optim.Adam)
        assert len(opt.param_groups) == 1
        (group,) = opt.param_groups
        assert len(group["params"]) == 1 and group["params"][0] is params[name]
        assert group["eps"] == 1e-15
        assert group["lr"] == pytest.approx(lr_for_step(cfg, -1, 10)[name])   # the start rates
    # one Adam step works, even for the empty shN of degree 0
    for p in params.values():
        p.grad = torch.ones_like(p)
    before = params["means"].detach().clone()
    for o in opts.values():
        o.step()
    # Adam's first step moves each entry by lr (sign of the gradient)
    torch.testing.assert_close(before - params["means"].detach(),
                               torch.full_like(before, cfg.means_lr[0]), rtol=1e-4, atol=0)
    lrs = lr_for_step(cfg, 7, 10)
    set_lrs(opts, lrs)
    for name, opt in opts.items():
        assert opt.param_groups[0]["lr"] == lrs[name]
    with pytest.raises(ValueError, match="means"):
        set_lrs(opts, {k: v for k, v in lrs.items() if k != "means"})


def test_make_optimizers_rejects_unknown_parameter():
    params = make_params()
    params["extra"] = torch.nn.Parameter(torch.zeros(5))
    with pytest.raises(ValueError, match="extra"):
        make_optimizers(params, OptimConfig())
