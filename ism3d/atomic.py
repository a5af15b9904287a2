"""Atomic file writes: every output of ism3d is written to a temporary name and renamed, so a
crash, a kill, Ctrl-C or a full disk never leaves a half-written file and never destroys a
previous one."""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable


class WriteError(OSError):
    """A file could not be written (disk full, read-only, permissions): the file it would have
    replaced is intact. str() is one line: "cannot write PATH: REASON"."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` then rename tmp_path to `path`; on any failure remove tmp_path.

    tmp_path is `<folder>/.<name>.tmp<hex><ext>` (same folder, so the rename is atomic; same
    extension, so format-guessing writers work). The parent folder is created if missing.
    Raises WriteError when the file system refuses (an OSError from `write`, or a disk that is
    full once `write` returns: some writers, e.g. ffmpeg's, only log a failed write).
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp{secrets.token_hex(4)}{path.suffix}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(str(tmp))
        if not tmp.is_file():
            raise OSError(f"the writer produced no file for {path}")
        if disk_full(path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno is not None:
            raise WriteError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def keep_copy(src: Path, dst: Path) -> None:
    """Make `dst` a copy of `src`, atomically (a hard link where the file system has them, so
    it takes no space and no time; else a byte copy under a temporary name, then renamed)."""
    tmp = dst.parent / f".{dst.name}.tmp{secrets.token_hex(4)}{dst.suffix}"
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def disk_full(folder: Path) -> bool:
    """True if the file system of `folder` has no free block left (for this user)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    free = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return st.f_blocks > 0 and free == 0


def remove_stale_temps(folder: Path) -> int:
    """Remove the temporary files (`.NAME.tmpHEX...`) that killed writers left in `folder` and its
    checkpoints/ subfolder. Only call it while holding the folder's run lock (no live writer).
    Returns how many were removed."""
    n = 0
    for d in (folder, folder / "checkpoints"):
        if not d.is_dir():
            continue
        for p in d.glob(".*.tmp*"):
            if p.is_file() and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


def ensure_writable_dir(folder: Path) -> None:
    """Create `folder` (and parents) and prove a file can be created in it; raises OSError."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(fd)
    os.unlink(probe)
