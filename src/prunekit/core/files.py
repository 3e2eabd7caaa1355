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


RUN_MARKERS = ("report.json", "prunekit-model.json")


def check_output_dir(target: str | Path, *, overwrite: bool = False) -> None:
    """Refuse an output directory that cannot be written (or replaced) safely; change nothing.

    Raises:
        ConfigError: ``target`` is the current directory or one of its parents; it exists and
            ``overwrite`` is False (an empty directory is fine); or ``overwrite`` would replace a file or a
            directory prunekit did not write (no ``report.json`` / ``prunekit-model.json`` in it).
    """
    target = Path(target)
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ConfigError(
            f"output {target} is the current directory or one of its parents; choose a new directory for --out"
        )
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"output {target} already exists; choose another --out or pass --overwrite")
    if target.is_symlink() or not target.is_dir():
        raise ConfigError(f"output {target} is a file; --overwrite only replaces a directory prunekit wrote")
    if not any((target / m).is_file() for m in RUN_MARKERS):
        raise ConfigError(
            f"output {target} is a directory prunekit did not write (no {' or '.join(RUN_MARKERS)}); "
            "--overwrite only replaces prunekit output: remove it yourself or choose another --out"
        )


@contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target``; rename it to ``target`` only if the block succeeds.

    On any error the temporary directory is removed and ``target`` is left as it was, so a failed run
    never leaves a directory that looks like a result. With ``overwrite=True`` an existing ``target`` is
    replaced (moved aside under a unique name, then removed).

    Raises:
        ConfigError: see :func:`check_output_dir` (checked before anything is created).
    """
    target = Path(target)
    check_output_dir(target, overwrite=overwrite)
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
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
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
    fsync_dir(target.parent)


__all__ = ["RUN_MARKERS", "atomic_dir", "atomic_write", "atomic_write_bytes", "check_output_dir", "fsync_dir"]
