"""A stand-in `point_e` package with the API ism3d/inits/point_e.py calls (no weights, no network),
as a pytest fixture: it records every call and returns a fixed chair-like cloud."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch


def fake_point_e_cloud() -> np.ndarray:
    """[6, 4096] a chair-like cloud in Point-E's frame (z up, front -y): a seat slab, a tall
    back at +y (behind), a red 'nose' marker at the front (-y); channels in 0..255."""
    rng = np.random.default_rng(1)
    seat = rng.uniform([-0.3, -0.3, -0.05], [0.3, 0.3, 0.05], size=(2048, 3))
    back = rng.uniform([-0.3, 0.25, 0.0], [0.3, 0.3, 0.6], size=(1948, 3))
    nose = rng.uniform([-0.05, -0.45, 0.0], [0.05, -0.4, 0.05], size=(100, 3))
    xyz = np.concatenate([seat, back, nose])
    rgb = np.tile([20.0, 200.0, 90.0], (4096, 1))
    rgb[-100:] = [250.0, 10.0, 40.0]
    return np.concatenate([xyz, rgb], axis=1).T


@pytest.fixture
def fake_point_e(monkeypatch):
    """Installs a stand-in `point_e` with the API point_e.py calls; records every call."""
    rec: dict = {"checkpoints": [], "models": []}

    class Model(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name
            self.w = torch.nn.Parameter(torch.zeros(1))

    class Sampler:
        def __init__(self, **kw):
            rec["sampler"] = kw

        def sample_batch(self, batch_size, model_kwargs):
            rec["sample"] = (batch_size, model_kwargs)
            base = torch.from_numpy(fake_point_e_cloud()).float()[None]      # [1, 6, 4096]
            noise = torch.rand(1, 3, 4096) * 1e-3                            # global RNG
            return torch.cat([base[:, :3] + noise, base[:, 3:]], dim=1)

        def output_to_point_clouds(self, out):
            s = out[0]
            ch = s[3:].clamp(0, 255).round() / 255.0
            return [types.SimpleNamespace(coords=s[:3].t().numpy(),
                                          channels={k: ch[i].numpy() for i, k in enumerate("RGB")})]

    def load_checkpoint(name, device, cache_dir=None):
        rec["checkpoints"].append((name, cache_dir))
        return {"w": torch.zeros(1)}

    def model_from_config(config, device):
        rec["models"].append(config["name"])
        return Model(config["name"])

    mods = {
        "point_e": types.ModuleType("point_e"),
        "point_e.diffusion": types.ModuleType("point_e.diffusion"),
        "point_e.diffusion.configs": types.SimpleNamespace(
            DIFFUSION_CONFIGS={"base40M-textvec": {"d": 1}, "upsample": {"d": 2}},
            diffusion_from_config=lambda c: ("diffusion", c["d"])),
        "point_e.diffusion.sampler": types.SimpleNamespace(PointCloudSampler=Sampler),
        "point_e.models": types.ModuleType("point_e.models"),
        "point_e.models.configs": types.SimpleNamespace(
            MODEL_CONFIGS={"base40M-textvec": {"name": "base"}, "upsample": {"name": "up"}},
            model_from_config=model_from_config),
        "point_e.models.download": types.SimpleNamespace(load_checkpoint=load_checkpoint),
    }
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)
    return rec
