"""Pruned models export to ONNX and onnxruntime computes what PyTorch computes.

Structured pruning must leave an ordinary ``nn.Module`` (no hooks, no masks, stale sizes would break the
export), and weight pruning after ``make_permanent`` must export like any dense model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests import zoo
from torch import nn

import prunekit as pk
from prunekit.core.metrics import count_params

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _export_and_run(model: nn.Module, x: torch.Tensor, path: Path) -> np.ndarray:
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _check(model: nn.Module, x: torch.Tensor, tmp_path: Path) -> None:
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    got = _export_and_run(model, x, tmp_path / "model.onnx")
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_channel_pruned_resnet_exports_to_onnx(tmp_path: Path) -> None:
    model, (x,) = zoo.make_resnet_basic()
    params_before = count_params(model)
    pk.prune_channels(model, (x,), ratio=0.5)
    assert count_params(model) < params_before
    _check(model, x, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "densenet", "shufflenet", "vit"])
def test_channel_pruned_zoo_models_export_to_onnx(name: str, tmp_path: Path) -> None:
    model, inputs = zoo.ZOO[name]()
    pk.prune_channels(model, inputs, ratio=0.4)
    _check(model, inputs[0], tmp_path)


def test_weight_pruned_model_exports_after_make_permanent(tmp_path: Path) -> None:
    model, (x,) = zoo.make_flatten_linear()
    pk.prune_weights(model, sparsity=0.8)
    pk.make_permanent(model)
    assert pk.sparsity(model) == pytest.approx(0.8, abs=1e-3)
    _check(model, x, tmp_path)
