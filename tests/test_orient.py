"""orient.py: turning a finished scene about the vertical so that its front faces azimuth 0."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from ism3d import config as C
from ism3d.cameras import orbit_cameras
from ism3d.orient import TURNS, choose_turn, turn_losses, turn_params
from ism3d.ply import load_ply, save_ply
from ism3d.priors import load_prior
from ism3d.render import render
from ism3d.scene import activate, deactivate
from ism3d.toyworld.world import make_object

from test_frames import random_params, rotmat


def test_turn_params_turns_means_and_axes_and_keeps_the_rest():
    p = random_params(n=50, sh_degree=0)
    for deg in (90.0, 180.0, 33.0):
        t = turn_params(p, deg)
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        torch.testing.assert_close(t["means"].double(), p["means"].double() @ rz.T)
        # each gaussian's axes turn with it: R(q') = Rz R(q) (rotmat is written out in the test)
        torch.testing.assert_close(rotmat(t["quats"].double()), rz @ rotmat(p["quats"].double()),
                                   rtol=1e-5, atol=1e-6)
        for k in ("scales", "opacities", "sh0"):
            assert torch.equal(t[k], p[k]), k
    # four quarter turns give the scene back; the input is not modified
    q = p
    for _ in range(4):
        q = turn_params(q, 90.0)
    torch.testing.assert_close(q["means"], p["means"], atol=1e-5, rtol=0)
    torch.testing.assert_close(rotmat(q["quats"].double()), rotmat(p["quats"].double()), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="SH degree 0"):
        turn_params(random_params(n=5, sh_degree=1), 90.0)


def test_a_turned_scene_seen_from_the_turned_azimuth_looks_the_same():
    """The identity turn_losses relies on: object turned by theta, seen from a + theta, equals the
    object seen from a (so one set of renders serves every turn)."""
    p = random_params(n=300, sh_degree=0, seed=3)
    az = torch.tensor([0.0, 45.0, 200.0], dtype=torch.float64)
    polar, one = torch.full_like(az, 70.0), torch.ones_like(az)
    white = torch.ones(3)
    base = render(activate(p, 0), orbit_cameras(polar, az, one * 3.0, one * 0.6, 24, 24), white).rgb
    for theta in TURNS[1:]:
        cams = orbit_cameras(polar, az + theta, one * 3.0, one * 0.6, 24, 24)
        turned = render(activate(turn_params(p, theta), 0), cams, white).rgb
        torch.testing.assert_close(turned, base, atol=2e-4, rtol=0)


def test_choose_turn_needs_the_margin():
    assert choose_turn({0: 1.0, 90: 1.01, 180: 0.99, 270: 1.0}, margin=0.005) == 180
    assert choose_turn({0: 1.0, 90: 1.01, 180: 0.998, 270: 1.0}, margin=0.005) == 0
    assert choose_turn({0: 0.9, 90: 1.0, 180: 1.0, 270: 1.0}, margin=0.0) == 0


@pytest.fixture(scope="module")
def toy_prior():
    return load_prior(C.preset_config("toy").prior, torch.device("cpu"))


@pytest.mark.parametrize("family,colour", [("chair", "orange"), ("mug", "red")])
def test_the_shipped_prior_finds_the_turn_that_faces_a_turned_object_front(toy_prior, family, colour):
    """The true object turned 180 degrees (front to the back) is turned back: the shipped prior's
    view-conditioned loss is lowest for the 180 turn, clearly above any margin."""
    cam = C.preset_config("toy").camera
    gt = deactivate(make_object(family, colour))
    for wrong in (0, 180):
        g = activate(turn_params(gt, wrong), 0)
        losses = turn_losses(g, toy_prior, f"a {colour} {family}", radius=cam.eval_radius,
                             fovy=cam.eval_fovy, polars=cam.eval_polars)
        assert set(losses) == set(TURNS)
        assert choose_turn(losses, margin=0.003) == (-wrong) % 360, losses


def test_generate_with_orient_saves_the_scene_facing_front(tmp_path):
    """End to end: a run started from the true chair turned 180 degrees, 2 steps, ends as the true
    chair's orientation in gaussians.ply, and the summary says which turn it took."""
    gt = deactivate(make_object("chair", "orange"))
    init = tmp_path / "turned.ply"
    save_ply(init, turn_params(gt, 180.0), 0)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "ism3d", "generate", "an orange chair", "--out", str(out),
                        "--quiet", "--device", "cpu", "init.kind=file", f"init.path={init}",
                        "init.num_points=0", "train.iters=2", "output.orient=true", "output.video=false",
                        "output.gif=false", "output.mesh=false"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["orient"]["turn_degrees"] == 180, summary["orient"]
    params, _ = load_ply(out / "gaussians.ply")
    # two small steps move the gaussians little: the saved cloud is the true chair's, not the turned one's
    def front_back(means):   # mean x of the points: the chair's backrest sits on one side
        return means[:, 0].mean().item()
    assert math.copysign(1, front_back(params["means"])) == math.copysign(1, front_back(gt["means"]))
    assert abs(front_back(params["means"]) - front_back(gt["means"])) < 0.5 * abs(front_back(gt["means"]))


def test_orient_config_is_checked():
    with pytest.raises(C.ConfigError, match="output.orient"):
        C.validate(C.apply_overrides(C.preset_config("toy"), {"output.orient": True, "init.sh_degree": 1}))
