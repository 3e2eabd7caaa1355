"""Shared pieces of the training-time benchmarks (han2015.py, lottery.py, gradual.py): data, LeNet-300-100."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.core.datasets import idx_dataset


def seed_everything(seed: int, threads: int = 1) -> None:
    """Seed every RNG; one intra-op thread (small MLPs: threads only add sync cost on a shared CPU)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def lenet_300_100() -> nn.Module:
    """LeNet-300-100 (LeCun et al. 1998), as in Han et al. 2015 and Frankle & Carbin 2019: 266,200 weights."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def loaders(
    name: str = "mnist",
    *,
    batch_size: int = 60,
    seed: int = 0,
    val: int = 5000,
    limit: int | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Train (first 55,000 - or ``limit`` -), validation (last ``val`` training images) and test loaders."""
    split = idx_dataset(name, root=root)
    x, y = split.x_train, split.y_train
    x_tr, y_tr, x_va, y_va = x[:-val], y[:-val], x[-val:], y[-val:]
    if limit is not None:
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
    gen = torch.Generator().manual_seed(seed)
    return {
        "train": DataLoader(TensorDataset(x_tr, y_tr), batch_size=batch_size, shuffle=True, generator=gen),
        "val": DataLoader(TensorDataset(x_va, y_va), batch_size=2000),
        "test": DataLoader(TensorDataset(split.x_test, split.y_test), batch_size=2000),
        "n_train": len(x_tr),
    }


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
