"""Dependency graph: coupling rules, and a hypothesis property over random conv/linear/add/concat/norm DAGs.

The property uses the independent oracle in ``tests/oracle.py`` (not prunekit's own), on fresh inputs,
with ``check=False`` so prune_channels' internal check cannot hide a wrong graph.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from oracle import kept_from_plan
from oracle import masked_reference as independent_reference
from prunekit.graph.build import build_graph
from prunekit.graph.trace import record


def _groups(model: nn.Module, x: Any) -> dict[str, set[tuple[str, int]]]:
    g = build_graph(record(model, x))
    return {gr.name: {(m.name, m.dim) for m in gr.members} for gr in g.groups}


def test_chain_linear_bn() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    gr = _groups(m, torch.randn(1, 3, 6, 6))
    assert gr == {
        "0:out": {
            ("0.weight", 0),
            ("0.bias", 0),
            ("1.weight", 0),
            ("1.bias", 0),
            ("1.running_mean", 0),
            ("1.running_var", 0),
            ("3.weight", 1),
        }
    }


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = h + self.b(h)  # residual: a, b outputs and c, out inputs are one group
        h = h * torch.sigmoid(self.c(h))  # gate: c's outputs join too
        return self.out(h)


def test_residual_and_gate_couple() -> None:
    gr = _groups(Residual(), torch.randn(2, 4))
    assert len(gr) == 1
    (members,) = gr.values()
    assert {
        ("a.weight", 0),
        ("b.weight", 0),
        ("b.weight", 1),
        ("c.weight", 0),
        ("c.weight", 1),
        ("out.weight", 1),
    } <= members


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 5, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


def test_concat_maps_offsets() -> None:
    g = build_graph(record(Cat(), torch.randn(1, 2, 3, 3)))
    by_name = {gr.name: gr for gr in g.groups}
    ga, gb = by_name["a:out"], by_name["b:out"]
    col_a = next(m for m in ga.members if m.name == "c.weight")
    col_b = next(m for m in gb.members if m.name == "c.weight")
    assert (col_a.units[:3] >= 0).all() and (col_a.units[3:] == -1).all()
    assert (col_b.units[3:] >= 0).all() and (col_b.units[:3] == -1).all()


def test_flatten_maps_blocks_of_columns() -> None:
    m = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Flatten(), nn.Linear(3 * 2 * 2, 2))
    g = build_graph(record(m, torch.randn(1, 1, 2, 2)))
    (gr,) = g.groups
    cols = next(mm for mm in gr.members if mm.name == "2.weight")
    assert cols.units.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_layernorm_dim_frozen_and_reported() -> None:
    m = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))
    g = build_graph(record(m, torch.randn(2, 3)))
    assert [gr.name for gr in g.groups] == ["2:out"]
    assert any("layer_norm" in r.op for r in g.frozen)


class Heads(nn.Module):
    def __init__(self, heads: int = 4, kv: int = 2, hd: int = 4, gqa_kwarg: bool = True) -> None:
        super().__init__()
        self.h, self.kv, self.hd, self.gqa_kwarg = heads, kv, hd, gqa_kwarg
        self.q = nn.Linear(8, heads * hd)
        self.k = nn.Linear(8, kv * hd)
        self.v = nn.Linear(8, kv * hd)
        self.o = nn.Linear(heads * hd, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, self.hd).transpose(1, 2)
        k = self.k(x).view(b, t, -1, self.hd).transpose(1, 2)
        v = self.v(x).view(b, t, -1, self.hd).transpose(1, 2)
        if self.gqa_kwarg:
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            rep = q.shape[1] // k.shape[1]
            k = k[:, :, None].expand(b, k.shape[1], rep, t, self.hd).reshape(b, -1, t, self.hd)
            v = v[:, :, None].expand(b, v.shape[1], rep, t, self.hd).reshape(b, -1, t, self.hd)
            y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


def test_gqa_units_are_whole_kv_groups() -> None:
    for kwarg in (True, False):
        g = build_graph(record(Heads(gqa_kwarg=kwarg), torch.randn(2, 5, 8)))
        (gr,) = g.groups
        assert gr.n_units == 2  # two KV groups
        q = next(m for m in gr.members if m.name == "q.weight")
        assert q.units.tolist() == [0] * 8 + [1] * 8  # query heads 0,1 -> kv head 0; 2,3 -> kv head 1
        k = next(m for m in gr.members if m.name == "k.weight")
        assert k.units.tolist() == [0] * 4 + [1] * 4


def test_gqa_prune_matches_oracle() -> None:
    for kwarg in (True, False):
        m = Heads(gqa_kwarg=kwarg)
        orig = copy.deepcopy(m)
        x = torch.randn(2, 5, 8)
        pk.prune_channels(m, x, ratio=0.5, check=False)
        assert m.q.out_features == 8 and m.k.out_features == 4
        ref = independent_reference(orig, kept_from_plan(m._prunekit_plan[0]))
        torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-4)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.mid(self.emb(ids))) + self.emb(ids))


def test_tied_embedding_sliced_once_and_stays_tied() -> None:
    m = Tied()
    orig = copy.deepcopy(m)
    ids = torch.randint(0, 11, (2, 7))
    res = pk.prune_channels(m, ids, ratio=0.5, check=False)
    assert m.head.weight is m.emb.weight and m.emb.weight.shape == (11, 3)
    assert m.emb.embedding_dim == 3 and m.head.in_features == 3
    assert sum(e["fqn"] == "emb.weight" for e in res.plan["entries"]) == 1
    ref = independent_reference(orig, kept_from_plan(res.plan))
    torch.testing.assert_close(m(ids), ref(ids), atol=1e-5, rtol=1e-4)


class Token(nn.Module):
    """Class token and position embedding used directly; output through a hidden Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(5, 6)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.pos = nn.Parameter(torch.randn(1, 4, 6))
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        return self.fc(F.gelu(t[:, 0]))


