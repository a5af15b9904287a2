"""The run-folder lock: one live process writes a run folder at a time.

The process that writes a run folder (`generate.prepare` takes the lock, `generate.run` releases
it) holds an exclusive `fcntl.flock` on `FOLDER/.ism3d.lock`, whose text is its pid and host for
the message others get. The kernel drops the lock when the process dies, however it dies
(SIGKILL, a crash, a lost node), so a lock is never stale: a file left behind by a killed run
means nothing once nobody holds it. A clean release removes the file. A second `ism3d generate
--force/--resume`, a batch job or the web app asking for a locked folder gets `RunBusy` (one
line naming the live pid: exit 2).

Removing the file on release is safe because a taker checks, once it holds the flock, that the
file it locked is still the one at the path (same inode); if not, it tries again.

flock locks belong to an open file, not to a process, so two jobs of one process (the web app's
threads) exclude each other as well. Where there is no fcntl (Windows) the lock is a no-op.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

LOCK_FILE = ".ism3d.lock"


class RunBusy(ValueError):
    """A live process holds the run folder's lock (the message names it; `holder` too)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


class RunLock:
    """A held lock on a run folder; `release()` (or the process ending) frees it."""

    def __init__(self, folder: Path, fd: int | None):
        self.folder = folder
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file (still ours: we hold its flock) and drop the lock."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if _same_file(fd, self.folder / LOCK_FILE):
                    os.unlink(self.folder / LOCK_FILE)
            except OSError:
                pass
            os.close(fd)             # closing the last descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()


def lock_run_dir(folder: str | os.PathLike) -> RunLock:
    """Take `folder`'s lock without waiting (the folder must exist). Raises RunBusy."""
    folder = Path(folder)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return RunLock(folder, None)
    path = folder / LOCK_FILE
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunBusy(f"{folder} is in use by a running ism3d process ({holder}): wait for "
                          "it to finish or stop it, or choose another --out", holder) from None
        except BaseException:
            os.close(fd)
            raise
        if not _same_file(fd, path):   # released and removed meanwhile: lock the new file
            os.close(fd)
            continue
        # the holder's id, for the message above (the lock itself is the flock, not this text)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return RunLock(folder, fd)
    raise RunBusy(f"{folder}: its lock keeps changing hands; try again", "unknown")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def lock_holder(folder: str | os.PathLike) -> str | None:
    """"pid N on HOST" if a live process holds `folder`'s lock, else None (nothing is taken)."""
    try:
        lock = lock_run_dir(folder)
    except RunBusy as e:
        return e.holder
    except OSError:
        return None
    lock.release()
    return None


def _read_holder(fd: int) -> str:
    try:
        pid, _, host = os.pread(fd, 200, 0).decode(errors="replace").strip().partition(" ")
    except OSError:
        return "pid unknown"
    if not pid.isdigit():
        return "pid unknown"
    return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
