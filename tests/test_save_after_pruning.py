"""pk.save / pk.load after every kind of pruning, into a freshly built (unpruned) model.

The oracle is the pruned model itself: the reloaded model must compute bit-identical outputs and
hold the same tensors, after weights, channels, heads, layers and their combinations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import prunekit as pk
from zoo import make_bert, make_llama, output_tensors


class Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def make_mlp() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), *[Res() for _ in range(4)], nn.Linear(16, 4)).eval(), (
        torch.randn(3, 8),
    )


def _out(model: nn.Module, x: tuple[Any, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        return output_tensors(model(*x))


Step = Callable[[nn.Module, tuple[Any, ...]], Any]


def weights(m: nn.Module, x: tuple[Any, ...]) -> Any:
    return pk.prune_weights(m, 0.5)


def channels(m: nn.Module, x: tuple[Any, ...]) -> Any:
    return pk.prune_channels(m, x, 0.25, prune_heads=False)


def heads(m: nn.Module, x: tuple[Any, ...]) -> Any:
    return pk.prune_channels(m, x, 0.25, prune_heads=True)


def layers(m: nn.Module, x: tuple[Any, ...]) -> Any:
    return pk.prune_layers(m, x, n=1, criterion="block_influence")


def position(m: nn.Module, x: tuple[Any, ...]) -> Any:
    return pk.prune_layers(m, x, n=1, criterion="position")


CASES: list[tuple[str, Callable[[], Any], list[Step]]] = [
    ("mlp-weights", make_mlp, [weights]),
    ("mlp-channels", make_mlp, [channels]),
    ("mlp-layers", make_mlp, [layers]),
    ("mlp-layers-channels-weights", make_mlp, [layers, channels, weights]),
    ("mlp-channels-layers", make_mlp, [channels, position]),
    ("bert-weights", lambda: make_bert("eager"), [weights]),
    ("bert-heads", lambda: make_bert("eager"), [heads]),
    ("bert-layers", lambda: make_bert("eager"), [layers]),
    ("bert-heads-layers-weights", lambda: make_bert("sdpa"), [heads, layers, weights]),
    ("llama-channels", lambda: make_llama("eager"), [channels]),
    ("llama-layers", lambda: make_llama("eager"), [position]),
    ("llama-layers-heads", lambda: make_llama("sdpa"), [layers, heads]),
]


@pytest.mark.parametrize("name,factory,steps", CASES, ids=[c[0] for c in CASES])
def test_save_load_into_fresh_model(
    tmp_path: Path, name: str, factory: Callable[[], Any], steps: list[Step]
) -> None:
    model, x = factory()
    model.eval()
    for step in steps:
        step(model, x)
    expected = _out(model, x)
    path = pk.save(model, tmp_path / "m.safetensors")
    fresh, _ = factory()
    fresh.eval()
    pk.load(path, fresh)
    got = _out(fresh, x)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    mine = model.state_dict()
    theirs = fresh.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    assert pk.sparsity(fresh) == pk.sparsity(model)
    cfg = getattr(model, "config", None)
    if cfg is not None:  # the HF config follows the replayed plan (layer count, widths)
        assert fresh.config.num_hidden_layers == cfg.num_hidden_layers


def test_layer_plan_refuses_a_model_built_shallower(tmp_path: Path) -> None:
    model, x = make_mlp()
    pk.prune_layers(model, x, n=2, criterion="position")
    path = pk.save(model, tmp_path / "m.safetensors")
    shallow, _ = make_mlp()
    del shallow[1]
    before = {k: v.clone() for k, v in shallow.state_dict().items()}
    with pytest.raises(pk.FormatError, match="blocks"):
        pk.load(path, shallow)
    assert len(shallow) == 5 and all(torch.equal(before[k], v) for k, v in shallow.state_dict().items())


def test_apply_plan_restores_layers_on_failure() -> None:
    from prunekit.structured import apply_plan

    model, x = make_mlp()
    before = _out(model, x)
    good = {"version": 1, "entries": [], "attributes": [],
            "layers": [{"container": "", "size": 6, "kept": [0, 1, 2, 5]}]}  # fmt: skip
    bad = {"version": 1, "entries": [{"fqn": "nope.weight", "dim": 0, "size": 1, "kept": [0]}]}
    with pytest.raises(pk.PlanError):
        apply_plan(model, [good, bad])
    assert len(model) == 6
    assert all(torch.equal(a, b) for a, b in zip(_out(model, x), before, strict=True))
