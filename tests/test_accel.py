"""accelerate: outputs equal the masked model's for every kernel, losers stay dense, save/reload.

Kernel choices are forced with a stub timer (no timing in these tests): the stub says which
kernel is "fastest", so every kernel is exercised on every zoo model with Linear layers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.accel import (
    AccelerateConfig,
    AccelerationResult,
    InferenceOnlyError,
    LayerCase,
    SparseLinear,
    accelerate,
    deaccelerate,
    persist,
)
from prunekit.accel.engine import linear_layers
from prunekit.core import get_mask, masked_parameters, set_mask
from prunekit.kernels import block_fill, candidate_kernels, jit
from zoo import HF_ZOO, ZOO, output_tensors

# tiny zoo layers pruned globally can end up (almost) empty: that warning is tested in tests/test_calibration.py
pytestmark = pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")

WITH_LINEAR = [
    name
    for name, factory in {**ZOO, **HF_ZOO}.items()
    if linear_layers(factory()[0])[0]  # plain, untied nn.Linear layers (GPT-2's only one is tied)
]


def prefer(
    kernel: str, others: float = 0.5
) -> Callable[[LayerCase, Mapping[str, Callable[[], object]]], dict[str, float]]:
    """A timer stub: ``kernel`` (or, if not a candidate, ``csr``) takes 0.1 ms, dense 1 ms, others 0.5 ms."""

    def timer(case: LayerCase, fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        best = kernel if kernel in case.kernels else "csr"
        return {k: 1.0 if k == "dense" else 0.1 if k == best else others for k in case.kernels}

    return timer


def structured_masks(model: nn.Module, seed: int = 0) -> None:
    """Mask whole random output rows and input columns of every Linear (plus a few single weights)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if type(m) is nn.Linear:
            out, inp = m.weight.shape
            rows = torch.rand(out, generator=g) > 0.4
            cols = torch.rand(inp, generator=g) > 0.4
            rows[0] = cols[0] = True
            mask = rows[:, None] & cols[None, :] & (torch.rand(out, inp, generator=g) > 0.2)
            set_mask(m, "weight", mask)


def prune(model: nn.Module, how: str) -> None:
    if how == "unstructured":
        pk.prune_weights(model, 0.8, include=[nn.Linear])
    elif how == "2:4":
        lin = [n for n, m in model.named_modules() if type(m) is nn.Linear and m.in_features % 4 == 0]
        pk.prune_weights(model, pattern="2:4", include=lin)
    else:
        structured_masks(model)


