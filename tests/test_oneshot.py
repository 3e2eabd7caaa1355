"""prune_oneshot: the block-by-block engine, its contract and its bad-input behaviour."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import get_mask, masked_parameters
from prunekit.errors import ConfigError, DataRequiredError, PatternError, PrunekitError, UnknownModuleError
from prunekit.oneshot import OneShotConfig, calibration_batches, prune_oneshot
from prunekit.oneshot.methods import sparsegpt


class Block(nn.Module):
    """q/k/v read one tensor (shared statistics), a kwarg scales the residual, padding is masked."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, scale: float = 1.0
    ) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2) / 4
        if mask is not None:  # padded keys are never attended to
            scores = scores.masked_fill(mask[:, None, :] == 0, -1e9)
        att = torch.softmax(scores, -1)
        h = x + scale * att @ self.v(x)
        return h + self.down(torch.relu(self.up(h)))


class Net(nn.Module):
    def __init__(self, depth: int = 2, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x)
        m = attention_mask.float() if attention_mask is not None else None
        for b in self.blocks:
            h = b(h, m, scale=0.5)
        return self.head(h)


def _data(n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 10, 4, generator=g) for _ in range(n)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "refit"])
def test_every_method_prunes_the_block_linears_with_prunekit_masks(method: str) -> None:
    torch.manual_seed(0)
    model = Net()
    result = prune_oneshot(model, _data(), method=method, sparsity=0.5, progress=False)
    names = [r.name for r in result.layers]
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ("q", "k", "v", "up", "down")]
    for r in result.layers:
        assert r.zeros == r.numel // 2
        module = model.get_submodule(r.name)
        mask = get_mask(module, "weight")
        assert mask is not None and torch.equal(mask, module.weight != 0)
    assert get_mask(model.embed, "weight") is None and get_mask(model.head, "weight") is None
    assert {s.name for s in result.skipped} == {"embed", "head"}
    assert result.sparsity == pytest.approx(0.5)
    assert "blocks.1.down" in str(result) and result.to_dict()["layers"][0]["name"] == "blocks.0.q"
    report = pk.sparsity_report(model).to_dict()
    assert {row["name"] for row in report["layers"] if row["masked"]} == set(names)


def test_sparsity_zero_is_the_identity() -> None:
    torch.manual_seed(1)
    model = Net()
    before = _state(model)
    x = _data(1)[0]
    out = model(x)
    result = prune_oneshot(model, _data(), method="sparsegpt", sparsity=0.0, progress=False)
    assert all(r.zeros == 0 for r in result.layers)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(model(x), out)


def test_sequential_propagation_equals_a_hand_written_two_block_loop() -> None:
    torch.manual_seed(2)
    model = Net()
    ref = Net()
    ref.load_state_dict(model.state_dict())
    data = _data()
    prune_oneshot(model, data, method="sparsegpt", sparsity=0.5, progress=False)

    # by hand: inputs of block 0, Hessians per input, SparseGPT per layer, pruned outputs onward
    with torch.no_grad():
        hidden = [ref.embed(x) for x in data]
        for block in ref.blocks:
            grams: dict[str, torch.Tensor] = {}
            hooks = []
            for name in ("q", "up", "down"):  # q, k and v read the same input

                def hook(
                    mod: nn.Module, args: tuple[Any, ...], name: str = name, grams: dict[str, Any] = grams
                ) -> None:
                    x = args[0].reshape(-1, args[0].shape[-1])
                    grams[name] = grams.get(name, 0) + x.T @ x

                hooks.append(getattr(block, name).register_forward_pre_hook(hook))
            for h in hidden:
                block(h, None, scale=0.5)
            for h in hooks:
                h.remove()
            for name, src in (("q", "q"), ("k", "q"), ("v", "q"), ("up", "up"), ("down", "down")):
                lin = getattr(block, name)
                new, _ = sparsegpt(lin.weight, grams[src], 0.5, None)
                lin.weight.copy_(new)
            hidden = [block(h, None, scale=0.5) for h in hidden]
    for (name, a), (_, b) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_padding_tokens_are_left_out_of_the_statistics() -> None:
    torch.manual_seed(3)
    base = Net()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, 4, generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 6:] = 0
    noisy = x.clone()
    noisy[0, 6:] = 1e3  # garbage at the padded positions: must change nothing
    models = []
    for inp in (x, noisy):
        m = Net()
        m.load_state_dict(base.state_dict())
        result = prune_oneshot(
            m, [{"x": inp, "attention_mask": mask}], method="refit", sparsity=0.5, progress=False
        )
        models.append(m)
    assert result.calibration_tokens == 16
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_nm_pattern_and_layer_ratios() -> None:
    torch.manual_seed(4)
    model = Net()
    result = prune_oneshot(model, _data(), method="refit", sparsity=None, pattern="2:4", progress=False)
    for r in result.layers:
        w = model.get_submodule(r.name).weight
        assert (w.reshape(w.shape[0], -1, 4).ne(0).sum(-1) <= 2).all()
    model = Net()
    result = prune_oneshot(
        model, _data(), method="wanda", layer_ratios={"blocks.0": 0.25, "blocks.*.down": 0.75}, progress=False
    )
    got = {r.name: r.sparsity for r in result.layers}
    assert got["blocks.0.q"] == 0.25 and got["blocks.0.down"] == 0.75 and got["blocks.1.q"] == 0.5
    model = Net(depth=3)
    cfg = OneShotConfig(method="wanda", sparsity=0.5, layer_ratios="owl", owl_threshold=2.0, progress=False)
    result = prune_oneshot(model, _data(), config=cfg)
    targets = sorted({r.target for r in result.layers})
    assert len(targets) == 3 and sum(targets) / 3 == pytest.approx(0.5)


