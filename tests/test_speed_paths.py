"""The optimized training step and the eager baseline of benchmarks/bench_speed.py do the same math:
identical inputs, noise, t and s give the same gradient on the rendered views."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ism3d import config as C
from ism3d.cameras import sample_orbit
from ism3d.guidance import make_guidance
from ism3d.priors import load_prior
from ism3d.render import render
from ism3d.scene import activate, init_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_speed import render_views_one_by_one  # noqa: E402


def _grad_on_views(cfg: C.Config, prior, device, per_view: bool, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """d(ISM loss)/d(gaussian colours and means) for one step with a fixed generator."""
    gen = torch.Generator().manual_seed(seed)
    params = init_params(cfg.init, gen).to(device)
    cams = sample_orbit(cfg.camera, 0, cfg.train.batch, cfg.render.width, cfg.render.height, gen).to(device)
    bg = torch.ones(cfg.train.batch, 3, device=device)
    rfn = render_views_one_by_one(render) if per_view else render
    out = rfn(activate(params, cfg.init.sh_degree), cams, bg, backend=cfg.render.backend)
    guidance = make_guidance(prior, cfg.guidance, "a red cube")
    g = guidance(out.rgb, cams.azimuth, 1.0, gen)
    g.loss.backward()
    return torch.cat([params["sh0"].grad.flatten(), params["means"].grad.flatten()]), g.logs


def _cfg(prior_name: str, size: int) -> C.Config:
    return C.apply_overrides(C.preset_config("tiny"), {
        "prior.name": prior_name, "render.width": size, "render.height": size, "init.num_points": 300,
        "train.batch": 3, "guidance.method": "ism", "guidance.xs_inv_steps": 3, "guidance.delta_s": 200,
        "guidance.perp_neg": True, "guidance.view_prompts": True})


def test_baseline_and_optimized_paths_agree_cpu_float32(tiny_sd_dir):
    """CPU, float32, tiny SD: batched render (optimized) vs one view at a time (baseline)."""
    cfg = _cfg(tiny_sd_dir, 64)
    prior = load_prior(cfg.prior, "cpu")
    assert prior.dtype == torch.float32
    a, logs_a = _grad_on_views(cfg, prior, torch.device("cpu"), per_view=False)
    b, logs_b = _grad_on_views(cfg, prior, torch.device("cpu"), per_view=True)
    assert logs_a["t"] == logs_b["t"] and logs_a["s"] == logs_b["s"]
    assert logs_a["inv_calls"] >= 1
    assert a.abs().max() > 0
    # float32, sums in another order: differences at 1e-5 of the gradient scale are rounding
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_graphed_and_eager_paths_agree_gpu_fp16(tiny_sd_dir, channels_last):
    """CUDA, fp16: CUDA graphs + batched render (+ channels-last networks with our GroupNorm
    kernels) vs eager denoiser + one view at a time."""
    cfg = C.apply_overrides(_cfg(tiny_sd_dir, 64), {"prior.dtype": "fp16"})
    dev = torch.device("cuda")
    fast = load_prior(C.apply_overrides(cfg, {"prior.cuda_graphs": "true",
                                              "prior.channels_last": str(channels_last).lower()}).prior, dev)
    slow = load_prior(C.apply_overrides(cfg, {"prior.cuda_graphs": "false"}).prior, dev)
    assert fast._graphed is not None and slow._graphed is None and fast.channels_last == channels_last
    a, logs_a = _grad_on_views(cfg, fast, dev, per_view=False)
    b, logs_b = _grad_on_views(cfg, slow, dev, per_view=True)
    assert fast._graphed.replays >= 2
    assert logs_a["t"] == logs_b["t"] and logs_a["s"] == logs_b["s"]
    # half-precision tolerance relative to the gradient's scale
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3 * float(a.abs().max()))
