"""criterion='activation' for prune_channels (oracle: hand-computed ||W[:, j]|| * ||a_j||) and prune_heads by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from zoo import make_bert, make_llama, output_tensors


def test_activation_criterion_matches_hand_computed_scores() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    x = torch.randn(32, 6)
    h = model[1](model[0](x)).detach()
    score = model[2].weight.detach().norm(dim=0) * h.norm(dim=0)  # the reader's column x activation
    expected_kept = sorted(torch.argsort(score, descending=True)[:5].tolist())
    w_before = model[0].weight.detach().clone()
    pk.prune_channels(model, x[:2], 0.5, criterion="activation", data=[x[:16], (x[16:], None)])
    kept = [i for i in range(10) if any(torch.equal(model[0].weight[j], w_before[i]) for j in range(5))]
    assert kept == expected_kept
    with pytest.raises(pk.DataRequiredError, match="data="):
        pk.prune_channels(
            nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)), x[:2], criterion="wanda"
        )


def test_activation_on_bert_dict_batches_with_padding() -> None:
    model, x = make_bert("eager")
    ids = torch.randint(1, 90, (4, 8))
    batch = {"input_ids": ids, "attention_mask": (torch.arange(8) < 6).long().expand(4, 8)}
    pk.prune_channels(model, x, 0.25, criterion="activation", data=[batch])
    assert model.encoder.layer[0].intermediate.dense.out_features == 48


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prune_heads_by_name_removes_exactly_those(attn: str, tmp_path: Path) -> None:
    model, x = make_bert(attn)
    model.eval()
    q = model.encoder.layer[0].attention.self.query.weight.detach().clone()  # (32, 32), 4 heads of 8
    res = pk.prune_heads(model, x, {"encoder.layer.0.attention": [1, 3]})
    attn_mod = model.encoder.layer[0].attention.self
    assert attn_mod.num_attention_heads == 2 and attn_mod.query.out_features == 16
    assert torch.equal(attn_mod.query.weight, torch.cat([q[0:8], q[16:24]]))  # heads 0 and 2 stay
    assert model.encoder.layer[1].attention.self.num_attention_heads == 4  # other layers untouched
    assert model.encoder.layer[0].intermediate.dense.out_features == 64
    assert res.params_after < res.params_before
    # reload into a fresh model (the plan replays the head removal)
    path = pk.save(model, tmp_path / "m.safetensors")
    fresh, _ = make_bert(attn)
    pk.load(path, fresh.eval())
    with torch.no_grad():
        for a, b in zip(output_tensors(fresh(*x)), output_tensors(model(*x)), strict=True):
            assert torch.equal(a, b)


def test_prune_heads_errors_leave_the_model_untouched() -> None:
    model, x = make_bert("eager")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.ConfigError, match="4 heads"):
        pk.prune_heads(model, x, {"encoder.layer.0.attention": [7]})
    with pytest.raises(pk.PlanError, match="all 4 heads"):
        pk.prune_heads(model, x, {"encoder.layer.0.attention": [0, 1, 2, 3]})
    with pytest.raises(pk.UnknownModuleError):
        pk.prune_heads(model, x, {"encoder.nope": [0]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prune_heads_gqa_llama() -> None:
    model, x = make_llama("eager")
    pk.prune_heads(model, x, {"model.layers.0.self_attn": [1]})  # one of 2 KV groups
    assert model.model.layers[0].self_attn.k_proj.out_features == 8
    assert model.model.layers[0].self_attn.q_proj.out_features == 32
