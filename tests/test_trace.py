"""The recorder: ops, shapes, producers (versioned for in-place ops), modules, tied parameters."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.graph.trace import TensorRef, record


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)), inplace=True)
        y += 1.0
        return self.fc(y.mean((2, 3)))


def test_records_ops_shapes_modules() -> None:
    t = record(Small().train(), torch.randn(2, 3, 5, 5))
    names = [n.name for n in t.nodes]
    assert names[:2] == ["conv2d", "batch_norm"]
    conv = t.nodes[0]
    assert conv.module == "conv"
    assert t.values[conv.outputs[0]].shape == (2, 4, 5, 5)
    assert isinstance(conv.args[1], TensorRef)
    assert t.values[conv.args[1].vid].names == ("conv.weight",)
    assert t.nodes[names.index("linear")].module == "fc"
    assert t.modules_run == {"", "conv", "bn", "fc"}


def test_inplace_ops_get_new_versions() -> None:
    t = record(Small(), torch.randn(1, 3, 4, 4))
    relu = next(n for n in t.nodes if n.name == "relu")
    iadd = next(n for n in t.nodes if n.name in ("__iadd__", "add_"))
    assert relu.inplace and iadd.inplace
    # the in-place add reads the relu's output version and writes a new one
    assert iadd.inputs[0] == relu.outputs[0]
    assert iadd.outputs[0] != relu.outputs[0]
    mean = next(n for n in t.nodes if n.name == "mean")
    assert mean.inputs[0] == iadd.outputs[0]


def test_mode_and_state_untouched() -> None:
    m = Small().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    record(m, torch.randn(2, 3, 5, 5))
    assert m.training and m.bn.training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # no BN stat update


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids))


def test_tied_parameter_is_one_value_with_both_names() -> None:
    t = record(Tied(), torch.randint(0, 7, (2, 3)))
    emb, lin = t.nodes[0], t.nodes[1]
    assert emb.inputs[1] == lin.inputs[1]
    assert set(t.values[emb.inputs[1]].names) == {"emb.weight", "head.weight"}


def test_kwargs_inputs_and_outputs_recorded() -> None:
    class KW(nn.Module):
        def forward(self, a: torch.Tensor, *, b: torch.Tensor) -> dict[str, Any]:
            return {"s": a + b, "p": torch.cat([a, b], -1)}

    t = record(KW(), {"a": torch.randn(2, 3), "b": torch.randn(2, 3)})
    assert len(t.input_values) == 2 and len(t.output_values) == 2
    add = t.nodes[0]
    assert sorted(add.inputs) == sorted(t.input_values)


def test_sdpa_gqa_kwarg_and_properties_recorded() -> None:
    class A(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, k, enable_gqa=True).mT

    t = record(A(), (torch.randn(1, 4, 3, 2), torch.randn(1, 2, 3, 2)))
    sdpa = next(n for n in t.nodes if n.name == "scaled_dot_product_attention")
    assert sdpa.kwargs["enable_gqa"] is True
    assert t.nodes[-1].name == "mT"


def test_partial_view_write_is_recorded() -> None:
    class W(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 1
            y[:, :2] += 1
            return y

    t = record(W(), torch.randn(2, 4))
    assert any(n.name == "view_write" for n in t.nodes)
    # Python runs `y[:, :2] += 1` as getitem, add_ (into the view: base y rewritten), setitem
    last = t.nodes[t.values[t.output_values[0]].producer]
    assert (
        last.name == "__setitem__"
        and last.inputs[0] == next(n for n in t.nodes if n.name == "view_write").outputs[0]
    )
