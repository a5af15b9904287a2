"""End to end in a real headless browser: Debian's chromium driven by Playwright (Python), against
`ism3d serve` on loopback. Type a prompt, pick the tiny preset, press Generate, wait for the end,
check the 3D viewers, the video and the downloads, load the downloaded PLY, save a screenshot.

Needs /usr/bin/chromium (apt-get install -y chromium) and the `playwright` package (no browser
download: `playwright install` is never run); skipped, with that reason, without chromium.
ISM3D_APP_SCREENSHOT=FILE.png also copies the screenshot there.
"""
from __future__ import annotations

import io
import math
import json
import os
import shutil
from pathlib import Path

import pytest
from servers import free_port

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")

# The network is closed: without these flags chromium stalls on start-up calls home. SwiftShader
# gives WebGL without a GPU (the Model3D viewers need it).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
FAST = "train.batch=1 output.video_frames=8 output.gif=false output.mesh_resolution=32"


@pytest.fixture
def app(tmp_path):
    from ism3d.app.jobs import JobManager
    from ism3d.app.server import launch

    manager = JobManager(tmp_path / "runs", devices=["cpu"])
    demo, url = launch(manager, port=free_port(), block=False, quiet=True)
    yield manager, url
    demo.close()


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def _painted(png: bytes) -> float:
    """Standard deviation of a screenshot's pixels (0 for a blank canvas)."""
    import numpy as np
    from PIL import Image
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


def test_generate_in_a_real_browser(app, page, tmp_path):
    from ism3d.ply import load_ply

    manager, url = app
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)

    # 1. the form: prompt, the tiny preset (fills the prior), 3 iterations, fast exports
    page.fill("#prompt textarea", "a red cube")
    page.click("#preset input")
    page.fill("#preset input", "tiny")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#prior textarea, #prior input').value === 'tiny'")
    page.fill("#iters input", "3")
    page.fill("#preview-every input", "2")
    page.get_by_text("Config overrides").click()
    page.fill("#overrides textarea", FAST)

    # 2. Generate, watch the live status, wait for the end
    page.click("#generate")
    page.wait_for_function("/^Step \\d+\\/3/.test(document.querySelector('#status').innerText)",
                           timeout=180_000)
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Done')",
                           timeout=180_000)
    status = page.inner_text("#status")
    assert status.startswith("Done a_red_cube: 3 steps"), status
    run = manager.root / "a_red_cube"
    summary = json.loads((run / "summary.json").read_text())

    # 3. the result: both 3D viewers draw on a canvas, the video plays the turntable
    page.wait_for_selector("#splat canvas", timeout=60_000)
    page.wait_for_selector("#mesh canvas", timeout=60_000)
    page.wait_for_selector("#preview img", timeout=30_000)
    src = page.get_attribute("#video video", "src")
    assert src and src.endswith("/turntable.mp4"), src
    page.wait_for_timeout(2000)                    # let the viewers draw a few frames
    assert _painted(page.locator("#splat canvas").screenshot()) > 1.0

    # 4. the downloads: PLY, GLB, MP4 and summary.json, byte for byte the run's files
    for elem, name in (("dl-ply", "gaussians.ply"), ("dl-glb", "mesh.glb"),
                       ("dl-mp4", "turntable.mp4"), ("dl-summary", "summary.json")):
        with page.expect_download(timeout=30_000) as dl:
            page.click(f"#{elem}")
        saved = tmp_path / "downloads" / name
        dl.value.save_as(saved)
        assert saved.read_bytes() == (run / name).read_bytes(), name
    params, _ = load_ply(tmp_path / "downloads" / "gaussians.ply")
    assert params["means"].shape[0] == summary["num_gaussians"] > 0

    # 5. the gallery lists the run; nothing was fetched from outside this machine
    assert "a red cube · done" in page.inner_text("#gallery")
    outside = [u for u in requests if not u.startswith((url.rstrip("/"), "data:", "blob:"))]
    assert not outside, outside

    # 6. a screenshot of the whole page
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ISM3D_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ISM3D_APP_SCREENSHOT"])


def _bars_run(root: Path) -> None:
    """A finished run whose gaussians are a red bar along our up axis (+z) with a green ball on
    its top and a blue bar along +y: upright, the red bar is vertical and the blue one level."""
    import numpy as np
    import torch
    from PIL import Image

    from ism3d.ply import save_ply
    from ism3d.scene import rgb_to_sh0

    t = torch.linspace(-0.8, 0.8, 120)
    zero = torch.zeros_like(t)
    ball = torch.randn(150, 3, generator=torch.Generator().manual_seed(0)) * 0.07 + torch.tensor([0, 0, 0.9])
    means = torch.cat([torch.stack([zero, zero, t], 1), torch.stack([zero, t, zero], 1), ball])
    rgb = torch.cat([torch.tensor([[0.9, 0.1, 0.1]]).expand(120, 3), torch.tensor([[0.1, 0.1, 0.9]]).expand(120, 3),
                     torch.tensor([[0.1, 0.8, 0.1]]).expand(150, 3)])
    n = means.shape[0]
    run = root / "bars"
    save_ply(run / "gaussians.ply", {
        "means": means, "scales": torch.full((n, 3), math.log(0.04)), "quats": torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4),
        "opacities": torch.full((n,), 4.0), "sh0": rgb_to_sh0(rgb)[:, None], "shN": torch.zeros(n, 0, 3)}, 0,
        frame="y-down")                              # as generate writes it (output.frame)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(run / "views.png")
    (run / "summary.json").write_text(json.dumps({"prompt": "bars", "status": "done", "iterations": 1,
                                                  "iterations_planned": 1}))


def _box(mask) -> tuple[float, float, float, float]:
    """(centre row, centre column, height, width) of a boolean mask's pixels."""
    import numpy as np
    rows, cols = np.nonzero(mask)
    assert rows.size > 20, "colour not found in the viewer"
    return rows.mean(), cols.mean(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_splat_viewer_shows_the_object_upright_on_white(app, page):
    import numpy as np
    from PIL import Image

    manager, url = app
    _bars_run(manager.root)
    page.goto(url)
    page.wait_for_selector("#gallery img", timeout=30_000)
    page.locator("#gallery img").first.click()
    page.wait_for_selector("#splat canvas", timeout=60_000)
    page.wait_for_timeout(3000)                    # the orbit camera eases in over a few frames
    png = page.locator("#splat canvas").screenshot()
    if os.environ.get("ISM3D_SPLAT_SCREENSHOT"):
        Path(os.environ["ISM3D_SPLAT_SCREENSHOT"]).write_bytes(png)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    red, green, blue = (r > 150) & (g < 90) & (b < 90), (g > 130) & (r < 90) & (b < 90), (b > 150) & (r < 90) & (g < 90)
    ry, rx, rh, rw = _box(red)
    gy, gx, _, _ = _box(green)
    by, bx, bh, bw = _box(blue)
    assert rh > 2.5 * rw, (rh, rw)                  # our up axis is vertical on screen
    assert gy < ry - 0.3 * rh, (gy, ry, rh)         # ... and points up: the ball is on top
    assert bw > 2.5 * bh, (bw, bh)                  # a level axis stays level
    corner = img[-16:-6, 6:16]                     # (the top corners hold the label and button)
    assert corner.min() > 240, corner.min()        # on white, not black
    assert not (manager.root / "bars" / "viewer").exists()     # no turned copy: the run's own file
