"""One module selector for every verb: names, globs, types, module objects and mixed lists.

Each verb is driven with the same selector forms; what it pruned / analysed is read back from the
model or the result and compared with a hand-written expectation of which layers the form names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import match_names, select_modules


class Head(nn.Linear):
    """A Linear subclass, so a type selector can name exactly one layer."""


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = Head(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


LINEARS = ["stem", "blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2", "head"]

# selector form -> the Linear layers it names (written by hand); module objects are built per model
FORMS: dict[str, tuple[Callable[[Net], Any], set[str]]] = {
    "name": (lambda m: ["blocks.0"], {"blocks.0.fc1", "blocks.0.fc2"}),
    "glob": (lambda m: ["blocks.*.fc1"], {"blocks.0.fc1", "blocks.1.fc1"}),
    "type": (lambda m: [Head], {"head"}),
    "object": (lambda m: [m.blocks[1].fc2], {"blocks.1.fc2"}),
    "object_container": (lambda m: m.blocks[1], {"blocks.1.fc1", "blocks.1.fc2"}),
    "mixed": (lambda m: ["stem", "blocks.1.f*", m.blocks[0].fc1, Head], set(LINEARS) - {"blocks.0.fc2"}),
}


def _zeroed(model: nn.Module) -> set[str]:
    return {n for n in LINEARS if bool((model.get_submodule(n).weight == 0).any())}


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g))]


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def weights_include(model: Net, spec: Any) -> set[str]:
    pk.prune_weights(model, 0.5, scope="layer", include=spec)
    return _zeroed(model)


def weights_exclude(model: Net, spec: Any) -> set[str]:
    pk.prune_weights(model, 0.5, scope="layer", exclude=spec)
    return set(LINEARS) - _zeroed(model)


def sensitivity_include(model: Net, spec: Any) -> set[str]:
    res = pk.sensitivity(model, _data(), _loss, ratios=[0.5], include=spec, estimate=False, progress=False)
    return set(res.names)


def sensitivity_exclude(model: Net, spec: Any) -> set[str]:
    res = pk.sensitivity(model, _data(), _loss, ratios=[0.5], exclude=spec, estimate=False, progress=False)
    return set(LINEARS) - set(res.names)


HIDDEN = {"blocks.0.fc1", "blocks.1.fc1"}  # the only free output widths (others feed the residual / logits)


def channels_exclude(model: Net, spec: Any) -> set[str]:
    pk.prune_channels(model, torch.randn(2, 8), ratio=0.5, exclude=spec)
    return {n for n in HIDDEN if model.get_submodule(n).out_features == 32}


def channels_ratio_keys(model: Net, spec: Any) -> set[str]:
    specs = spec if isinstance(spec, list) else [spec]
    pk.prune_channels(model, torch.randn(2, 8), ratio={s: 0.5 for s in specs})
    return {n for n in HIDDEN if model.get_submodule(n).out_features < 32}


def channel_pruner_include(model: Net, spec: Any) -> set[str]:
    cp = pk.ChannelPruner(model, schedule=pk.ConstantSchedule(final_sparsity=0.5), include=spec if isinstance(spec, list) else [spec])
    return set(cp.layers)


def lottery_exclude(model: Net, spec: Any) -> set[str]:
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    loader = [(xs, ys)]
    pk.lottery_ticket(
        model,
        loader,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        val_loader=loader,
        rounds=1,
        steps_per_round=1,
        eval_every=1,
        exclude=spec,
    )
    return {n for n in LINEARS if not hasattr(model.get_submodule(n), "weight_mask")}


VERBS: dict[str, tuple[Callable[[Net, Any], set[str]], set[str]]] = {
    # verb -> (driver, the layers the driver can observe)
    "prune_weights(include=)": (weights_include, set(LINEARS)),
    "prune_weights(exclude=)": (weights_exclude, set(LINEARS)),
    "sensitivity(include=)": (sensitivity_include, set(LINEARS)),
    "sensitivity(exclude=)": (sensitivity_exclude, set(LINEARS)),
    "prune_channels(exclude=)": (channels_exclude, HIDDEN),
    "prune_channels(ratio={...})": (channels_ratio_keys, HIDDEN),
    "ChannelPruner(include=)": (channel_pruner_include, set(LINEARS)),
    "lottery_ticket(exclude=)": (lottery_exclude, set(LINEARS)),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("verb", list(VERBS))
def test_same_spec_forms_for_every_verb(verb: str, form: str) -> None:
    torch.manual_seed(0)
    model = Net()
    make, named = FORMS[form]
    drive, observable = VERBS[verb]
    assert drive(model, make(model)) == named & observable


@pytest.mark.parametrize("verb", list(VERBS))
def test_unknown_name_raises_with_close_matches(verb: str) -> None:
    drive, _ = VERBS[verb]
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.UnknownModuleError, match=r"'blocks\.0\.fc3'.*Close matches: .*'blocks\.0\.fc1'"):
        drive(model, ["blocks.0.fc3"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_glob_and_foreign_module_raise() -> None:
    model = Net()
    with pytest.raises(pk.UnknownModuleError, match="glob 'block.*'.*Close matches"):
        select_modules(model, "block.*", what="exclude")
    with pytest.raises(pk.UnknownModuleError, match="not part of Net"):
        pk.prune_weights(model, 0.5, exclude=[nn.Linear(2, 2)])
    with pytest.raises(pk.ConfigError, match="exclude= entries"):
        pk.prune_weights(model, 0.5, exclude=[3])


def test_module_objects_in_prune_weights_include_and_exclude() -> None:
    model = Net()
    res = pk.prune_weights(model, 0.5, scope="layer", include=[model.blocks], exclude=model.blocks[0].fc2)
    assert _zeroed(model) == {"blocks.0.fc1", "blocks.1.fc1", "blocks.1.fc2"}
    assert [s.name for s in res.skipped] == ["blocks.0.fc2"]


def test_glob_ratio_keys_later_keys_win() -> None:
    torch.manual_seed(0)
    model = Net()
    pk.prune_channels(model, torch.randn(2, 8), ratio={"blocks.*.fc1": 0.5, "blocks.1.fc1": 0.25})
    assert [model.blocks[i].fc1.out_features for i in (0, 1)] == [16, 24]


def test_prune_layers_exclude_globs_and_objects() -> None:
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(2, 8)
    res = pk.prune_layers(model, x, n=1, criterion="position", exclude=["blocks.1"])
    assert res.removed == ("blocks.0",)
    model = Net()
    res = pk.prune_layers(model, x, n=1, criterion="position", exclude=[model.blocks[1]])
    assert res.removed == ("blocks.0",)
    model = Net()
    res = pk.prune_layers(model, x, n=1, criterion="position", include=["blocks.*"])
    assert res.removed == ("blocks.1",)
    with pytest.raises(pk.UnknownModuleError, match="Close matches"):
        pk.prune_layers(Net(), x, n=1, criterion="position", exclude=["blocks.2"])


def test_match_names_for_result_layers() -> None:
    names = ["a.fc1", "a.fc2", "b.fc1"]
    assert match_names(names, ["*.fc1"]) == ["a.fc1", "b.fc1"]
    assert match_names(names, "a.fc2") == ["a.fc2"]
    with pytest.raises(pk.UnknownModuleError, match="Close matches: .*'a.fc1'"):
        match_names(names, ["a.fc3"], what="exclude")


def test_one_tuple_of_prunable_types() -> None:
    from prunekit.analysis import layers
    from prunekit.core import PRUNABLE_TYPES
    from prunekit.core import select as core_select

    assert layers.PRUNABLE_TYPES is PRUNABLE_TYPES is core_select.DEFAULT_TYPES
