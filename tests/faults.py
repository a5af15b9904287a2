"""Fault injection for the reliability tests and benchmarks/soak_reliability.py (test-side only:
the product has no fault hooks).

    python tests/faults.py SPEC -- ARGS...     runs `ism3d ARGS...` with one fault armed

SPEC (N counts this process's checkpoint writes, from 1):
    none              no fault
    torn:N            the Nth checkpoint: half of its bytes reach the temporary file, then SIGKILL
    written:N         the Nth checkpoint is complete in its temporary file; SIGKILL before the
                      previous last.pt is kept as prev.pt
    rotated:N         prev.pt is made, the new file is not yet renamed over last.pt; SIGKILL
    export            SIGKILL when the final outputs start being written
    fill:DIR:N        before the Nth checkpoint is written, fill the file system of DIR (a small
                      tmpfs) with DIR/filler, so that the write meets a real ENOSPC
    fill-export:DIR   fill it when the final outputs start being written

The kill is SIGKILL sent by the process to itself (nothing runs after it: no finally, no atexit),
at exact points inside a checkpoint write that timed kills from outside rarely hit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A run small enough for kill storms on a 2-core CPU: 6 SDS steps (one denoiser call each), a
# checkpoint after each, ~600 gaussians at 32x32, views.png only (no video, gif or mesh).
FAST_RUN = ["--preset", "tiny", "--quiet", "--seed", "3", "--guidance", "sds", "train.iters=6",
            "train.batch=1",
            "train.checkpoint_every=1", "train.preview_every=0", "init.num_points=300",
            "strategy.max_gaussians=600", "output.video=false", "output.gif=false",
            "output.mesh=false", "output.video_size=32"]
PROMPT = "a blue sphere"


def fill(folder: Path) -> None:
    """Fill the file system of `folder` to the last byte (folder/filler)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 512, 64, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)


def arm(spec: str, setattr=setattr) -> None:
    """Patch ism3d's checkpoint writer (and the exporter) in this process to fail as `spec` says
    (`setattr`: e.g. pytest's monkeypatch.setattr, to undo it after a test)."""
    import ism3d.generate as G
    import ism3d.train as T

    kind, _, rest = spec.partition(":")
    if kind == "none":
        return
    if kind == "export":
        def export_killed(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(G, "export_outputs", export_killed)
        return
    if kind == "fill-export":
        export = G.export_outputs

        def export_on_full_disk(*a, **k):
            fill(Path(rest))
            return export(*a, **k)
        setattr(G, "export_outputs", export_on_full_disk)
        return
    where, n = (rest.rsplit(":", 1) if kind == "fill" else ("", rest))
    n, count = int(n), {"writes": 0}
    write_bytes, keep_copy = T._write_bytes, T.keep_copy

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def faulty_write(path, data):
        count["writes"] += 1
        if count["writes"] == n:
            if kind == "torn":
                with open(path, "wb") as f:
                    f.write(bytes(data)[: len(data) // 2])
                die()
            if kind == "fill":
                fill(Path(where))
        write_bytes(path, data)
        if count["writes"] == n and kind == "written":
            die()

    def faulty_keep(src, dst):
        keep_copy(src, dst)
        if count["writes"] == n and kind == "rotated":
            die()
    setattr(T, "_write_bytes", faulty_write)
    setattr(T, "keep_copy", faulty_keep)


def command(spec: str, *args: str) -> list[str]:
    """argv running `ism3d ARGS` with `spec` armed."""
    return [sys.executable, str(Path(__file__).resolve()), spec, "--", *args]


def ism3d(spec: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return subprocess.run(command(spec, *args), capture_output=True, text=True, timeout=timeout,
                          env=env)


def generate(spec: str, out: Path, *extra: str, resume: bool = False) -> subprocess.CompletedProcess:
    """The FAST_RUN of PROMPT into `out` with `spec` armed."""
    return ism3d(spec, "generate", PROMPT, "--out", str(out), *FAST_RUN, *extra,
                 *(["--resume"] if resume else []))


_REFERENCE: dict[str, Path] = {}


def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted FAST_RUN (made once per test session, in a subprocess): what every
    interrupted run must end as, byte for byte."""
    if "out" not in _REFERENCE:
        out = tmp_path_factory.mktemp("reference") / "run"
        r = generate("none", out)
        assert r.returncode == 0, r.stderr
        _REFERENCE["out"] = out
    return _REFERENCE["out"]


if __name__ == "__main__":
    spec, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: faults.py SPEC -- ARGS..."
    arm(spec)
    from ism3d.cli import main
    sys.exit(main(argv))


def one_error_line(err: str) -> str:
    """The single non-empty line of a refusal's stderr (asserting there is one, no traceback)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def same_ply(out: Path, reference: Path) -> bool:
    """Whether a run folder's gaussians.ply is byte-identical to the reference run's."""
    return (out / "gaussians.ply").read_bytes() == (reference / "gaussians.ply").read_bytes()
