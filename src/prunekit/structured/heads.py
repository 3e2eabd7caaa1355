"""Remove attention heads by name: ``prune_heads(model, example_inputs, {"encoder.layer.0.attention": [3, 5]})``.

The heads go through the dependency graph like any channel group, so every coupled slice goes with
them (query/key/value rows, the output projection's columns, biases) and the module attributes
(``num_attention_heads``, ``all_head_size``, ...) are updated; the plan is recorded, so ``pk.save`` /
``pk.load`` replay it. A head is a unit of the attention module's head group, numbered by its position
in the query projection (for grouped-query attention with ``gqa="kv_groups"`` a unit is a KV group).

The mapping can come from a head-sensitivity ranking (``pk.sensitivity(..., granularity="head")``):
take the heads whose removal hurt least.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, PlanError, UnknownModuleError
from prunekit.graph import Group, build_graph, record


def _head_order(group: Group, prefix: str) -> list[int] | None:
    """Units of ``group`` in head order when it is a head group of module ``prefix``, else None."""
    if group.kind != "multi":
        return None
    for m in group.members:
        if m.dim == 0 and m.name.endswith(".weight") and m.name.startswith(prefix + "."):
            first: dict[int, int] = {}
            for i, u in enumerate(m.units.tolist()):
                if u >= 0 and u not in first:
                    first[u] = i
            if len(first) != group.n_units:
                return None
            return sorted(first, key=lambda u: first[u])
    return None


class NamedHeads:
    """A channel criterion scoring the named heads 0 and every other unit 1 (used by :func:`prune_heads`)."""

    name = "named-heads"
    needs_grad = False

    def __init__(self, heads: Mapping[str, Sequence[int]]) -> None:
        self.heads = {k: sorted(set(int(h) for h in v)) for k, v in heads.items()}
        self.matched: dict[str, int] = {}  # module -> number of heads of its group

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        scores = torch.ones(group.n_units, dtype=torch.float64)
        for prefix, heads in self.heads.items():
            order = _head_order(group, prefix)
            if order is None:
                continue
            bad = [h for h in heads if not 0 <= h < len(order)]
            if bad:
                raise ConfigError(f"{prefix!r} has {len(order)} heads (0..{len(order) - 1}); got heads {bad}")
            if len(heads) >= len(order):
                raise PlanError(f"cannot remove all {len(order)} heads of {prefix!r}; keep at least one")
            self.matched[prefix] = len(order)
            for h in heads:
                scores[order[h]] = 0.0
        return scores


def _query_module(model: nn.Module, prefix: str) -> str:
    """The first Linear under ``prefix`` (the projection whose output rows are the heads)."""
    try:
        root = model.get_submodule(prefix)
    except AttributeError as e:
        raise UnknownModuleError(f"no module {prefix!r} in {type(model).__name__}") from e
    for name, mod in root.named_modules():
        if isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D":
            return f"{prefix}.{name}" if name else prefix
    raise UnknownModuleError(f"{prefix!r} holds no Linear projection; name an attention module")


def prune_heads(
    model: nn.Module,
    example_inputs: Any,
    heads: Mapping[str, Iterable[int]],
    *,
    gqa: str = "kv_groups",
) -> Any:
    """Physically remove the named attention heads of ``model`` in place.

    Args:
        model: the model (a Hugging Face transformer, ``nn.MultiheadAttention`` users, ...).
        example_inputs: one batch of inputs, for tracing.
        heads: attention module name -> head indices, e.g. ``{"encoder.layer.0.attention": [3, 5]}``.
        gqa: ``"kv_groups"`` or ``"query_heads"``, as in :func:`prunekit.prune_channels`.

    Returns:
        The :class:`~prunekit.structured.api.ChannelPruneResult`. Only heads projected by ``nn.Linear``
        (or GPT-2 ``Conv1D``) layers can be named (Hugging Face attention modules).

    Raises:
        UnknownModuleError: a name is not a module, or holds no head group.
        ConfigError: a head index is out of range.
        PlanError: all heads of a module would go. The model is then left untouched.

    Example::

        model = transformers.AutoModel.from_pretrained("all-MiniLM-L6-v2")
        pk.prune_heads(model, tok("a b c", return_tensors="pt").data, {"encoder.layer.0.attention": [3, 5]})
        model.encoder.layer[0].attention.self.num_attention_heads      # 10
    """
    from prunekit.structured.api import prune_channels

    wanted = {str(k): list(v) for k, v in heads.items()}
    if not wanted or not any(wanted.values()):
        raise ConfigError("heads= names no head to remove, e.g. {'encoder.layer.0.attention': [3, 5]}")
    crit = NamedHeads(wanted)
    ratio: dict[str, float] = {}
    # first pass: learn each module's head count without changing the model
    probe = NamedHeads(wanted)
    _score_only(model, example_inputs, probe, gqa)
    missing = [p for p, hs in wanted.items() if hs and p not in probe.matched]
    if missing:
        raise UnknownModuleError(
            f"no attention head group found under {missing}; name the attention module "
            "(e.g. 'encoder.layer.0.attention' or 'model.layers.0.self_attn')"
        )
    for prefix, hs in wanted.items():
        if hs:
            n = probe.matched[prefix]
            ratio[_query_module(model, prefix)] = (len(set(hs)) + 0.5) / n  # floor(r * n) == len(hs)
    return prune_channels(
        model,
        example_inputs,
        ratio=ratio,
        criterion=crit,
        prune_heads=True,
        gqa=gqa,  # type: ignore[arg-type]
    )


def _score_only(model: nn.Module, example_inputs: Any, crit: NamedHeads, gqa: str) -> None:
    graph = build_graph(record(model, example_inputs), prune_heads=True, gqa=gqa)
    params = dict(model.named_parameters())
    for g in graph.groups:
        crit.score(g, params, {})


__all__ = ["NamedHeads", "prune_heads"]
