"""prune_weights: exact sparsity (global and per layer), N:M, cumulative pruning, selection, bad input."""

from __future__ import annotations

import copy
import json
import math
import pickle
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.core.masks import get_mask, masked_parameters
from prunekit.core.select import resolve_targets


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _cnn(c1: int = 4, c2: int = 8, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1, groups=groups),
        nn.Flatten(),
        nn.Linear(c2 * 16, 8),
    )


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [t.weight for t in resolve_targets(model)[0]]


def _pruned(model: nn.Module) -> int:
    return sum(int((~mp.mask).sum()) for mp in masked_parameters(model))


def _k(sparsity: float, n: int) -> int:
    return int(math.floor(sparsity * n + 0.5))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)  # no mask buffers added
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not list(masked_parameters(model))


def _reference_global_mask(model: nn.Module, sparsity: float) -> list[torch.Tensor]:
    """Independent oracle: concatenate every |w|, sort, prune the k smallest."""
    ws = _weights(model)
    flat = torch.cat([w.detach().abs().flatten() for w in ws])
    k = _k(sparsity, flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    return list(keep.split([w.numel() for w in ws]))


shapes = st.one_of(
    st.lists(st.integers(1, 24), min_size=2, max_size=4).map(lambda w: ("mlp", w)),
    st.tuples(st.integers(1, 6), st.integers(1, 6)).map(lambda c: ("cnn", list(c))),
)


def _build(spec: tuple[str, list[int]]) -> nn.Module:
    kind, w = spec
    return _mlp(w) if kind == "mlp" else _cnn(*w)


@pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")  # high sparsity on tiny layers
@given(spec=shapes, sparsity=st.floats(0.0, 0.99), chunk=st.integers(1, 300))
def test_global_sparsity_is_exact_and_matches_sorting_oracle(spec, sparsity, chunk) -> None:
    model = _build(spec)
    expected = _reference_global_mask(model, sparsity)
    n = sum(w.numel() for w in _weights(model))
    result = pk.prune_weights(model, sparsity, chunk_elements=chunk)
    assert _pruned(model) == _k(sparsity, n)
    assert sum(r.zeros for r in result.layers) == _k(sparsity, n)
    # random init: scores are distinct, so the mask is exactly the oracle's
    masks = [get_mask(t.module, "weight").flatten() for t in resolve_targets(model)[0]]
    assert all(torch.equal(m, e) for m, e in zip(masks, expected, strict=True))


@pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")  # high sparsity on tiny layers
@given(spec=shapes, sparsity=st.floats(0.0, 0.99))
def test_layer_scope_is_exact_in_every_layer(spec, sparsity) -> None:
    model = _build(spec)
    result = pk.prune_weights(model, sparsity, scope="layer", chunk_elements=256)
    for row, w in zip(result.layers, _weights(model), strict=True):
        assert row.zeros == _k(sparsity, w.numel())
        assert int((w == 0).sum()) >= row.zeros


def test_ties_are_broken_to_hit_the_exact_count() -> None:
    model = _mlp([10, 10, 10])
    with torch.no_grad():
        for w in _weights(model):
            w.copy_(torch.randint(0, 3, w.shape).float())  # massive ties, a third of them zero
    pk.prune_weights(model, 0.5, chunk_elements=7)
    assert _pruned(model) == 100
    # every pruned score <= every kept score
    kept = torch.cat([w[w != 0].abs() for w in _weights(model)])
    assert kept.min() >= 1


@given(
    values=st.lists(
        st.sampled_from([-math.inf, -2.5, -1.0, -0.0, 0.0, 1e-30, 0.5, 1.0, 3.0, math.inf]),
        min_size=24,
        max_size=24,
    ),
    sparsity=st.floats(0.0, 0.99),
    chunk=st.integers(1, 30),
)
def test_any_float_scores_order_exactly_with_signed_zeros_and_infinities(values, sparsity, chunk) -> None:
    class Fixed(pk.WeightCriterion):
        def score(self, target, rows):
            return torch.tensor(values).view(4, 6)[rows]

    layer = nn.Linear(6, 4)
    pk.prune_weights(layer, sparsity, criterion=Fixed(), chunk_elements=chunk)
    mask = get_mask(layer, "weight").flatten()
    scores = torch.tensor(values)
    assert int((~mask).sum()) == _k(sparsity, 24)
    if mask.any() and (~mask).any():
        assert scores[~mask].max() <= scores[mask].min()  # -0.0 == 0.0 here, as in every float order


@pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")  # high sparsity on tiny layers
@given(first=st.floats(0.0, 0.9), second=st.floats(0.0, 0.95), scope=st.sampled_from(["global", "layer"]))
def test_pruning_again_is_cumulative_toward_total_sparsity(first, second, scope) -> None:
    model = _cnn()
    pk.prune_weights(model, first, scope=scope)
    before = [get_mask(t.module, "weight").clone() for t in resolve_targets(model)[0]]
    pk.prune_weights(model, second, criterion="random", scope=scope)
    after = [get_mask(t.module, "weight") for t in resolve_targets(model)[0]]
    assert all(bool((a <= b).all()) for a, b in zip(after, before, strict=True))  # pruned stays pruned
    n = sum(w.numel() for w in _weights(model))
    if scope == "global":
        assert _pruned(model) == max(_k(first, n), _k(second, n))
    else:
        for w, m in zip(_weights(model), after, strict=True):
            assert int((~m).sum()) == max(_k(first, w.numel()), _k(second, w.numel()))


def test_sparsity_zero_is_identity_and_ids_are_stable() -> None:
    model = _cnn()
    before = _snapshot(model)
    ids = [id(p) for p in model.parameters()]
    result = pk.prune_weights(model, 0.0)
    assert result.sparsity == 0.0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert [id(p) for p in model.parameters()] == ids


def _nm_ok(w: torch.Tensor, in_dim: int, n: int, m: int) -> bool:
    s = w.movedim(in_dim, -1)
    groups = s.reshape(*s.shape[:-1], s.shape[-1] // m, m)
    return bool((groups.ne(0).sum(-1) <= n).all())


@pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")  # high sparsity on tiny layers
@given(
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 8)]),
    groups=st.sampled_from([1, 2]),
    extra=st.floats(0.0, 0.3),
    scope=st.sampled_from(["global", "layer"]),
    criterion=st.sampled_from(["magnitude", "random"]),
)
def test_nm_pattern_holds_along_the_input_dimension(nm, groups, extra, scope, criterion) -> None:
    n, m = nm
    model = nn.Sequential(nn.Conv2d(16, 16, 3, groups=groups), nn.Flatten(), nn.Linear(16, 16))
    base = 1 - n / m
    sparsity = None if extra == 0 else min(0.99, base + extra)
    result = pk.prune_weights(model, sparsity, pattern=f"{n}:{m}", scope=scope, criterion=criterion)
    for w in _weights(model):
        assert _nm_ok(w, 1, n, m)
    total = sum(w.numel() for w in _weights(model))
    if sparsity is None:
        assert _pruned(model) == round(total * base)
    elif scope == "global":
        assert _pruned(model) == _k(sparsity, total)
    else:
        assert [r.zeros for r in result.layers] == [_k(sparsity, w.numel()) for w in _weights(model)]


