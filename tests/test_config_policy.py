"""One config policy (config= vs keywords), versioned config dicts, deprecated spellings, one criterion registry."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.core.config import UNSET, config_from_dict, config_to_dict, merge_config
from prunekit.recipes import Recipe
from prunekit.weights.criteria import Magnitude


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return list(now) == list(before) and all(torch.equal(now[k], v) for k, v in before.items())


class _Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(8, 8), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def _sens_result() -> pk.SensitivityResult:
    return pk.SensitivityResult.from_dict(
        {
            "baseline_loss": 1.0,
            "layers": [
                {"name": "a", "numel": 100, "ratios": [0.5, 0.9], "loss": [1.0, 1.1]},
                {"name": "b", "numel": 100, "ratios": [0.5, 0.9], "loss": [2.0, 5.0]},
            ],
        }
    )


SCHED = pk.ConstantSchedule(final_sparsity=0.5)
ADAM = lambda p: torch.optim.SGD(p, lr=0.01)  # noqa: E731

# verb -> (call with config= and one conflicting keyword, the option named in the error)
CONFLICTS: dict[str, tuple[Any, str]] = {
    "prune_weights": (
        lambda: pk.prune_weights(_mlp(), config=pk.WeightPruningConfig(sparsity=0.5), scope="layer"),
        "scope",
    ),
    "prune_weights/criterion": (
        lambda: pk.prune_weights(_mlp(), config=pk.WeightPruningConfig(sparsity=0.5), criterion="random"),
        "criterion",
    ),
    "prune_channels": (
        lambda: pk.prune_channels(
            _mlp(), torch.randn(2, 8), config=pk.ChannelPruneConfig(ratio=0.5), ratio=0.25
        ),
        "ratio",
    ),
    "prune_channels/exclude": (
        lambda: pk.prune_channels(_mlp(), torch.randn(2, 8), config=pk.ChannelPruneConfig(), exclude=["2"]),
        "exclude",
    ),
    "prune_layers": (
        lambda: pk.prune_layers(
            nn.Sequential(_Res(), _Res()), torch.randn(2, 8), config=pk.LayerPruningConfig(n=1), n=1
        ),
        "n",
    ),
    "sensitivity": (
        lambda: pk.sensitivity(
            _mlp(), _data(), nn.functional.cross_entropy, config=pk.SensitivityConfig(), ratios=(0.5,)
        ),
        "ratios",
    ),
    "allocate": (
        lambda: pk.allocate(_sens_result(), config=pk.AllocationConfig(target=0.5), by="macs"),
        "by",
    ),
    "Pruner": (lambda: pk.Pruner(_mlp(), pk.PrunerConfig(schedule=SCHED), schedule=SCHED), "schedule"),
    "Pruner/scope": (lambda: pk.Pruner(_mlp(), pk.PrunerConfig(schedule=SCHED), scope="layer"), "scope"),
    "ChannelPruner": (
        lambda: pk.ChannelPruner(_mlp(), pk.ChannelPrunerConfig(schedule=SCHED), schedule=SCHED),
        "schedule",
    ),
    "lottery_ticket": (
        lambda: pk.lottery_ticket(
            _mlp(),
            _data(),
            optimizer=ADAM,
            val_loader=_data(),
            config=pk.LotteryConfig(rounds=1, steps_per_round=2),
            rate=0.5,
        ),
        "rate",
    ),
    "iterative_prune": (
        lambda: pk.iterative_prune(
            _mlp(), _data(), optimizer=ADAM, config=pk.IterativePruneConfig(sparsity=0.5), rate=0.3
        ),
        "rate",
    ),
    "one_shot_then_finetune": (
        lambda: pk.one_shot_then_finetune(
            _mlp(), _data(), optimizer=ADAM, config=pk.FinetuneConfig(sparsity=0.5), sparsity=0.6
        ),
        "sparsity",
    ),
}


@pytest.mark.parametrize("verb", sorted(CONFLICTS))
def test_config_and_a_keyword_for_the_same_option_raise_naming_it(verb: str) -> None:
    call, option = CONFLICTS[verb]
    with pytest.raises(pk.ConfigError, match=rf"option '{option}' is set by both config= and {option}="):
        call()


def test_conflict_leaves_the_model_untouched_and_config_alone_works() -> None:
    model = _mlp()
    before = _state(model)
    cfg = pk.ChannelPruneConfig(ratio=0.5, exclude=["2"])
    with pytest.raises(pk.ConfigError):
        pk.prune_channels(model, torch.randn(2, 8), config=cfg, scope="global")
    assert _same(model, before)
    pk.prune_channels(model, torch.randn(2, 8), config=cfg)
    assert model[0].out_features == 8 and model[2].out_features == 4


def test_keywords_equal_to_the_defaults_still_conflict() -> None:
    """No comparison with literal defaults: scope='global' (the default) given twice is still a conflict."""
    with pytest.raises(pk.ConfigError, match="'scope'"):
        pk.prune_weights(_mlp(), config=pk.WeightPruningConfig(sparsity=0.5), scope="global")
    with pytest.raises(pk.ConfigError, match="'ratio'"):
        pk.prune_channels(_mlp(), torch.randn(2, 8), config=pk.ChannelPruneConfig(), ratio=0.5)


def test_keywords_and_config_give_the_same_result() -> None:
    a, b = _mlp(), _mlp()
    pk.prune_weights(a, 0.6, scope="layer", exclude=["2"])
    pk.prune_weights(b, config=pk.WeightPruningConfig(sparsity=0.6, scope="layer", exclude=("2",)))
    assert _same(a, _state(b))


def test_merge_config_rejects_a_wrong_config_type() -> None:
    with pytest.raises(pk.ConfigError, match="must be a WeightPruningConfig"):
        merge_config(pk.WeightPruningConfig, pk.ChannelPruneConfig(), verb="prune_weights")  # type: ignore[arg-type]
    assert merge_config(pk.LayerPruningConfig, None, verb="prune_layers", n=UNSET).n == 1


# --------------------------------------------------------------------------- config dicts

CONFIGS = [
    pk.WeightPruningConfig(sparsity=0.5, pattern="2:4", scope="layer", exclude=["fc", "conv*"]),
    pk.ChannelPruneConfig(ratio={"0": 0.5, "2": 0.25}, round_to=4, exclude=("head",)),
    pk.ChannelPruneConfig(reduce_macs=0.5, scope="global", criterion="taylor"),
    pk.LayerPruningConfig(n=2, criterion="position", include="model.layers", exclude=("model.layers.0",)),
    pk.SensitivityConfig(ratios=(0.2, 0.4), granularity="channel", include=("0",)),
    pk.AllocationConfig(target=0.7, by="macs", exclude=("a",), costs={"b": 3.0}),
    pk.PrunerConfig(schedule=pk.CubicSchedule(final_sparsity=0.8, start_step=0, end_step=10), exclude=("2",)),
    pk.PrunerConfig(schedule=SCHED, regrowth=pk.RegrowthConfig(end_step=100, method="set")),
    pk.ChannelPrunerConfig(
        schedule=pk.IterativeSchedule(final_sparsity=0.5, rate=0.2, every=3), include=("0",)
    ),
    pk.LotteryConfig(rounds=2, steps_per_round=10, controls=("reinit",)),
    pk.IterativePruneConfig(sparsity=0.9, rate=0.3, steps_per_round=5),
    pk.FinetuneConfig(sparsity=0.5, steps=3, eval_every=1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_config_dict_round_trip_through_json(cfg: Any) -> None:
    d = cfg.to_dict()
    assert d["kind"] == type(cfg).__name__ and d["version"] == 1
    again = type(cfg).from_dict(json.loads(json.dumps(d)))
    assert again == cfg
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg  # by kind


@settings(max_examples=40, deadline=None)
@given(
    sparsity=st.floats(0.0, 0.99),
    scope=st.sampled_from(["global", "layer"]),
    exclude=st.none() | st.lists(st.sampled_from(["fc", "0", "conv*"]), max_size=3),
    criterion=st.sampled_from(["magnitude", "random", "wanda"]),
)
def test_weight_config_round_trip_property(sparsity: float, scope: str, exclude: Any, criterion: str) -> None:
    cfg = pk.WeightPruningConfig(sparsity=sparsity, scope=scope, exclude=exclude, criterion=criterion)  # type: ignore[arg-type]
    assert pk.WeightPruningConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_dict_errors() -> None:
    d = pk.WeightPruningConfig(sparsity=0.5).to_dict()
    with pytest.raises(pk.ConfigError, match=r"sparsty: unknown key \(did you mean 'sparsity'\?\)"):
        pk.WeightPruningConfig.from_dict({**{k: v for k, v in d.items() if k != "sparsity"}, "sparsty": 0.5})
    with pytest.raises(pk.ConfigError, match="version 2"):
        pk.WeightPruningConfig.from_dict({**d, "version": 2})
    with pytest.raises(pk.ConfigError, match="expected a WeightPruningConfig"):
        pk.WeightPruningConfig.from_dict({**d, "kind": "ChannelPruneConfig"})
    with pytest.raises(pk.ConfigError, match="unknown config kind"):
        config_from_dict({"kind": "Nope"})
    with pytest.raises(pk.ConfigError, match="registered name"):
        pk.WeightPruningConfig(sparsity=0.5, exclude=[nn.Linear]).to_dict()


# --------------------------------------------------------------------------- deprecated spellings


def test_prune_channels_ignore_warns_and_works() -> None:
    a, b = _mlp(), _mlp()
    with pytest.deprecated_call(match=r"prune_channels\(ignore=\).*use prune_channels\(exclude=\)"):
        pk.prune_channels(a, torch.randn(2, 8), ratio=0.5, ignore=["2"])
    pk.prune_channels(b, torch.randn(2, 8), ratio=0.5, exclude=["2"])
    assert _same(a, _state(b)) and a[2].out_features == 4
    with pytest.raises(pk.ConfigError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pk.prune_channels(_mlp(), torch.randn(2, 8), ignore=["2"], exclude=["2"])


def test_prune_layers_blocks_warns_and_works() -> None:
    model = nn.Sequential(_Res(), _Res(), _Res())
    with pytest.deprecated_call(match=r"prune_layers\(blocks=\).*prune_layers\(include=\)"):
        res = pk.prune_layers(model, torch.randn(2, 8), n=1, criterion="position", blocks=["0", "1"])
    assert res.removed == ("1",) and len(model) == 2


def test_prune_layers_exclude_keeps_blocks() -> None:
    model = nn.Sequential(_Res(), _Res(), _Res())
    res = pk.prune_layers(model, torch.randn(2, 8), n=1, criterion="position", exclude=["2"])
    assert res.removed == ("1",)


def test_sensitivity_data_warns_and_works() -> None:
    model = _mlp()
    kw: dict[str, Any] = {"ratios": (0.5,), "progress": False, "estimate": False}
    with pytest.deprecated_call(match=r"sensitivity\(data=\).*sensitivity\(eval_data=\)"):
        old = pk.sensitivity(model, data=_data(), loss_fn=nn.functional.cross_entropy, **kw)
    new = pk.sensitivity(model, eval_data=_data(), loss_fn=nn.functional.cross_entropy, **kw)
    assert old.to_dict() == new.to_dict()


def test_iterative_prune_target_warns_and_works() -> None:
    model = _mlp()
    with pytest.deprecated_call(match=r"iterative_prune\(target=\).*iterative_prune\(sparsity=\)"):
        res = pk.iterative_prune(model, _data(), target=0.5, rate=0.5, optimizer=ADAM, steps_per_round=1)
    assert res.sparsity == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_channel_config_target_warns_and_equals_reduce(kind: str) -> None:
    with pytest.deprecated_call(match=rf"ChannelPruneConfig\(target_{kind}=\).*reduce_{kind}="):
        old = pk.ChannelPruneConfig(**{f"target_{kind}": 0.75})  # type: ignore[arg-type]
    assert old == pk.ChannelPruneConfig(**{f"reduce_{kind}": 0.25})  # type: ignore[arg-type]
    assert f"target_{kind}" not in old.to_dict()  # only the new spelling is written
    with pytest.deprecated_call():  # a dict written before 0.3 still loads
        again = pk.ChannelPruneConfig.from_dict(
            {**old.to_dict(), f"reduce_{kind}": None, f"target_{kind}": 0.75}
        )
    assert again == old
    assert pk.ChannelPruneConfig.from_dict({**old.to_dict(), f"target_{kind}": None}) == old
    with pytest.raises(pk.ConfigError, match="not both"):
        pk.ChannelPruneConfig(**{f"target_{kind}": 0.75, f"reduce_{kind}": 0.25})  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_recipe_target_key_warns_and_gives_the_reduce_step(kind: str) -> None:
    with pytest.deprecated_call(match=rf"recipe key channels\.target_{kind}.*reduce_{kind}"):
        old = Recipe.from_dict({"prune": [{"what": "channels", f"target_{kind}": 0.75}]})
    new = Recipe.from_dict({"prune": [{"what": "channels", f"reduce_{kind}": 0.25}]})
    assert old == new and old.steps[0].config.cost_goal() == (kind, 0.75)
    assert f"target_{kind}" not in old.to_yaml()
    # a recipe.yaml written before 0.3 lists both old keys as null: read without a warning
    assert (
        Recipe.from_dict(
            {"prune": [{**new.to_dict()["prune"][0], "target_macs": None, "target_params": None}]}
        )
        == new
    )
    with pytest.raises(
        pk.ConfigError, match=rf"prune\[0\]\.target_{kind}: target_{kind} is the fraction to keep"
    ):
        with pytest.deprecated_call():
            Recipe.from_dict({"prune": [{"what": "channels", f"target_{kind}": 0.0}]})


def test_recipe_ignore_and_blocks_keys_warn_and_work() -> None:
    with pytest.deprecated_call(match="channels.ignore.*exclude"):
        r = Recipe.from_dict({"prune": [{"what": "channels", "ratio": 0.5, "ignore": ["fc"]}]})
    assert r.steps[0].exclude == ("fc",)  # type: ignore[union-attr]
    with pytest.deprecated_call(match="layers.blocks.*include"):
        r = Recipe.from_dict({"prune": [{"what": "layers", "n": 1, "blocks": "layers"}]})
    assert r.steps[0].include == "layers"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- one criterion registry


class _Largest(Magnitude):
    """Prunes the LARGEST weights: the opposite of magnitude, so its effect is recognisable."""

    name = "largest_first"

    def score(self, target: Any, rows: slice) -> torch.Tensor:
        return -target.weight.detach()[rows].abs().float()


def test_registry_lists_valid_names_and_close_matches() -> None:
    reg = pk.criterion_registry("channel")
    with pytest.raises(pk.ConfigError, match=r"did you mean 'fpgm'\?.*valid names are .*l2"):
        reg.lookup("fpmg")
    with pytest.raises(pk.ConfigError, match="granularity"):
        pk.criterion_registry("block")


def test_a_criterion_registered_once_works_from_python_yaml_and_cli(tmp_path: Path) -> None:
    pk.register_criterion("largest_first", _Largest, granularity="weight")
    try:
        model = _mlp()
        pk.prune_weights(model, 0.5, criterion="largest_first", scope="layer")
        w0 = _mlp()[0].weight.abs()
        kept = model[0].weight.ne(0)
        assert w0[kept].max() <= w0[~kept].min()  # the largest half was pruned

        text = (
            "prune:\n  - what: weights\n    sparsity: 0.5\n    criterion: largest_first\n    scope: layer\n"
        )
        recipe = Recipe.from_string(text, source="r.yaml")
        ymodel = _mlp()
        recipe.run(ymodel, torch.randn(2, 8), measure=False)
        assert torch.equal(ymodel[0].weight, model[0].weight)

        with pytest.raises(pk.ConfigError, match=r"r.yaml:4: prune\[0\].criterion.*'largest_first'"):
            Recipe.from_string(text.replace("largest_first", "largest_frist"), source="r.yaml")

        from prunekit.cli.main import main

        yaml_path = tmp_path / "r.yaml"
        yaml_path.write_text(
            "data: {source: digits}\nprune:\n  - {what: weights, sparsity: 0.5, criterion: largest_first}\n"
            "measure: {latency: false}\n"
        )
        out = tmp_path / "out"
        code = main(
            ["prune", "examples.models:digits_mlp", "--recipe", str(yaml_path), "--out", str(out), "--quiet"]
        )
        assert code == 0 and (out / "report.json").exists()
        report = json.loads((out / "report.json").read_text())
        assert "largest_first" in json.dumps(report)
    finally:
        pk.criterion_registry("weight").pop("largest_first", None)
    with pytest.raises(pk.ConfigError, match="unknown criterion 'largest_first'"):
        pk.prune_weights(_mlp(), 0.5, criterion="largest_first")


def test_sensitivity_and_channel_criteria_register_too() -> None:
    calls: list[str] = []

    def neg(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
        calls.append(name)
        return -weight.abs()

    pk.register_criterion("neg_abs", neg, granularity="sensitivity")
    pk.register_criterion("l2_again", pk.criterion_registry("channel")["l2"], granularity="channel")
    try:
        res = pk.sensitivity(
            _mlp(),
            _data(),
            nn.functional.cross_entropy,
            ratios=(0.5,),
            criterion="neg_abs",
            progress=False,
            estimate=False,
        )
        assert res.criterion == "neg_abs" and calls
        a, b = _mlp(), _mlp()
        pk.prune_channels(a, torch.randn(2, 8), ratio=0.5, criterion="l2_again")
        pk.prune_channels(b, torch.randn(2, 8), ratio=0.5, criterion="l2")
        assert _same(a, _state(b))
    finally:
        pk.criterion_registry("sensitivity").pop("neg_abs", None)
        pk.criterion_registry("channel").pop("l2_again", None)


def test_unset_is_a_singleton_and_falsy() -> None:
    assert not UNSET and repr(UNSET) == "UNSET" and type(UNSET)() is UNSET
    assert dataclasses.is_dataclass(pk.LayerPruningConfig)
