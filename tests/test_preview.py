"""pk.preview (dry run) leaves the model bit-identical and predicts what the verb then does; CLI --dry-run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.cli.main import main
from zoo import make_bert, make_resnet_basic


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "what,kwargs",
    [
        ("channels", {"ratio": 0.3}),
        ("weights", {"sparsity": 0.6}),
        ("layers", {"n": 1, "criterion": "position"}),
    ],
)
def test_preview_changes_nothing_and_matches_the_real_call(what: str, kwargs: dict) -> None:
    model, x = make_resnet_basic() if what != "layers" else make_bert("eager")
    before = _snapshot(model)
    p = pk.preview(model, x, what=what, **kwargs)
    assert _same(before, _snapshot(model)) and not hasattr(model, "_prunekit_plan")
    real = {"channels": pk.prune_channels, "layers": pk.prune_layers}.get(what)
    if real is not None:
        real(model, x, **kwargs)
    else:
        pk.prune_weights(model, **kwargs)
    from prunekit.core import count_macs, count_nonzeros, count_params

    assert (p.params_after, p.nonzeros_after, p.macs_after) == (
        count_params(model), count_nonzeros(model), count_macs(model, x)
    )  # fmt: skip
    assert p.to_dict()["what"] == what and "nothing was changed" in str(p)


def test_cli_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nname: c\nprune:\n  - what: channels\n    ratio: 0.5\nfinetune: {epochs: 3, lr: 0.01}\n"
        "data: {source: digits}\n"
    )
    out = tmp_path / "out"
    assert main(["prune", "examples.models:digits_mlp", "--recipe", str(recipe), "--out", str(out),
                 "--dry-run", "--data", "digits"]) == 0  # fmt: skip
    assert not out.exists()
    assert "dry run: nothing written" in capsys.readouterr().out
