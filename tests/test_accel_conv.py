"""SparseConv2d and accelerate on CNNs: every kernel equals the masked conv, zoo CNNs equal the masked model.

Kernel choices are forced with a stub timer (``prefer`` from tests/test_accel.py: no timing asserts).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.accel import (
    AccelerateConfig,
    AccelerationResult,
    InferenceOnlyError,
    LayerCase,
    LayerChoice,
    SparseConv2d,
    SparseLinear,
    accelerate,
    deaccelerate,
    persist,
)
from prunekit.accel.deploy import plain_copy
from prunekit.accel.engine import conv_layers
from prunekit.accel.states import effective_macs, weight_bytes
from prunekit.core import count_macs, get_mask, masked_parameters, set_mask
from prunekit.kernels import ConvGeometry, conv_candidate_kernels, jit
from test_accel import assert_same, outputs, prefer
from zoo import ZOO

pytestmark = pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")

NUMBA = ["csr-numba"] if jit.available() else []  # a candidate only where numba is installed
BASE = ["dense", "csr", *NUMBA, "taps"]
KERNELS = [*BASE, *("compact+" + k for k in BASE)]
CNNS = ["resnet_basic", "resnet_bottleneck", "mobilenet_v2", "densenet", "inception", "unet", "efficientnet",
        "conv_classifier", "inplace", "grouped_conv", "shufflenet"]  # fmt: skip


def channel_mask(shape: tuple[int, ...], g: torch.Generator, keep: float = 0.3) -> torch.Tensor:
    """Random kept weights, plus a whole zero output channel and a whole zero input channel (for compact+)."""
    mask = torch.rand(shape, generator=g) < keep
    if shape[0] > 1:
        mask[1] = False
    if shape[1] > 1:
        mask[:, 0] = False
    return mask


def reference(conv: nn.Conv2d, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    w = torch.where(mask, conv.weight, conv.weight.new_zeros(()))
    return F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation)


GEOMETRIES = [  # (kernel size, stride, padding, dilation)
    (1, 1, 0, 1),  # pointwise: the (in, H*W) view, no copy
    (1, 2, 0, 1),  # strided 1x1 (ResNet downsample)
    (1, 1, 1, 1),  # padded 1x1
    (3, 1, 1, 1),
    (3, 2, 1, 1),
    (3, 1, 2, 2),
    ((3, 1), (2, 1), (1, 0), (1, 2)),  # non-square everything
    (5, 1, "same", 1),
    (3, 1, "same", 2),
    (3, 1, "valid", 1),
    (7, 2, 3, 1),  # ResNet stem
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("size", "stride", "padding", "dilation"), GEOMETRIES)
@pytest.mark.parametrize(("bias", "batch"), [(True, 1), (False, 3)])
def test_every_conv_kernel_equals_the_masked_conv(kernel: str, size: object, stride: object, padding: object,
                                                   dilation: object, bias: bool, batch: int) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(hash((str(size), str(padding), batch)) % 2**31)
    conv = nn.Conv2d(6, 10, size, stride, padding, dilation, bias=bias).double()  # type: ignore[arg-type]
    mask = channel_mask(tuple(conv.weight.shape), g)
    layer = SparseConv2d.from_conv(conv, mask, kernel)
    x = torch.randn(batch, 6, 13, 11, generator=g, dtype=torch.double)
    with torch.no_grad():
        want = reference(conv, mask, x)
        got = layer(x)
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(layer(x[0]), want[0], rtol=1e-10, atol=1e-10)  # unbatched (C, H, W) input
        channels_last = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(layer(channels_last), want, rtol=1e-10, atol=1e-10)
    # eval with grad enabled (no torch.no_grad()), the input requiring grad: same values, gradient flows to x
    got = layer(x.clone().requires_grad_())
    torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-10)
    assert got.requires_grad
    w, m = layer.dense_weight_and_mask()
    assert torch.equal(m, mask) and torch.equal(w, torch.where(mask, conv.weight, 0.0).detach())


@settings(max_examples=80, deadline=None)
@given(cin=st.integers(1, 9), cout=st.integers(1, 9), k=st.integers(1, 4), stride=st.integers(1, 3),
       pad=st.integers(0, 2), dil=st.integers(1, 2), hw=st.integers(4, 12), batch=st.integers(1, 3),
       keep=st.floats(0.0, 1.0), bias=st.booleans(), kernel=st.sampled_from(KERNELS), seed=st.integers(0, 99))  # fmt: skip
def test_conv_kernels_equal_the_masked_conv_on_random_geometries(cin: int, cout: int, k: int, stride: int, pad: int,
        dil: int, hw: int, batch: int, keep: float, bias: bool, kernel: str, seed: int) -> None:  # fmt: skip
    if dil * (k - 1) + 1 > hw + 2 * pad:
        return  # the kernel does not fit the input: nn.Conv2d itself refuses
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride, pad, dil, bias=bias)
    mask = torch.rand(conv.weight.shape, generator=g) < keep
    layer = SparseConv2d.from_conv(conv, mask, kernel)
    x = torch.randn(batch, cin, hw, hw + 1, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(conv, mask, x), rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.dense_weight_and_mask()[1], mask)


def test_conv_candidates() -> None:
    full = torch.ones(8, 4, 3, 3, dtype=torch.bool)
    assert conv_candidate_kernels(full) == ["dense"]
    sparse = torch.rand(8, 4, 3, 3, generator=torch.Generator().manual_seed(0)) < 0.5
    sparse[0, 0] = True
    assert conv_candidate_kernels(sparse) == BASE
    assert "csr-numba" not in conv_candidate_kernels(sparse, torch.bfloat16)
    assert "taps" not in conv_candidate_kernels(sparse[:, :, :1, :1])  # 1x1: csr reads the input as it is
    assert conv_candidate_kernels(channel_mask((8, 4, 3, 3), torch.Generator().manual_seed(1))) == KERNELS


def prune_cnn(model: nn.Module, how: str) -> None:
    if how == "unstructured":
        pk.prune_weights(model, 0.8, scope="layer")  # every Linear and Conv weight
    else:  # whole zero output and input channels of every conv, plus single weights
        g = torch.Generator().manual_seed(0)
        for m in model.modules():
            if type(m) is nn.Conv2d and m.groups == 1:
                set_mask(m, "weight", channel_mask(tuple(m.weight.shape), g, keep=0.7))


@pytest.mark.parametrize(("how", "kernel"), [("unstructured", "csr"), ("unstructured", "taps"),
                                             *(("unstructured", k) for k in NUMBA),
                                             ("channels", "compact+taps")])  # fmt: skip
@pytest.mark.parametrize("name", CNNS)
def test_accelerate_matches_masked_model_on_zoo_cnns(name: str, how: str, kernel: str) -> None:
    model, inputs = ZOO[name]()
    prune_cnn(model, how)
    want = outputs(model, inputs)
    eligible = {n for n, _ in conv_layers(model)[0]}
    tap_convs = {n for n, m in conv_layers(model)[0] if m.kernel_size != (1, 1)}
    result = accelerate(model, inputs, timer=prefer(kernel))  # where it is no candidate: csr
    convs = {c.name: c for c in result.layers if c.kind == "conv2d"}
    assert convs and set(convs) <= eligible
    pruned = [c for c in convs.values() if c.sparsity > 0]
    assert pruned and all(c.kernel != "dense" for c in pruned)
    assert all(c.kernel == "taps" for c in pruned if kernel == "taps" and c.name in tap_convs)
    assert sum(isinstance(m, SparseConv2d) for m in model.modules()) == len([c for c in pruned])
    assert_same(outputs(model, inputs), want)
    for c in convs.values():
        assert len(c.weight_shape) == 4 and c.shape == (c.weight_shape[0], c.weight_shape[1] * c.weight_shape[2]
                                                        * c.weight_shape[3])  # fmt: skip
    assert "Conv2d" in str(result)


def test_grouped_and_non_zero_padded_convs_are_skipped() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.Conv2d(8, 4, 1))  # fmt: skip
    pk.prune_weights(model, 0.8, scope="layer")
    x = torch.randn(2, 4, 9, 9)
    want = outputs(model, (x,))
    result = accelerate(model, x, timer=prefer("csr"))
    reasons = dict(result.skipped)
    assert "groups=2" in reasons["1"] and "reflect" in reasons["2"]
    assert [c.name for c in result.layers] == ["0", "3"]
    assert isinstance(model[0], SparseConv2d) and type(model[1]) is nn.Conv2d and type(model[2]) is nn.Conv2d
    assert_same(outputs(model, (x,)), want)


def test_conv_where_sparse_loses_stays_dense() -> None:
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1))
    pk.prune_weights(model, 0.9, scope="layer")
    first = model[0]

    def timer(case: LayerCase, fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        assert case.kind == "conv2d"
        kernels = case.kernels
        if case.name == "0":  # sparse slower
            return {k: 1.0 if k == "dense" else 3.0 for k in kernels}
        return {k: 1.0 if k == "dense" else 0.95 for k in kernels}  # faster, but below the margin

    x = torch.randn(1, 8, 10, 10)
    want = model(x).detach()
    result = accelerate(model, x, timer=timer)
    assert [c.kernel for c in result.layers] == ["dense", "dense"] and not result.replaced
    assert model[0] is first and get_mask(first, "weight") is not None
    assert "margin" in result.layers[1].reason
    assert torch.equal(model(x), want)


def test_conv_deaccelerate_is_bit_exact_and_train_mode_raises() -> None:
    model, inputs = ZOO["resnet_basic"]()
    pk.prune_weights(model, 0.7, scope="layer")
    ref = copy.deepcopy(model)
    for kernel in KERNELS[1:]:
        accelerate(model, inputs, timer=prefer(kernel))
        assert any(isinstance(m, SparseConv2d) for m in model.modules()), kernel
        with pytest.raises(InferenceOnlyError, match="deaccelerate"):
            model.train()(*inputs)
        model.eval()
        assert deaccelerate(model) > 0 and not any(
            isinstance(m, (SparseConv2d, SparseLinear)) for m in model.modules()
        )
        masks = {mp.fqn: mp.mask for mp in masked_parameters(model)}
        for mp in masked_parameters(ref):
            assert torch.equal(masks[mp.fqn], mp.mask), (kernel, mp.fqn)
        for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
            assert torch.equal(p, q), (kernel, n)
        for a, b in zip(outputs(model, inputs), outputs(ref, inputs), strict=True):
            assert torch.equal(a, b), kernel


def test_conv_save_and_reload(tmp_path: Path) -> None:
    model, inputs = ZOO["resnet_bottleneck"]()
    pk.prune_weights(model, 0.8, scope="layer")
    want = outputs(model, inputs)
    result = accelerate(model, inputs, timer=prefer("csr"))
    path = persist.save(model, tmp_path / "cnn.safetensors")
    assert any(isinstance(m, SparseConv2d) for m in model.modules())  # saving did not de-accelerate
    plan = persist.read_plan(path)
    assert plan is not None and plan.to_dict() == result.to_dict()
    convs = [c for c in plan.layers if c.kind == "conv2d"]
    assert convs and all(len(c.input_shape) == 4 for c in convs)
    fresh, _ = ZOO["resnet_bottleneck"]()
    persist.load(path, fresh)  # same fingerprint: the plan's kernels, not re-timed
    kinds = {n: type(m).__name__ for n, m in fresh.named_modules() if n in {c.name for c in plan.layers}}
    assert kinds == {c.name: ("SparseConv2d" if c.kind == "conv2d" else "SparseLinear") if c.kernel != "dense"
                     else ("Conv2d" if c.kind == "conv2d" else "Linear") for c in plan.layers}  # fmt: skip
    assert_same(outputs(fresh, inputs), want)
    masked, _ = ZOO["resnet_bottleneck"]()
    pk.load(path, masked)  # pk.load reads the same file as a masked model
    assert_same(outputs(masked, inputs), want)


def test_conv_reload_on_other_hardware_remeasures(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    pk.prune_weights(model, 0.9, scope="layer")
    x = torch.randn(1, 8, 12, 12)
    want = model(x).detach()
    data = accelerate(model, x, timer=prefer("csr")).to_dict()
    data["fingerprint"] = "another-machine"
    path = persist.save(model, tmp_path / "m.safetensors", AccelerationResult.from_dict(data))
    fresh = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1))
    persist.load(path, fresh, config=AccelerateConfig(rounds=2, min_weights=0))
    from prunekit.kernels import attached_plan, fingerprint

    plan = attached_plan(fresh)
    assert plan is not None and plan.fingerprint == fingerprint()
    assert [c.input_shape for c in plan.layers] == [(1, 8, 12, 12), (1, 16, 12, 12)]
    assert all(c.timings_ms.get("dense") for c in plan.layers)  # really timed here, on the recorded shapes
    assert_same([fresh(x)], [want])


def test_plans_without_conv_fields_still_load_and_conv_entries_round_trip() -> None:
    old = {"name": "fc", "kernel": "csr", "shape": [8, 16], "tokens": 4, "sparsity": 0.9,
           "timings_ms": {"dense": 1.0, "csr": 0.5}, "reason": "csr 2.00x faster", "transposed_output": False}  # fmt: skip
    choice = LayerChoice.from_dict(json.loads(json.dumps(old)))
    assert choice.kind == "linear" and choice.to_dict() == old  # an earlier plan's entry, byte for byte
    conv = LayerChoice(name="c", kernel="csr", shape=(16, 72), tokens=100, sparsity=0.9,
                       weight_shape=(16, 8, 3, 3), input_shape=(1, 8, 10, 10))  # fmt: skip
    assert LayerChoice.from_dict(json.loads(json.dumps(conv.to_dict()))) == conv
    with pytest.raises(pk.FormatError, match="4-D"):
        LayerChoice.from_dict({**conv.to_dict(), "weight_shape": [16, 72]})


def test_conv_plain_copy_macs_and_bytes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False)).eval()
    pk.prune_weights(model, 0.75, scope="layer")
    x = torch.randn(2, 8, 6, 6)
    want = outputs(model, (x,))
    dense_macs, dense_bytes = count_macs(model, (x,)), weight_bytes(plain_copy(model))
    accelerate(model, x, timer=prefer("csr"))
    plain = plain_copy(model)
    assert not any(isinstance(m, SparseConv2d) for m in plain.modules())
    assert_same(outputs(plain, (x,)), want)
    zeros = [int((m.weight == 0).sum()) for m in plain.modules() if isinstance(m, nn.Conv2d)]
    positions = 2 * 6 * 6  # per sample 6x6 outputs, batch 2, both convs
    assert effective_macs(model, (x,)) == dense_macs - sum(zeros) * positions
    nnz = sum(int((m.weight != 0).sum()) for m in plain.modules() if isinstance(m, nn.Conv2d))
    # values + int32 column indices + int32 row pointers (17 and 9) + bias of the first conv
    assert weight_bytes(model) == nnz * 8 + (17 + 9) * 4 + 16 * 4
    assert weight_bytes(model) < dense_bytes


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_conv_onnx_export_of_an_accelerated_cnn(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from prunekit.accel.deploy import OnnxModel, export_onnx

    model, (x,) = ZOO["resnet_basic"]()
    pk.prune_weights(model, 0.8, scope="layer")
    accelerate(model, x, timer=prefer("csr"))
    assert any(isinstance(m, SparseConv2d) for m in model.modules())
    path = export_onnx(model, x, tmp_path / "cnn.onnx")
    onnx = OnnxModel(path, threads=1)
    with torch.no_grad():
        torch.testing.assert_close(onnx(x)[0], model(x), rtol=1e-4, atol=1e-5)


def test_geometry_of_a_conv() -> None:
    g = ConvGeometry.of(nn.Conv2d(2, 2, 3, stride=(2, 1), padding=(1, 0), dilation=2))
    assert g == ConvGeometry((2, 1), (1, 0), (2, 2))
    assert ConvGeometry.of(nn.Conv2d(2, 2, 3, padding="same")).padding == "same"
