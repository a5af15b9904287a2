"""The trainer's guards: a non-finite loss or gradient never reaches the parameters."""
from __future__ import annotations

import torch
import pytest

from ism3d import config as C
from ism3d.priors import load_prior
from ism3d.train import CHECKPOINT, TrainingDiverged, load_checkpoint, train


class NaNAt:
    """Wraps a prior; its eps is NaN on the calls whose index is in `bad_calls` (None = always)."""

    def __init__(self, prior, bad_calls=None):
        self.prior, self.bad_calls, self.calls = prior, bad_calls, 0

    def __getattr__(self, name):
        return getattr(self.prior, name)

    def eps(self, x, t, emb):
        out = self.prior.eps(x, t, emb)
        bad = self.bad_calls is None or self.calls in self.bad_calls
        self.calls += 1
        return torch.full_like(out, float("nan")) if bad else out


def tiny_cfg(**over):
    base = {"train.iters": 6, "train.checkpoint_every": 0, "train.preview_every": 0,
            "init.num_points": 200, "strategy.densify_from": 1000, "guidance.xs_inv_steps": 1,
            "guidance.delta_s": 1000, "guidance.perp_neg": False, "guidance.skip_identity_inversion": False}
    base.update(over)
    return C.apply_overrides(C.preset_config("tiny"), base)


def test_always_nan_stops_with_untouched_parameters(tmp_path):
    cfg = tiny_cfg(**{"train.max_bad_steps": 3})
    prior = NaNAt(load_prior(cfg.prior, "cpu"))
    # The same seed gives the same initial parameters: take them from a zero-step reference.
    from ism3d.scene import init_params
    init = init_params(cfg.init, torch.Generator().manual_seed(cfg.train.seed))
    with pytest.raises(TrainingDiverged, match="3 consecutive"):
        train(cfg, "a red cube", prior, tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt["nonfinite_steps"] == 3 and ckpt["step"] == 3
    for k, v in init.items():
        assert torch.equal(ckpt["params"][k], v.detach()), k


def test_isolated_nan_steps_are_skipped_and_counted(tmp_path):
    cfg = tiny_cfg()
    # ISM with one inversion call and no Perp-Neg makes 3 eps calls per step: poison step 2 and 4.
    prior = NaNAt(load_prior(cfg.prior, "cpu"), bad_calls={3 * 1 + 2, 3 * 3 + 2})
    result = train(cfg, "a red cube", prior, tmp_path, progress=False)
    assert result.nonfinite_steps == 2 and result.steps_done == 6
    for k, v in result.params.items():
        assert torch.isfinite(v).all(), k
