"""Layer pruning: removal equals skipping, scores are right, HF models stay loadable, bad blocks refused."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from prunekit.structured import block_influence, find_blocks, skip_blocks


class Res(nn.Module):
    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.f(x)


class ResMLP(nn.Module):
    """Blocks in a ModuleList; block i changes the hidden state by ``scales[i]`` (by construction)."""

    def __init__(self, scales: tuple[float, ...] = (1.0, 0.01, 0.5, 0.001, 0.2)) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.blocks = nn.ModuleList(Res(16, s) for s in scales)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def test_removed_blocks_give_exactly_the_skipped_output() -> None:
    model = ResMLP()
    x = torch.randn(8, 6)
    reference = copy.deepcopy(model)
    res = pk.prune_layers(model, x, n=2)
    assert res.removed == ("blocks.1", "blocks.3")  # the two blocks built to do least
    assert len(model.blocks) == 3 and [k for k, _ in model.blocks.named_children()] == ["0", "1", "2"]
    with torch.no_grad(), skip_blocks(reference, res.removed):
        expected = reference(x)
    assert torch.equal(model(x), expected)
    assert res.blocks_before == 5 and res.blocks_after == 3
    assert set(res.scores) == {f"blocks.{i}" for i in range(5)}
    assert "removed" in str(res) and res.to_dict()["removed"] == ["blocks.1", "blocks.3"]


def test_block_influence_matches_a_hand_computation() -> None:
    model = ResMLP()
    x = torch.randn(8, 6)
    scores = block_influence(model, ["blocks.0", "blocks.2"], [x])
    with torch.no_grad():
        h0 = model.inp(x)
        h1 = model.blocks[0](h0)
        h2 = model.blocks[1](h1)
        h3 = model.blocks[2](h2)
    assert scores["blocks.0"] == pytest.approx(
        1 - float(F.cosine_similarity(h0, h1, dim=-1).mean()), abs=1e-6
    )
    assert scores["blocks.2"] == pytest.approx(
        1 - float(F.cosine_similarity(h2, h3, dim=-1).mean()), abs=1e-6
    )


def test_loss_and_position_criteria() -> None:
    torch.manual_seed(0)
    model = ResMLP()
    x = torch.randn(64, 6)
    with torch.no_grad():
        y = model(x)
    data = [(x[:32], y[:32]), (x[32:], y[32:])]
    m1 = copy.deepcopy(model)
    res = pk.prune_layers(m1, x[:4], n=1, data=data, loss_fn=F.mse_loss, criterion="loss")
    assert res.removed == ("blocks.3",)
    with torch.no_grad(), skip_blocks(model, ["blocks.3"]):
        loss = sum(float(F.mse_loss(model(xb), yb)) for xb, yb in data) / 2
    assert res.scores["blocks.3"] == pytest.approx(loss, rel=1e-5, abs=1e-9)
    assert min(res.scores.values()) == res.scores["blocks.3"]
    m2 = copy.deepcopy(model)
    res = pk.prune_layers(m2, x[:4], n=2, criterion="position")
    assert res.removed == ("blocks.3", "blocks.4")
    with pytest.raises(pk.DataRequiredError):
        pk.prune_layers(copy.deepcopy(model), x[:4], n=1, criterion="loss")


class Down(nn.Module):
    """A residual block that changes the number of channels: it cannot be removed."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, stride=2), nn.BatchNorm2d(cout))
        self.skip = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x) + self.skip(x))


class Basic(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv(x))


def resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Sequential(Basic(8), Basic(8)),
        nn.Sequential(Down(8, 16), Basic(16), Basic(16)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def test_resnet_blocks_across_stages_and_shape_changing_blocks_refused() -> None:
    model = resnet()
    x = torch.randn(2, 3, 16, 16)
    infos = {b.name: b for b in find_blocks(model, x)}
    assert {n for n, b in infos.items() if b.removable} == {"1.0", "1.1", "2.1", "2.2"}
    assert not infos["2.0"].removable and "(2, 8, 16, 16)" in infos["2.0"].reason
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PlanError, match=r"'2\.0'.*hidden state changes across it"):
        pk.prune_layers(model, x, n=1, include=["2.0"])
    with pytest.raises(pk.PlanError, match="only 2 removable"):
        pk.prune_layers(model, x, n=3, include="2")
    with pytest.raises(pk.UnknownModuleError):
        pk.prune_layers(model, x, n=1, include="nope")
    with pytest.raises(pk.ConfigError):
        pk.prune_layers(model, x, n=0)
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    reference = copy.deepcopy(model)
    res = pk.prune_layers(model, x, n=2)
    with torch.no_grad(), skip_blocks(reference, res.removed):
        assert torch.equal(model(x), reference(x))
    assert sum(len(model[i]) for i in (1, 2)) == 3  # a stage is never emptied


