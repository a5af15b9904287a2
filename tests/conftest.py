"""Puts tests/ (for helper modules such as tiny_sd) and the repository root on sys.path; runs
Triton kernels in the interpreter on machines without CUDA."""
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import os  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a GPU, our Triton kernels (ism3d/kernels) run in Triton's CPU interpreter, so the suite
# checks the kernels themselves and not only their torch fallbacks. Set before anything imports
# triton: `triton.jit` reads it when a kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> str:
    """A tiny random-weight Stable Diffusion 2 pipeline saved with save_pretrained (a local folder)."""
    from tiny_sd import make_tiny_sd

    path = tmp_path_factory.mktemp("tiny_sd") / "sd"
    make_tiny_sd(path)
    return str(path)
