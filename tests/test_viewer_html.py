"""The offline viewer (ism3d/export/viewer.py) in a real headless browser (Debian's chromium driven
by Playwright, network off): the object is drawn in the middle and not in the corners, and a side
view of the ToyWorld chair matches our own renderer's (upright, backrest on the expected side)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from ism3d.cameras import orbit_cameras
from ism3d.export.viewer import write_viewer
from ism3d.render import render
from ism3d.scene import deactivate
from ism3d.toyworld.world import make_object

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
SIZE = 192


@pytest.fixture(scope="module")
def chair():
    return make_object("chair", "red", n_points=1500)


@pytest.fixture(scope="module")
def shots(chair, tmp_path_factory):
    """Screenshots of the chair's viewer page: the default view and a side view (az 90)."""
    from playwright.sync_api import sync_playwright
    from PIL import Image

    folder = tmp_path_factory.mktemp("viewer")
    page_path = write_viewer(deactivate(chair), folder / "view.html", title="a red chair")
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            requests = []
            for name, frag in (("default", ""), ("side", "#az=90&el=0&r=3.5&center=0")):
                page = browser.new_page(viewport={"width": SIZE, "height": SIZE})
                page.on("request", lambda r: requests.append(r.url))
                page.goto(page_path.as_uri() + frag)
                page.wait_for_selector("body[data-drawn='1']", timeout=30_000)
                page.add_style_tag(content="#info{display:none}")      # the help line, not the object
                page.wait_for_timeout(100)
                png = page.locator("#c").screenshot()
                out[name] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int32)
        finally:
            browser.close()
    assert all(u.startswith("file:") for u in requests), requests      # nothing from the network
    return out


def test_viewer_draws_the_object_in_the_middle_and_leaves_the_corners_white(shots):
    img = shots["default"]
    assert img.shape[:2] == (SIZE, SIZE)
    painted = (img < 235).any(-1)
    c = SIZE // 2
    assert painted[c - 20:c + 20, c - 20:c + 20].mean() > 0.5
    for corner in (painted[:12, :12], painted[:12, -12:], painted[-12:, :12], painted[-12:, -12:]):
        assert not corner.any()
    red = (img[..., 0] > img[..., 1] + 40) & (img[..., 0] > img[..., 2] + 40)
    assert red.sum() > 0.5 * painted.sum()                              # the chair's own colour


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_side_view_matches_our_renderer_upright_and_not_mirrored(shots, chair):
    cams = orbit_cameras(torch.tensor([90.0]), torch.tensor([90.0]), torch.tensor([3.5]),
                         torch.tensor([0.55]), SIZE, SIZE)
    ours = render(chair, cams, torch.ones(3), backend="torch").alpha[0, 0].numpy() > 0.5       # [C, 1, H, W]
    theirs = (shots["side"] < 235).any(-1)
    assert ours.sum() > 500
    same = iou(ours, theirs)
    print(f"viewer vs renderer silhouette IoU {same:.3f}, mirrored {iou(ours, theirs[:, ::-1]):.3f}, "
          f"upside down {iou(ours, theirs[::-1, :]):.3f}")
    assert same > 0.75, same
    # the chair is not symmetric left-right or up-down from the side: a mirrored or upside-down
    # viewer would score far lower
    assert iou(ours, theirs[:, ::-1]) < same - 0.15
    assert iou(ours, theirs[::-1, :]) < same - 0.15
