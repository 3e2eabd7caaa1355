"""prunekit.io.hf: config sync after structured pruning, save_pretrained -> from_pretrained round trips.

These tests slice the Hugging Face modules by hand (independent of the structured engine), so they
pin down the config logic alone; tests/test_zoo.py repeats the round trip through pk.prune_channels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.io.hf import set_num_hidden_layers, sync_hf_config
from zoo import make_bert, make_gpt2, make_llama, random_inputs

transformers = pytest.importorskip("transformers")


def _slice_linear(lin: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep ``rows`` (outputs) / ``cols`` (inputs) of an nn.Linear or a transformers Conv1D."""
    conv1d = not isinstance(lin, nn.Linear)  # Conv1D stores weight as (in, out)
    w = lin.weight.data.t() if conv1d else lin.weight.data  # (out, in)
    if rows is not None:
        w = w[rows]
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.data[rows].clone())
    if cols is not None:
        w = w[:, cols]
    lin.weight = nn.Parameter((w.t() if conv1d else w).contiguous().clone())
    if conv1d:
        lin.nf = w.shape[0]
    else:
        lin.out_features, lin.in_features = w.shape


def _prune_llama_mlp(model: nn.Module, keep: int, per_layer: list[int] | None = None) -> None:
    for i, layer in enumerate(model.model.layers):
        k = torch.arange(per_layer[i] if per_layer else keep)
        _slice_linear(layer.mlp.gate_proj, rows=k)
        _slice_linear(layer.mlp.up_proj, rows=k)
        _slice_linear(layer.mlp.down_proj, cols=k)


def _logits(model: nn.Module, x: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        out = model(*x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llama_uniform_mlp_round_trip(tmp_path: Path, attn: str) -> None:
    model, x = make_llama(attn)
    _prune_llama_mlp(model, keep=48)
    xs = random_inputs(x, 1)
    before = _logits(model, xs)
    pk.save_pretrained(model, tmp_path)
    assert model.config.intermediate_size == 48
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.model.layers[1].mlp.up_proj.out_features == 48
    torch.testing.assert_close(_logits(loaded, xs), before, rtol=0, atol=1e-6)


def test_llama_whole_kv_group_round_trip(tmp_path: Path) -> None:
    """Remove KV head 1 with its 4 query heads: num_attention_heads 8->4, num_key_value_heads 2->1."""
    model, x = make_llama("sdpa")
    for layer in model.model.layers:
        a = layer.self_attn
        q, kv = torch.arange(32), torch.arange(8)  # heads 0-3 (KV head 0), head_dim 8
        _slice_linear(a.q_proj, rows=q)
        _slice_linear(a.k_proj, rows=kv)
        _slice_linear(a.v_proj, rows=kv)
        _slice_linear(a.o_proj, cols=q)
    before = _logits(model, x)
    result = sync_hf_config(model)
    assert result.expressible
    assert result.updates == {"num_attention_heads": 4, "num_key_value_heads": 1}
    pk.save_pretrained(model, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (loaded.config.num_attention_heads, loaded.config.num_key_value_heads) == (4, 1)
    torch.testing.assert_close(_logits(loaded, x), before, rtol=0, atol=1e-5)


def test_per_layer_widths_refuse_export_and_leave_config(tmp_path: Path) -> None:
    model, _ = make_llama("eager")
    _prune_llama_mlp(model, keep=0, per_layer=[40, 64])
    out = tmp_path / "out"
    with pytest.raises(pk.PlanError, match=r"per-layer widths.*pk\.save"):
        pk.save_pretrained(model, out)
    assert not out.exists()
    assert model.config.intermediate_size == 96  # untouched
    report = sync_hf_config(model, strict=False)
    assert not report.expressible and "intermediate_size" in str(report)


def test_gpt2_mlp_round_trip_keeps_tie(tmp_path: Path) -> None:
    model, x = make_gpt2("eager")
    for block in model.transformer.h:
        k = torch.arange(0, 128, 2)
        _slice_linear(block.mlp.c_fc, rows=k)
        _slice_linear(block.mlp.c_proj, cols=k)
    before = _logits(model, x)
    pk.save_pretrained(model, tmp_path)
    assert model.config.n_inner == 64
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    torch.testing.assert_close(_logits(loaded, x), before, rtol=0, atol=1e-6)


def test_gpt2_pruned_heads_not_expressible() -> None:
    """GPT-2 derives head_dim = n_embd // n_head: fewer heads would rebuild wider heads."""
    model, _ = make_gpt2("eager")
    for block in model.transformer.h:
        a = block.attn
        k = torch.cat([torch.arange(16) + 32 * j for j in range(3)])  # heads 0-1 of q, k, v
        _slice_linear(a.c_attn, rows=k)
        _slice_linear(a.c_proj, cols=torch.arange(16))
        a.num_heads, a.split_size = 2, 16
    with pytest.raises(
        pk.PlanError,
        match=r"cannot express.*attn.c_attn.weight: pruned \(32, 48\) but config rebuilds \(32, 96\)",
    ):
        sync_hf_config(model)
    assert model.config.n_head == 4


def test_bert_mlp_round_trip(tmp_path: Path) -> None:
    model, x = make_bert("sdpa")
    for layer in model.encoder.layer:
        k = torch.arange(1, 64, 3)
        _slice_linear(layer.intermediate.dense, rows=k)
        _slice_linear(layer.output.dense, cols=k)
    before = _logits(model, x)
    pk.save_pretrained(model, tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.intermediate_size == len(range(1, 64, 3))
    torch.testing.assert_close(_logits(loaded, x), before, rtol=0, atol=1e-6)


def test_set_num_hidden_layers_round_trip(tmp_path: Path) -> None:
    """Drop layer 0 of a 2-layer LLaMA: config, layer_idx and from_pretrained all agree."""
    model, x = make_llama("eager")
    model.model.layers = nn.ModuleList([model.model.layers[1]])
    set_num_hidden_layers(model, [1])
    assert model.config.num_hidden_layers == 1
    assert model.model.layers[0].self_attn.layer_idx == 0
    if isinstance(getattr(model.config, "layer_types", None), list):
        assert len(model.config.layer_types) == 1
    before = _logits(model, x)
    pk.save_pretrained(model, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(loaded, x), before, rtol=0, atol=1e-6)
    with torch.no_grad():  # the KV cache indexes layers by layer_idx: generation must run
        loaded.generate(x[0], max_new_tokens=2, do_sample=False)


def test_set_num_hidden_layers_validates() -> None:
    model, _ = make_llama("eager")
    with pytest.raises(pk.ConfigError, match="kept_layers"):
        set_num_hidden_layers(model, [0])  # the list still has 2 layers
    assert model.config.num_hidden_layers == 2


def test_not_a_hf_model() -> None:
    with pytest.raises(pk.ConfigError, match="pk.save"):
        pk.save_pretrained(nn.Linear(2, 2), "unused")


def test_unpruned_model_is_a_no_op() -> None:
    model, _ = make_llama("eager")
    result = sync_hf_config(model)
    assert result.expressible and result.updates == {}
