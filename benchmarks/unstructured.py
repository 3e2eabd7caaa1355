"""Global 90% L1 pruning of a ~100M-parameter model: prunekit vs torch.nn.utils.prune.global_unstructured.

Each method runs in its own subprocess on an identical model (same seed), so peak-memory readings
are clean. Measured per method:

* wall time of the pruning call;
* peak extra memory: the resident-set high-water mark during pruning (``VmHWM`` of
  ``/proc/self/status``, reset with ``/proc/self/clear_refs`` after the model is built) minus the
  resident set before pruning, over the model's size;
* for prunekit, the saved file (``pk.save``) over the information limit
  ``sum(nnz * 32 + log2 C(n, nnz))``, and a load round trip checked for exactness.

Run (about 2-4 minutes on 2 shared cores)::

    python benchmarks/unstructured.py                 # width 4096, depth 6, 3 convs, seed 0, 1 thread

Goals: prunekit faster than torch.nn.utils.prune, peak extra memory <= 0.35 x model size,
file size <= 1.2 x the information limit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
from torch import nn


def build(width: int, depth: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Module()
    model.convs = nn.Sequential(*[nn.Conv2d(256, 256, 3, padding=1) for _ in range(3)])
    model.mlp = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
    return model


def targets(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _mask_digest(masks: list[torch.Tensor], originals: list[torch.Tensor]) -> tuple[str, int]:
    """Digest of the masks with ties at the threshold counted as kept, and the number of such ties.

    fp32 magnitudes repeat, so two correct methods may break ties at the threshold differently;
    equal digests mean the masks agree on every weight whose magnitude is not the threshold.
    """
    threshold = max(float(w.abs()[~m.to(torch.bool)].max()) for w, m in zip(originals, masks, strict=True))
    h = hashlib.sha256()
    ties = 0
    for w, m in zip(originals, masks, strict=True):
        at = w.abs() == threshold
        ties += int(at.sum())
        h.update((m.to(torch.bool) | at).contiguous().numpy().tobytes())
    return h.hexdigest()[:16], ties


def child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    from torch.nn.utils import prune

    import prunekit as pk  # imports before the baseline: only the pruning is measured

    model = build(args.width, args.depth, args.seed)
    layers = targets(model)
    n_weights = sum(m.weight.numel() for m in layers)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    import gc

    gc.collect()
    _reset_peak()
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if method == "prunekit":
        pk.prune_weights(model, args.sparsity, criterion="magnitude", scope="global")
        masks = [m.weight_mask for m in layers]
    else:
        prune.global_unstructured(
            [(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=args.sparsity
        )
        masks = [m.weight_mask for m in layers]
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    pruned = sum(int((~m.to(torch.bool)).sum()) for m in masks)
    if method == "prunekit":  # the pruned weights are zero now: rebuild the originals (same seed)
        originals = [m.weight.detach() for m in targets(build(args.width, args.depth, args.seed))]
    else:
        originals = [m.weight_orig.detach() for m in layers]
    digest, ties = _mask_digest(masks, originals)
    del originals
    out: dict[str, Any] = {
        "method": method,
        "seconds": seconds,
        "peak_extra_bytes": (peak_kb - base_kb) * 1024,
        "model_bytes": model_bytes,
        "weights": n_weights,
        "pruned": pruned,
        "mask_digest": digest,
        "ties_at_threshold": ties,
    }
    if method == "prunekit":
        from prunekit.io.format import information_limit_bits

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.safetensors")
            t0 = time.perf_counter()
            pk.save(model, path)
            out["save_seconds"] = time.perf_counter() - t0
            out["file_bytes"] = os.path.getsize(path)
            out["limit_bytes"] = information_limit_bits(model) / 8
            t0 = time.perf_counter()
            fresh = pk.load(path, build(args.width, args.depth, args.seed + 1))
            out["load_seconds"] = time.perf_counter() - t0
            mine, theirs = model.state_dict(), fresh.state_dict()
            out["load_exact"] = list(mine) == list(theirs) and all(
                torch.equal(mine[k], theirs[k]) for k in mine
            )
    return out


def run(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", method, *sys.argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=["prunekit", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    pk_res, th_res = run("prunekit", args), run("torch", args)
    size = pk_res["model_bytes"]
    print(
        f"model: {pk_res['weights'] / 1e6:.1f}M prunable weights ({size / 2**20:.0f} MiB fp32), "
        f"{args.sparsity:.0%} global L1, seed {args.seed}, {args.threads} thread(s)\n"
    )
    rows = [("", "prunekit", "torch.nn.utils.prune", "ratio (prunekit / torch)", "goal")]
    rows.append(
        (
            "prune wall time [s]",
            f"{pk_res['seconds']:.2f}",
            f"{th_res['seconds']:.2f}",
            f"{pk_res['seconds'] / th_res['seconds']:.2f}",
            "< 1",
        )
    )
    rows.append(
        (
            "peak extra RSS / model size",
            f"{pk_res['peak_extra_bytes'] / size:.3f}",
            f"{th_res['peak_extra_bytes'] / size:.3f}",
            f"{pk_res['peak_extra_bytes'] / th_res['peak_extra_bytes']:.2f}",
            "<= 0.35 (prunekit)",
        )
    )
    rows.append(
        (
            "pruned weights",
            f"{pk_res['pruned']:,}",
            f"{th_res['pruned']:,}",
            (
                f"same masks (up to {pk_res['ties_at_threshold']} ties at the threshold)"
                if pk_res["mask_digest"] == th_res["mask_digest"]
                else "MASKS DIFFER"
            ),
            "",
        )
    )
    rows.append(
        (
            "file size / information limit",
            f"{pk_res['file_bytes'] / pk_res['limit_bytes']:.3f}",
            "-",
            f"{pk_res['file_bytes'] / 2**20:.1f} MiB vs limit {pk_res['limit_bytes'] / 2**20:.1f} MiB",
            "<= 1.2",
        )
    )
    rows.append(
        (
            "save / load [s]",
            f"{pk_res['save_seconds']:.2f} / {pk_res['load_seconds']:.2f}",
            "-",
            "load exact" if pk_res["load_exact"] else "LOAD NOT EXACT",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
