"""Small model and data factories used by the example recipes and the CLI tests.

Each model factory returns ``(model, example_inputs)``; ``prunekit`` imports them by
``module:function``, e.g. ``prunekit summary examples.models:digits_cnn`` (run from the repo root).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.cli.demo import DigitsCNN

log = logging.getLogger("examples.models")


def digits_cnn() -> tuple[nn.Module, torch.Tensor]:
    """The demo's CNN for 8x8 digits (untrained, seeded)."""
    torch.manual_seed(0)
    return DigitsCNN(), torch.zeros(1, 1, 8, 8)


def _trained(name: str, model: nn.Module, epochs: int) -> nn.Module:
    """Train ``model`` on digits (seeded), caching the weights so later calls load them in milliseconds."""
    from safetensors.torch import load_model, save_model

    from prunekit.core.datasets import digits
    from prunekit.training import train as train_model

    cache = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")) / "examples"
    path = cache / f"{name}-e{epochs}.safetensors"
    if path.exists():
        load_model(model, str(path))
        return model.eval()
    log.info("training the example model %s for %d epochs (once: cached in %s)", name, epochs, path)
    torch.manual_seed(0)
    train, _ = digits(seed=0).loaders(batch_size=64, seed=0)
    train_model(model, train, epochs=epochs, lr=3e-3)
    log.info("trained %s", name)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_model(model, str(tmp))
    tmp.replace(path)  # atomic: parallel test processes never read a half-written file
    return model.eval()


def trained_digits_cnn() -> tuple[nn.Module, torch.Tensor]:
    """The demo's CNN, trained on digits (about 99% test accuracy; cached after the first call)."""
    model, example = digits_cnn()
    return _trained("digits_cnn", model, epochs=12), example


def trained_digits_mlp() -> tuple[nn.Module, torch.Tensor]:
    """The digits MLP, trained on digits (cached after the first call)."""
    model, example = digits_mlp()
    return _trained("digits_mlp", model, epochs=15), example


def digits_mlp() -> tuple[nn.Module, torch.Tensor]:
    """A 64-128-64-10 MLP for 8x8 digits (untrained, seeded)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    return model, torch.zeros(1, 1, 8, 8)


def mnist_lenet() -> tuple[nn.Module, torch.Tensor]:
    """LeNet-300-100 for 28x28 MNIST images."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    return model, torch.zeros(1, 1, 28, 28)


class _Residual(nn.Module):
    """x + MLP(x): a block that layer pruning can remove (its input and output shapes match)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class ResMLP(nn.Module):
    """A residual MLP for 8x8 digits: stem, ``depth`` residual blocks, classifier."""

    def __init__(self, width: int = 64, depth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.blocks = nn.Sequential(*[_Residual(width) for _ in range(depth)])
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def trained_digits_resmlp() -> tuple[nn.Module, torch.Tensor]:
    """A 6-block residual MLP trained on digits (cached after the first call)."""
    torch.manual_seed(0)
    return _trained("digits_resmlp", ResMLP(), epochs=10), torch.zeros(1, 1, 8, 8)


def digits_subset() -> tuple[DataLoader, DataLoader]:
    """A data factory: 512 training and 256 test digits as (train, test) DataLoaders."""
    from prunekit.core.datasets import digits

    split = digits(seed=0)
    gen = torch.Generator().manual_seed(0)
    train = DataLoader(
        TensorDataset(split.x_train[:512], split.y_train[:512]), batch_size=64, shuffle=True, generator=gen
    )
    test = DataLoader(TensorDataset(split.x_test[:256], split.y_test[:256]), batch_size=256)
    return train, test
