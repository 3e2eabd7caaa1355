"""Han et al. 2015 ("Learning both Weights and Connections"), LeNet-300-100 on MNIST: iterative pruning.

Train LeNet-300-100 densely, then prune by magnitude (global threshold) and fine-tune, round after
round (half of the surviving weights per round), down to ~8% of the weights (12x). Prints the test
error of the dense and pruned model beside the paper's numbers (1.64% dense -> 1.59% pruned, 8% of
weights left).

Run (seed 0; ~4-8 minutes on 2 shared CPU cores):

    python benchmarks/han2015.py --seed 0

Reduced from the paper for the CPU budget: Adam instead of SGD with a long schedule, 10 dense epochs,
3 fine-tuning epochs per pruning round (paper: many more, with a lower learning rate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _mnist_common as common  # noqa: E402

import prunekit as pk  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.92, help="final sparsity (0.92 = 8%% of weights left)")
    ap.add_argument("--rate", type=float, default=0.5, help="fraction of surviving weights pruned per round")
    ap.add_argument("--limit", type=int, default=None, help="use only this many training images (quick runs)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    args = ap.parse_args()
    t0 = time.time()
    common.seed_everything(args.seed)
    data = common.loaders("mnist", batch_size=60, seed=args.seed, limit=args.limit)
    model = common.lenet_300_100()
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    pk.fit(model, opt, data["train"], epochs=args.dense_epochs)
    dense = pk.evaluate(model, data["test"])
    res = pk.iterative_prune(
        model,
        data["train"],
        sparsity=args.target,
        rate=args.rate,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-4),
        epochs_per_round=args.finetune_epochs,
        scope="global",
        val_loader=data["test"],
    )
    remaining = 1.0 - pk.sparsity(model)
    pruned_err = 100 * (1 - float(res.accuracy or 0.0))
    dense_err = 100 * (1 - dense.accuracy)
    per_layer = {
        name: 1.0 - float((m.weight == 0).float().mean())
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    rows = [
        ["dense", "100%", f"{dense_err:.2f}%", "1.64%"],
        [
            f"pruned ({res.table.rows[-1]['round']} rounds)",
            f"{100 * remaining:.1f}%",
            f"{pruned_err:.2f}%",
            "1.59% (8%)",
        ],
    ]
    print(f"# Han et al. 2015, LeNet-300-100 on MNIST (seed {args.seed}, {time.time() - t0:.0f} s)")
    print(common.md_table(["model", "weights left", "test error (ours)", "test error (paper)"], rows))
    print(
        f"\nerror change: {pruned_err - dense_err:+.2f} pp (paper: -0.05 pp); compression {1 / remaining:.1f}x (paper 12x)"
    )
    print(
        "per-layer weights left:",
        {k: f"{100 * v:.1f}%" for k, v in per_layer.items()},
        "(paper: 8%, 9%, 26%)",
    )
    print("\nrounds:")
    print(res.table.to_markdown(["round", "sparsity", "accuracy"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "dense_error": dense_err,
                    "pruned_error": pruned_err,
                    "remaining": remaining,
                    "rounds": res.table.rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
