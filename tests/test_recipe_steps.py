"""Every prune step *is* its verb's config: keys generated from the config fields, one validation path,
the config passed to the verb, and the recipe-less ``prunekit prune --what`` built from the same fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml
from torch import nn

import prunekit as pk
from prunekit.cli.main import build_parser, main
from prunekit.core import ConfigMixin, option_help
from prunekit.errors import ConfigError
from prunekit.recipes import (
    STEP_KINDS,
    ChannelsStep,
    ConfigStep,
    LayersStep,
    OneShotStep,
    Recipe,
    StepRun,
    WeightsStep,
)
from prunekit.recipes import register_step as register

ROOT = Path(__file__).resolve().parents[1]

#: the documented exclusions: config fields a YAML step cannot hold (the run decides them)
NOT_FROM_YAML = {"oneshot": {"progress"}}
CONFIGS = {
    "weights": pk.WeightPruningConfig,
    "channels": pk.ChannelPruneConfig,
    "layers": pk.LayerPruningConfig,
    "oneshot": pk.OneShotConfig,
    "heads": pk.HeadPruneConfig,
}


@pytest.mark.parametrize("what", sorted(CONFIGS))
def test_step_keys_are_the_config_fields(what: str) -> None:
    kind = STEP_KINDS[what]
    fields = [f.name for f in dataclasses.fields(CONFIGS[what])]
    assert kind.config_cls is CONFIGS[what]
    assert kind.keys() == [f for f in fields if f not in NOT_FROM_YAML.get(what, set())]
    assert set(kind.yaml_model().model_fields) == set(kind.keys()) | set(kind.deprecated)


def test_a_new_config_field_appears_in_yaml_and_on_the_command_line() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class ToyConfig(ConfigMixin):
        """Options of a toy verb.

        Attributes:
            amount: how much to prune, in [0, 1).
            brand_new: a field added later.
        """

        amount: float = 0.5
        brand_new: int = 3

        def __post_init__(self) -> None:
            if not 0 <= self.amount < 1:
                raise ConfigError(f"amount must be in [0, 1), got {self.amount}")

    applied: list[tuple[ToyConfig, int, int]] = []

    @register
    @dataclasses.dataclass(frozen=True, init=False)
    class ToyStep(ConfigStep[ToyConfig]):
        what: ClassVar[str] = "toy"
        config_cls: ClassVar[type[Any]] = ToyConfig

        def apply(self, model: nn.Module, run: StepRun) -> str | None:
            applied.append((self.config, run.round, run.rounds))
            return f"toy {run.round}/{run.rounds}"

    try:
        result = Recipe.from_dict(
            {
                "prune": [{"what": "toy", "amount": 0.25}],
                "schedule": {"kind": "iterative", "rounds": 2},
                "finetune": {"epochs": 0},
            }
        ).run(_mlp(), torch.randn(2, 8), data=[(torch.randn(4, 8), torch.randint(0, 4, (4,)))], measure=False)
        assert applied == [(ToyConfig(amount=0.25), 1, 2), (ToyConfig(amount=0.25), 2, 2)]
        assert result.notes == ("toy 1/2", "toy 2/2")
        r = Recipe.from_string("prune:\n  - what: toy\n    brand_new: 7\n")
        assert r.steps[0].config == ToyConfig(brand_new=7)
        assert r.to_dict()["prune"][0] == {"what": "toy", "amount": 0.5, "brand_new": 7}
        with pytest.raises(ConfigError, match=r"r\.yaml:3: prune\[0\]\.amount: amount must be in \[0, 1\)"):
            Recipe.from_string("prune:\n  - what: toy\n    amount: 2.0\n", source="r.yaml")
        actions = _prune_actions()
        assert actions["brand_new"].help.startswith("a field added later.")
    finally:
        STEP_KINDS.pop("toy")


STEPS = {
    "weights": ("sparsity: 0.6\n    criterion: random\n    exclude: [fc]", {"sparsity": 0.6, "criterion": "random",
                                                                          "exclude": ("fc",), "scope": "global"}),
    "channels": ("reduce_params: 0.3\n    round_to: 4\n    prune_heads: false",
                 {"reduce_params": 0.3, "round_to": 4, "prune_heads": False}),
    "layers": ("n: 2\n    criterion: position\n    include: blocks", {"n": 2, "criterion": "position",
                                                                       "include": "blocks"}),
    "oneshot": ("method: wanda\n    sparsity: 0.5\n    layer_ratios: {'*.fc1': 0.7}",
                {"method": "wanda", "sparsity": 0.5, "layer_ratios": {"*.fc1": 0.7}}),
}  # fmt: skip


@pytest.mark.parametrize("what", sorted(STEPS))
def test_yaml_step_config_dict_yaml_round_trip(what: str) -> None:
    text, options = STEPS[what]
    recipe = Recipe.from_string(f"prune:\n  - what: {what}\n    {text}\n")
    (step,) = recipe.steps
    assert isinstance(step, STEP_KINDS[what]) and step.config == CONFIGS[what](**options)
    as_dict = step.to_dict()
    assert as_dict["what"] == what and set(as_dict) - {"what"} <= set(STEP_KINDS[what].keys())
    again = Recipe.from_string(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    assert again.steps == recipe.steps and again.to_dict() == recipe.to_dict()
    assert STEP_KINDS[what].from_mapping(as_dict) == step


def test_the_wanda_step_takes_the_criterion_default_scope_like_the_verb() -> None:
    (step,) = Recipe.from_dict({"prune": [{"what": "weights", "sparsity": 0.5, "criterion": "wanda"}]}).steps
    assert step.config.scope == "row"
    (step,) = Recipe.from_dict({"prune": [{"what": "weights", "sparsity": 0.5, "scope": None}]}).steps
    assert step.config.scope == "global"  # null (as written before 0.3) is the default too


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  - what: weights\n    sparsity: 1.5\n", "r.yaml:4: prune[0].sparsity: sparsity must be in [0, 1)"),
        (
            "  - what: channels\n    ratio: 0.5\n    round_to: 0\n",
            "r.yaml:5: prune[0].round_to: round_to must be",
        ),
        ("  - what: layers\n    n: 0\n", "r.yaml:4: prune[0].n: prune_layers: n must be an integer >= 1"),
        ("  - what: oneshot\n    block_size: 0\n", "r.yaml:4: prune[0].block_size: block_size must be"),
        (
            "  - what: weights\n    sparsity: 0.5\n    criterion: bigest\n",
            "r.yaml:5: prune[0].criterion: unknown",
        ),
        (
            "  - what: weights\n    sparsity: 0.5\n    scope: all\n",
            "r.yaml:5: prune[0].scope: Input should be",
        ),
        ("  - what: weights\n    pattern: 5:4\n", "r.yaml:4: prune[0].pattern: pattern '5:4'"),
        (
            "  - what: weights\n    spasity: 0.5\n",
            "r.yaml:4: prune[0].spasity: unknown key (did you mean 'sparsity'?)",
        ),
        ("  - what: layers\n    criterion: loss\n", "r.yaml:3: prune[0].n: required key is missing"),
    ],
)
def test_a_config_error_is_reported_at_the_key_it_names(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        Recipe.from_string("name: x\nprune:\n" + text, source="r.yaml")
    assert expected in str(e.value)


def test_every_error_of_a_recipe_is_reported() -> None:
    text = "prune:\n  - {what: weights, sparsity: 2.0}\n  - {what: layers, n: 1, blcks: x}\nseed: x\n"
    with pytest.raises(ConfigError) as e:
        Recipe.from_string(text, source="r.yaml")
    msg = str(e.value)
    assert (
        "r.yaml:2: prune[0].sparsity" in msg and "r.yaml:3: prune[1].blcks" in msg and "r.yaml:4: seed" in msg
    )


def test_renamed_keys_give_both_spellings_refused() -> None:
    with pytest.raises(ConfigError, match=r"prune\[0\]\.ignore: give exclude"):
        Recipe.from_dict({"prune": [{"what": "channels", "ratio": 0.5, "ignore": ["a"], "exclude": ["b"]}]})


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize(
    ("what", "module", "verb", "step"),
    [
        ("weights", "prunekit.weights", "prune_weights", {"sparsity": 0.5, "scope": "layer"}),
        ("channels", "prunekit.structured", "prune_channels", {"ratio": 0.25, "round_to": 2}),
        ("layers", "prunekit.structured", "prune_layers", {"n": 1, "criterion": "position"}),
    ],
)
def test_the_runner_passes_the_step_config_to_the_public_verb(
    what: str, module: str, verb: str, step: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    mod = importlib.import_module(module)
    real = getattr(mod, verb)
    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("config"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, verb, spy)
    recipe = Recipe.from_dict({"prune": [{"what": what, **step}], "measure": {"latency": False}})
    model = _mlp() if what != "layers" else nn.Sequential(*[_Residual() for _ in range(3)])
    recipe.run(model, torch.randn(2, 8), measure=False)
    assert seen == [recipe.steps[0].config]


def test_old_step_spellings_warn_and_build_the_same_step() -> None:
    with pytest.deprecated_call(match=r"ChannelsStep\(ratio=\)"):
        assert ChannelsStep(ratio=0.3) == ChannelsStep(config=pk.ChannelPruneConfig(ratio=0.3))
    with pytest.deprecated_call(match=r"LayersStep\(n=, include=\)"):
        assert LayersStep(n=2, include="blocks") == LayersStep.from_mapping({"n": 2, "include": "blocks"})
    assert OneShotStep().config == pk.OneShotConfig()
    assert WeightsStep.from_mapping({"pattern": "2:4"}).pattern == "2:4"  # a step reads as its config


# --------------------------------------------------------------------------- the command line


def _prune_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["prune"]._actions}


def test_prune_options_are_the_step_keys_with_their_config_docs() -> None:
    actions = _prune_actions()
    assert set(actions["what"].choices) == set(STEP_KINDS)
    first: dict[str, str] = {}
    for what, kind in STEP_KINDS.items():
        for name in kind.keys():
            first.setdefault(name, what)
    for name, what in first.items():
        action = actions[name]
        doc = " ".join(option_help(CONFIGS[what])[name].split())
        assert action.help.startswith(doc.replace("%", "%%")), name
        assert action.option_strings == ["--" + name.replace("_", "-")]
    assert list(actions["on_unknown"].choices) == ["keep", "raise"]  # Literal[...] of the field
    assert {"magnitude", "wanda", "l2", "fpgm", "block_influence"} <= set(actions["criterion"].choices)
    assert "progress" not in actions  # decided by the run, not a step key


def test_prune_help_groups_the_options_by_step_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--help"])
    out = capsys.readouterr().out
    for what, kind in STEP_KINDS.items():
        assert f"--what {what} ({kind.config_cls.__name__}" in out
    flat = " ".join(out.split())
    assert " ".join(option_help(pk.LayerPruningConfig)["n"].split()) in flat
    assert "--what weights --sparsity 0.9" in flat  # an example of the recipe-less form


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    return tmp_path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_what_weights_writes_a_model_at_that_sparsity(
    in_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = in_root / "w50"
    code, stdout, err = _run(
        ["prune", "examples.models:digits_mlp", "--what", "weights", "--sparsity", "0.5", "--criterion",
         "magnitude", "--out", str(out), "--json", "--no-latency"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["after"]["sparsity"] == pytest.approx(0.5, abs=1e-6)
    from prunekit.recipes import load_model

    loaded = load_model(str(out), trust_code=True)  # we wrote it
    linears = [m.weight for m in loaded.model.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in linears)
    assert zeros / sum(w.numel() for w in linears) == pytest.approx(0.5, abs=1e-3)
    written = Recipe.from_yaml(out / "recipe.yaml")  # the one-step recipe it ran, reusable with --recipe
    assert written.steps == (WeightsStep(config=pk.WeightPruningConfig(sparsity=0.5)),)


@pytest.mark.parametrize(
    ("model", "args", "check"),
    [
        ("digits_cnn", ["--what", "channels", "--ratio", "0.3", "--exclude", "fc"], "macs"),
        ("digits_cnn", ["--what", "channels", "--reduce-params", "0.4"], "params"),
        ("trained_digits_resmlp", ["--what", "layers", "--n", "2", "--include", "blocks"], "params"),
    ],
)
def test_prune_what_channels_and_layers(
    model: str, args: list[str], check: str, in_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = in_root / "run"
    code, stdout, err = _run(
        ["prune", f"examples.models:{model}", *args, "--out", str(out), "--json", "--no-latency"], capsys
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["after"][check] < report["before"][check]
    if "--reduce-params" in args:
        assert report["after"]["params"] <= 0.6 * report["before"]["params"]


_TINY = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.head(x)


def model():
    torch.manual_seed(0)
    return Tiny(), torch.randn(1, 16)


def data():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(3)]
    return batches, batches
"""


