"""Atomic file writes: write a temp file beside the target, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status). Elsewhere POSIX
    can only read it by setting it, so set and restore it under a lock (other threads creating files in between
    would otherwise briefly see a different umask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        old = os.umask(0o077)
        os.umask(old)
    return old


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` then rename tmp onto `path`. The temp file lives in the same folder (same filesystem).

    mkstemp creates files with mode 0600; the result gets the mode a plain `open(path, "w")` would give
    (0666 & ~umask), so shared results folders and served checkpoints stay readable to others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    """(inode, mtime) of each `.safetensors` file under `folder` (none while it does not exist)."""
    if not folder.is_dir():
        return {}
    stats = {f: f.stat() for f in folder.rglob("*.safetensors") if f.is_file()}
    return {f: (s.st_ino, s.st_mtime_ns) for f, s in stats.items()}


@contextmanager
def umask_modes(folder: str | Path) -> Iterator[None]:
    """The `.safetensors` files written under `folder` inside the block get the mode a plain `open(path, "w")` would
    give. safetensors (0.8) writes its files with mode 0600 whatever the umask, and every model save goes through it;
    files the block did not write keep their mode."""
    folder = Path(folder)
    before = _stamps(folder)
    yield
    mode = 0o666 & ~current_umask()
    for f, stamp in _stamps(folder).items():
        if before.get(f) != stamp:
            with contextlib.suppress(PermissionError):  # another user's file: the save itself succeeded
                os.chmod(f, mode)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
