"""prunekit.structured.experts: removing whole MoE experts from Hugging Face Mixtral / Qwen-MoE / OLMoE.

The oracle: removing experts R computes what the ORIGINAL model computes with the router logits of R
set to -inf. The original's router output is changed by intercepting the one ``F.linear`` call that
uses the router weight (a TorchFunctionMode), so the oracle does not depend on prunekit's surgery.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import prunekit as pk
from prunekit.structured.experts import ExpertPruneConfig, prune_experts, sync_expert_config
from prunekit.structured.moe import expert_scores, find_moe_blocks

transformers = pytest.importorskip("transformers")

VOCAB = 64
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    num_experts_per_tok=2,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def make_mixtral() -> nn.Module:
    cfg = transformers.MixtralConfig(**COMMON, intermediate_size=16, num_local_experts=8)
    return _init(transformers.MixtralForCausalLM(cfg))


def make_qwen2_moe() -> nn.Module:
    cfg = transformers.Qwen2MoeConfig(
        **COMMON,
        intermediate_size=24,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        num_experts=8,
        norm_topk_prob=False,
    )
    return _init(transformers.Qwen2MoeForCausalLM(cfg))


def make_qwen3_moe() -> nn.Module:
    cfg = transformers.Qwen3MoeConfig(
        **COMMON, intermediate_size=24, moe_intermediate_size=16, num_experts=8, norm_topk_prob=True
    )
    return _init(transformers.Qwen3MoeForCausalLM(cfg))


def make_olmoe() -> nn.Module:
    cfg = transformers.OlmoeConfig(
        **{**COMMON, "num_key_value_heads": 4}, intermediate_size=16, num_experts=8
    )
    return _init(transformers.OlmoeForCausalLM(cfg))


MAKERS: dict[str, Callable[[], nn.Module]] = {
    "mixtral": make_mixtral,
    "qwen2_moe": make_qwen2_moe,
    "qwen3_moe": make_qwen3_moe,
    "olmoe": make_olmoe,
}


def _init(model: nn.Module) -> nn.Module:
    """Routers and experts with distinct random values (some classes init the router to zeros)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for b in find_moe_blocks(model):
            for _, t in b.expert_tensors():
                t.normal_(0, 0.3)
    return model.eval()


