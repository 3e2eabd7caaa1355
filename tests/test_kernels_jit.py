"""The numba CSR kernel (``csr-numba``): same function as the masked Linear, and a clean fallback.

Oracle: ``F.linear(x, W * mask, b)`` (and torch's own CSR kernel on the same arrays). No timing:
kernels are built directly or forced with a stub timer. Tests needing numba skip without it; the
fallback tests pretend it is missing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.accel import LayerCase, SparseLinear, accelerate, persist
from prunekit.kernels import candidate_kernels, fingerprint, jit
from prunekit.kernels.kernels import JIT, csr_parts

pytestmark = pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")
needs_numba = pytest.mark.skipif(not jit.available(), reason="numba is not installed (pip install numba)")


@pytest.fixture(params=["team", "pool"])
def parallel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Split rows over threads even for small layers, on torch's OpenMP team or on the Python pool."""
    if request.param == "team" and not jit.in_openmp_team():
        pytest.skip("no OpenMP runtime of torch's to call here (Linux with GNU or Intel OpenMP)")
    if request.param == "pool":
        monkeypatch.setattr(jit, "in_openmp_team", lambda: False)
    monkeypatch.setattr(jit, "POOL_MIN_WORK", 0)
    monkeypatch.setattr(jit, "TEAM_MIN_WORK", 0)
    return str(request.param)


def stub(kernel: str) -> Callable[[LayerCase, Mapping[str, Callable[[], object]]], dict[str, float]]:
    def timer(case: LayerCase, fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        return {k: 1.0 if k == "dense" else 0.1 if k == kernel else 0.5 for k in case.kernels}

    return timer


def layer(out: int, inp: int, sparsity: float, seed: int = 0, dtype: torch.dtype = torch.float32
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g, dtype=dtype)
    b = torch.randn(out, generator=g, dtype=dtype)
    return w, b, torch.rand(out, inp, generator=g) > sparsity


@needs_numba
@settings(max_examples=25, deadline=None)
@given(
    out=st.integers(1, 40),
    inp=st.integers(1, 40),
    tokens=st.integers(1, 37),
    sparsity=st.sampled_from([0.0, 0.3, 0.8, 0.97, 1.0]),
    parts=st.integers(1, 4),
    column_parts=st.integers(1, 5),
    with_bias=st.booleans(),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_csr_mm_equals_dense_product(out: int, inp: int, tokens: int, sparsity: float, parts: int,
                                     column_parts: int, with_bias: bool, double: bool, seed: int
                                     ) -> None:  # fmt: skip
    """Row parts (threads) and column parts (``csr-numba/K``, more parts than columns too) in any mix."""
    dtype = torch.float64 if double else torch.float32
    w, b, mask = layer(out, inp, sparsity, seed, dtype)
    crow, col, values = csr_parts(torch.where(mask, w, 0.0), mask)
    xt = torch.randn(inp, tokens, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
    bounds = jit.row_bounds(crow, parts)
    arrays = (
        jit.column_split(crow, col, values, inp, column_parts) if column_parts > 1 else (crow, col, values)
    )
    if column_parts > 1:
        split_crow = arrays[0]
        assert split_crow.shape == (column_parts, out + 1) and int(split_crow[-1, -1]) == int(crow[-1])
    got = jit.csr_mm(*arrays, xt, b if with_bias else None, bounds=bounds)
    want = (w * mask) @ xt + (b[:, None] if with_bias else 0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=60), parts=st.integers(1, 8))
def test_row_bounds_cover_all_rows_in_order_and_balance_kept_weights(counts: list[int], parts: int) -> None:
    crow = torch.zeros(len(counts) + 1, dtype=torch.int32)
    torch.cumsum(torch.tensor(counts), 0, out=crow[1:])
    edges = jit.row_bounds(crow, parts)
    assert len(edges) == parts + 1
    assert edges[0] == 0 and edges[-1] == len(counts)
    assert edges == sorted(edges)
    share = int(crow[-1]) / parts
    for lo, hi in zip(edges, edges[1:], strict=False):
        # a part holds its share give or take one row's weights (rows are not split)
        assert int(crow[hi] - crow[lo]) <= share + max(counts)


@needs_numba
@pytest.mark.parametrize("kernel", [JIT, "compact+" + JIT])
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_linear_numba_equals_masked_linear(kernel: str, threads: int, parallel: str) -> None:
    w, b, mask = layer(48, 64, 0.85, seed=1)
    mask[:, :5] = False  # whole zero columns and rows for the compact form
    mask[40:] = False
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(2))
    want = F.linear(x, w * mask, b)
    m = SparseLinear(w, b, mask, kernel=kernel)
    assert m.kernel == kernel and kernel in candidate_kernels(mask)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-5)
        m.transposed_output = True  # the view-returning form, read again without a copy
        y = m(x)
        assert not y.is_contiguous() or y.shape[-2] == 1
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            m(x.transpose(0, 1).contiguous().transpose(0, 1)), want, rtol=1e-4, atol=1e-5
        )
    finally:
        torch.set_num_threads(before)
    got_w, got_m = m.dense_weight_and_mask()
    assert torch.equal(got_m, mask)
    torch.testing.assert_close(got_w, w * mask)


