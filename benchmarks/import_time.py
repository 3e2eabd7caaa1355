"""Import time of prunekit on top of torch, against Torch-Pruning in the same run.

    python benchmarks/import_time.py [--repeats 7]

Each measurement is a fresh interpreter: ``import torch`` first, then the timed import. Prints the median
and the best of the repeats, and the ratio to Torch-Pruning's (if installed: ``pip install torch==2.13.0
torch-pruning``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CODE = "import time, torch\nt = time.perf_counter()\nimport {mod}\nprint(time.perf_counter() - t)\n"


def measure(module: str, repeats: int) -> list[float] | None:
    out = []
    for _ in range(repeats):
        run = subprocess.run([sys.executable, "-c", CODE.format(mod=module)], capture_output=True, text=True)
        if run.returncode != 0:
            return None
        out.append(float(run.stdout))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for label, module in [
        ("prunekit", "prunekit"),
        ("prunekit + first verb (pk.prune_weights)", "prunekit; prunekit.prune_weights"),
        ("prunekit + every verb", "prunekit; [getattr(prunekit, n) for n in prunekit.__all__]"),
        ("torch_pruning", "torch_pruning"),
    ]:
        times = measure(module, args.repeats)
        rows.append((label, times))
    tp = next((statistics.median(t) for label, t in rows if label == "torch_pruning" and t), None)
    print(f"{'import (on top of torch)':45s} {'median':>9s} {'best':>9s} {'vs Torch-Pruning':>17s}")
    for label, times in rows:
        if times is None:
            print(f"{label:45s} {'n/a':>9s}")
            continue
        med = statistics.median(times)
        ratio = f"{med / tp:.2f}x" if tp else "-"
        print(f"{label:45s} {med * 1000:7.1f}ms {min(times) * 1000:7.1f}ms {ratio:>17s}")


if __name__ == "__main__":
    main()