def outputs(model: nn.Module, inputs: tuple[object, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.clone() for t in output_tensors(model(*inputs))]


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("inner", ["csr", *(["csr-numba"] if jit.available() else [])])
@pytest.mark.parametrize("how", ["unstructured", "2:4", "structured"])
@pytest.mark.parametrize("name", WITH_LINEAR)
def test_accelerate_matches_masked_model_on_zoo(name: str, how: str, inner: str) -> None:
    model, inputs = {**ZOO, **HF_ZOO}[name]()
    prune(model, how)
    want = outputs(model, inputs)
    kernel = "compact+" + inner if how == "structured" else inner
    result = accelerate(model, inputs, timer=prefer(kernel))
    pruned = [c for c in result.layers if c.sparsity > 0]
    assert pruned, "the pruning left no pruned Linear layer"
    assert all(c.kernel != "dense" for c in pruned)
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == len(result.replaced)
    assert_same(outputs(model, inputs), want)


@pytest.mark.parametrize("kernel", ["csr", "compact+dense", "compact+csr", "bsr4", "compact+bsr4", "bsr8"])
def test_every_kernel_equals_masked_linear(kernel: str) -> None:
    g = torch.Generator().manual_seed(3)
    layer = nn.Linear(64, 48)
    tiles = torch.rand(48 // 8, 64 // 8, generator=g) > 0.6  # 8x8 block structure, so BSR is a candidate
    mask = tiles.repeat_interleave(8, 0).repeat_interleave(8, 1)
    mask[:, :8] = False  # whole zero columns and rows for the compact kernels
    mask[40:] = False
    set_mask(layer, "weight", mask)
    x = torch.randn(5, 7, 64, generator=g)
    want = layer(x).detach()
    model = nn.Sequential(layer)
    assert kernel in candidate_kernels(mask)
    result = accelerate(model, (x,), timer=prefer(kernel))
    assert result.layers[0].kernel == kernel
    assert isinstance(model[0], SparseLinear)
    assert_same([model(x)], [want])


def test_block_fill_by_hand() -> None:
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 0] = mask[5, 5] = True  # two non-empty 4x4 tiles holding 2 of 32 entries
    assert block_fill(mask, 4) == 2 / 32
    assert block_fill(torch.ones(8, 8, dtype=torch.bool), 4) == 1.0
    assert block_fill(mask, 3) == 0.0  # does not tile


def test_layer_where_sparse_loses_stays_dense() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    pk.prune_weights(model, 0.9, scope="layer")
    first = model[0]

    def timer(case: LayerCase, fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        if case.name == "0":  # sparse slower
            return {k: 1.0 if k == "dense" else 3.0 for k in case.kernels}
        return {k: 1.0 if k == "dense" else 0.95 for k in case.kernels}  # faster, but below the margin

    x = torch.randn(4, 64)
    want = model(x).detach()
    result = accelerate(model, x, timer=timer)
    assert [c.kernel for c in result.layers] == ["dense", "dense"]
    assert model[0] is first and get_mask(first, "weight") is not None  # untouched, still masked
    assert not result.replaced
    assert "margin" in result.layers[1].reason
    assert torch.equal(model(x), want)


def test_margin_one_takes_a_slightly_faster_kernel() -> None:
    model = nn.Sequential(nn.Linear(64, 64))
    pk.prune_weights(model, 0.9)
    stub = lambda case, fns: {k: 1.0 if k == "dense" else 0.95 for k in case.kernels}  # noqa: E731
    result = accelerate(model, torch.randn(2, 64), config=AccelerateConfig(margin=1.0), timer=stub)
    assert result.layers[0].kernel != "dense"


def test_mismatch_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    pk.prune_weights(model, 0.9)
    before = list(model)
    x = torch.randn(3, 64)
    original = SparseLinear.forward

    def broken(self: SparseLinear, inp: torch.Tensor) -> torch.Tensor:
        out = original(self, inp)
        return out + 1.0 if inp.data_ptr() == x.data_ptr() else out  # wrong only on the example inputs

    monkeypatch.setattr(SparseLinear, "forward", broken)
    with pytest.raises(pk.PrunekitError, match="rolled back"):
        accelerate(model, x, timer=prefer("csr"))
    assert list(model) == before


def test_deaccelerate_gives_back_masks_and_weights() -> None:
    model, inputs = ZOO["vit"]()
    pk.prune_weights(model, 0.7, include=[nn.Linear])
    ref = copy.deepcopy(model)
    accelerate(model, inputs, timer=prefer("csr"))
    with pytest.raises(InferenceOnlyError, match="deaccelerate"):
        model.train()(*inputs)
    model.eval()
    n = deaccelerate(model)
    assert n > 0 and not any(isinstance(m, SparseLinear) for m in model.modules())
    masks = {mp.fqn: mp.mask for mp in masked_parameters(model)}
    for mp in masked_parameters(ref):
        assert torch.equal(masks[mp.fqn], mp.mask), mp.fqn
    assert_same(outputs(model, inputs), outputs(ref, inputs))


def test_unmasked_zeros_are_accelerated_too() -> None:
    model = nn.Sequential(nn.Linear(32, 32))
    pk.prune_weights(model, 0.9)
    pk.make_permanent(model)
    x = torch.randn(2, 32)
    want = model(x).detach()
    result = accelerate(model, x, timer=prefer("csr"))
    assert result.layers[0].kernel == "csr"
    assert_same([model(x)], [want])


def test_skips_tied_and_multihead_attention() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.emb(ids)
            return self.head(self.attn(h, h, h)[0])

    model = Tied().eval()
    result = accelerate(model, torch.randint(0, 10, (2, 5)), timer=prefer("csr"))
    reasons = dict(result.skipped)
    assert "tied" in reasons["head"] and "MultiheadAttention" in reasons["attn.out_proj"]


def test_save_and_reload_accelerated(tmp_path: object) -> None:
    model, inputs = HF_ZOO["bert_eager"]()
    pk.prune_weights(model, 0.8, include=[nn.Linear])
    want = outputs(model, inputs)
    result = accelerate(model, inputs, timer=prefer("csr"))
    path = persist.save(model, tmp_path / "bert.safetensors")  # type: ignore[operator]
    assert any(isinstance(m, SparseLinear) for m in model.modules())  # saving did not de-accelerate
    plan = persist.read_plan(path)
    assert plan is not None and plan.to_dict() == result.to_dict()
    fresh, _ = HF_ZOO["bert_eager"]()
    persist.load(path, fresh)
    kernels = {n: type(m).__name__ for n, m in fresh.named_modules() if n in {c.name for c in plan.layers}}
    assert kernels == {c.name: "SparseLinear" if c.kernel != "dense" else "Linear" for c in plan.layers}
    assert_same(outputs(fresh, inputs), want)
    # pk.load reads the same file as a masked model
    masked, _ = HF_ZOO["bert_eager"]()
    pk.load(path, masked)
    assert_same(outputs(masked, inputs), want)


def test_reload_on_other_hardware_remeasures(tmp_path: object) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    pk.prune_weights(model, 0.9)
    x = torch.randn(4, 64)
    want = model(x).detach()
    result = accelerate(model, x, timer=prefer("csr"))
    data = result.to_dict()
    data["fingerprint"] = "another-machine"
    path = persist.save(model, tmp_path / "m.safetensors", AccelerationResult.from_dict(data))  # type: ignore[operator]
    fresh = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    persist.load(path, fresh, config=AccelerateConfig(rounds=2, min_weights=0))
    from prunekit.kernels import attached_plan, fingerprint

    new_plan = attached_plan(fresh)
    assert new_plan is not None and new_plan.fingerprint == fingerprint()
    assert all(c.timings_ms.get("dense") for c in new_plan.layers)  # really timed here
    assert_same([fresh(x)], [want])


def test_plan_rejects_other_versions() -> None:
    model = nn.Sequential(nn.Linear(16, 16))
    pk.prune_weights(model, 0.5)
    data = accelerate(model, torch.randn(1, 16), timer=prefer("csr")).to_dict()
    data["version"] = 99
    with pytest.raises(pk.FormatError, match="version"):
        AccelerationResult.from_dict(data)


def test_config_validation() -> None:
    with pytest.raises(pk.ConfigError, match="margin"):
        AccelerateConfig(margin=0.5)
    with pytest.raises(pk.ConfigError, match="target"):
        AccelerateConfig(target="gpu")  # type: ignore[arg-type]
    with pytest.raises(pk.ConfigError, match="unknown linear kernel"):
        AccelerateConfig(kernels=("fast",))


def test_accelerated_model_deepcopies() -> None:
    model = nn.Sequential(nn.Linear(32, 32))
    pk.prune_weights(model, 0.9)
    x = torch.randn(2, 32)
    accelerate(model, x, timer=prefer("csr"))
    model(x)  # builds the cached CSR tensor
    clone = copy.deepcopy(model)
    assert torch.equal(clone(x), model(x))


def test_load_rejects_unknown_remeasure_mode(tmp_path: object) -> None:
    model = nn.Sequential(nn.Linear(16, 16))
    pk.prune_weights(model, 0.5)
    accelerate(model, torch.randn(1, 16), timer=prefer("csr"))
    path = persist.save(model, tmp_path / "m.safetensors")  # type: ignore[operator]
    with pytest.raises(pk.ConfigError, match="remeasure_on"):
        persist.load(path, nn.Sequential(nn.Linear(16, 16)), remeasure_on="sometimes")


def test_accelerate_times_each_linear_with_the_input_copy_it_will_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """q/k/v-like siblings share one x.T, a layer after a sparse one through an activation reads a view,
    every other layer copies its input: each is timed that way (fresh inputs only for the copying ones)."""
    import prunekit.accel.choice as choice
    import prunekit.accel.engine as engine

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.up, self.down = (nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 128),
                                                  nn.Linear(128, 64))  # fmt: skip
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.q(x) + self.k(x)
            return self.down(self.act(self.up(h)))

    torch.manual_seed(0)
    model = Block()
    pk.prune_weights(model, 0.9, scope="layer")
    kinds: dict[str, str] = {}
    fresh: list[bool] = []
    real_choose, real_decide = engine.choose_layer, choice.decide

    def spy_choose(name, module, shape, cfg, timer, input_kind="shared"):  # type: ignore[no-untyped-def]
        kinds[name] = input_kind
        return real_choose(name, module, shape, cfg, timer, input_kind)

    def spy_decide(*args, **kw):  # type: ignore[no-untyped-def]
        fresh.append(bool(kw.get("fresh", False)))
        return real_decide(*args, **kw)

    monkeypatch.setattr(engine, "choose_layer", spy_choose)
    monkeypatch.setattr(choice, "decide", spy_decide)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = model(x).clone()
    accelerate(model, x, timer=lambda case, fns: {k: 1.0 if k == "dense" else 0.5 for k in case.kernels})
    assert kinds == {"q": "fresh", "k": "shared", "up": "fresh", "down": "view"}
    assert fresh == [True, False, True, False]
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_ms", [(1.0, 2.0), (2.0, 1.0)])
def test_a_model_slower_as_a_whole_is_kept_dense(
    model_ms: tuple[float, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every layer wins alone; the whole model measured slower is rolled back, faster is kept (no timing:
    both measurements are faked)."""
    import prunekit.accel.choice as choice
    import prunekit.accel.engine as engine

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 64))
    pk.prune_weights(model, 0.9, scope="layer")
    monkeypatch.setattr(
        choice, "interleaved_ms", lambda fns, **kw: {k: 1.0 if k == "dense" else 0.5 for k in fns}
    )
    monkeypatch.setattr(engine, "end_to_end_ms", lambda *a, **kw: model_ms)
    x = torch.randn(5, 128)
    with torch.no_grad():
        want = model(x).clone()
    result = accelerate(model, x)
    sparse = [m for m in model.modules() if isinstance(m, SparseLinear)]
    slower = model_ms[1] > model_ms[0]
    assert len(sparse) == (0 if slower else 2)
    assert all((c.kernel == "dense") == slower for c in result.layers)
    assert all(("whole model ran slower" in c.reason) == slower for c in result.layers)
    assert (result.dense_ms, result.accelerated_ms) == (model_ms[0], model_ms[0] if slower else model_ms[1])
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