def test_class_token_and_position_embedding() -> None:
    m = Token()
    orig = copy.deepcopy(m)
    x = torch.randn(2, 3, 5)
    res = pk.prune_channels(m, x, ratio=0.5, check=False)
    assert m.cls.shape == (1, 1, 3) and m.pos.shape == (1, 4, 3)
    ref = independent_reference(orig, kept_from_plan(res.plan))
    torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-4)


class Opaque(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g * 2


class WithOpaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(F.relu(self.b(Opaque.apply(self.a(x)))))


def test_custom_function_freezes_its_group_and_still_works_after() -> None:
    m = WithOpaque()
    with pytest.warns(UserWarning, match="Opaque"):
        res = pk.prune_channels(m, torch.randn(2, 3), ratio=0.5)
    assert m.a.out_features == 6 and m.b.out_features == 3
    assert any("Opaque" in s.reason for s in res.skipped)
    assert Opaque.apply(torch.ones(2)).tolist() == [2.0, 2.0]  # Function.apply restored


# ----------------------------------------------------------------------------- random DAGs


class RandomDAG(nn.Module):
    """Interprets a spec: each step reads earlier nodes and appends a new node."""

    def __init__(self, spec: list[tuple[Any, ...]], cin: int) -> None:
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList()
        for op in spec:
            kind = op[0]
            if kind == "conv":
                _, _src, ci, co, k, g = op
                self.layers.append(nn.Conv2d(ci, co, k, padding=k // 2, groups=g))
            elif kind == "bn":
                self.layers.append(nn.BatchNorm2d(op[2]))
            else:
                self.layers.append(nn.Identity())
        self.cin = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for layer, op in zip(self.layers, self.spec, strict=True):
            kind = op[0]
            if kind in ("conv", "bn"):
                nodes.append(layer(nodes[op[1]]))
            elif kind == "relu":
                nodes.append(F.relu(nodes[op[1]]))
            elif kind == "add":
                nodes.append(nodes[op[1]] + nodes[op[2]])
            elif kind == "cat":
                nodes.append(torch.cat([nodes[op[1]], nodes[op[2]]], 1))
        return nodes[-1].mean((2, 3))


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], int]:
    cin = draw(st.integers(1, 3))
    widths = [cin]
    spec: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(2, 8))):
        kind = draw(st.sampled_from(["conv", "conv", "bn", "relu", "add", "cat"]))
        src = draw(st.integers(0, len(widths) - 1))
        if kind == "conv":
            ci = widths[src]
            g = draw(st.sampled_from([g for g in (1, 2, ci) if ci % g == 0]))
            co = draw(st.integers(1, 4)) * g if g != ci else ci * draw(st.integers(1, 2))
            spec.append(("conv", src, ci, co, draw(st.sampled_from([1, 3])), g))
            widths.append(co)
        elif kind == "bn":
            spec.append(("bn", src, widths[src]))
            widths.append(widths[src])
        elif kind == "relu":
            spec.append(("relu", src))
            widths.append(widths[src])
        elif kind == "add":
            same = [i for i, w in enumerate(widths) if w == widths[src]]
            spec.append(("add", src, draw(st.sampled_from(same))))
            widths.append(widths[src])
        else:
            other = draw(st.integers(0, len(widths) - 1))
            spec.append(("cat", src, other))
            widths.append(widths[src] + widths[other])
    return spec, cin