@needs_numba
@pytest.mark.parametrize("kernel", [JIT + "/2", "compact+" + JIT + "/4"])
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_linear_numba_column_parts_equal_masked_linear(
    kernel: str, threads: int, parallel: str
) -> None:
    """``csr-numba/K`` (a candidate from K x 192 kept input columns) computes the masked Linear."""
    w, b, mask = layer(40, 900, 0.9, seed=3)
    mask[:, 100:130] = False
    mask[35:] = False
    x = torch.randn(2, 9, 900, generator=torch.Generator().manual_seed(4))
    want = F.linear(x, w * mask, b)
    m = SparseLinear(w, b, mask, kernel=kernel)
    assert (m.kernel, m.splits) == (kernel, int(kernel[-1])) and kernel in candidate_kernels(mask)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-5)
        m.values = m.values * 2.0  # a new buffer (as load_state_dict gives): the split copy is rebuilt
        torch.testing.assert_close(m(x), F.linear(x, w * mask * 2.0, b), rtol=1e-4, atol=1e-5)
    finally:
        torch.set_num_threads(before)
    got_w, got_m = m.dense_weight_and_mask()
    assert torch.equal(got_m, mask)
    torch.testing.assert_close(got_w, w * mask * 2.0)


def test_column_parts_are_offered_only_for_wide_enough_layers() -> None:
    names = candidate_kernels(torch.rand(8, 800, generator=torch.Generator().manual_seed(0)) > 0.5)
    if jit.available():
        assert {JIT, JIT + "/2", JIT + "/4"} <= set(names) and JIT + "/8" not in names
    assert "csr/2" in names and "csr/4" not in names  # torch's parts: 256 columns each at least


@needs_numba
def test_numba_kernel_gives_gradients_through_torch_csr() -> None:
    """An input that needs gradients runs torch's CSR on the same arrays (numba has no autograd)."""
    w, b, mask = layer(16, 24, 0.7)
    m = SparseLinear(w, b, mask, kernel=JIT)
    x = torch.randn(4, 24, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (w * mask).sum(0).expand(4, 24), rtol=1e-4, atol=1e-5)


