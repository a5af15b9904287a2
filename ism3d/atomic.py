"""Atomic file writes: every output of ism3d is written to a temporary name and renamed, so a
crash, a kill or Ctrl-C never leaves a half-written file and never destroys a previous one."""
from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` then rename tmp_path to `path`; on any failure remove tmp_path.

    tmp_path is `<folder>/.<name>.tmp<hex><ext>` (same folder, so the rename is atomic; same
    extension, so format-guessing writers work). The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp{secrets.token_hex(4)}{path.suffix}"
    try:
        write(str(tmp))
        if not tmp.is_file():
            raise OSError(f"the writer produced no file for {path}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def ensure_writable_dir(folder: Path) -> None:
    """Create `folder` (and parents) and prove a file can be created in it; raises OSError."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(fd)
    os.unlink(probe)