def test_nm_keeps_the_largest_of_each_group() -> None:
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -3.0, 2.0, 0.5]]))
    pk.prune_weights(layer, pattern="2:4")
    assert layer.weight.tolist() == [[0.0, -3.0, 2.0, 0.0]]


def test_nm_on_gpt2_conv1d_uses_dim_0() -> None:
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    model = nn.Sequential(conv1d(12, 8))  # weight (in=8, out=12)
    assert tuple(model[0].weight.shape) == (8, 12)
    pk.prune_weights(model, pattern="2:4", chunk_elements=5)
    assert _nm_ok(model[0].weight, 0, 2, 4)
    assert _pruned(model) == 48


def test_pattern_that_does_not_fit_names_layer_shape_and_fix() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    before = _snapshot(model)
    with pytest.raises(pk.PatternError) as e:
        pk.prune_weights(model, pattern="2:4")
    msg = str(e.value)
    assert "'2'" in msg and "(2, 6)" in msg and "exclude=['2']" in msg
    _assert_untouched(model, before)
    pk.prune_weights(model, pattern="2:4", exclude=["2"])
    assert _nm_ok(model[0].weight, 1, 2, 4)
    assert get_mask(model[2], "weight") is None


BAD = {
    "sparsity_negative": dict(sparsity=-0.1),
    "sparsity_one": dict(sparsity=1.0),
    "sparsity_nan": dict(sparsity=float("nan")),
    "sparsity_string": dict(sparsity="0.5"),
    "sparsity_missing": dict(sparsity=None),
    "pattern_malformed": dict(sparsity=None, pattern="2-4"),
    "pattern_n_ge_m": dict(sparsity=None, pattern="4:2"),
    "pattern_zero": dict(sparsity=None, pattern="0:4"),
    "below_pattern": dict(sparsity=0.1, pattern="2:4"),
    "scope": dict(sparsity=0.5, scope="model"),
    "criterion": dict(sparsity=0.5, criterion="l7"),
    "unknown_module": dict(sparsity=0.5, include=["fc9"]),
    "unknown_glob": dict(sparsity=0.5, exclude=["blocks.*"]),
    "module_object": dict(sparsity=0.5, include=nn.Linear(1, 1)),
    "missing_type": dict(sparsity=0.5, include=[nn.Conv3d]),
    "wanda_no_data": dict(sparsity=0.5, criterion="wanda"),
    "taylor_no_loss": dict(
        sparsity=0.5, criterion="taylor", data=[(torch.randn(2, 8), torch.tensor([0, 1]))]
    ),
    "nothing_selected": dict(sparsity=0.5, exclude=[nn.Linear]),
}


