"""Sensitivity per attention head (granularity="head"): heads come from the dependency graph."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit as pk


class SeparateQKV(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections, then a classifier."""

    def __init__(self, dim: int = 16, heads: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, n, -1)
        return self.head((x + self.o(y)).mean(1))


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = SeparateQKV()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def _bert() -> tuple[nn.Module, list[tuple[dict[str, torch.Tensor], torch.Tensor]]]:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    data = [
        ({"input_ids": torch.randint(0, 60, (4, 8), generator=gen)}, torch.randint(0, 3, (4,), generator=gen))
        for _ in range(2)
    ]
    return model, data


def _loss(out: object, y: torch.Tensor) -> torch.Tensor:
    logits = out.logits if hasattr(out, "logits") else out  # type: ignore[attr-defined]
    return F.cross_entropy(logits, y)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _by_hand(model: nn.Module, data: list, prefixes: tuple[str, ...], head: int, head_dim: int) -> float:
    """Loss with the q/k/v rows (and biases) of one head zeroed by hand, then restored."""
    saved = _state(model)
    rows = slice(head * head_dim, (head + 1) * head_dim)
    with torch.no_grad():
        for p in prefixes:
            lin = model.get_submodule(p)
            lin.weight[rows] = 0
            lin.bias[rows] = 0
        total = n = 0.0
        for x, y in data:
            out = model(**x) if isinstance(x, dict) else model(x)
            total += float(_loss(out, y)) * len(y)
            n += len(y)
    model.load_state_dict(saved)
    return total / n


def test_bert_heads_bit_identical_and_match_hand_zeroing(tmp_path: Path) -> None:
    model, data = _bert()
    before = _state(model)
    grads_before = [p.grad for p in model.parameters()]
    res = pk.sensitivity(model, data, _loss, granularity="head", progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.grad for p in model.parameters()] == grads_before
    assert res.granularity == "head"
    expected = [f"bert.encoder.layer.{i}.attention/head{h}" for i in range(2) for h in range(4)]
    assert res.names == expected
    for i in range(2):
        self_attn = f"bert.encoder.layer.{i}.attention.self"
        for h in range(4):
            want = _by_hand(
                model, data, (f"{self_attn}.query", f"{self_attn}.key", f"{self_attn}.value"), h, 4
            )
            got = res.layer(f"bert.encoder.layer.{i}.attention/head{h}").loss[0]
            assert got == pytest.approx(want, abs=1e-6)
            assert res.delta(f"bert.encoder.layer.{i}.attention/head{h}")[0] == pytest.approx(
                want - res.baseline_loss, abs=1e-6
            )
    assert not all(abs(d[0]) < 1e-9 for d in (res.delta(n) for n in res.names))
    d = res.to_dict()
    assert d["granularity"] == "head" and len(d["layers"]) == 8
    assert pk.SensitivityResult.from_dict(d).names == res.names
    png = res.plot(tmp_path / "heads.png")
    assert png.stat().st_size > 1000
    assert res.to_csv(tmp_path / "heads.csv").read_text().count("/head") == 8
    with pytest.raises(pk.ConfigError, match="head"):
        pk.allocate(res, target=0.5)


def test_custom_mha_heads_and_estimates() -> None:
    torch.manual_seed(0)
    model = Wrapped().eval()
    gen = torch.Generator().manual_seed(2)
    data = [
        (torch.randn(8, 5, 16, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(2)
    ]
    before = _state(model)
    res = pk.sensitivity(model, data, _loss, granularity="head", metric=None, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.names == [f"attn/head{h}" for h in range(4)]
    for h in range(4):
        want = _by_hand(model, data, ("attn.q", "attn.k", "attn.v"), h, 4)
        assert res.layer(f"attn/head{h}").loss[0] == pytest.approx(want, abs=1e-6)
        la = res.layer(f"attn/head{h}")
        # q/k/v rows + biases (3 * (4*16 + 4)) and the output projection's 4 columns (16 * 4)
        assert la.numel == 3 * (4 * 16 + 4) + 16 * 4
        assert la.taylor is not None and la.taylor[0] > 0 and la.fisher is not None and la.fisher[0] > 0
    assert set(res.rank_correlation) == {"taylor", "fisher"}


def test_head_include_exclude_and_no_heads() -> None:
    torch.manual_seed(0)
    model = Wrapped().eval()
    data = [(torch.randn(4, 5, 16), torch.randint(0, 3, (4,)))]
    res = pk.sensitivity(
        model, data, _loss, granularity="head", include=["attn"], estimate=False, progress=False
    )
    assert len(res.names) == 4 and res.layers[0].taylor is None
    with pytest.raises(pk.UnknownModuleError, match="no attention heads"):
        pk.sensitivity(model, data, _loss, granularity="head", exclude=["attn"], progress=False)
    with pytest.raises(pk.UnknownModuleError, match="matches no module"):
        pk.sensitivity(model, data, _loss, granularity="head", include=["nope*"], progress=False)
    mlp = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(pk.UnknownModuleError, match="no attention heads"):
        pk.sensitivity(
            mlp, [(torch.randn(4, 16), torch.randint(0, 3, (4,)))], _loss, granularity="head", progress=False
        )
    with pytest.raises(pk.ConfigError, match="granularity"):
        pk.sensitivity(
            mlp,
            [(torch.randn(4, 16), torch.randint(0, 3, (4,)))],
            _loss,
            granularity="neuron",
            progress=False,
        )  # type: ignore[arg-type]


def test_llama_gqa_units_are_kv_groups_and_match_hand_zeroing() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(3))
    data = [({"input_ids": ids}, ids)]

    def lm_loss(out: object, y: torch.Tensor) -> torch.Tensor:
        logits = out.logits  # type: ignore[attr-defined]
        return F.cross_entropy(logits[:, :-1].reshape(-1, 60), y[:, 1:].reshape(-1))

    before = _state(model)
    res = pk.sensitivity(model, data, lm_loss, granularity="head", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.names == ["model.layers.0.self_attn/kvgroup0", "model.layers.0.self_attn/kvgroup1"]
    hd = 32 // 4
    attn = model.model.layers[0].self_attn
    for g in range(2):
        saved = _state(model)
        with torch.no_grad():  # KV head g and its two query heads, by hand
            attn.q_proj.weight[g * 2 * hd : (g + 1) * 2 * hd] = 0
            attn.k_proj.weight[g * hd : (g + 1) * hd] = 0
            attn.v_proj.weight[g * hd : (g + 1) * hd] = 0
            want = float(lm_loss(model(input_ids=ids), ids))
        model.load_state_dict(saved)
        assert res.layer(f"model.layers.0.self_attn/kvgroup{g}").loss[0] == pytest.approx(want, abs=1e-6)
