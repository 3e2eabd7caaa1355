"""Recipes: every example runs; schema errors name the line and key and say what is allowed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, DataRequiredError, UnknownModuleError
from prunekit.recipes.schema import ChannelsStep, LayersStep, Recipe, WeightsStep
from prunekit.recipes.sources import import_object

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and steady on a shared machine
    yield
    torch.set_num_threads(old)


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_recipe_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    recipe = Recipe.from_yaml(path)
    if any(st_.what == "oneshot" for st_ in recipe.steps):
        pytest.skip("a oneshot example needs an HF model and calibration text: test_e2e_minilm_cli runs it")
    assert recipe.model is not None, "example recipes name their model"
    recipe = dataclasses.replace(recipe, measure=dataclasses.replace(recipe.measure, latency_repeats=3))
    model, example = import_object(recipe.model)()
    result = recipe.run(model, example)
    before, after = result.before, result.after
    for st_ in recipe.steps:
        if isinstance(st_, WeightsStep) and st_.sparsity is not None:
            pruned = [
                r
                for r in result.layers
                if r["type"] in ("Linear", "Conv2d") and r["name"] not in (st_.exclude or ())
            ]
            zeros = sum(r["params_after"] - r["nonzeros_after"] for r in pruned)
            weights = sum(int(torch.tensor(r["shape_after"]).prod()) for r in pruned)
            assert zeros / weights == pytest.approx(st_.sparsity, abs=0.01)
        if isinstance(st_, WeightsStep) and st_.pattern == "2:4":
            for name, module in model.named_modules():
                if isinstance(module, nn.Linear):
                    groups = module.weight.reshape(module.out_features, -1, 4)
                    assert int(groups.ne(0).sum(-1).max()) <= 2, name
        if isinstance(st_, LayersStep):
            removed = [r for r in result.layers if r["shape_after"] is None]
            assert after["params"] < before["params"] and len(removed) == 2 * st_.n  # two Linears per block
        if isinstance(st_, ChannelsStep):
            assert after["params"] < before["params"] and after["macs"] < before["macs"]
    assert after["nonzeros"] < before["nonzeros"]
    if recipe.finetune is not None:
        assert after["accuracy"] is not None and after["accuracy"] > 0.8  # fine-tuned back to a useful model
        assert result.history[-1]["stage"] == "finetuned"
    assert after["file_bytes"] < before["file_bytes"]


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        Recipe.from_string(text, source="r.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "prune:\n  - what: weights\n    sparsty: 0.5\n",
            [
                "r.yaml:3: prune[0].sparsty: unknown key (did you mean 'sparsity'?)",
                "allowed keys: what, sparsity",
            ],
        ),
        (
            "name: x\nprune:\n  - what: weights\n    sparsity: 1.5\n",
            ["r.yaml:4: prune[0].sparsity: sparsity must be in [0, 1)", "got 1.5"],
        ),
        (
            "prune:\n  - what: weights\n    sparsity: 0.5\n    scope: everywhere\n",
            ["r.yaml:4: prune[0].scope", "'global', 'layer' or 'row'"],
        ),
        (
            "prune:\n  - what: weights\n    sparsity: 0.5\n    criterion: biggest\n",
            ["r.yaml:4: prune[0].criterion", "'biggest'", "magnitude", "wanda"],
        ),
        ("prune:\n  - what: neurons\n", ["r.yaml:2: prune[0]", "weights, channels, layers"]),
        (
            "prune:\n  - what: channels\n    ratio: 0.5\n    reduce_macs: 0.5\n",
            ["r.yaml:2: prune[0]", "exactly one of ratio, reduce_macs, reduce_params"],
        ),
        (
            "prune:\n  - what: layers\n    criterion: position\n",
            ["r.yaml:2: prune[0].n: required key is missing"],
        ),
        (
            "prune:\n  - what: channels\n    ratio: 0.5\n    round_to: 0\n",
            ["r.yaml:4: prune[0].round_to", "positive int"],
        ),
        (
            "seed: 1\nfinetun:\n  epochs: 1\nprune:\n  - {what: weights, sparsity: 0.5}\n",
            ["r.yaml:2: finetun: unknown key (did you mean 'finetune'?)"],
        ),
        (
            "data:\n  source: digits\n  batch: 3\nprune:\n  - {what: weights, sparsity: 0.5}\n",
            ["r.yaml:3: data.batch: unknown key (did you mean 'batch_size'?)"],
        ),
        (
            "prune:\n  - {what: weights, sparsity: 0.5, pattern: '4:2'}\n",
            ["r.yaml:2: prune[0].pattern", "0 < N < M"],
        ),
        ("name: x\n", ["r.yaml:1: prune: required key is missing"]),
        ("prune: []\n", ["r.yaml:1: prune", "at least 1"]),
        (
            "prune:\n  - what: weights\n    sparsity: 0.5\n  - what: weights\n    sparsity: half\n",
            ["r.yaml:5: prune[1].sparsity", "valid number"],
        ),
        (
            "schedule: {kind: one-shot, rounds: 3}\nprune:\n  - {what: weights, sparsity: 0.5}\n",
            ["r.yaml:1: schedule", "kind: iterative"],
        ),
    ],
)
def test_schema_errors_name_line_and_key(text: str, expected: list[str]) -> None:
    msg = _error(text)
    for part in expected:
        assert part in msg, msg
    assert "\n" not in msg


def test_malformed_yaml_names_the_line() -> None:
    msg = _error("prune:\n  - what: weights\n    sparsity: [0.5\n")
    assert msg.startswith("r.yaml:") and "malformed YAML" in msg
    assert _error("just a string\n").startswith("r.yaml:1: a recipe is a YAML mapping")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Recipe.from_yaml(tmp_path / "nope.yaml")


def test_unquoted_nm_pattern_stays_a_pattern() -> None:
    """YAML 1.1 reads 2:4 as the base-60 number 124; recipes read it as the pattern '2:4'."""
    r = Recipe.from_string("prune:\n  - {what: weights, pattern: 2:4}\n  - {what: weights, sparsity: 5e-1}\n")
    assert r.steps[0].pattern == "2:4" and r.steps[1].sparsity == 0.5


def test_steps_validate_too() -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        WeightsStep.from_mapping({"sparsity": 1.5})
    with pytest.raises(ConfigError, match="sparsity"):
        WeightsStep(config=pk.WeightPruningConfig(sparsity=1.5))
    with pytest.raises(ConfigError, match="exactly one"):
        ChannelsStep.from_mapping({})
    with pytest.raises(ConfigError, match="must be a LayerPruningConfig"):
        LayersStep(config=pk.WeightPruningConfig(sparsity=0.5))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one step"):
        Recipe(steps=())
    step = WeightsStep(config=pk.WeightPruningConfig(sparsity=0.5))
    assert step.sparsity == step.config.sparsity == 0.5  # a step reads as its config
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.config = pk.WeightPruningConfig(sparsity=0.9)  # type: ignore[misc]


def test_old_step_constructor_warns_and_builds_the_same_step() -> None:
    with pytest.deprecated_call(
        match=r"WeightsStep\(sparsity=, criterion=\).*WeightsStep\(config=WeightPruningConfig"
    ):
        old = WeightsStep(sparsity=0.5, criterion="wanda")
    assert old == WeightsStep.from_mapping({"sparsity": 0.5, "criterion": "wanda"})
    assert old.config == pk.WeightPruningConfig(sparsity=0.5, criterion="wanda", scope="row")


_weights = st.fixed_dictionaries(
    {"what": st.just("weights"), "sparsity": st.floats(0.0, 0.99)},
    optional={
        "criterion": st.sampled_from(["magnitude", "random", "taylor", "snip", "wanda"]),
        "scope": st.sampled_from(["global", "layer"]),
        "exclude": st.lists(st.sampled_from(["fc", "conv1", "0"]), max_size=2),
    },
)
_channels = st.fixed_dictionaries(
    {"what": st.just("channels"), "ratio": st.floats(0.0, 0.9)},
    optional={"round_to": st.integers(1, 16), "exclude": st.lists(st.just("fc"), max_size=1)},
)


@given(st.lists(st.one_of(_weights, _channels), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_yaml_round_trip(steps: list[dict], seed: int) -> None:
    r = Recipe.from_dict(
        {"prune": steps, "seed": seed, "data": {"source": "digits"}, "finetune": {"epochs": 0.5}}
    )
    again = Recipe.from_string(r.to_yaml())
    assert dataclasses.replace(again, source_path=None) == r


def _tiny() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    data = [(torch.randn(32, 1, 4, 4), torch.randint(0, 4, (32,))) for _ in range(3)]
    return model, data


@pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")  # global 90% on a tiny net
def test_iterative_schedule_reaches_the_target_in_equal_steps() -> None:
    model, data = _tiny()
    r = Recipe.from_dict(
        {
            "prune": [{"what": "weights", "sparsity": 0.9}],
            "schedule": {"kind": "iterative", "rounds": 3},
            "data": {"source": "digits"},
            "finetune": {"epochs": 1, "lr": 0.01},
            "measure": {"latency": False},
        }
    )
    res = r.run(model, data=(data, data))
    pruned = [h["sparsity"] for h in res.history if h["stage"] == "pruned"]
    assert pruned == pytest.approx([0.3, 0.6, 0.9], abs=0.01)
    tuned = [h["sparsity"] for h in res.history if h["stage"] == "finetuned"]
    assert tuned == pytest.approx(pruned, abs=1e-9)  # masks hold through fine-tuning
    assert pk.sparsity(model) == pytest.approx(0.9, abs=0.01)


def test_bad_exclude_leaves_the_model_untouched() -> None:
    model, data = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = Recipe.from_dict(
        {"prune": [{"what": "weights", "sparsity": 0.5, "exclude": ["nope"]}], "measure": {"latency": False}}
    )
    with pytest.raises(UnknownModuleError, match="nope"):
        r.run(model, data[0][0][:1])
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_finetuning_without_data_is_refused_at_run_time() -> None:
    """A recipe may leave data to the caller (prunekit prune --data); without any it cannot fine-tune."""
    model, data = _tiny()
    r = Recipe.from_dict({"prune": [{"what": "weights", "sparsity": 0.5}], "finetune": {"epochs": 1}})
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(DataRequiredError, match="fine-tunes"):
        r.run(model, torch.zeros(1, 1, 4, 4))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    res = r.run(model, data=(data, data), measure=False)
    assert res.history[-1]["stage"] == "finetuned"


def test_data_aware_criterion_without_data_is_refused() -> None:
    model, _ = _tiny()
    r = Recipe.from_dict({"prune": [{"what": "weights", "sparsity": 0.5, "criterion": "wanda"}]})
    assert r.needs_data()
    with pytest.raises(DataRequiredError, match="data"):
        r.run(model, torch.zeros(1, 1, 4, 4))


def test_recipe_is_exported() -> None:
    assert pk.Recipe is Recipe
    r = pk.Recipe.from_dict({"prune": [{"what": "layers", "n": 1}]})
    assert r.steps[0].what == "layers" and r.to_dict()["prune"][0] == {
        "what": "layers",
        "n": 1,
        "criterion": "block_influence",
        "include": None,
        "exclude": None,
        "max_batches": None,
    }