def batches(n: int = 3, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (2, 7), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0  # right padding
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


class MaskedRouter(TorchFunctionMode):
    """Set the logits of the ``removed`` experts to -inf wherever ``F.linear`` uses a router weight."""

    def __init__(self, removed: dict[int, Sequence[int]]) -> None:
        super().__init__()
        self.removed = removed  # id(router weight) -> removed expert indices

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is F.linear and len(args) > 1 and id(args[1]) in self.removed:
            out = out.clone()
            out[..., list(self.removed[id(args[1])])] = float("-inf")
        return out


def oracle_logits(
    original: nn.Module, removed: dict[str, tuple[int, ...]], x: dict[str, torch.Tensor]
) -> torch.Tensor:
    by_weight = {}
    for b in find_moe_blocks(original):
        if removed.get(b.name):
            by_weight[id(b.module.get_submodule(b.router).weight)] = removed[b.name]
    with torch.no_grad(), MaskedRouter(by_weight):
        return original(**x).logits


def logits(model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


@pytest.mark.parametrize("arch", list(MAKERS))
@pytest.mark.parametrize("criterion", ["reap", "frequency", "random"])
def test_removal_equals_masked_router_logits(arch: str, criterion: str) -> None:
    model = MAKERS[arch]()
    original = copy.deepcopy(model)
    result = prune_experts(model, batches(), n=3, criterion=criterion)
    assert result.experts_before == 16 and result.experts_after == 10 and result.uniform
    assert all(len(r) == 3 for r in result.removed.values())
    for x in batches(2, seed=7):
        torch.testing.assert_close(
            logits(model, x), oracle_logits(original, result.removed, x), rtol=1e-5, atol=1e-5
        )
    for b in find_moe_blocks(model):
        router = b.module.get_submodule(b.router)
        experts = b.module.get_submodule(b.experts)
        assert b.num_experts == 5 and router.weight.shape[0] == 5 and experts.num_experts == 5
        assert router.num_experts == 5 and b.top_k == 2 <= 5
        kept = torch.tensor(result.kept[b.name])
        orig = original.get_submodule(b.name)
        torch.testing.assert_close(experts.down_proj, orig.experts.down_proj[kept], rtol=0, atol=0)
    for key in ("num_experts", "num_local_experts"):
        if hasattr(model.config, key):
            assert getattr(model.config, key) == 5
    assert model.num_experts == 5  # the ForCausalLM's router aux-loss count


def test_qwen2_shared_expert_is_kept() -> None:
    model = make_qwen2_moe()
    before = {k: v.clone() for k, v in model.state_dict().items() if "shared_expert" in k}
    prune_experts(model, batches(), ratio=0.5)
    after = model.state_dict()
    assert before and all(torch.equal(after[k], v) for k, v in before.items())
    assert model.model.layers[0].mlp.gate.weight.shape == (4, 32)


def test_router_aux_loss_still_runs_after_pruning() -> None:
    model = make_mixtral()
    prune_experts(model, batches(), ratio=0.25)
    x = batches(1)[0]
    out = model(**x, labels=x["input_ids"], output_router_logits=True)
    assert out.router_logits[0].shape[-1] == 6 and torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_save_pretrained_from_pretrained_round_trip(arch: str, tmp_path: Path) -> None:
    model = MAKERS[arch]()
    prune_experts(model, batches(), ratio=0.25)
    x = batches(1, seed=9)[0]
    want = logits(model, x)
    pk.save_pretrained(model, tmp_path)
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    torch.testing.assert_close(logits(loaded.eval(), x), want, rtol=0, atol=1e-6)
    assert find_moe_blocks(loaded)[0].num_experts == 6


def test_pk_save_load_into_fresh_model(tmp_path: Path) -> None:
    model = make_olmoe()
    prune_experts(model, batches(), n=2, criterion="frequency")
    x = batches(1, seed=3)[0]
    want = logits(model, x)
    pk.save(model, tmp_path / "m.safetensors")
    fresh = pk.load(tmp_path / "m.safetensors", make_olmoe())
    torch.testing.assert_close(logits(fresh, x), want, rtol=0, atol=0)
    assert [b.num_experts for b in find_moe_blocks(fresh)] == [6, 6]
    assert sync_expert_config(fresh) == ("num_experts",) and fresh.config.num_experts == 6


def test_per_layer_removal_is_non_uniform_and_refuses_hf_export(tmp_path: Path) -> None:
    model = make_mixtral()
    # Layer 1's experts all score 0 except two: a global ranking takes every removal there it can.
    with torch.no_grad():
        model.model.layers[1].mlp.experts.down_proj[2:] = 0
    original = copy.deepcopy(model)
    result = prune_experts(model, batches(), n=2, per_layer=True)
    assert not result.uniform and sum(len(r) for r in result.removed.values()) == 4
    assert result.removed["model.layers.1.mlp"] == (2, 3, 4, 5) and not result.removed["model.layers.0.mlp"]
    assert model.config.num_local_experts == 8 and model.num_experts == 8  # a config cannot say it
    x = batches(1, seed=5)[0]
    torch.testing.assert_close(
        logits(model, x), oracle_logits(original, result.removed, x), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(pk.PlanError):
        pk.save_pretrained(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(pk.PlanError, match="per-block expert counts"):
        sync_expert_config(model)
    pk.save(model, tmp_path / "m.safetensors")
    fresh = pk.load(tmp_path / "m.safetensors", make_mixtral())
    torch.testing.assert_close(logits(fresh, x), logits(model, x), rtol=0, atol=0)


def test_include_prunes_one_block_only() -> None:
    model = make_qwen3_moe()
    original = copy.deepcopy(model)
    result = prune_experts(model, batches(), n=4, include="model.layers.1")
    assert list(result.removed) == ["model.layers.1.mlp"]
    assert [b.num_experts for b in find_moe_blocks(model)] == [8, 4]
    assert model.config.num_experts == 8 and not result.config_updated
    x = batches(1)[0]
    torch.testing.assert_close(
        logits(model, x), oracle_logits(original, result.removed, x), rtol=1e-5, atol=1e-5
    )
    excluded = prune_experts(copy.deepcopy(original), batches(), n=4, exclude=["*.1.mlp"])
    assert list(excluded.removed) == ["model.layers.0.mlp"]


def test_random_is_seeded() -> None:
    runs = [
        prune_experts(make_mixtral(), None, n=3, criterion="random", seed=s).removed for s in (0, 0, 1, 2)
    ]
    assert runs[0] == runs[1]
    assert len({str(r) for r in runs[1:]}) > 1


# ----------------------------------------------------------------------------------------------
# Scores against hand-computed references.
# ----------------------------------------------------------------------------------------------


def _reference_scores(block: nn.Module, h: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """REAP and frequency of a Mixtral block, written out: softmax, top-k renormalised, SwiGLU experts."""
    e_count = block.gate.weight.shape[0]
    inter = block.experts.down_proj.shape[-1]
    reap = torch.zeros(e_count, dtype=torch.float64)
    hits = torch.zeros(e_count, dtype=torch.float64)
    for x in h.double().detach():
        probs = torch.softmax(block.gate.weight.double() @ x, dim=0)
        top = torch.topk(probs, top_k)
        gates = top.values / top.values.sum()
        for g, e in zip(gates.tolist(), top.indices.tolist(), strict=True):
            gu = block.experts.gate_up_proj[e].double() @ x
            y = block.experts.down_proj[e].double() @ (F.silu(gu[:inter]) * gu[inter:])
            reap[e] += g * float(torch.linalg.vector_norm(y))
            hits[e] += 1
    return reap / hits.clamp(min=1), hits / h.shape[0]


def test_reap_and_frequency_match_hand_computed_reference() -> None:
    block = find_moe_blocks(make_mixtral())[0].module
    h = torch.randn(3, 5, 32)
    blocks = find_moe_blocks(block)
    assert len(blocks) == 1 and blocks[0].name == ""
    with torch.no_grad():
        reap_ref, freq_ref = _reference_scores(block, h.reshape(-1, 32), top_k=2)
    (reap,) = expert_scores(block, blocks, [h], "reap")
    (freq,) = expert_scores(block, blocks, [h[:1], h[1:]], "frequency")
    torch.testing.assert_close(reap, reap_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(freq, freq_ref, rtol=0, atol=1e-12)
    assert (freq_ref * 15).sum() == 30  # every token picks two experts


@pytest.mark.parametrize("criterion", ["reap", "frequency"])
def test_padding_tokens_are_ignored(criterion: str) -> None:
    """A causal model: right padding cannot change the real tokens, so masked junk must not count."""
    model = make_mixtral()
    blocks = find_moe_blocks(model)
    ids = torch.randint(0, VOCAB, (2, 6))
    junk = torch.cat([ids, torch.randint(0, VOCAB, (2, 4))], dim=1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 4)], dim=1).long()
    clean = expert_scores(model, blocks, [{"input_ids": ids}], criterion)
    padded = expert_scores(model, blocks, [{"input_ids": junk, "attention_mask": mask}], criterion)
    unmasked = expert_scores(model, blocks, [{"input_ids": junk}], criterion)
    for c, p in zip(clean, padded, strict=True):
        torch.testing.assert_close(p, c, rtol=1e-5, atol=1e-8)
    assert any(not torch.allclose(u, c) for u, c in zip(unmasked, clean, strict=True))


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error and the model untouched.
# ----------------------------------------------------------------------------------------------


def _untouched(
    model: nn.Module, call: Callable[[nn.Module], Any], error: type[Exception], match: str
) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = model.config.to_dict()
    with pytest.raises(error, match=match):
        call(model)
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert model.config.to_dict() == cfg and not hasattr(model, "_prunekit_plan")
    assert [b.num_experts for b in find_moe_blocks(model)] == [8, 8]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratio": 1.0}, pk.ConfigError, r"ratio must be .* \[0, 1\)"),
        ({"ratio": -0.1}, pk.ConfigError, "ratio must be"),
        ({"ratio": 0.5, "n": 2}, pk.ConfigError, "not both"),
        ({"n": 7}, pk.PlanError, r"top-k = 2 experts, so at most 6"),
        ({"n": 8}, pk.PlanError, "at most 6"),
        ({"criterion": "magnitude"}, pk.ConfigError, r"choose one of \['reap', 'frequency', 'random'\]"),
        ({"include": "model.layers.9"}, pk.UnknownModuleError, "matches no mixture-of-experts block"),
        ({"max_batches": 0}, pk.ConfigError, "max_batches"),
    ],
)
def test_bad_arguments_leave_model_untouched(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    _untouched(make_mixtral(), lambda m: prune_experts(m, batches(), **kwargs), error, match)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (None, "needs calibration data"),
        ([], "yielded no batches"),
        ([torch.randn(2, 7)], "does not fit MixtralForCausalLM"),  # floats where token ids are expected
        ([torch.randint(VOCAB, 2 * VOCAB, (2, 7))], "does not fit"),  # ids outside the vocabulary
        (
            [{"input_ids": torch.zeros(1, 4, dtype=torch.long), "attention_mask": torch.zeros(1, 4)}],
            "no calibration token",
        ),
    ],
)
def test_bad_data_leaves_model_untouched(data: Any, match: str) -> None:
    _untouched(make_mixtral(), lambda m: prune_experts(m, data, ratio=0.25), pk.DataRequiredError, match)


def test_model_without_moe_block() -> None:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    with pytest.raises(pk.PlanError, match="has no mixture-of-experts block"):
        prune_experts(model, batches())
    with pytest.raises(pk.PlanError, match="no mixture-of-experts block"):
        prune_experts(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), [torch.randn(2, 4)])