@pytest.mark.parametrize("kwargs", BAD.values(), ids=BAD.keys())
def test_bad_input_raises_clearly_and_leaves_model_untouched(kwargs) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = _snapshot(model)
    with pytest.raises(pk.PrunekitError) as e:
        pk.prune_weights(model, **kwargs)
    assert len(str(e.value)) > 20
    _assert_untouched(model, before)


def test_unknown_name_lists_close_matches() -> None:
    model = nn.Sequential()
    model.add_module("encoder", nn.Linear(4, 4))
    model.add_module("decoder", nn.Linear(4, 4))
    with pytest.raises(pk.UnknownModuleError, match="'encoder'"):
        pk.prune_weights(model, 0.5, include=["encodr"])


def test_include_exclude_names_globs_types_containers_and_tied_weights() -> None:
    model = nn.Module()
    model.block = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Conv1d(4, 4, 1)})
    model.head = nn.Linear(4, 4)
    model.emb = nn.Embedding(10, 4)
    model.out = nn.Linear(4, 10, bias=False)
    model.out.weight = model.emb.weight  # tied
    names = lambda inc=None, exc=None: [t.fqn for t in resolve_targets(model, inc, exc)[0]]  # noqa: E731
    assert names() == ["block.a.weight", "block.b.weight", "head.weight", "out.weight"]
    assert names(["block"]) == ["block.a.weight", "block.b.weight"]
    assert names(["bl*"]) == ["block.a.weight", "block.b.weight"]
    assert names([nn.Conv1d]) == ["block.b.weight"]
    assert names(None, ["block.*"]) == ["head.weight", "out.weight"]
    assert names(["emb", "out"]) == ["emb.weight"]  # out's weight is emb's: pruned once
    skipped = resolve_targets(model, ["emb", "out"])[1]
    assert [s.name for s in skipped] == ["out"] and "tied" in skipped[0].reason
    result = pk.prune_weights(model, 0.5, exclude=[nn.Conv1d])
    assert [s.name for s in result.skipped] == ["block.b"]
    assert get_mask(model.block.b, "weight") is None


def test_masks_stay_in_force_through_training_with_several_optimizers() -> None:
    model = _cnn()
    pk.prune_weights(model, 0.8)
    masks = {mp.fqn: mp.mask.clone() for mp in masked_parameters(model)}
    x = torch.randn(4, 2, 4, 4)
    for opt in (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1),
        torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1),
    ):
        for _ in range(5):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    params = dict(model.named_parameters())
    for fqn, mask in masks.items():
        assert torch.count_nonzero(params[fqn][~mask]) == 0
        assert torch.count_nonzero(params[fqn][mask]) > 0
    n = sum(w.numel() for w in _weights(model))
    assert pk.sparsity(model) * n >= _k(0.8, n)


def _roundtrips() -> dict[str, object]:
    def state_dict_into_fresh(model: nn.Module) -> nn.Module:
        fresh = _cnn()
        pk.prune_weights(fresh, 0.0)  # masked, nothing pruned yet
        fresh.load_state_dict(model.state_dict())
        return fresh

    return {
        "deepcopy": copy.deepcopy,
        "pickle": lambda m: pickle.loads(pickle.dumps(m)),
        "state_dict": state_dict_into_fresh,
    }


