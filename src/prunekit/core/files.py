"""Atomic file writes, once for all of prunekit: a unique temporary name in the target's folder, fsync,
``os.replace``, and the folder fsynced so the rename itself is durable. Nothing is left behind on failure.

Model files (:func:`prunekit.save`), checkpoints, lottery runs and CLI run directories all write through here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so that a rename inside it survives a crash (a no-op where the OS refuses)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a unique temporary file beside ``path``, then move it into place.

    The temporary name comes from :func:`tempfile.mkstemp` (never a fixed ``<name>.tmp`` that could be a
    user's file); the data is fsynced before ``os.replace`` and the folder after it. On any error the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, write)


@contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target``; rename it to ``target`` only if the block succeeds.

    On any error the temporary directory is removed and ``target`` is left as it was, so a failed run
    never leaves a directory that looks like a result. With ``overwrite=True`` an existing ``target`` is
    replaced (moved aside under a unique name, then removed).

    Raises:
        ConfigError: ``target`` exists (and is not an empty directory) and ``overwrite`` is False, or
            ``target`` is the current directory or one of its parents.
    """
    target = Path(target)
    resolved = target.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ConfigError(
            f"output {target} is the current directory or one of its parents; choose a new directory for --out"
        )
    if target.exists() and not overwrite:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            raise ConfigError(f"output {target} already exists; choose another --out or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like any mkdir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
        try:
            tmp.rename(target)
        except BaseException:
            old.rename(target)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        tmp.rename(target)
    fsync_dir(target.parent)


__all__ = ["atomic_dir", "atomic_write", "atomic_write_bytes", "fsync_dir"]
