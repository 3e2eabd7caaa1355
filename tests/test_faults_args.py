"""Bad arguments for every public verb: each is refused with a PrunekitError naming the problem,
and the model is left bit-identical (tensors, buffers, hooks, attributes, requires_grad, modes)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from faults import assert_model_unchanged, listing, snapshot
from prunekit.core import masked_parameters
from prunekit.recipes import Recipe

BAD_REALS = [True, False, math.nan, math.inf, -math.inf, -0.5, 1.0, 1.5, "0.5", None, [0.5]]
BAD_COUNTS = [True, False, 0, -1, 1.5, "1", None, math.nan]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


class _Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(8, 8), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def _deep() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[_Res() for _ in range(3)])


X = torch.randn(4, 8)
DATA = [(torch.randn(4, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
LOSS = nn.functional.cross_entropy


def _refused(make: Callable[[], nn.Module], call: Callable[[nn.Module], Any], *words: str,
             error: type[Exception] = pk.PrunekitError, premask: bool = True) -> None:  # fmt: skip
    model = make()
    if premask:
        pk.prune_weights(model, 0.25)  # masks and hooks present: they must survive too
    model.train()
    next(iter(model.children())).eval()  # mixed training flags must survive as well
    before = snapshot(model)
    with pytest.raises(error) as e:
        call(model)
    assert isinstance(e.value, pk.PrunekitError), type(e.value)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert_model_unchanged(before, model)


# --- random bad numbers for every numeric parameter of every verb -----------------------------

REAL_PARAMS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, Any], Any], str]] = {
    "prune_weights.sparsity": (_mlp, lambda m, v: pk.prune_weights(m, v), "sparsity"),
    "prune_channels.ratio": (_mlp, lambda m, v: pk.prune_channels(m, X, v), "ratio"),
    "prune_channels.reduce_macs": (_mlp, lambda m, v: pk.prune_channels(m, X, reduce_macs=v), "reduce_macs"),
    "prune_channels.reduce_params": (
        _mlp,
        lambda m, v: pk.prune_channels(m, X, reduce_params=v),
        "reduce_params",
    ),
}
COUNT_PARAMS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, Any], Any], str]] = {
    "prune_layers.n": (_deep, lambda m, v: pk.prune_layers(m, X, n=v, criterion="position"), "n"),
    "prune_weights.max_batches": (_mlp, lambda m, v: pk.prune_weights(m, 0.5, max_batches=v), "max_batches"),
    "prune_channels.round_to": (_mlp, lambda m, v: pk.prune_channels(m, X, 0.5, round_to=v), "round_to"),
}


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(sorted(REAL_PARAMS)), value=st.sampled_from(BAD_REALS))
def test_bad_real_arguments_are_refused(case: str, value: Any) -> None:
    make, call, name = REAL_PARAMS[case]
    if value is None and case.endswith(("reduce_macs", "reduce_params")):
        return  # None is "not given" there
    if case == "prune_channels.ratio" and value is None:
        return
    _refused(make, lambda m: call(m, value), name)


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(sorted(COUNT_PARAMS)), value=st.sampled_from(BAD_COUNTS))
def test_bad_count_arguments_are_refused(case: str, value: Any) -> None:
    make, call, name = COUNT_PARAMS[case]
    if value is None and case.endswith("round_to"):
        return  # None means no rounding
    if value is None and case.endswith("max_batches"):
        return
    _refused(make, lambda m: call(m, value), name)


def test_prune_layers_refuses_a_bool_count() -> None:
    _refused(
        _deep, lambda m: pk.prune_layers(m, X, n=True, criterion="position"), "n must be an integer", "bool"
    )


# --- names and choices -------------------------------------------------------------------------

CHOICES: dict[str, tuple[Callable[[nn.Module], Any], str]] = {
    "weights.criterion": (lambda m: pk.prune_weights(m, 0.5, criterion="nope"), "nope"),
    "weights.scope": (lambda m: pk.prune_weights(m, 0.5, scope="everywhere"), "scope"),
    "weights.pattern": (lambda m: pk.prune_weights(m, pattern="5:4"), "5:4"),
    "weights.include": (lambda m: pk.prune_weights(m, 0.5, include=["nope.*"]), "nope"),
    "weights.data_needed": (lambda m: pk.prune_weights(m, 0.5, criterion="wanda"), "wanda"),
    "channels.criterion": (lambda m: pk.prune_channels(m, X, 0.5, criterion="nope"), "nope"),
    "channels.scope": (lambda m: pk.prune_channels(m, X, 0.5, scope="nope"), "scope"),
    "channels.exclude": (lambda m: pk.prune_channels(m, X, 0.5, exclude=["nope"]), "nope"),
    "channels.both_targets": (
        lambda m: pk.prune_channels(m, X, reduce_macs=0.5, reduce_params=0.5),
        "at most one",
    ),
    "channels.unreachable_macs": (lambda m: pk.prune_channels(m, X, reduce_macs=0.99), "allow_partial=True"),
    "channels.unreachable_params": (lambda m: pk.prune_channels(m, X, reduce_params=0.999), "reduce_params"),
    "channels.taylor_no_data": (lambda m: pk.prune_channels(m, X, 0.5, criterion="taylor"), "taylor"),
    "sensitivity.ratios": (lambda m: pk.sensitivity(m, DATA, LOSS, ratios=[1.5], progress=False), "ratio"),
    "sensitivity.criterion": (
        lambda m: pk.sensitivity(m, DATA, LOSS, criterion="nope", progress=False),
        "nope",
    ),
    "sensitivity.include": (
        lambda m: pk.sensitivity(m, DATA, LOSS, include=["nope"], progress=False),
        "nope",
    ),
    "apply_allocation.unknown": (lambda m: pk.apply_allocation(m, {"0": 0.5, "nope": 0.5}), "nope"),
    "apply_allocation.not_prunable": (lambda m: pk.apply_allocation(m, {"0": 0.5, "1": 0.5}), "'1'"),
    "apply_allocation.ratio": (lambda m: pk.apply_allocation(m, {"0": 0.5, "2": 1.5}), "[0, 1)"),
    "apply_allocation.nan": (lambda m: pk.apply_allocation(m, {"0": 0.5, "2": math.nan}), "nan"),
}


@pytest.mark.parametrize("case", sorted(CHOICES))
def test_bad_choices_are_refused_and_the_model_is_unchanged(case: str) -> None:
    call, word = CHOICES[case]
    _refused(_mlp, call, word)


def test_unreachable_target_with_allow_partial_warns_and_prunes() -> None:
    model = _mlp()
    with pytest.warns(UserWarning, match="cannot be reached"):
        pk.prune_channels(model, X, reduce_macs=0.99, allow_partial=True)
    assert model[0].out_features < 16


def test_custom_criterion_failing_while_masking_leaves_no_layer_masked() -> None:
    class Flaky(pk.WeightCriterion):
        calls = 0

        def score(self, target: Any, rows: slice) -> torch.Tensor:
            Flaky.calls += 1
            if Flaky.calls > 4:  # scores for selection succeed, the apply phase fails half way
                raise RuntimeError("scoring service went away")
            return target.weight.detach()[rows].abs()

    model = _mlp()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="went away"):
        pk.prune_weights(model, 0.5, criterion=Flaky(), scope="global")
    assert_model_unchanged(before, model)
    assert not list(masked_parameters(model))


# --- allocate: curves and costs ----------------------------------------------------------------


def _result(loss_b: list[float]) -> pk.SensitivityResult:
    return pk.SensitivityResult.from_dict({"baseline_loss": 1.0, "layers": [
        {"name": "a", "numel": 100, "ratios": [0.5, 0.9], "loss": [1.0, 1.1]},
        {"name": "b", "numel": 100, "ratios": [0.5, 0.9], "loss": loss_b}]})  # fmt: skip


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_allocate_refuses_non_finite_curves_and_costs(bad: float) -> None:
    with pytest.raises(pk.ConfigError, match="b.loss"):
        pk.allocate(_result([2.0, bad]), target=0.5)
    with pytest.raises(pk.ConfigError, match="cost 'a'"):
        pk.allocate(_result([2.0, 5.0]), target=0.5, costs={"a": bad})


@settings(max_examples=30, deadline=None)
@given(target=st.sampled_from(BAD_REALS), tolerance=st.sampled_from([math.nan, -0.1, 1.0, True]))
def test_allocate_refuses_bad_numbers(target: Any, tolerance: Any) -> None:
    with pytest.raises(pk.ConfigError):
        pk.allocate(_result([2.0, 5.0]), target=target)
    with pytest.raises(pk.ConfigError, match="tolerance"):
        pk.allocate(_result([2.0, 5.0]), target=0.5, tolerance=tolerance)


# --- recipes -----------------------------------------------------------------------------------

RECIPES = {
    "duplicate_key": (
        "prune:\n  - what: weights\n    sparsity: 0.5\n    sparsity: 0.9\n",
        "r.yaml:4",
        "twice",
    ),
    "duplicate_top": (
        "prune:\n  - {what: weights, sparsity: 0.5}\nprune:\n  - {what: weights}\n",
        "r.yaml:3",
        "twice",
    ),
    "deep_flow": ("prune: " + "[" * 3000 + "]" * 3000 + "\n", "r.yaml", "nested too deeply"),
    "not_mapping": ("- 1\n- 2\n", "r.yaml:1", "mapping"),
}


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_bad_recipe_text_is_refused_with_file_and_line(case: str) -> None:
    text, where, word = RECIPES[case]
    with pytest.raises(pk.ConfigError) as e:
        Recipe.from_string(text, source="r.yaml")
    assert where in str(e.value) and word in str(e.value)


@pytest.mark.parametrize("bad", [[1, 2], "prune", 3, None])
def test_recipe_from_dict_refuses_non_mappings(bad: Any) -> None:
    with pytest.raises(pk.ConfigError, match="mapping"):
        Recipe.from_dict(bad)


def test_recipe_from_deeply_nested_dict_is_a_config_error() -> None:
    d: Any = {}
    for _ in range(5000):
        d = {"x": d}
    with pytest.raises(pk.ConfigError):
        Recipe.from_dict({"prune": [{"what": "weights", "sparsity": 0.5, "extra": d}]})


# --- structured pruning of a masked model, control flow, threads -------------------------------


def test_prune_channels_reslices_existing_masks_and_the_model_saves(tmp_path: Path) -> None:
    model = _mlp()
    pk.prune_weights(model, 0.5)
    pk.prune_channels(model, X, 0.5)
    for m in model:
        if isinstance(m, nn.Linear):
            assert m.weight_mask.shape == m.weight.shape
            assert bool((m.weight[~m.weight_mask] == 0).all())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(X).sum().backward()
    opt.step()
    pk.save(model, tmp_path / "m.safetensors")


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x) if float(x.sum()) > -1e9 else self.b(x)  # data-dependent: the trace sees one branch
        return self.head(torch.relu(h))


def test_unvisited_modules_are_named_in_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"did not run on the example inputs: b\b"):
        pk.prune_channels(_Branchy(), X, 0.5, exclude=["b"])


def test_forward_from_another_thread_during_prune_channels_is_a_clear_error() -> None:
    model = _mlp()
    errors: list[BaseException] = []
    started, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        started.wait(10)
        try:
            model(X)
        except BaseException as e:  # noqa: BLE001 - recorded for the assert
            errors.append(e)
        release.set()

    t = threading.Thread(target=other_thread)
    t.start()
    hook = model[2].register_forward_pre_hook(lambda m, a: (started.set(), release.wait(10)) and None)
    try:
        pk.prune_channels(model, X, 0.5, check=False)
    finally:
        hook.remove()
        t.join(10)
    assert errors and isinstance(errors[0], pk.ConfigError) and "another thread" in str(errors[0])


# --- CLI output folders -----------------------------------------------------------------------


def test_cli_out_cwd_or_file_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prunekit.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("prune:\n  - {what: weights, sparsity: 0.5}\n")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("x")
    before = listing(tmp_path)
    for out in (".", "notes.txt", "photos", str(tmp_path.parent)):
        assert main(["prune", "examples.models:digits_mlp", "--recipe", "r.yaml", "--out", out,
                     "--overwrite", "--quiet"]) != 0  # fmt: skip
        assert listing(tmp_path) == before
    assert (tmp_path / "notes.txt").read_text() == "mine"
