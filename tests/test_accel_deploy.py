"""Deployment paths: ONNX (+ int8) through onnxruntime and torch.export round trips match PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.accel import accelerate
from prunekit.accel.deploy import (
    OnnxModel,
    PruneQuantizeConfig,
    export_onnx,
    export_program,
    prune_and_quantize,
)
from zoo import ZOO

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning"),
]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).eval()


def test_onnx_float_export_of_an_accelerated_model_matches(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = mlp()
    pk.prune_weights(model, 0.9)
    x = torch.randn(4, 64)
    accelerate(model, x, timer=lambda case, fns: {k: 1.0 if k == "dense" else 0.1 for k in case.kernels})
    path = export_onnx(model, x, tmp_path / "m.onnx")
    onnx = OnnxModel(path, threads=1)
    for batch in (1, 7):  # dynamic batch
        xb = torch.randn(batch, 64)
        with torch.no_grad():
            want = model(xb)
        torch.testing.assert_close(onnx(xb)[0], want, rtol=1e-4, atol=1e-5)


def test_onnx_int8_export_of_a_pruned_model_matches_within_quantization_error(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = mlp()
    pk.prune_weights(model, 0.5)
    x = torch.randn(16, 64)
    float_path = export_onnx(model, x, tmp_path / "f.onnx")
    int8_path = export_onnx(model, x, tmp_path / "q.onnx", quantize="int8")
    assert int8_path.stat().st_size < 0.4 * float_path.stat().st_size  # int8 weights: ~1/4 of fp32
    with torch.no_grad():
        want = model(x)
    got = OnnxModel(int8_path, threads=1)(x)[0]
    # int8 weights and activations: error ~1% of the output range, far from the untrained spread
    err = (got - want).abs().max() / want.abs().max()
    assert err < 0.05
    assert torch.equal(got.argmax(1), want.argmax(1)) or err < 0.02
    assert not (tmp_path / "q.fp32.onnx").exists()


def test_prune_and_quantize_is_one_call_and_its_config_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg = PruneQuantizeConfig(sparsity=0.8)
    assert PruneQuantizeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(pk.ConfigError, match="version"):
        PruneQuantizeConfig.from_dict({**cfg.to_dict(), "version": 0})
    with pytest.raises(pk.ConfigError, match="channels"):
        PruneQuantizeConfig(channels=1.5)
    model = mlp()
    path = prune_and_quantize(model, torch.randn(2, 64), tmp_path / "m.onnx", cfg)
    assert pk.sparsity(model) == pytest.approx(0.8, abs=1e-3)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = model(x)
    assert (OnnxModel(path)(x)[0] - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("how", ["channels", "weights"])
def test_torch_export_round_trip(how: str, tmp_path: Path) -> None:
    model, (x,) = ZOO["resnet_bottleneck"]()
    if how == "channels":
        pk.prune_channels(model, (x,), 0.5)
    else:
        pk.prune_weights(model, 0.7)
        pk.make_permanent(model)
    program = export_program(model, (x,))
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    for batch in (1, 3):
        xb = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            torch.testing.assert_close(loaded(xb), model(xb), rtol=1e-4, atol=1e-5)


def test_a_batch_one_example_still_exports_a_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    path = export_onnx(model, (torch.randn(1, 8),), tmp_path / "m.onnx")  # torch.export alone would fix batch=1
    x = torch.randn(5, 8)
    (y,) = OnnxModel(path)(x)
    torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
    program = export_program(model, (torch.randn(1, 8),))
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.slow
def test_keyword_inputs_export_with_dynamic_batch_and_tokens(tmp_path: Path) -> None:
    """A Hugging Face encoder takes input_ids/attention_mask by name: ONNX fp32 and int8 of the pruned model."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("transformers")
    from zoo.hf import make_bert

    model, (ids,) = make_bert()
    model.eval()
    pk.prune_weights(model, 0.7)
    example = {"input_ids": ids[:1], "attention_mask": torch.ones_like(ids[:1])}
    fp32 = OnnxModel(export_onnx(model, example, tmp_path / "m.onnx"))
    int8 = OnnxModel(export_onnx(model, example, tmp_path / "m8.onnx", quantize="int8"))
    assert fp32.input_names == ["input_ids", "attention_mask"]
    g = torch.Generator().manual_seed(3)
    for batch, tokens in ((1, 8), (3, 5), (2, 12)):  # other batch sizes and sequence lengths than exported
        x = {"input_ids": torch.randint(0, 96, (batch, tokens), generator=g),
             "attention_mask": torch.ones(batch, tokens, dtype=torch.long)}  # fmt: skip
        x["attention_mask"][0, -2:] = 0
        with torch.no_grad():
            want = model(**x).last_hidden_state
        torch.testing.assert_close(fp32(**x)[0], want, rtol=1e-4, atol=1e-4)
        assert (int8(**x)[0] - want).abs().max() < 0.1 * want.abs().max()
    with pytest.raises(pk.ConfigError, match="by name"):
        fp32(input_ids=ids)