@pytest.mark.parametrize("clone", _roundtrips().values(), ids=_roundtrips().keys())
def test_pruned_model_survives_copies_and_keeps_masks_in_training(clone) -> None:
    model = _cnn()
    pk.prune_weights(model, 0.7)
    other = clone(model)
    x = torch.randn(3, 2, 4, 4)
    assert torch.equal(other(x), model(x))
    masks = {mp.fqn: mp.mask.clone() for mp in masked_parameters(other)}
    assert len(masks) == 3
    opt = torch.optim.SGD(other.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        other(x).sum().backward()
        opt.step()
    params = dict(other.named_parameters())
    assert all(torch.count_nonzero(params[f][~m]) == 0 for f, m in masks.items())


def test_pruned_model_traces_and_compiles() -> None:
    model = _cnn().eval()
    pk.prune_weights(model, 0.6)
    x = torch.randn(2, 2, 4, 4)
    expected = model(x)
    traced = torch.jit.trace(model, x)
    assert torch.allclose(traced(x), expected)
    compiled = torch.compile(model, backend="eager")
    assert torch.allclose(compiled(x), expected)


def test_result_and_report_are_readable_and_serialisable() -> None:
    model = _cnn()
    result = pk.prune_weights(model, 0.5, exclude=["4"])
    text = str(result)
    assert "magnitude" in text and "Conv2d" in text and "skipped 4: excluded" in text
    d = result.to_dict()
    assert d["skipped"] == [{"name": "4", "reason": "excluded"}]
    assert [row["name"] for row in d["layers"]] == ["0", "2"]
    assert d["sparsity"] == pytest.approx(0.5, abs=1e-3)
    report = pk.sparsity_report(model)
    rows = report.to_dict()["layers"]
    assert [r["name"] for r in rows] == ["0", "2", "4"]
    assert [r["masked"] for r in rows] == [True, True, False]
    assert rows[2]["zeros"] == 0
    assert "total" in str(report) and "masked: 2 of 3" in str(report)
    n = sum(r["numel"] for r in rows)
    assert pk.sparsity(model) == pytest.approx(sum(r["zeros"] for r in rows) / n)
    with pytest.raises(dataclasses_frozen_error()):
        result.scope = "layer"  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_sparsity_counts_zeros_of_permanent_weights() -> None:
    model = _mlp([10, 10])
    pk.prune_weights(model, 0.3)
    assert pk.make_permanent(model) == 1
    assert pk.sparsity(model) == pytest.approx(0.3)
    assert not list(masked_parameters(model))


def test_config_object_is_validated_and_reusable() -> None:
    cfg = pk.WeightPruningConfig(sparsity=0.5, pattern="2:4", scope="layer")
    assert cfg.nm == (2, 4)
    with pytest.raises(pk.ConfigError, match="scope"):
        pk.WeightPruningConfig(sparsity=0.5, scope="all")  # type: ignore[arg-type]
    model = _mlp([16, 8])
    result = pk.prune_weights(model, config=cfg)
    assert result.scope == "layer" and result.pattern == "2:4"
    assert _nm_ok(model[0].weight, 1, 2, 4) and result.sparsity == 0.5
    before = _snapshot(model)
    with pytest.raises(pk.ConfigError, match="not both"):
        pk.prune_weights(model, 0.9, config=cfg)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


MEMORY_SCRIPT = """
import gc, json, torch, prunekit as pk
from torch import nn
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(16)])  # 67M weights, 268 MB
def kb(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset the RSS high-water mark
base = kb("VmRSS")
result = pk.prune_weights(model, 0.9)
size = sum(p.numel() * 4 for p in model.parameters())
print(json.dumps({"extra": (kb("VmHWM") - base) * 1024 / size, "sparsity": result.sparsity}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_global_pruning_peak_extra_memory_is_masks_plus_a_little() -> None:
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["sparsity"] == pytest.approx(0.9, abs=1e-6)
    assert res["extra"] <= 0.35  # bool masks alone are 0.25 of an fp32 model


@pytest.mark.slow
def test_pruned_model_compiles_with_inductor_and_trains_with_masks_in_force() -> None:
    model = _cnn()
    pk.prune_weights(model, 0.6)
    masks = {mp.fqn: mp.mask.clone() for mp in masked_parameters(model)}
    x = torch.randn(2, 2, 4, 4)
    compiled = torch.compile(model)  # default backend: inductor, C++ codegen
    assert torch.allclose(compiled(x), model(x), atol=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        compiled(x).pow(2).sum().backward()
        opt.step()
    params = dict(model.named_parameters())
    assert all(torch.count_nonzero(params[f][~m]) == 0 for f, m in masks.items())
    assert all(torch.count_nonzero(params[f][m]) > 0 for f, m in masks.items())