def test_include_exclude() -> None:
    model = Net()
    result = prune_oneshot(
        model, _data(), method="magnitude", exclude=["blocks.*.q"], include=None, progress=False
    )
    assert "blocks.0.q" not in [r.name for r in result.layers]
    assert get_mask(model.blocks[0].q, "weight") is None


def test_config_object_and_keywords() -> None:
    cfg = OneShotConfig(method="wanda", sparsity=0.6, exclude=("blocks.0.q",), progress=False)
    assert OneShotConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["version"] == 1
    model = Net()
    result = prune_oneshot(model, _data(), config=cfg)
    assert result.method == "wanda" and result.target_sparsity == 0.6
    with pytest.raises(ConfigError, match="not both"):
        prune_oneshot(Net(), _data(), config=cfg, sparsity=0.5)  # even a value equal to a default
    with pytest.raises(ConfigError, match="not both"):
        prune_oneshot(Net(), _data(), config=dataclasses.replace(cfg, sparsity=0.5), method="refit")
    with pytest.raises(ConfigError, match="unknown"):
        OneShotConfig.from_dict({"sparsty": 0.5})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sparsity": 1.0}, ConfigError, r"\[0, 1\)"),
        ({"sparsity": -0.1}, ConfigError, r"\[0, 1\)"),
        ({"method": "obs"}, ConfigError, "method must be one of"),
        ({"pattern": "3:3"}, ConfigError, "0 < N < M"),
        ({"pattern": "2:4", "sparsity": 0.3}, ConfigError, "below what pattern"),
        ({"pattern": "4:12", "sparsity": None, "block_size": 96}, PatternError, "not a multiple of M=12"),
        ({"exclude": ["nope"]}, UnknownModuleError, "nope"),
        ({"layer_ratios": {"blocks.9": 0.5}}, UnknownModuleError, "blocks.9"),
        ({"layer_ratios": "gaussian"}, ConfigError, "owl"),
    ],
)
def test_bad_options_leave_the_model_untouched(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = Net()
    before = _state(model)
    with pytest.raises(error, match=match):
        prune_oneshot(model, _data(), progress=False, **kwargs)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ([], DataRequiredError, "empty"),
        (None, DataRequiredError, "calibration data"),
        ([torch.randn(2, 5, 7)], PrunekitError, "does not fit"),
    ],
)
def test_bad_data_leaves_the_model_untouched(data: Any, error: type[Exception], match: str) -> None:
    model = Net()
    before = _state(model)
    with pytest.raises(error, match=match):
        prune_oneshot(model, data, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert get_mask(model.blocks[0].q, "weight") is None


def test_a_failure_half_way_restores_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    import prunekit.oneshot.driver as driver

    model = Net()
    before = _state(model)
    real = driver.solve
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 7:  # in block 1, after block 0 was written
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "solve", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        prune_oneshot(model, _data(), progress=False)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not list(masked_parameters(model))


def test_no_blocks_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no transformer blocks"):
        prune_oneshot(nn.Sequential(nn.Linear(4, 4)), [torch.randn(2, 4)], progress=False)


def test_calibration_batches_validation() -> None:
    with pytest.raises(DataRequiredError):
        calibration_batches([], tokenizer=None)
    with pytest.raises(ConfigError, match="one string"):
        calibration_batches("hello", tokenizer=None)


# ----------------------------------------------------------------------------- Hugging Face models

transformers = pytest.importorskip("transformers")


def _tiny_llama() -> Any:
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_llama_gqa_decoder_with_padding() -> None:
    model = _tiny_llama()
    ids = torch.randint(0, 64, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    result = prune_oneshot(model, [{"input_ids": ids, "attention_mask": mask}], sparsity=0.5, progress=False)
    assert result.blocks == "model.layers" and len(result.layers) == 14
    assert result.calibration_tokens == 21
    assert pk.sparsity(model) < 0.5  # embeddings and lm_head stay dense
    assert all(r.sparsity == 0.5 for r in result.layers)
    assert torch.isfinite(model(ids).logits).all()


def test_gpt2_conv1d_layers_take_nm_along_their_input() -> None:
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    torch.manual_seed(0)
    model = transformers.GPT2Model(cfg).eval()
    result = prune_oneshot(
        model,
        [torch.randint(0, 64, (2, 10))],
        method="sparsegpt",
        pattern="2:4",
        sparsity=None,
        progress=False,
    )
    assert len(result.layers) == 8
    w = model.h[0].mlp.c_fc.weight  # Conv1D: (in, out)
    assert (w.T.reshape(w.shape[1], -1, 4).ne(0).sum(-1) <= 2).all()