@given(
    dag=dags(),
    ratio=st.sampled_from([0.2, 0.5, 0.7]),
    scope=st.sampled_from(["layer", "global"]),
    seed=st.integers(0, 99),
)
def test_random_dag_pruned_equals_masked_original(
    dag: tuple[list[tuple[Any, ...]], int], ratio: float, scope: str, seed: int
) -> None:
    spec, cin = dag
    torch.manual_seed(seed)
    model = RandomDAG(spec, cin)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            with torch.no_grad():
                m.weight.normal_()
                m.bias.normal_()
    model.eval()
    orig = copy.deepcopy(model)
    x = torch.randn(2, cin, 5, 5)
    res = pk.prune_channels(model, x, ratio=ratio, scope=scope, criterion="random", check=False)
    for layer in model.layers:
        if isinstance(layer, nn.Conv2d):
            assert layer.weight.shape[0] == layer.out_channels
            assert layer.weight.shape[1] * layer.groups == layer.in_channels
    x2 = torch.randn(3, cin, 5, 5)
    if res.plan["entries"]:
        ref = independent_reference(orig, kept_from_plan(res.plan))
    else:
        ref = orig
    with torch.no_grad():
        torch.testing.assert_close(model(x2), ref(x2), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@settings(max_examples=150)
@given(dag=dags(), ratio=st.sampled_from([0.3, 0.6]), seed=st.integers(0, 999))
def test_random_dag_many_examples_with_check(
    dag: tuple[list[tuple[Any, ...]], int], ratio: float, seed: int
) -> None:
    """More DAGs; here prune_channels' own check is on, so it must never raise on a valid DAG."""
    spec, cin = dag
    torch.manual_seed(seed)
    model = RandomDAG(spec, cin).eval()
    orig = copy.deepcopy(model)
    x = torch.randn(2, cin, 5, 5)
    res = pk.prune_channels(model, x, ratio=ratio, criterion="l1")
    assert not any("kept at full width" in s.reason for s in res.skipped)
    ref = independent_reference(orig, kept_from_plan(res.plan)) if res.plan["entries"] else orig
    x2 = torch.randn(2, cin, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x2), ref(x2), atol=1e-4, rtol=1e-4)


def test_on_unknown_raise_names_op_and_module_and_ignore_is_the_way_out() -> None:
    from prunekit.errors import UnsupportedOpError

    m = WithOpaque()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(UnsupportedOpError, match=r"Opaque.*exclude="):
        pk.prune_channels(m, torch.randn(2, 3), ratio=0.5, on_unknown="raise")
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = pk.prune_channels(m, torch.randn(2, 3), ratio=0.5, on_unknown="raise", exclude=[m])
    assert res.params_after <= res.params_before


def test_gqa_query_heads_mode_keeps_kv_heads() -> None:
    m = Heads(heads=8, kv=2, gqa_kwarg=True)
    m.num_key_value_groups = 4  # stored ratio, as in transformers' LLaMA attention
    orig = copy.deepcopy(m)
    x = torch.randn(2, 5, 8)
    res = pk.prune_channels(m, x, ratio=0.5, gqa="query_heads")
    assert m.k.out_features == 8 and m.q.out_features == 16 and m.num_key_value_groups == 2
    kept_heads = sorted(
        {i // 4 for i in next(e["kept"] for e in res.plan["entries"] if e["fqn"] == "q.weight")}
    )
    assert len(kept_heads) == 4 and sum(h < 4 for h in kept_heads) == 2  # two query heads left in each group
    ref = independent_reference(orig, kept_from_plan(res.plan))
    torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-4)
    m2 = Heads(heads=8, kv=2, gqa_kwarg=False)  # explicit KV repeat: whole KV groups instead
    pk.prune_channels(m2, x, ratio=0.5, gqa="query_heads")
    assert m2.k.out_features == 4