@needs_numba
@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_calls_from_python_threads_agree(threads: int, parallel: str) -> None:
    w, b, mask = layer(64, 96, 0.9)
    m = SparseLinear(w, b, mask, kernel=JIT)
    xs = [torch.randn(7, 96, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    got: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        torch.set_num_threads(threads)  # per thread under OpenMP: each Python thread opens its own team
        for _ in range(20):
            got[i] = m(xs[i])

    workers = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    before = torch.get_num_threads()
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        torch.set_num_threads(before)
    for i, x in enumerate(xs):
        torch.testing.assert_close(got[i], F.linear(x, w * mask, b), rtol=1e-4, atol=1e-5)


def pretend_no_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jit, "available", lambda: False)


def test_without_numba_it_is_no_candidate_and_a_saved_choice_runs_torch_csr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w, b, mask = layer(32, 40, 0.8)
    pretend_no_numba(monkeypatch)
    assert all(JIT not in k for k in candidate_kernels(mask))
    for kernel, effective in [(JIT, "csr"), ("compact+" + JIT, "compact+csr"), (JIT + "/2", "csr/2"),
                              ("compact+" + JIT + "/4", "compact+csr/4")]:  # fmt: skip
        m = SparseLinear(w, b, mask, kernel=kernel)
        assert (m.kernel, m.inner) == (effective, effective.removeprefix("compact+"))
        x = torch.randn(6, 40)
        torch.testing.assert_close(m(x), F.linear(x, w * mask, b), rtol=1e-4, atol=1e-5)


def test_fingerprint_depends_on_numba_version(monkeypatch: pytest.MonkeyPatch) -> None:
    here = fingerprint()
    monkeypatch.setattr(jit, "version", lambda: "0.0-other")
    assert fingerprint() != here


def test_other_dtypes_are_not_offered_the_numba_kernel() -> None:
    mask = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.8
    assert JIT not in candidate_kernels(mask, dtype=torch.bfloat16)
    assert not jit.supports(torch.float16, torch.device("cpu"))


@needs_numba
def test_saved_numba_choice_reloads_and_runs_torch_csr_where_numba_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32))

    model = fresh()
    pk.prune_weights(model, 0.9, scope="layer")
    x = torch.randn(5, 64)
    with torch.no_grad():
        want = model(x).clone()
    accelerate(model, (x,), timer=stub(JIT))
    path = tmp_path / "m.safetensors"
    persist.save(model, path)
    pretend_no_numba(monkeypatch)
    loaded = persist.load(path, fresh(), remeasure_on="never")
    kernels = [m.kernel for m in loaded.modules() if isinstance(m, SparseLinear)]
    assert kernels and set(kernels) == {"csr"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, rtol=1e-4, atol=1e-5)


@needs_numba
def test_saved_column_parts_choice_reloads_as_chosen_and_as_torch_parts_without_numba(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(400, 24))

    model = fresh()
    pk.prune_weights(model, 0.5, scope="layer")
    x = torch.randn(3, 7, 400)
    with torch.no_grad():
        want = model(x).clone()
    accelerate(model, (x,), timer=stub(JIT + "/2"))
    path = tmp_path / "m.safetensors"
    persist.save(model, path)
    for missing, kernel in [(False, JIT + "/2"), (True, "csr/2")]:
        if missing:
            pretend_no_numba(monkeypatch)
        loaded = persist.load(path, fresh(), remeasure_on="never")
        assert [m.kernel for m in loaded.modules() if isinstance(m, SparseLinear)] == [kernel]
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), want, rtol=1e-4, atol=1e-5)


def test_without_numba_a_saved_conv_choice_runs_torch_csr(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.accel import SparseConv2d
    from prunekit.kernels import conv_candidate_kernels

    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 6, 1)
    mask = torch.rand(conv.weight.shape, generator=g) > 0.7
    pretend_no_numba(monkeypatch)
    assert JIT not in conv_candidate_kernels(mask)
    layer = SparseConv2d.from_conv(conv, mask, JIT)
    assert (layer.kernel, layer.inner) == ("csr", "csr")
    x = torch.randn(2, 8, 5, 5, generator=g)
    with torch.no_grad():
        want = F.conv2d(x, conv.weight * mask, conv.bias)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


