"""Sensitivity per attention head, found through the structured engine's dependency graph.

No per-model rules: the model is traced once on the first validation batch and
:func:`prunekit.graph.build.build_graph` groups every slice that belongs to one head (q/k/v rows and
biases, the output projection's columns, per-head bias tables; a whole KV group with its query
heads under grouped-query attention). Groups whose units span several indices (``kind="multi"``)
are heads. For each head, its slices are zeroed in place, the loss is measured, and the touched
tensors are copied back bit for bit::

    for group in head_groups:                 # one attention block at a time
        saved = [t.clone() for t in group_tensors]   # bounded: one block, never a model copy
        for head in range(group.n_units):
            zero(head's slices); loss[head] = evaluate(model, batches); restore(saved)

Each head is one row of the :class:`~prunekit.analysis.sweep.SensitivityResult`, named
``<attention module>/head<i>`` (e.g. ``encoder.layer.0.attention/head3``; ``.../kvgroup<i>`` for a
KV head with its query heads under grouped-query attention), with a single ratio 1.0 (the whole
head removed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import UnknownModuleError


def _common_module(names: Sequence[str]) -> str:
    """Longest common dotted module prefix of parameter names (``""`` for the root)."""
    parts = [n.split(".")[:-1] for n in names]
    prefix = os.path.commonprefix(parts) if parts else []
    return ".".join(prefix)


def head_units(
    model: nn.Module, example_inputs: Any
) -> list[tuple[str, str, list[list[tuple[str, int, np.ndarray]]]]]:
    """Attention heads of ``model`` from the dependency graph.

    Returns:
        One ``(module_name, unit_kind, heads)`` per head group: ``unit_kind`` is ``"head"``, or
        ``"kvgroup"`` under grouped-query attention (a KV head with its query heads); ``heads[u]``
        lists ``(tensor fqn, dim, indices)`` slices that removing unit ``u`` zeroes.
    """
    from prunekit.graph import build_graph, record

    graph = build_graph(record(model, example_inputs), prune_heads=True)
    out: list[tuple[str, str, list[list[tuple[str, int, np.ndarray]]]]] = []
    for g in graph.groups:
        if g.kind != "multi":
            continue
        heads = [
            [(m.name, m.dim, np.flatnonzero(m.units == u)) for m in g.members if (m.units == u).any()]
            for u in range(g.n_units)
        ]
        # grouped-query attention: a unit is one KV head with all its query heads (more q rows than k rows)
        gqa = len({len(idx) for _, _, idx in heads[0]}) > 1
        out.append((_common_module([m.name for m in g.members]), "kvgroup" if gqa else "head", heads))
    names = [n for n, _, _ in out]
    return [
        (name if names.count(name) == 1 else f"{name}[{i}]", unit, heads)
        for i, (name, unit, heads) in enumerate(out)
    ]


def _zero(t: torch.Tensor, dim: int, idx: np.ndarray) -> None:
    t.index_fill_(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device), 0)


def analyse_heads(
    model: nn.Module,
    batches: Sequence[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Any],
    metric: Callable[[Any, Any], Any] | None,
    *,
    estimate: bool,
    include: Sequence[Any] | None,
    exclude: Sequence[Any] | None,
    progress: bool,
) -> tuple[list[Any], list[tuple[float, float]]]:
    """Measure every head (see the module docstring); the model ends bit-identical.

    Returns:
        ``(rows, estimates)``: one :class:`~prunekit.analysis.sweep.LayerSensitivity` per head and
        its ``(taylor, fisher)`` one-pass estimates (zeros when ``estimate`` is False).
    """
    from tqdm.auto import tqdm

    from prunekit.analysis.estimates import grad_stats
    from prunekit.analysis.result import LayerSensitivity
    from prunekit.core import evaluate, loss_and_metric, matches, select_modules

    modules = dict(model.named_modules())
    select_modules(model, include, what="include")  # raises for names/globs that match nothing
    select_modules(model, exclude, what="exclude")
    groups = head_units(model, batches[0][0])

    def chosen(name: str) -> bool:
        mod = modules.get(name.split("[", 1)[0], model)
        if include is not None and not any(matches(name, mod, s) for s in include):
            return False
        return not any(matches(name, mod, s) for s in exclude or [])

    groups = [g for g in groups if chosen(g[0])]
    if not groups:
        raise UnknownModuleError(
            f"no attention heads found in {type(model).__name__} (or none selected by include=/exclude=): "
            "the dependency graph has no group of whole heads. Use granularity='channel' or 'layer'"
        )
    names = sorted({fqn for _, _, heads in groups for head in heads for fqn, _, _ in head})
    from prunekit.structured import get_tensor

    tensors = {n: get_tensor(model, n) for n in names}
    grads: dict[str, torch.Tensor] = {}
    fishers: dict[str, torch.Tensor] = {}
    if estimate:
        params = [n for n in names if isinstance(tensors[n], nn.Parameter)]
        g_list, f_list = grad_stats(model, [tensors[n] for n in params], batches, loss_fn)
        grads, fishers = dict(zip(params, g_list, strict=True)), dict(zip(params, f_list, strict=True))

    rows: list[Any] = []
    ests: list[tuple[float, float]] = []
    for mod_name, unit_kind, heads in tqdm(
        groups, desc="head sensitivity", unit="block", disable=not progress
    ):
        touched = sorted({fqn for head in heads for fqn, _, _ in head})
        with torch.no_grad():
            saved = {n: tensors[n].detach().clone() for n in touched}
        kind = type(modules.get(mod_name.split("[", 1)[0], model)).__name__
        try:
            for u, head in enumerate(heads):
                with torch.no_grad():
                    for fqn, dim, idx in head:
                        _zero(tensors[fqn].data, dim, idx)
                loss, met = loss_and_metric(evaluate(model, batches, loss_fn, metric=metric))
                with torch.no_grad():
                    for n in touched:
                        tensors[n].data.copy_(saved[n])
                taylor = fisher = 0.0
                numel = 0
                for fqn, dim, idx in head:
                    t = saved[fqn]
                    sl = t.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device)).float()
                    if isinstance(tensors[fqn], nn.Parameter):
                        numel += sl.numel()
                    if fqn in grads:
                        ix = torch.as_tensor(idx, dtype=torch.long, device=t.device)
                        taylor += float((grads[fqn].index_select(dim, ix) * sl).abs().sum())
                        fisher += float((0.5 * fishers[fqn].index_select(dim, ix) * sl.square()).sum())
                rows.append(
                    LayerSensitivity(
                        name=f"{mod_name}/{unit_kind}{u}" if mod_name else f"{unit_kind}{u}",
                        kind=kind,
                        numel=numel,
                        units=len(heads),
                        macs=0,
                        ratios=(1.0,),
                        loss=(loss,),
                        metric=(met,) if met is not None else None,
                        taylor=(taylor,) if estimate else None,
                        fisher=(fisher,) if estimate else None,
                    )
                )
                ests.append((taylor, fisher))
        finally:
            with torch.no_grad():
                for n in touched:
                    tensors[n].data.copy_(saved[n])
    return rows, ests


__all__ = ["analyse_heads", "head_units"]
