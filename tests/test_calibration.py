"""Calibration data without targets, padding-aware statistics, Wanda's per-row groups, pruned-away warnings."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit.core import resolve_targets
from prunekit.errors import LayerPrunedAwayWarning
from prunekit.weights.criteria import Calibration, Wanda
from zoo import make_bert


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _masks(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers() if n.endswith("_mask")]


def test_wanda_defaults_to_per_row_groups_matching_an_oracle() -> None:
    model = _mlp()
    x = torch.randn(20, 6)
    h = model[1](model[0](x)).detach()
    oracle = []
    for w, a in ((model[0].weight, x), (model[2].weight, h)):
        score = w.detach().abs() * a.norm(dim=0)
        k = round(0.5 * w.shape[1])
        keep = torch.ones_like(w, dtype=torch.bool)
        for i in range(w.shape[0]):  # independent reference: prune the k lowest of each row
            keep[i, sorted(range(w.shape[1]), key=lambda j: float(score[i, j]))[:k]] = False
        oracle.append(keep)
    res = pk.prune_weights(model, 0.5, criterion="wanda", data=[x])
    assert res.scope == "row"
    assert all(torch.equal(a, b) for a, b in zip(_masks(model), oracle, strict=True))
    assert all(int((~m).sum(1).unique().numel()) == 1 for m in _masks(model))  # same count in every row


def test_row_scope_for_magnitude_and_cumulative() -> None:
    model = _mlp()
    pk.prune_weights(model, 0.25, scope="row")
    pk.prune_weights(model, 0.5, scope="row")
    for m in _masks(model):
        assert ((~m).sum(1) == round(0.5 * m.shape[1])).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda x: [x[:10], x[10:]],  # bare tensors
        lambda x: DataLoader(TensorDataset(x), batch_size=10),  # 1-tuples
        lambda x: [(x[:10], torch.zeros(10)), (x[10:], torch.zeros(10))],  # pairs
        lambda x: x,  # one tensor
    ],
    ids=["tensors", "loader-1-tuples", "pairs", "one-tensor"],
)
def test_wanda_accepts_every_form_of_calibration_data(make: Any) -> None:
    x = torch.randn(20, 6)
    ref = _mlp()
    pk.prune_weights(ref, 0.5, criterion="wanda", data=[(x, None)])
    model = _mlp()
    pk.prune_weights(model, 0.5, criterion="wanda", data=make(x))
    assert all(torch.equal(a, b) for a, b in zip(_masks(model), _masks(ref), strict=True))


def _bert_batches() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 90, (2, 8), generator=g)
    plain = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    junk = torch.randint(1, 90, (2, 5), generator=g)
    padded = {
        "input_ids": torch.cat([ids, junk], 1),
        "attention_mask": torch.cat([torch.ones_like(ids), torch.zeros_like(junk)], 1),
    }
    return plain, padded


def test_wanda_statistics_ignore_padding_tokens() -> None:
    model, _ = make_bert("eager")
    model.eval()
    plain, padded = _bert_batches()
    targets = resolve_targets(model)[0]
    norms = []
    for batch in (plain, padded):
        crit = Wanda()
        crit.prepare(model, targets, Calibration(data=[batch]))
        norms.append([crit.score(t, slice(None)) for t in targets])
    for a, b in zip(*norms, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the oracle can fail: counting the padding tokens changes the statistics
    crit = Wanda()
    crit.prepare(model, targets, Calibration(data=[{"input_ids": padded["input_ids"]}]))
    assert not torch.allclose(crit.score(targets[0], slice(None)), norms[0][0], rtol=1e-3)


def test_hf_batch_encoding_is_calibration_data() -> None:
    transformers = pytest.importorskip("transformers")
    model, _ = make_bert("eager")
    plain, _ = _bert_batches()
    enc = transformers.BatchEncoding(plain)
    ref, _ = make_bert("eager")
    pk.prune_weights(ref, 0.5, criterion="wanda", data=[plain])
    pk.prune_weights(model, 0.5, criterion="wanda", data=[enc])
    assert all(torch.equal(a, b) for a, b in zip(_masks(model), _masks(ref), strict=True))


def test_prune_layers_block_influence_on_inputs_only() -> None:
    model, _ = make_bert("eager")
    plain, padded = _bert_batches()
    copy = make_bert("eager")[0]
    a = pk.prune_layers(model, plain, n=1, data=[plain, padded])
    b = pk.prune_layers(copy, plain, n=1, data=DataLoader([plain, padded], batch_size=None))
    assert a.removed == b.removed and a.scores.keys() == b.scores.keys()
    for k in a.scores:
        assert a.scores[k] == pytest.approx(b.scores[k])


def test_structured_taylor_on_dict_batches_with_labels() -> None:
    seen: list[Any] = []

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(y)
        return F.cross_entropy(out, y)

    torch.manual_seed(0)
    model = Net()
    data = [{"x": torch.randn(5, 6), "labels": torch.randint(0, 3, (5,))} for _ in range(3)]
    pk.prune_channels(model, torch.randn(2, 6), 0.5, criterion="taylor", data=data, loss_fn=loss_fn)
    assert model.a.out_features == 8
    assert len(seen) == 3 and all(torch.equal(s, d["labels"]) for s, d in zip(seen, data, strict=True))


def test_a_layer_pruned_away_warns() -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-4)  # tiny weights: a global threshold takes all of them
    with pytest.warns(LayerPrunedAwayWarning, match="2"):
        pk.prune_weights(model, 0.4, scope="global")
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.prune_weights(model, 0.4, scope="layer")  # no layer near 100%: no warning


def test_bert_channels_default_keeps_heads_and_reports_true_head_counts(tmp_path: Any) -> None:
    transformers = pytest.importorskip("transformers")
    model, x = make_bert("eager")
    pk.prune_channels(model, x, 0.25)  # prune_heads="auto": BERT's config has no head_dim
    attn = model.encoder.layer[0].attention.self
    assert attn.query.out_features == 32 and attn.num_attention_heads == 4
    pk.save_pretrained(model, tmp_path / "auto")  # still expressible
    assert transformers.AutoModel.from_pretrained(tmp_path / "auto").config.intermediate_size == 48
    model, x = make_bert("eager")
    pk.prune_channels(model, x, 0.25, prune_heads=True)
    attn = model.encoder.layer[0].attention.self
    assert attn.num_attention_heads == attn.query.out_features // attn.attention_head_size == 3
    assert attn.all_head_size == attn.query.out_features