def test_blocks_not_in_a_chain_are_not_removable() -> None:
    class Parallel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleList(Res(4) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return sum(h(x) for h in self.heads)  # type: ignore[return-value]

    model = Parallel()
    infos = find_blocks(model, torch.randn(2, 4))
    assert not any(b.removable for b in infos)
    with pytest.raises(pk.PlanError, match="not a chain"):
        pk.prune_layers(model, torch.randn(2, 4), n=1)


def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48
    )
    return transformers.BertModel(cfg).eval()


def _llama() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=99, n_embd=32, n_layer=4, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("build", [_bert, _llama, _gpt2], ids=["bert", "llama", "gpt2"])
def test_hf_models_get_shallower_and_round_trip_through_from_pretrained(build, tmp_path) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = build()
    ids = torch.randint(0, 99, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    reference = copy.deepcopy(model)
    res = pk.prune_layers(model, inputs, n=2)
    assert len(res.removed) == 2 and res.blocks_before == 4
    assert model.config.num_hidden_layers == 2
    assert "num_hidden_layers" in res.config_updated
    with torch.no_grad():
        out = model(**inputs)[0]
        with skip_blocks(reference, res.removed):
            expected = reference(**inputs)[0]
    assert torch.equal(out, expected)
    for i, layer in enumerate(layer_list(model)):
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                assert sub.layer_idx == i
    model.save_pretrained(tmp_path)
    auto = transformers.AutoModelForCausalLM if hasattr(model, "lm_head") else transformers.AutoModel
    loaded = auto.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 2 and len(layer_list(loaded)) == 2
    with torch.no_grad():
        assert torch.equal(loaded(**inputs)[0], out)


def layer_list(model: nn.Module) -> nn.ModuleList:
    for name in ("model.layers", "encoder.layer", "transformer.h"):
        try:
            return model.get_submodule(name)  # type: ignore[return-value]
        except AttributeError:
            continue
    raise AssertionError("no layer list")


def test_llama_generates_with_a_kv_cache_after_removal() -> None:
    model = _llama()
    ids = torch.randint(0, 99, (1, 5))
    pk.prune_layers(model, {"input_ids": ids}, n=1, criterion="position")
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 8)


@settings(max_examples=15)
@given(
    st.lists(st.floats(0.0, 2.0), min_size=2, max_size=6),
    st.data(),
    st.sampled_from(["block_influence", "position", "loss"]),
)
def test_removal_equals_skipping_property(scales: list[float], data: st.DataObject, criterion: str) -> None:
    model = ResMLP(tuple(scales))
    n = data.draw(st.integers(1, len(scales) - 1))
    x = torch.randn(16, 6)
    with torch.no_grad():
        batches = [(x, model(x) + 0.1)]
    reference = copy.deepcopy(model)
    res = pk.prune_layers(model, x, n=n, criterion=criterion, data=batches, loss_fn=F.mse_loss)  # type: ignore[arg-type]
    assert len(model.blocks) == len(scales) - n and len(res.removed) == n
    kept_scales = [s for i, s in enumerate(scales) if f"blocks.{i}" not in res.removed]
    assert [b.scale for b in model.blocks] == kept_scales
    with torch.no_grad(), skip_blocks(reference, res.removed):
        assert torch.equal(model(x), reference(x))
    lowest = sorted(res.scores.values())[:n]
    assert sorted(res.scores[r] for r in res.removed) == lowest


def test_hf_config_found_through_a_wrapper_module() -> None:
    class Wrapper(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids).last_hidden_state.mean(1)

    wrapped = Wrapper(_bert())
    res = pk.prune_layers(wrapped, {"input_ids": torch.randint(0, 99, (2, 5))}, n=3, criterion="position")
    assert res.removed == ("model.encoder.layer.1", "model.encoder.layer.2", "model.encoder.layer.3")
    assert wrapped.model.config.num_hidden_layers == 1 and res.config_updated == ("num_hidden_layers",)
