"""Pruning wall time only: prunekit (check on / off) vs Torch-Pruning, same models and ratio, one run.

Command (numbers in README "## Structured pruning"):

    python benchmarks/structured_prune_time.py               # 224 px, 1 thread, 3 rounds
    python benchmarks/structured_prune_time.py --px 160 --rounds 5 --models resnet50 mobilenetv2

Models come from benchmarks/structured.py (ResNet-50-like and MobileNetV2-like at ``--px``, default 224;
ViT-B-like with 4 layers at 224 px), ratio 0.5, L2 magnitude, classifier ignored, ``--threads`` intra-op
threads (default 1), ``--clock`` wall (default) or cpu seconds, imports excluded (everything is imported and each tool run once before timing).
Each round times every tool once on a fresh copy, in turn (alternating rounds), after a ``gc.collect()``
(untimed; the garbage collector stays enabled while a tool runs, so each pays for its own collections: without
it, a full collection of the previous tool's garbage, about 85 ms here, lands on whichever tool runs next); the table shows the median
over ``--rounds`` rounds, torch seed 0. The ratio column is prunekit / Torch-Pruning (below 1 = prunekit faster).
"""

from __future__ import annotations

import argparse
import copy
import gc
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

Case = tuple[Callable[[], nn.Module], torch.Tensor, Callable[[nn.Module], list[nn.Module]], bool]


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


def _cases(px: int) -> dict[str, Case]:
    return {
        "resnet50": (
            lambda: bench._randomize_bn(bench.ResNet50()),
            torch.randn(1, 3, px, px),
            lambda m: [m.fc],
            False,
        ),
        "mobilenetv2": (
            lambda: bench._randomize_bn(bench.MobileNetV2()),
            torch.randn(1, 3, px, px),
            lambda m: [m.classifier[1]],
            False,
        ),
        "vit": (
            lambda: bench.ViTB(depth=4, img=224).eval(),
            torch.randn(1, 3, 224, 224),
            lambda m: [m.head],
            True,
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, default=224, help="image size of ResNet-50 and MobileNetV2")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median is shown)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter; cpu: time.process_time (CPU seconds of this process, "
                        "less disturbed by other jobs on a shared machine)")  # fmt: skip
    parser.add_argument("--models", nargs="+", choices=("resnet50", "mobilenetv2", "vit"),
                        default=["resnet50", "mobilenetv2", "vit"])  # fmt: skip
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    import torch_pruning  # noqa: F401  (imports excluded from the timings)

    names = {"resnet50": f"ResNet-50 {args.px}px", "mobilenetv2": f"MobileNetV2 {args.px}px",
             "vit": "ViT-B 4 layers 224px"}  # fmt: skip
    cases = _cases(args.px)
    tools = ["pk", "pk-nocheck", "tp"]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"threads {args.threads}, rounds {args.rounds}, {args.clock} clock, torch {torch.__version__}")
    print(
        f"{'model':22} {'prunekit':>9} {'pk check=False':>15} {'torch-pruning':>14} {'ratio':>6} {'ratio nocheck':>14}  params after pk / tp"
    )
    for key in args.models:
        build, x, ignore, vit = cases[key]
        base = build()
        for tool in tools:  # warm-up: lazy imports and first-call costs are not timed
            model = copy.deepcopy(base)
            _prune(tool, model, x, ignore(model), vit)
        times: dict[str, list[float]] = {t: [] for t in tools}
        params: dict[str, float] = {}
        for _ in range(args.rounds):
            for tool in tools:
                model = copy.deepcopy(base)
                gc.collect()  # garbage left by the previous tool is not this tool's cost (GC stays enabled)
                t0 = clock()
                _prune(tool, model, x, ignore(model), vit)
                times[tool].append(clock() - t0)
                params[tool] = sum(p.numel() for p in model.parameters()) / 1e6
        med = {t: statistics.median(v) for t, v in times.items()}
        print(
            f"{names[key]:22} {med['pk']:8.3f}s {med['pk-nocheck']:14.3f}s {med['tp']:13.3f}s {med['pk'] / med['tp']:6.2f} "
            f"{med['pk-nocheck'] / med['tp']:14.2f}  {params['pk']:.2f}M / {params['tp']:.2f}M",
            flush=True,
        )


if __name__ == "__main__":
    main()
