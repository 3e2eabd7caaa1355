"""Unit groups of transformer blocks (MLP channels, attention heads / KV groups) and a global budget.

A *unit group* is one coupled group of the dependency graph that lives inside one block and is read
by one consuming Linear of that block (MLP: the down-projection; heads: the output projection)::

    group (graph)  ──►  UnitGroup(block, kind, producer, consumer, columns -> unit, cost per unit)

:func:`allocate` shares a global target (a fraction of the blocks' parameters or per-token Linear
MACs) between all unit groups: units are taken in increasing order of *estimated output error per
unit of cost* (the error of a unit relative to the energy of its block's input stream, so layers
compare), in chunks of ``round_to`` for MLP channels, until the target is met as closely as the chunk
sizes allow. Every group keeps at least ``1 - max_ratio`` of its units.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from prunekit.errors import PlanError
from prunekit.graph import DependencyGraph

Kind = Literal["mlp", "heads"]


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """One prunable group inside a block.

    Attributes:
        gid: Group index in the dependency graph.
        block: Index of the block.
        kind: ``"mlp"`` (channels) or ``"heads"`` (heads or KV groups).
        producer: Module whose output rows are the units (the key of ``prune_channels(ratio={...})``).
        consumer: Module whose input columns are the units (compensated).
        columns: ``(in,)`` unit of every input column of the consumer, ``-1`` outside the group.
        n_units: Number of units.
        params: Parameters per unit (every member tensor of the group).
        macs: Per-token Linear MACs per unit (weight members only).
    """

    gid: int
    block: int
    kind: Kind
    producer: str
    consumer: str
    columns: np.ndarray
    n_units: int
    params: int
    macs: int

    def column_mask(self, units: Sequence[int] | np.ndarray) -> torch.Tensor:
        """``(in,)`` bool: the consumer columns of ``units``."""
        return torch.from_numpy(np.isin(self.columns, np.asarray(units, dtype=np.int64)))

    def unit_sums(self, per_column: torch.Tensor) -> np.ndarray:
        """Sum a per-column value into units, ``(n_units,)``."""
        vals = per_column.detach().double().cpu().numpy()
        sel = self.columns >= 0
        return np.bincount(self.columns[sel], weights=vals[sel], minlength=self.n_units)


def unit_groups(
    graph: DependencyGraph,
    blocks_name: str,
    n_blocks: int,
    linear_names: set[str],
    what: Sequence[str],
) -> list[UnitGroup]:
    """The groups of ``graph`` living inside one block, read by exactly one Linear of that block."""
    params = {n: tuple(v) for n, v in _param_shapes(graph).items()}
    out: list[UnitGroup] = []
    prefix = blocks_name + "." if blocks_name else ""
    for g in graph.groups:
        blocks = set()
        for m in g.members:
            rest = m.name[len(prefix) :] if m.name.startswith(prefix) else ""
            head = rest.split(".", 1)[0]
            blocks.add(int(head) if head.isdigit() and int(head) < n_blocks else -1)
        if len(blocks) != 1 or -1 in blocks:
            continue
        kind: Kind = "heads" if g.kind == "multi" else "mlp"
        if kind not in what:
            continue
        readers = [
            m
            for m in g.members
            if m.dim == 1 and m.name.endswith(".weight") and m.name[: -len(".weight")] in linear_names
        ]
        producers = [
            m
            for m in g.members
            if m.dim == 0 and m.name.endswith(".weight") and m.name[: -len(".weight")] in linear_names
        ]
        if len(readers) != 1 or not producers:
            continue
        n_params = 0
        n_macs = 0
        for m in g.members:
            shape = params.get(m.name)
            if shape is None:
                continue
            per_index = math.prod(shape) // shape[m.dim]
            count = int((m.units == 0).sum())
            n_params += per_index * count
            if m.name.endswith(".weight") and len(shape) == 2:
                n_macs += per_index * count
        out.append(
            UnitGroup(
                gid=g.gid,
                block=blocks.pop(),
                kind=kind,
                producer=producers[0].name[: -len(".weight")],
                consumer=readers[0].name[: -len(".weight")],
                columns=np.asarray(readers[0].units, dtype=np.int64),
                n_units=g.n_units,
                params=n_params,
                macs=n_macs,
            )
        )
    return out


def _param_shapes(graph: DependencyGraph) -> dict[str, torch.Size]:
    trace = graph.trace
    return {n: torch.Size(trace.values[v].shape) for n, v in trace.param_values.items()}


def ratio_counts(
    groups: Sequence[UnitGroup], ratio: Mapping[str, float], round_to: int | None
) -> dict[int, int]:
    """Units to remove per group for a per-kind ratio (``floor(r · n)``, kept count a multiple of ``round_to``)."""
    out: dict[int, int] = {}
    for g in groups:
        r = float(ratio.get(g.kind, 0.0))
        removed = int(math.floor(r * g.n_units + 1e-9))
        if round_to and g.kind == "mlp" and g.n_units > round_to:
            keep = max(round_to, int(math.ceil((g.n_units - removed) / round_to)) * round_to)
            removed = g.n_units - min(g.n_units, keep)
        if removed >= g.n_units:
            raise PlanError(
                f"ratio {r} would remove all {g.n_units} units of {g.producer} ({g.kind}); lower the ratio"
            )
        out[g.gid] = removed
    return out


def allocate(
    groups: Sequence[UnitGroup],
    errors: Mapping[int, np.ndarray],
    target: float,
    *,
    metric: Literal["params", "macs"] = "params",
    total: int,
    round_to: int | None = None,
    max_ratio: float = 0.9,
) -> dict[int, int]:
    """Units to remove per group so that ``target · total`` of the cost goes, cheapest error first.

    Args:
        groups: the unit groups.
        errors: ``gid -> (n_units,)`` estimated (normalised) output error of removing each unit.
        target: fraction of ``total`` to remove, in (0, 1).
        metric: ``"params"`` or ``"macs"`` (per-unit cost from :class:`UnitGroup`).
        total: the cost the fraction refers to (e.g. all parameters of the blocks).
        round_to: MLP groups keep a multiple of this many channels.
        max_ratio: at most this fraction of any group's units goes.

    Returns:
        ``gid -> number of units to remove``.

    Raises:
        PlanError: the target cannot be met within ``max_ratio`` and ``round_to``.
    """
    goal = target * total
    heap: list[tuple[float, int, int]] = []
    chunks: dict[int, list[tuple[int, float]]] = {}  # gid -> [(units, error)] in removal order
    cost = {g.gid: float(g.params if metric == "params" else g.macs) for g in groups}
    for g in groups:
        err = np.sort(np.asarray(errors[g.gid], dtype=np.float64))
        limit = min(g.n_units - 1, int(math.floor(max_ratio * g.n_units)))
        sizes: list[int] = []
        step = round_to if (round_to and g.kind == "mlp" and g.n_units > round_to) else 1
        first = g.n_units % step if step > 1 else 0
        done = 0
        while True:
            size = first if (first and not sizes) else step
            if done + size > limit or size == 0:
                break
            sizes.append(size)
            done += size
        lst: list[tuple[int, float]] = []
        pos = 0
        for size in sizes:
            lst.append((size, float(err[pos : pos + size].sum())))
            pos += size
        chunks[g.gid] = lst
        if lst and cost[g.gid] > 0:
            heapq.heappush(heap, (lst[0][1] / (lst[0][0] * cost[g.gid]), g.gid, 0))
    capacity = sum(sum(s for s, _ in lst) * cost[gid] for gid, lst in chunks.items())
    if capacity < goal * 0.99:
        raise PlanError(
            f"cannot remove {target:.1%} of the {metric} ({goal:,.0f} of {total:,}): the prunable units "
            f"(MLP channels / heads, at most {max_ratio:.0%} of each group) hold only {capacity:,.0f}. "
            "Lower the budget, add 'heads' or 'mlp' to what=, or raise max_layer_ratio"
        )
    removed = dict.fromkeys(chunks, 0)
    taken = dict.fromkeys(chunks, 0)  # chunks taken per group (always a prefix)
    spent = 0.0
    while heap:
        _, gid, i = heapq.heappop(heap)
        size = chunks[gid][i][0]
        c = size * cost[gid]
        if spent + c > goal and spent + c - goal >= goal - spent:
            continue  # overshoots more than it fills: smaller units elsewhere may fit (group closed)
        removed[gid] += size
        taken[gid] += 1
        spent += c
        if spent >= goal:
            break
        if i + 1 < len(chunks[gid]):
            nxt = chunks[gid][i + 1]
            heapq.heappush(heap, (nxt[1] / (nxt[0] * cost[gid]), gid, i + 1))
    # closest fit: take the next chunk of the group that brings the total nearest the goal, while one does
    while True:
        best: tuple[float, int] | None = None
        for gid, lst in chunks.items():
            if taken[gid] < len(lst):
                gap = abs(goal - spent - lst[taken[gid]][0] * cost[gid])
                if gap < abs(goal - spent) and (best is None or gap < best[0]):
                    best = (gap, gid)
        if best is None:
            return removed
        gid = best[1]
        size = chunks[gid][taken[gid]][0]
        removed[gid] += size
        taken[gid] += 1
        spent += size * cost[gid]


__all__ = ["Kind", "UnitGroup", "allocate", "ratio_counts", "unit_groups"]
