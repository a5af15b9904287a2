"""Video / GIF / PNG writers (atomic), the view grid, and the PLY turntable with the real renderer."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ism3d.export import video as V
from ism3d.export import ExportError, atomic_write, views_grid, write_png, write_video

# distinct solid colours, including saturated R, G, B to catch a channel swap
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 240), (20, 20, 20),
           (128, 64, 200), (90, 180, 120), (255, 200, 0), (60, 60, 60), (150, 150, 150)]


def solid_frames(h, w, colours=COLOURS):
    return np.stack([np.broadcast_to(np.array(c, np.uint8), (h, w, 3)) for c in colours])


def read_mp4(path):
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = gen.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    return meta, np.stack(frames)


def only_file(folder, name):
    assert sorted(os.listdir(folder)) == [name], os.listdir(folder)  # no temp file left behind


# ------------------------------------------------------------------------------ mp4 / gif / png
def test_mp4_roundtrip_count_size_colours(tmp_path):
    frames = solid_frames(30, 40)
    out = write_video(frames, tmp_path / "t.mp4", fps=12)
    assert out == tmp_path / "t.mp4"
    only_file(tmp_path, "t.mp4")
    meta, back = read_mp4(out)
    assert back.shape == (len(COLOURS), 30, 40, 3)
    assert meta["fps"] == pytest.approx(12)
    # lossy (H.264, yuv420p) but a solid colour survives within a few levels, in order, as RGB
    mean = back.reshape(len(COLOURS), -1, 3).mean(1)
    np.testing.assert_allclose(mean, np.array(COLOURS, float), atol=6)


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    frames = solid_frames(31, 33)[:4].copy()
    frames[:, :, -1] = 255   # last column white, repeated by the padding
    write_video(frames, tmp_path / "odd.mp4", fps=10)
    _, back = read_mp4(tmp_path / "odd.mp4")
    assert back.shape == (4, 32, 34, 3)
    assert back[:, 5:25, -2:].mean() > 240     # padded column copies the white edge


def test_gif_roundtrip_count_size_loop(tmp_path):
    frames = solid_frames(24, 20)
    write_video(frames, tmp_path / "t.gif", fps=20)
    only_file(tmp_path, "t.gif")
    with Image.open(tmp_path / "t.gif") as im:
        assert im.format == "GIF" and im.size == (20, 24)
        assert im.n_frames == len(COLOURS)
        assert im.info.get("loop") == 0                       # loops forever
        assert im.info.get("duration") == 50                  # 1000 / 20 fps
        got = []
        for i in range(im.n_frames):
            im.seek(i)
            got.append(np.asarray(im.convert("RGB")).reshape(-1, 3).mean(0))
    np.testing.assert_allclose(np.array(got), np.array(COLOURS, float), atol=2)


def test_png_and_grid(tmp_path):
    frames = np.stack([np.full((6, 5, 3), 10 * i, np.uint8) for i in range(8)])
    grid = views_grid(frames, cols=4)
    assert grid.shape == (12, 20, 3)
    for i in range(8):
        r, c = divmod(i, 4)
        assert (grid[r * 6:(r + 1) * 6, c * 5:(c + 1) * 5] == 10 * i).all()
    g5 = views_grid(frames[:5], cols=4)
    assert g5.shape == (12, 20, 3) and (g5[6:, 5:] == 255).all() and (g5[6:, :5] == 40).all()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    write_png(img, tmp_path / "sub" / "g.png")               # parent folder created
    only_file(tmp_path / "sub", "g.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "g.png").convert("RGB")), img)
    # tensors are accepted too
    write_png(torch.from_numpy(img), tmp_path / "sub" / "g.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "g.png").convert("RGB")), img)


def test_bad_arguments(tmp_path):
    frames = solid_frames(8, 8)
    with pytest.raises(ExportError, match=r"\.mp4, \.gif"):
        write_video(frames, tmp_path / "t.avi", fps=10)
    with pytest.raises(ExportError, match="uint8"):
        write_video(frames.astype(np.float32) / 255, tmp_path / "t.mp4", fps=10)
    with pytest.raises(ExportError, match=r"\[F, H, W, 3\]"):
        write_video(frames[..., :2], tmp_path / "t.mp4", fps=10)
    with pytest.raises(ExportError):
        write_video(frames, tmp_path / "t.mp4", fps=0)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ atomicity
def test_successful_write_replaces_existing(tmp_path):
    dst = tmp_path / "t.gif"
    dst.write_bytes(b"old")
    write_video(solid_frames(8, 8)[:3], dst, fps=10)
    assert dst.read_bytes()[:3] == b"GIF"
    only_file(tmp_path, "t.gif")


def test_failed_mp4_leaves_no_temp_and_keeps_existing(tmp_path, monkeypatch):
    import imageio_ffmpeg
    dst = tmp_path / "t.mp4"
    dst.write_bytes(b"old video")
    seen = {}

    def broken_writer(path, size, **kw):   # writes part of a file, then fails mid-stream
        seen["path"] = path
        with open(path, "wb") as f:
            f.write(b"partial")
        yield
        yield
        raise OSError("disk full")

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        write_video(solid_frames(8, 8), dst, fps=10)
    # the writer was given a hidden temp name in the same folder, with the .mp4 extension
    name = os.path.basename(seen["path"])
    assert os.path.dirname(seen["path"]) == str(tmp_path)
    assert name.startswith(".t.mp4.tmp") and name.endswith(".mp4")
    assert dst.read_bytes() == b"old video"
    only_file(tmp_path, "t.mp4")


def test_failed_png_and_interrupt_leave_no_temp(tmp_path, monkeypatch):
    dst = tmp_path / "g.png"
    dst.write_bytes(b"old png")

    def broken_save(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("boom")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="boom"):
        write_png(np.zeros((4, 4, 3), np.uint8), dst)
    assert dst.read_bytes() == b"old png"
    only_file(tmp_path, "g.png")
    monkeypatch.undo()

    def interrupted(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(dst, interrupted)
    assert dst.read_bytes() == b"old png"
    only_file(tmp_path, "g.png")
    # a writer that silently writes nothing is an error, not an empty file
    with pytest.raises(OSError, match="no file"):
        atomic_write(tmp_path / "x.png", lambda tmp: None)
    only_file(tmp_path, "g.png")


# ------------------------------------------------------------------------------ turntable
def _have_renderer():
    try:
        import ism3d.render  # noqa: F401
        import ism3d.scene  # noqa: F401
        import ism3d.ply  # noqa: F401
    except ImportError:
        return False
    return True


SH_C0 = 0.28209479177387814


def _three_blobs_ply(path):
    """Red blob at +y, green at +z, blue at the origin (sh degree 0)."""
    from ism3d.ply import save_ply
    means = torch.tensor([[0.0, 0.6, 0.0], [0.0, 0.0, 0.6], [0.0, 0.0, 0.0]])
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    params = {
        "means": means,
        "scales": torch.full((3, 3), math.log(0.08)),
        "quats": torch.tensor([[1.0, 0, 0, 0]] * 3),
        "opacities": torch.full((3,), math.log(0.97 / 0.03)),
        "sh0": ((colours - 0.5) / SH_C0)[:, None, :],
        "shN": torch.zeros(3, 0, 3),
    }
    save_ply(path, params, 0)


def _blob_centre(cell, colour):
    """Pixel centroid (col, row) of pixels close to a pure colour in an RGB uint8 cell."""
    d = np.abs(cell.astype(int) - np.array(colour)).sum(-1)
    rows, cols = np.nonzero(d < 200)
    assert len(rows) > 3, f"colour {colour} not found"
    return cols.mean(), rows.mean()


DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.skipif(not _have_renderer(), reason="ism3d.render / scene / ply not written yet")
@pytest.mark.parametrize("device", DEVICES)
def test_turntable_png_mp4_gif_with_real_renderer(tmp_path, device):
    """On CUDA this runs the gsplat backend (auto): it checks gsplat sees our conventions too."""
    ply = tmp_path / "blobs.ply"
    _three_blobs_ply(ply)
    S = 48
    # 8-view grid: positions follow the camera conventions end to end
    out = V.render_turntable(ply, tmp_path / "views.png", size=S, radius=3.5, fovy=0.55,
                             device=device)
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (2 * S, 4 * S, 3)
    cell = lambda i: grid[(i // 4) * S:(i // 4 + 1) * S, (i % 4) * S:(i % 4 + 1) * S]  # noqa: E731
    # view 0 (front, camera on +x): +y blob on the right, +z blob above the centre
    rx, ry = _blob_centre(cell(0), (255, 0, 0))
    gx, gy = _blob_centre(cell(0), (0, 255, 0))
    assert rx > S / 2 + 5 and abs(ry - S / 2) < 3
    assert gy < S / 2 - 5 and abs(gx - S / 2) < 3
    # view 2 (azimuth 90, camera on +y): the red blob is in front of the others, at the centre
    rx2, ry2 = _blob_centre(cell(2), (255, 0, 0))
    assert abs(rx2 - S / 2) < 3 and abs(ry2 - S / 2) < 3
    # view 4 (back, camera on -x): +y is on the left
    rx4, _ = _blob_centre(cell(4), (255, 0, 0))
    assert rx4 < S / 2 - 5
    # background white in the corners
    assert (grid[:3, :3] > 250).all()

    # videos: frame count and size (the GPU machine has no ffmpeg: mp4 is covered by the CPU run)
    import importlib.util
    has_mp4 = device == "cpu" or importlib.util.find_spec("imageio_ffmpeg") is not None
    if has_mp4:
        V.render_turntable(ply, tmp_path / "t.mp4", frames=12, size=32, fps=12, device=device)
        _, back = read_mp4(tmp_path / "t.mp4")
        assert back.shape == (12, 32, 32, 3)
    V.render_turntable(ply, tmp_path / "t.gif", frames=12, size=32, fps=12, device=device)
    with Image.open(tmp_path / "t.gif") as im:
        assert im.size == (32, 32) and im.n_frames == 12
    assert sorted(os.listdir(tmp_path)) == sorted(["blobs.ply", "t.gif", "views.png"]
                                                  + (["t.mp4"] if has_mp4 else []))


@pytest.mark.skipif(not _have_renderer(), reason="ism3d.render / scene / ply not written yet")
def test_ring_frames_chunking_is_invisible(tmp_path):
    from ism3d.cameras import eval_ring
    from ism3d.ply import load_ply
    from ism3d.scene import activate
    ply = tmp_path / "blobs.ply"
    _three_blobs_ply(ply)
    params, deg = load_ply(ply)
    g = activate(params, deg)
    cams = eval_ring(7, 24, 20, 3.5, 0.55)
    a = V.render_ring_frames(g, cams, (1.0, 1.0, 1.0), chunk=3)
    b = V.render_ring_frames(g, cams, (1.0, 1.0, 1.0), chunk=7)
    assert a.shape == (7, 20, 24, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_turntable_rejects_unknown_extension_before_loading(tmp_path):
    with pytest.raises(ExportError, match=r"\.mp4, \.gif, \.png"):
        V.render_turntable(tmp_path / "does-not-exist.ply", tmp_path / "out.webm")
    assert os.listdir(tmp_path) == []


def test_render_refuses_empty_or_non_finite_gaussians(tmp_path):
    """`ism3d render` of a PLY with no gaussians or NaN values: one ExportError, nothing written."""
    from ism3d.export.views import render_eval
    from ism3d.ply import save_ply
    from ism3d.scene import init_params
    from ism3d.config import InitConfig

    params = init_params(InitConfig(num_points=50), torch.Generator().manual_seed(0))
    empty = {k: v.detach()[:0] for k, v in params.items()}
    save_ply(tmp_path / "empty.ply", empty, 0)
    with pytest.raises(ExportError, match="no gaussians"):
        render_eval(tmp_path / "empty.ply", tmp_path / "a.png")
    bad = {k: v.detach().clone() for k, v in params.items()}
    bad["opacities"][3] = float("nan")
    save_ply(tmp_path / "nan.ply", bad, 0)
    with pytest.raises(ExportError, match="opacities hold NaN"):
        render_eval(tmp_path / "nan.ply", tmp_path / "b.png")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
