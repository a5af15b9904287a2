"""Puts tests/ (for helper modules such as tiny_sd) and the repository root on sys.path."""
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> str:
    """A tiny random-weight Stable Diffusion 2 pipeline saved with save_pretrained (a local folder)."""
    from tiny_sd import make_tiny_sd

    path = tmp_path_factory.mktemp("tiny_sd") / "sd"
    make_tiny_sd(path)
    return str(path)
