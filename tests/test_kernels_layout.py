"""Column-split CSR kernels (``csr/K``) and transposed-view outputs: same function as the masked Linear.

Oracle: ``F.linear(x, W * mask, b)``. No timing: kernels are built directly or forced with a stub timer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.accel import AccelerateConfig, AccelerationResult, LayerCase, SparseLinear, accelerate, persist
from prunekit.accel.engine import view_feeders
from prunekit.core import set_mask
from prunekit.kernels import candidate_kernels
from prunekit.kernels.kernels import build_csr, column_parts, csr_parts, split_bounds


def stub(kernel: str) -> Callable[[LayerCase, Mapping[str, Callable[[], object]]], dict[str, float]]:
    def timer(case: LayerCase, fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        best = kernel if kernel in case.kernels else "csr"
        return {k: 1.0 if k == "dense" else 0.1 if k == best else 0.5 for k in case.kernels}

    return timer


def layer(
    out: int, inp: int, sparsity: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(out, inp, generator=g), torch.randn(out, generator=g)
    return w, b, torch.rand(out, inp, generator=g) > sparsity


def test_split_bounds_cover_the_columns() -> None:
    assert split_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert split_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]  # never an empty part


def test_column_parts_reassemble_the_matrix() -> None:
    w, _, m = layer(9, 1000, 0.7)
    masked = w * m
    crow, col, values = csr_parts(masked, m)
    parts = column_parts(crow, col, values, (9, 1000), 3)
    assert [(lo, hi) for lo, hi, _ in parts] == split_bounds(1000, 3)
    torch.testing.assert_close(torch.cat([p.to_dense() for _, _, p in parts], dim=1), masked)
    assert torch.equal(build_csr(crow, col, values, (9, 1000)).to_dense(), masked)


@pytest.mark.parametrize(
    "kernel", ["csr", "csr/2", "csr/4", "csr/8", "compact+csr/2", "bsr4", "compact+dense"]
)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("x_layout", ["contiguous", "transposed"])
def test_kernels_equal_masked_linear_in_every_layout(kernel: str, transposed: bool, x_layout: str) -> None:
    w, b, m = layer(24, 2048, 0.9, seed=1)
    m[:, :64] = False  # whole zero columns and rows for the compact kernel
    m[20:] = False
    if kernel == "bsr4":
        m = m.reshape(6, 4, 512, 4).any(dim=(1, 3)).repeat_interleave(4, 0).repeat_interleave(4, 1)
    fast = SparseLinear(w, b, m, kernel=kernel)
    fast.transposed_output = transposed
    x = torch.randn(2, 5, 2048)
    if x_layout == "transposed":  # what a previous sparse layer with a transposed output produces
        x = x.reshape(10, 2048).t().contiguous().t().reshape(2, 5, 2048)
        assert not x.is_contiguous()
    y = fast(x)
    assert y.shape == (2, 5, 24)
    assert y.is_contiguous() == (not transposed or kernel == "compact+dense")
    torch.testing.assert_close(y, F.linear(x, w * m, b), rtol=1e-4, atol=1e-4)  # sums of ~200 products
    back = fast.to_linear()
    torch.testing.assert_close(back(x), F.linear(x, w * m, b), rtol=1e-4, atol=1e-4)


def test_candidates_split_only_wide_inputs() -> None:
    assert not any(k.startswith("csr/") for k in candidate_kernels(layer(64, 256, 0.9)[2]))
    wide = candidate_kernels(layer(64, 1024, 0.9)[2])
    assert {"csr/2", "csr/4"} <= set(wide) and "csr/8" not in wide


class Block(nn.Module):
    """fc1 -> GELU -> Dropout -> fc2 (a sparse-to-sparse chain); q is read by a functional view."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.fc1, self.fc2 = nn.Linear(64, 64), nn.Linear(64, 128), nn.Linear(128, 64)
        self.act, self.drop = nn.GELU(), nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.q(x).view(x.shape[0], x.shape[1], 4, 16).transpose(1, 2)
        h = self.fc2(self.drop(self.act(self.fc1(x))))
        return h + heads.transpose(1, 2).reshape(x.shape)