@needs_numba
def test_numba_conv_with_two_threads_equals_the_masked_conv(parallel: str) -> None:
    from prunekit.accel import SparseConv2d

    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    mask = torch.rand(conv.weight.shape, generator=g) > 0.8
    layer = SparseConv2d.from_conv(conv, mask, JIT)
    x = torch.randn(3, 16, 9, 9, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            torch.testing.assert_close(layer(x), F.conv2d(x, conv.weight * mask, conv.bias, padding=1),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("team", [True, False])
def test_thread_bounds_split_rows_only_for_enough_work(team: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    crow = torch.tensor([0, 3, 3, 7, 10], dtype=torch.int32)
    bounds = jit.ThreadBounds()
    before = torch.get_num_threads()
    monkeypatch.setattr(jit, "in_openmp_team", lambda: team)
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(jit, "POOL_MIN_WORK" if team else "TEAM_MIN_WORK", 10**9)  # the other one
        monkeypatch.setattr(jit, "TEAM_MIN_WORK" if team else "POOL_MIN_WORK", 10 * 8)
        assert bounds.get(crow, 7) is None  # 10 kept weights x 7 tokens < 80
        assert bounds.get(crow, 8) == jit.row_bounds(crow, 2)
        torch.set_num_threads(1)
        assert bounds.get(crow, 1000) is None  # one thread: no pool
    finally:
        torch.set_num_threads(before)


@needs_numba
@pytest.mark.parametrize(
    ("host", "preset", "want"),
    [
        ("+sse2,+avx512f,+avx2", None, "+sse2,+avx512f,+avx2,-prefer-256-bit"),  # AVX-512: wide vectors
        ("+sse2,-avx512f,+avx2", None, None),  # no AVX-512: numba's own choice
        ("+sse2,+avx512f", "+sse2", "+sse2"),  # the user's NUMBA_CPU_FEATURES wins
    ],
)
def test_wide_vectors_are_asked_for_only_on_avx512_and_never_over_the_users_setting(
    host: str, preset: str | None, want: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llvmlite.binding as llvm
    import numba

    monkeypatch.setattr(numba.config, "CPU_FEATURES", preset)
    monkeypatch.setattr(
        llvm, "get_host_cpu_features", lambda: type("F", (), {"flatten": lambda self: host})()
    )
    jit._prefer_wide_vectors(numba)
    assert numba.config.CPU_FEATURES == want


def _child_product(
    conn: Any, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, xt: torch.Tensor
) -> None:
    torch.set_num_threads(2)
    y = jit.csr_mm(crow, col, val, xt, None, bounds=jit.row_bounds(crow, 2))
    conn.send((jit.in_openmp_team(), y.numpy().copy()))  # by value: a tensor would go by shared memory


@needs_numba
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork: POSIX only")
def test_a_child_forked_after_the_team_ran_uses_the_pool_and_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GNU OpenMP hangs in a child's first parallel region once the parent ran one: the child must not open
    one (the reference product is computed here, as torch's own parallel ops would hang there too)."""
    import multiprocessing as mp

    monkeypatch.setattr(jit, "TEAM_MIN_WORK", 0)
    monkeypatch.setattr(jit, "POOL_MIN_WORK", 0)
    w, _, mask = layer(96, 128, 0.9)
    csr = (w * mask).to_sparse_csr()
    crow, col, val = csr.crow_indices().int(), csr.col_indices().int(), csr.values()
    xt = torch.randn(128, 16, generator=torch.Generator().manual_seed(3))
    want = (w * mask) @ xt
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.testing.assert_close(jit.csr_mm(crow, col, val, xt, None, bounds=jit.row_bounds(crow, 2)), want,
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        ctx = mp.get_context("fork")
        here, there = ctx.Pipe()
        child = ctx.Process(target=_child_product, args=(there, crow, col, val, xt))
        child.start()
        ok = here.poll(60)
        child.join(5)
        if child.exitcode is None:
            child.kill()
        assert ok, "the forked child did not finish its product in 60 s"
        team, got = here.recv()
    finally:
        torch.set_num_threads(before)
    assert not team
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)


def test_the_openmp_team_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CSR_THREADS", "pool")
    jit._openmp.cache_clear()
    try:
        assert not jit.in_openmp_team()
    finally:
        monkeypatch.delenv("PRUNEKIT_CSR_THREADS")
        jit._openmp.cache_clear()
