"""Sensitivity-allocated vs uniform pruning of a small CNN trained on Fashion-MNIST (no fine-tuning).

1. Train a small CNN (2 conv + 2 linear layers), 2 epochs, on the first 20,000 Fashion-MNIST
   training images (``--limit 0`` for all 55,000); the last 5,000 training images are the
   validation set the sensitivity analysis uses (the test set only gives the final accuracies).
2. ``pk.sensitivity``: each layer pruned alone (magnitude) at ratios 0.1 ... 0.99; curves + plot.
3. Weight pruning at the same global sparsity: uniform per-layer ratio vs one global magnitude
   threshold vs ratios from ``pk.allocate`` (curves -> per-layer ratios) applied with
   ``pk.apply_allocation``; test accuracy of each.
4. Channel pruning at the same MAC reduction (output layer kept): uniform channel ratio vs ratios
   allocated from channel-granularity curves (``by="macs"``; with ``--coupled-macs`` a layer's cost is
   its own MACs plus the next layer's input slice it takes away), removed physically with
   ``pk.prune_channels`` through ``pk.apply_allocation(..., physical=True)``; test accuracy and the
   measured MACs after.

Run (seed 0; about 3-6 minutes on 2 shared CPU cores):

    python benchmarks/sensitivity_fashion.py --out /tmp/prunekit-bench/fashion
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit.analysis.sweep import layer_macs
from prunekit.core.datasets import idx_dataset
from prunekit.core.metrics import count_macs


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 16, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 32, 7, 7)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(1) == y).float().mean())


def test_accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def train(model: nn.Module, loader: DataLoader, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
        print(
            f"  epoch {epoch + 1}: train loss {total / len(loader.dataset):.4f} ({time.perf_counter() - t0:.0f} s)"
        )  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="/tmp/prunekit-bench/fashion", help="output dir (plots, CSV, JSON)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--limit",
        type=int,
        default=20_000,
        help="train on the first N of the 55,000 training images (0: all)",
    )
    parser.add_argument(
        "--val-batches", type=int, default=4, help="validation batches of 500 for the analysis"
    )
    parser.add_argument("--targets", default="0.7,0.8,0.9,0.95", help="global weight sparsity targets")
    parser.add_argument("--mac-targets", default="0.3,0.5,0.7", help="MAC reductions for channel pruning")
    parser.add_argument(
        "--coupled-macs",
        action="store_true",
        help="channel MAC cost of a layer = its own MACs + the next layer's input slice (default: own MACs)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    split = idx_dataset("fashion-mnist")
    x_train, y_train = split.x_train[:55_000], split.y_train[:55_000]
    x_val, y_val = split.x_train[55_000:], split.y_train[55_000:]
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    gen = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=128, shuffle=True, generator=gen)
    test_loader = DataLoader(TensorDataset(split.x_test, split.y_test), batch_size=1000)
    val = [(x_val[i : i + 500], y_val[i : i + 500]) for i in range(0, 500 * args.val_batches, 500)]

    model = CNN()
    print(
        f"training the CNN ({pk.core.metrics.count_params(model):,} params) on {len(x_train):,} images, {args.epochs} epochs"
    )
    train(model, train_loader, args.epochs)
    model.eval()
    dense_acc = test_accuracy(model, test_loader)
    example = split.x_test[:1]
    dense_macs = count_macs(model, example)
    print(f"dense test accuracy {dense_acc:.4f}, {dense_macs:,} MACs per image")

    # ------------------------------------------------------------------ weight pruning
    ratios = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    t0 = time.perf_counter()
    res = pk.sensitivity(model, val, F.cross_entropy, ratios=ratios, metric=accuracy)
    print(
        f"\nsensitivity analysis (weights, {len(res.layers)} layers x {len(ratios)} ratios): {time.perf_counter() - t0:.1f} s"
    )
    print(res)
    res.to_csv(out / "sensitivity_weights.csv")
    res.plot(out / "sensitivity_weights.png")

    weight_rows: list[dict[str, Any]] = []
    for target in (float(t) for t in args.targets.split(",")):
        plan = pk.allocate(res, target)
        allocated, uniform, glob = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
        pk.apply_allocation(allocated, plan)
        pk.prune_weights(uniform, target, scope="layer")
        pk.prune_weights(glob, target, scope="global")
        weight_rows.append(
            {
                "target": target,
                "achieved": pk.sparsity(allocated),
                "uniform": test_accuracy(uniform, test_loader),
                "global": test_accuracy(glob, test_loader),
                "allocated": test_accuracy(allocated, test_loader),
                "plan": {k: round(v, 4) for k, v in plan.items()},
            }
        )
    print(f"\nWeight pruning, no fine-tuning: test accuracy (dense {dense_acc:.4f})")
    print(
        f"{'sparsity':>8} {'achieved':>8} {'uniform':>8} {'global':>8} {'allocated':>9}   allocated ratios (conv1, conv2, fc1, fc2)"
    )
    for r in weight_rows:
        ratios_txt = ", ".join(f"{v:.3f}" for v in r["plan"].values())
        print(
            f"{r['target']:>8.2f} {r['achieved']:>8.4f} {r['uniform']:>8.4f} {r['global']:>8.4f} {r['allocated']:>9.4f}   {ratios_txt}"
        )

    # ------------------------------------------------------------------ channel pruning (MACs)
    channel_rows: list[dict[str, Any]] = []
    if hasattr(pk, "prune_channels"):
        cres = pk.sensitivity(
            model,
            val,
            F.cross_entropy,
            ratios=ratios[:9],
            granularity="channel",
            criterion="l2",
            metric=accuracy,
            exclude=["fc2"],
        )
        cres.to_csv(out / "sensitivity_channels.csv")
        cres.plot(out / "sensitivity_channels.png")
        # removing an output channel of one layer also removes the matching input slice of the next one
        # (conv1 -> conv2 -> fc1 -> fc2): count both in the layer's MAC cost (first-order, chain model)
        chain = ["conv1", "conv2", "fc1", "fc2"]
        macs = layer_macs(model, example, chain)
        coupled = {n: float(macs[n] + macs[chain[i + 1]]) for i, n in enumerate(chain[:-1])}
        for target in (float(t) for t in args.mac_targets.split(",")):
            plan = pk.allocate(cres, target, by="macs", costs=coupled if args.coupled_macs else None)
            allocated = copy.deepcopy(model)
            pk.apply_allocation(allocated, plan, example_inputs=example, physical=True)
            # uniform: the same channel ratio in every layer, chosen so the measured MACs match the allocated model's
            macs_alloc = count_macs(allocated, example)
            uniform, r_uni = _uniform_matching_macs(model, example, macs_alloc)
            channel_rows.append(
                {
                    "target": target,
                    "macs_allocated": macs_alloc / dense_macs,
                    "macs_uniform": count_macs(uniform, example) / dense_macs,
                    "uniform_ratio": r_uni,
                    "uniform": test_accuracy(uniform, test_loader),
                    "allocated": test_accuracy(allocated, test_loader),
                    "plan": {k: round(v, 4) for k, v in plan.items()},
                    "widths": [
                        allocated.conv1.out_channels,
                        allocated.conv2.out_channels,
                        allocated.fc1.out_features,
                    ],
                }
            )
        print(
            "\nChannel pruning (physically removed, fc2 kept), no fine-tuning: test accuracy at matched measured MACs"
        )
        print(
            f"{'target':>6} {'MACs alloc':>10} {'MACs unif':>10} {'uniform':>8} {'allocated':>9}   widths (conv1, conv2, fc1) allocated"
        )
        for r in channel_rows:
            print(
                f"{r['target']:>6.2f} {r['macs_allocated']:>10.3f} {r['macs_uniform']:>10.3f} {r['uniform']:>8.4f} {r['allocated']:>9.4f}   {r['widths']}"
            )

    _plot(out, dense_acc, weight_rows, channel_rows)
    (out / "results.json").write_text(
        json.dumps(
            {
                "dense": dense_acc,
                "weights": weight_rows,
                "channels": channel_rows,
                "args": vars(args),
                "rank_correlation": res.rank_correlation,
            },
            indent=2,
        )
    )
    print(
        "\nSpearman rho of one-pass estimates vs measured (weights): "
        + ", ".join(f"{k} {v:.3f}" for k, v in res.rank_correlation.items())
    )
    print(f"plots, CSV and JSON in {out}")


def _uniform_matching_macs(model: nn.Module, example: torch.Tensor, macs: int) -> tuple[nn.Module, float]:
    """The uniform channel ratio (conv1, conv2, fc1; fc2 kept) whose measured MACs are closest to ``macs``."""
    best: tuple[int, nn.Module, float] | None = None
    for step in range(1, 20):
        r = step / 20
        m = copy.deepcopy(model)
        pk.prune_channels(m, example, ratio=r, scope="layer", criterion="l2", exclude=["fc2"])
        gap = abs(count_macs(m, example) - macs)
        if best is None or gap < best[0]:
            best = (gap, m, r)
    assert best is not None
    return best[1], best[2]


def _plot(out: Path, dense: float, weights: list[dict[str, Any]], channels: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if channels else 1, figsize=(11 if channels else 6, 4), squeeze=False)
    t = [r["target"] for r in weights]
    for key in ("uniform", "global", "allocated"):
        axes[0][0].plot(t, [r[key] for r in weights], marker="o", label=key)
    axes[0][0].axhline(dense, color="grey", ls="--", label="dense")
    axes[0][0].set_xlabel("global weight sparsity")
    axes[0][0].set_ylabel("test accuracy (no fine-tuning)")
    axes[0][0].set_title("Fashion-MNIST CNN: weight pruning")
    axes[0][0].legend()
    if channels:
        ax = axes[0][1]
        ax.plot(
            [r["macs_uniform"] for r in channels],
            [r["uniform"] for r in channels],
            marker="o",
            label="uniform",
        )
        ax.plot(
            [r["macs_allocated"] for r in channels],
            [r["allocated"] for r in channels],
            marker="o",
            label="allocated",
        )
        ax.axhline(dense, color="grey", ls="--", label="dense")
        ax.set_xlabel("MACs after / dense (measured)")
        ax.set_title("channel pruning")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fashion.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