def test_config_validates() -> None:
    assert ExpertPruneConfig().count(8) == 2 and ExpertPruneConfig(ratio=0.5).count(6) == 3
    assert ExpertPruneConfig(n=0).count(8) == 0
    with pytest.raises(pk.ConfigError, match="n must be"):
        ExpertPruneConfig(n=-1)


def test_zero_removal_is_the_identity() -> None:
    model = make_mixtral()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune_experts(model, batches(), ratio=0.0)
    assert result.experts_after == 16 and not hasattr(model, "_prunekit_plan")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


class FusedExperts(nn.Module):
    """A hand-written experts container: per-expert biases and a per-expert buffer (leading dim E)."""

    def __init__(self, e: int, h: int, i: int) -> None:
        super().__init__()
        self.num_experts = e
        self.w1 = nn.Parameter(torch.randn(e, i, h) * 0.3)
        self.b1 = nn.Parameter(torch.randn(e, i) * 0.3)
        self.w2 = nn.Parameter(torch.randn(e, h, i) * 0.3)
        self.register_buffer("scale", torch.rand(e) + 0.5)

    def forward(
        self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        for e in range(self.num_experts):
            tok, slot = torch.nonzero(top_k_index == e, as_tuple=True)
            y = (
                F.linear(torch.relu(F.linear(hidden[tok], self.w1[e], self.b1[e])), self.w2[e])
                * self.scale[e]
            )
            out.index_add_(0, tok, y * top_k_weights[tok, slot, None])
        return out


class LinearRouterMoE(nn.Module):
    def __init__(self, e: int = 6, h: int = 8) -> None:
        super().__init__()
        self.top_k = 2
        self.gate = nn.Linear(h, e, bias=True)
        self.experts = FusedExperts(e, h, 12)
        self.head = nn.Linear(h, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.gate(h), dim=-1)
        w, idx = torch.topk(probs, self.top_k, dim=-1)
        return self.head(self.experts(h, idx, w)).reshape(*x.shape[:-1], 3)


def test_custom_block_with_linear_router_biases_and_buffers(tmp_path: Path) -> None:
    model = LinearRouterMoE().eval()
    original = copy.deepcopy(model)
    data = [torch.randn(4, 5, 8) for _ in range(2)]
    result = prune_experts(model, data, n=2)
    (removed,) = result.removed.values()
    assert (
        model.gate.out_features == 4 and model.gate.bias.shape == (4,) and model.experts.scale.shape == (4,)
    )
    kept = torch.tensor(result.kept[""])
    assert torch.equal(model.experts.b1, original.experts.b1[kept])
    x = torch.randn(3, 5, 8)
    with torch.no_grad(), MaskedRouter({id(original.gate.weight): removed}):
        want = original(x)
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    pk.save(model, tmp_path / "m.safetensors")
    fresh = LinearRouterMoE()
    pk.load(tmp_path / "m.safetensors", fresh)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
