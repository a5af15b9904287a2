"""End to end in a real headless browser: Debian's chromium driven by Playwright (Python), against
`ism3d serve` on loopback. Type a prompt, pick the tiny preset, press Generate, wait for the end,
check the 3D viewers, the video and the downloads, load the downloaded PLY, save a screenshot.

Needs /usr/bin/chromium (apt-get install -y chromium) and the `playwright` package (no browser
download: `playwright install` is never run); skipped, with that reason, without chromium.
ISM3D_APP_SCREENSHOT=FILE.png also copies the screenshot there.
"""
from __future__ import annotations

import io
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
