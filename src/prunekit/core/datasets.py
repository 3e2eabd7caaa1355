"""Built-in datasets: sklearn's digits (embedded, offline) and MNIST / Fashion-MNIST from IDX files.

Every loader returns plain ``torch.utils.data.DataLoader`` objects; anything prunekit accepts as
``data`` may equally be the user's own ``DataLoader`` (or any iterable of ``(inputs, targets)``).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError, FormatError

BUILTIN = ("digits", "mnist", "fashion-mnist")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class Split:
    """A train/test pair of tensors, images as float in [0, 1] with shape (N, 1, H, W)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def loaders(
        self, batch_size: int = 128, seed: int = 0
    ) -> tuple[DataLoader[tuple[torch.Tensor, ...]], DataLoader[tuple[torch.Tensor, ...]]]:
        """Shuffled train loader (seeded) and ordered test loader."""
        gen = torch.Generator().manual_seed(seed)
        train = DataLoader(
            TensorDataset(self.x_train, self.y_train), batch_size=batch_size, shuffle=True, generator=gen
        )
        test = DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=512)
        return train, test


def digits(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """sklearn's 8x8 digits (1,797 images, shipped with scikit-learn: no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return Split(x[train], y[train], x[test], y[test])


def default_data_dir() -> Path | None:
    """``$PRUNEKIT_DATA`` if set, else ``../shared/data`` relative to the working directory or the repo."""
    env = os.environ.get("PRUNEKIT_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise FormatError(
            f"cannot read IDX file {path}: {e}. Expected a (gzipped) MNIST-style IDX file."
        ) from e
    if len(raw) < 8 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise FormatError(
            f"{path} is not a uint8 IDX file (bad magic {raw[:4]!r}); expected MNIST-style IDX data"
        )
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise FormatError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def idx_dataset(name: str, root: str | Path | None = None, limit: int | None = None) -> Split:
    """MNIST or Fashion-MNIST from a folder holding the four standard ``.gz`` IDX files.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: the data folder holding ``mnist/`` and ``fashion-mnist/``, or the dataset folder itself;
            default :func:`default_data_dir`.
        limit: keep only the first ``limit`` training examples (quick runs).
    """
    if name not in ("mnist", "fashion-mnist"):
        raise ConfigError(f"unknown IDX dataset {name!r}; expected 'mnist' or 'fashion-mnist'")
    base = Path(root) if root is not None else default_data_dir()
    if base is None:
        raise ConfigError(
            f"no data folder for {name!r}: pass root=... or set PRUNEKIT_DATA to the folder holding {name}/"
        )
    folder = base / name if (base / name).is_dir() else base
    arrays = {}
    for split, (images, labels) in _IDX_FILES.items():
        if not (folder / images).exists():
            raise ConfigError(
                f"{folder / images} not found: point root/PRUNEKIT_DATA at the folder holding {name}/"
            )
        x = torch.from_numpy(read_idx(folder / images).astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(read_idx(folder / labels).astype(np.int64))
        arrays[split] = (x, y)
    (xt, yt), (xv, yv) = arrays["train"], arrays["test"]
    if limit is not None:
        xt, yt = xt[:limit], yt[:limit]
    return Split(xt, yt, xv, yv)


def load_builtin(name: str, root: str | Path | None = None, limit: int | None = None) -> Split:
    """A built-in dataset by name: ``digits``, ``mnist`` or ``fashion-mnist``."""
    if name == "digits":
        return digits()
    if name in ("mnist", "fashion-mnist"):
        return idx_dataset(name, root, limit)
    raise ConfigError(f"unknown dataset {name!r}; built-in names are {', '.join(BUILTIN)}")


__all__ = ["BUILTIN", "Split", "default_data_dir", "digits", "idx_dataset", "load_builtin", "read_idx"]
