"""CLI options that mirror a verb's option take their help text and choices from the config fields."""

from __future__ import annotations

import argparse
import typing

import pytest

from prunekit.analysis import AllocationConfig, SensitivityConfig
from prunekit.cli.main import build_parser
from prunekit.core import criterion_registry, register_criterion
from prunekit.core.config import option_help


def _actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize(
    "field, config_cls",
    [
        ("ratios", SensitivityConfig),
        ("criterion", SensitivityConfig),
        ("granularity", SensitivityConfig),
        ("max_batches", SensitivityConfig),
        ("target", AllocationConfig),
    ],
)
def test_analyze_option_help_is_the_config_field_doc(field: str, config_cls: type) -> None:
    action = _actions("analyze")[field]
    doc = option_help(config_cls)[field]
    assert action.help == doc
    assert doc and "``" not in doc and ":class:" not in doc  # markup is dropped for --help


def test_choices_come_from_the_field_type_and_the_registry() -> None:
    actions = _actions("analyze")
    literal = typing.get_type_hints(SensitivityConfig)["granularity"]
    assert tuple(actions["granularity"].choices) == typing.get_args(literal) == ("layer", "channel", "head")
    assert list(actions["criterion"].choices) == criterion_registry("sensitivity").names()
    register_criterion("cli_opt_test", lambda w, **_: w.abs(), granularity="sensitivity")
    try:
        assert "cli_opt_test" in _actions("analyze")["criterion"].choices
    finally:
        criterion_registry("sensitivity").pop("cli_opt_test")


def test_help_output_shows_doc_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["analyze", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(option_help(SensitivityConfig)["max_batches"].split()) + " (default: 4)" in out