def test_only_layers_feeding_a_sparse_layer_return_views() -> None:
    model = Block().eval()
    pk.prune_weights(model, 0.9, scope="layer")
    x = torch.randn(2, 6, 64)
    want = model(x).detach()
    result = accelerate(model, (x,), timer=stub("csr"))
    views = {c.name for c in result.layers if c.transposed_output}
    assert views == {"fc1"}  # q feeds a view/transpose, fc2 the residual add: both contiguous
    assert model.fc1.transposed_output and not model.q.transposed_output
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert view_feeders(model, (x,), {"fc1": model.fc1, "fc2": model.fc2, "q": model.q}) == {"fc1"}


class MergesDims(nn.Module):
    """fc1's output goes through a ReLU module to fc2, but is also ``.view``-ed (needs contiguity)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(32, 32), nn.Linear(32, 8), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        return self.fc2(h).sum() + h.view(-1).sum()


def test_a_view_that_breaks_the_model_falls_back_to_contiguous(tmp_path: object) -> None:
    model = MergesDims().eval()
    pk.prune_weights(model, 0.9, scope="layer")
    x = torch.randn(3, 4, 32)
    want = model(x).detach()
    result = accelerate(model, (x,), timer=stub("csr"), config=AccelerateConfig(min_weights=0))
    assert {c.name for c in result.replaced} == {"fc1", "fc2"}
    assert not any(c.transposed_output for c in result.layers)
    torch.testing.assert_close(model(x), want)
    path = persist.save(model, tmp_path / "m.safetensors")  # type: ignore[operator]
    fresh = MergesDims().eval()
    persist.load(path, fresh)
    torch.testing.assert_close(fresh(x), want)


def test_transposed_output_survives_save_and_reload(tmp_path: object) -> None:
    model = Block().eval()
    pk.prune_weights(model, 0.9, scope="layer")
    x = torch.randn(2, 6, 64)
    want = model(x).detach()
    result = accelerate(model, (x,), timer=stub("csr"))
    assert AccelerationResult.from_dict(result.to_dict()) == result
    path = persist.save(model, tmp_path / "b.safetensors")  # type: ignore[operator]
    fresh = Block().eval()
    persist.load(path, fresh)
    assert isinstance(fresh.fc1, SparseLinear) and fresh.fc1.transposed_output
    assert isinstance(fresh.q, SparseLinear) and not fresh.q.transposed_output
    torch.testing.assert_close(fresh(x), want, rtol=1e-5, atol=1e-5)


def test_column_split_kernel_chosen_by_accelerate_matches() -> None:
    lin = nn.Linear(1024, 64)
    set_mask(lin, "weight", layer(64, 1024, 0.9, seed=4)[2])
    model = nn.Sequential(lin).eval()
    x = torch.randn(3, 1024)
    want = model(x).detach()
    result = accelerate(model, (x,), timer=stub("csr/4"))
    assert result.layers[0].kernel == "csr/4"
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["csr", "csr/2", "bsr4"])
def test_layers_reading_the_same_input_share_its_transpose_until_it_changes(kernel: str) -> None:
    layers = []
    for seed in range(3):  # q, k, v: three layers on one input
        w, b, m = layer(16, 512, 0.9, seed=seed)
        if kernel == "bsr4":
            m = m.reshape(4, 4, 128, 4).any(dim=(1, 3)).repeat_interleave(4, 0).repeat_interleave(4, 1)
        layers.append((SparseLinear(w, b, m, kernel=kernel), w * m, b))
    x = torch.randn(2, 7, 512)
    for fast, wm, b in layers:
        torch.testing.assert_close(fast(x), F.linear(x, wm, b), rtol=1e-4, atol=1e-4)
    x.mul_(-2.0)  # changed in place: the shared copy must not be reused
    for fast, wm, b in layers:
        torch.testing.assert_close(fast(x), F.linear(x, wm, b), rtol=1e-4, atol=1e-4)
    y = torch.randn(3, 5, 512)  # another input of another shape
    for fast, wm, b in layers:
        torch.testing.assert_close(fast(y), F.linear(y, wm, b), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # a view of the same storage changed: its version moves with the base
        x[..., :3].zero_()
    for fast, wm, b in layers:
        torch.testing.assert_close(fast(x), F.linear(x, wm, b), rtol=1e-4, atol=1e-4)
    with torch.inference_mode():  # inference tensors have no version counter: copied every time
        z = torch.randn(2, 7, 512)
        for fast, wm, b in layers:
            torch.testing.assert_close(fast(z), F.linear(z, wm, b), rtol=1e-4, atol=1e-4)
        z.mul_(3.0)
        for fast, wm, b in layers:
            torch.testing.assert_close(fast(z), F.linear(z, wm, b), rtol=1e-4, atol=1e-4)
