"""View-dependent prompting (ism3d/guidance/prompts.py)."""
import zlib

import pytest
import torch

from ism3d.guidance.prompts import BACK, FRONT, SIDE, ViewPrompts, view_weights


class EmbedOnlyPrior:
    """Just enough of a DiffusionPrior for ViewPrompts: a deterministic embedding per string."""

    def __init__(self):
        self.embedded: list[str] = []
        self.checked: list[str] = []

    def check_prompt(self, text):
        self.checked.append(text)
        if "FORBIDDEN" in text:
            raise ValueError("prompt: FORBIDDEN is not allowed; remove it")

    def embed(self, prompts):
        self.embedded.extend(prompts)
        return torch.stack([self.one(p) for p in prompts])

    @staticmethod
    def one(p):
        g = torch.Generator().manual_seed(zlib.crc32(p.encode()))
        return torch.randn(3, 4, generator=g, dtype=torch.float64)


# azimuth -> (front hemisphere, r), by hand from the spec's table
HAND = {0: (True, 1.0), 30: (True, 2 / 3), 89: (True, 1 / 90), 90: (False, 1.0),
        135: (False, 0.5), 180: (False, 0.0), -45: (True, 0.5), -90: (False, 1.0),
        -135: (False, 0.5), -180: (False, 0.0)}


def test_view_weights_hand_values():
    az = torch.tensor([0.0, 30, 89, 90, 135, 180, -45, -90, -135, -180])
    front, r = view_weights(az)
    for i, a in enumerate(az.tolist()):
        f, rr = HAND[int(a)]
        assert bool(front[i]) == f, a
        assert r[i].item() == pytest.approx(rr, abs=1e-6), a
    # 270 degrees is -90: wrapped, same as -90
    f270, r270 = view_weights(torch.tensor([270.0]))
    assert (bool(f270), r270.item()) == (False, pytest.approx(1.0))


def test_view_prompts_embed_once_and_interpolate():
    prior = EmbedOnlyPrior()
    vp = ViewPrompts(prior, "a corgi", "blurry", view_prompts=True)
    assert prior.embedded == ["a corgi, front view", "a corgi, side view", "a corgi, back view",
                              "blurry", ""]
    f, s, b = (EmbedOnlyPrior.one(f"a corgi, {k} view") for k in ("front", "side", "back"))
    az = torch.tensor([0.0, 30, 89, 90, 135, 180, -45])
    y = vp.positive(az)
    assert y.shape == (7, 3, 4)
    expected = [f, 2 / 3 * f + 1 / 3 * s, f / 90 + 89 / 90 * s, s, 0.5 * s + 0.5 * b, b, 0.5 * f + 0.5 * s]
    for i, e in enumerate(expected):
        torch.testing.assert_close(y[i], e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(vp.negative(2), torch.stack([EmbedOnlyPrior.one("blurry")] * 2))
    torch.testing.assert_close(vp.empty(3), torch.stack([EmbedOnlyPrior.one("")] * 3))
    torch.testing.assert_close(vp.view(torch.tensor([BACK, FRONT, SIDE])), torch.stack([b, f, s]))
    assert len(prior.embedded) == 5   # nothing embedded per call


def test_view_prompts_off_uses_plain_prompt():
    prior = EmbedOnlyPrior()
    vp = ViewPrompts(prior, "a corgi", "", view_prompts=False)
    assert prior.embedded == ["a corgi", "", ""]
    y = vp.positive(torch.tensor([0.0, 120.0, -170.0]))
    torch.testing.assert_close(y, torch.stack([EmbedOnlyPrior.one("a corgi")] * 3))


def test_bad_prompt_is_rejected_by_the_prior():
    with pytest.raises(ValueError, match="FORBIDDEN"):
        ViewPrompts(EmbedOnlyPrior(), "a FORBIDDEN corgi", "")