def test_prune_what_oneshot(in_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_root / "tiny.py").write_text(_TINY)
    out = in_root / "os"
    code, stdout, err = _run(
        ["prune", f"{in_root / 'tiny.py'}:model", "--what", "oneshot", "--method", "wanda", "--sparsity", "0.5",
         "--data", f"{in_root / 'tiny.py'}:data", "--out", str(out), "--json", "--no-latency"], capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    assert report["recipe"]["prune"][0]["method"] == "wanda"
    blocks = [r for r in report["layers"] if r["name"].startswith("layers.") and r["type"] == "Linear"]
    assert blocks and all(r["sparsity_after"] == pytest.approx(0.5, abs=0.01) for r in blocks)
    assert all(r["sparsity_after"] == 0 for r in report["layers"] if r["name"] == "head")


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--what", "weights", "--sparsity", "1.5"], 1, "--sparsity: sparsity must be in [0, 1)"),
        (["--what", "weights", "--sparsity", "half"], 1, "--sparsity: Input should be a valid number"),
        (
            ["--what", "weights", "--sparsity", "0.5", "--round-to", "4"],
            1,
            "--round-to is not an option of --what weights",
        ),
        (
            ["--what", "channels", "--ratio", "0.5", "--reduce-macs", "0.2"],
            1,
            "--what channels: give exactly one of",
        ),
        (["--what", "layers"], 1, "--n: required key is missing"),
        (["--what", "weights", "--scope", "everywhere"], 2, "invalid choice: 'everywhere'"),
        (["--what", "neurons"], 2, "invalid choice: 'neurons'"),
        ([], 2, "give --recipe RECIPE.yaml, or --what KIND"),
        (["--what", "weights", "--recipe", "r.yaml"], 2, "not allowed with argument"),
    ],
)
def test_prune_what_errors_are_one_clean_line(
    args: list[str], code: int, expected: str, in_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = in_root / "bad"
    argv = ["prune", "examples.models:digits_mlp", *args, "--out", str(out)]
    if code == 2:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
    else:
        got, _, err = _run(argv, capsys)
        assert got == code and len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err
    assert not out.exists()
