"""CUDA-graph replay of the denoiser (ism3d/priors/cuda_graph.py): same values as the eager call."""
from __future__ import annotations

import pytest
import torch

from ism3d import config as C
from ism3d.priors import load_prior
from ism3d.priors.cuda_graph import GraphedCall

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cpu_prior_stays_eager():
    prior = load_prior(C.PriorConfig(name="tiny", cuda_graphs=True), "cpu")
    assert prior.enable_cuda_graphs() is False
    assert prior._graphed is None
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    emb = prior.embed(["a red cube", ""])
    direct = prior.unet(x, t, encoder_hidden_states=emb).sample
    assert torch.equal(prior.eps(x, t, emb), direct.float())


def test_graphed_call_rejects_cpu_tensors():
    with pytest.raises(AssertionError, match="CUDA"):
        GraphedCall(lambda a: a * 2)(torch.ones(3))


@pytest.mark.gpu
@gpu
def test_graphed_call_replays_per_signature_and_copies_out():
    calls = []

    def fn(a, b):
        calls.append(1)
        return torch.sin(a) * b + a.sum()

    g = GraphedCall(fn)
    a1, b1 = torch.randn(4, 8, device="cuda"), torch.randn(4, 8, device="cuda")
    a2, b2 = torch.randn(4, 8, device="cuda"), torch.randn(4, 8, device="cuda")
    o1 = g(a1, b1)
    o2 = g(a2, b2)                        # replay: overwrites the static output, not o1
    assert g.captures == 1 and g.replays == 2
    torch.testing.assert_close(o1, fn(a1, b1), rtol=0, atol=0)
    torch.testing.assert_close(o2, fn(a2, b2), rtol=0, atol=0)
    o3 = g(torch.randn(2, 8, device="cuda"), torch.randn(2, 8, device="cuda"))
    assert g.captures == 2 and o3.shape == (2, 8)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", ["tiny", "sd"])
def test_graphed_denoiser_matches_eager(name, tiny_sd_dir):
    """The replayed graph runs the same kernels: identical eps for identical inputs."""
    prior_cfg = C.PriorConfig(name="tiny" if name == "tiny" else str(tiny_sd_dir), cuda_graphs=False)
    prior = load_prior(prior_cfg, "cuda")
    c, h, w = prior.latent_shape
    gen = torch.Generator().manual_seed(1)
    emb = prior.embed(["a red cube", "", "a red cube", ""])
    xs = [torch.randn(4, c, h, w, generator=gen).cuda() for _ in range(3)]
    ts = [torch.randint(0, 1000, (4,), generator=gen).cuda() for _ in range(3)]
    eager = [prior.eps(x, t, emb) for x, t in zip(xs, ts)]
    assert prior.enable_cuda_graphs()
    graphed = [prior.eps(x, t, emb) for x, t in zip(xs, ts)]
    assert prior._graphed.captures == 1 and prior._graphed.replays == 3
    for e, g in zip(eager, graphed):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
