"""Pruning wall time only: prunekit (check on / off) vs Torch-Pruning, same models and ratio, one run.

Command (numbers in README "## Structured pruning"):

    python benchmarks/structured_prune_time.py

Models come from benchmarks/structured.py (ResNet-50-like at 160 px, MobileNetV2-like at 160 px, ViT-B-like
with 4 layers at 224 px), ratio 0.5, L2 magnitude, classifier ignored, 1 thread, median of 3 repeats on
fresh copies, torch seed 0. The ratio column is prunekit / Torch-Pruning (below 1 = prunekit faster).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import structured as bench  # noqa: E402  (the models of benchmarks/structured.py)

import prunekit as pk  # noqa: E402


def _prune(tool: str, model: nn.Module, x: torch.Tensor, ignore: list[nn.Module], vit: bool) -> None:
    if tool == "tp":
        import torch_pruning as tp

        heads = (
            {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)} if vit else {}
        )
        kw = {"num_heads": heads} if vit else {}
        tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=ignore,
            **kw,
        ).step()
    else:
        pk.prune_channels(model, x, ratio=0.5, exclude=ignore, check=(tool == "pk"))


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cases: dict[
        str, tuple[Callable[[], nn.Module], torch.Tensor, Callable[[nn.Module], list[nn.Module]], bool]
    ] = {
        "ResNet-50 160px": (
            lambda: bench._randomize_bn(bench.ResNet50()),
            torch.randn(1, 3, 160, 160),
            lambda m: [m.fc],
            False,
        ),
        "MobileNetV2 160px": (
            lambda: bench._randomize_bn(bench.MobileNetV2()),
            torch.randn(1, 3, 160, 160),
            lambda m: [m.classifier[1]],
            False,
        ),
        "ViT-B 4 layers 224px": (
            lambda: bench.ViTB(depth=4, img=224).eval(),
            torch.randn(1, 3, 224, 224),
            lambda m: [m.head],
            True,
        ),
    }
    tools = ["pk", "pk-nocheck", "tp"]
    print(
        f"{'model':22} {'prunekit':>9} {'pk check=False':>15} {'torch-pruning':>14} {'ratio':>6} {'ratio nocheck':>14}  params after pk / tp"
    )
    for name, (build, x, ignore, vit) in cases.items():
        base = build()
        times: dict[str, list[float]] = {t: [] for t in tools}
        params: dict[str, float] = {}
        for _ in range(3):
            for tool in tools:
                model = copy.deepcopy(base)
                t0 = time.perf_counter()
                _prune(tool, model, x, ignore(model), vit)
                times[tool].append(time.perf_counter() - t0)
                params[tool] = sum(p.numel() for p in model.parameters()) / 1e6
        med = {t: statistics.median(v) for t, v in times.items()}
        print(
            f"{name:22} {med['pk']:8.2f}s {med['pk-nocheck']:14.2f}s {med['tp']:13.2f}s {med['pk'] / med['tp']:6.2f} "
            f"{med['pk-nocheck'] / med['tp']:14.2f}  {params['pk']:.2f}M / {params['tp']:.2f}M"
        )


if __name__ == "__main__":
    main()
