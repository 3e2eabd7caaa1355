"""The ``oneshot`` recipe step: OneShotConfig's fields in YAML, line-numbered errors, a run on a tiny model."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.recipes import OneShotStep, Recipe
from prunekit.recipes.oneshot_step import NOT_IN_RECIPES

YAML = """version: 1
prune:
  - what: oneshot
    method: wanda
    sparsity: 0.6
    exclude: ["*.fc2"]
    max_batches: 2
"""


def test_step_keys_are_the_config_fields() -> None:
    config_fields = {f.name for f in fields(pk.OneShotConfig)} - set(NOT_IN_RECIPES)
    assert set(OneShotStep.keys()) == config_fields
    assert set(OneShotStep.yaml_model().model_fields) == config_fields


def test_yaml_gives_the_config_and_round_trips() -> None:
    r = Recipe.from_string(YAML)
    (step,) = r.steps
    assert isinstance(step, OneShotStep)
    assert step.config == pk.OneShotConfig(method="wanda", sparsity=0.6, exclude=("*.fc2",), max_batches=2)
    assert Recipe.from_string(r.to_yaml()).steps == r.steps
    assert r.needs_data()


@pytest.mark.parametrize(
    ("line", "bad", "expect"),
    [
        (4, "    method: sparsegtp\n", "prune[0].method"),
        (5, "    sparsity: 1.5\n", "prune[0].sparsity"),
        (5, "    sparsty: 0.5\n", "did you mean 'sparsity'"),
        (5, "    block_size: 0\n", "prune[0].block_size"),
    ],
)
def test_errors_name_the_line_and_key(line: int, bad: str, expect: str) -> None:
    text = "version: 1\nprune:\n  - what: oneshot\n    method: refit\n" + bad
    text = text if "method" not in bad else "version: 1\nprune:\n  - what: oneshot\n" + bad
    with pytest.raises(ConfigError) as e:
        Recipe.from_string(text, source="r.yaml")
    assert f"r.yaml:{line}:" in str(e.value) and expect in str(e.value)


def test_config_level_error_is_reported_at_the_key_it_names() -> None:
    text = "version: 1\nprune:\n  - what: oneshot\n    pattern: '2:4'\n    sparsity: 0.2\n"
    with pytest.raises(ConfigError, match=r"r\.yaml:5: prune\[0\]\.sparsity: .*below what pattern"):
        Recipe.from_string(text, source="r.yaml")


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class _Tiny(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Block(d) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return x


def test_run_equals_prune_oneshot_on_the_same_batches() -> None:
    torch.manual_seed(0)
    a = _Tiny()
    b = _Tiny()
    b.load_state_dict(a.state_dict())
    batches = [torch.randn(4, 8, 16) for _ in range(3)]
    recipe = Recipe.from_string(YAML.replace('    exclude: ["*.fc2"]\n', ""))
    result = recipe.run(a, batches[0], data=[(x, x) for x in batches], measure=False)
    pk.prune_oneshot(b, batches[:2], method="wanda", sparsity=0.6, progress=False)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(pa, pb, msg=na)
    assert any("oneshot wanda" in n for n in result.notes)


def test_run_without_data_says_how_to_give_it() -> None:
    with pytest.raises(pk.DataRequiredError, match="calibrat"):
        Recipe.from_string(YAML).run(_Tiny(), torch.randn(1, 4, 16), measure=False)
