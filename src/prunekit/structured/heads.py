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
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from prunekit.core import UNSET, ConfigMixin, is_glob, matches, merge_config, register_config
from prunekit.errors import ConfigError, PlanError, UnknownModuleError
from prunekit.graph import Group, build_graph, record


@register_config
@dataclass(frozen=True, kw_only=True)
class HeadPruneConfig(ConfigMixin):
    """Every option of :func:`prune_heads` (the model and example inputs are arguments).

    Attributes:
        heads: attention module name or glob -> head indices to remove, e.g.
            ``{"encoder.layer.0.attention": [3, 5], "encoder.layer.*.attention.self": [0]}``; a glob names
            every matching module that holds a head group (an exact name must hold one).
        gqa: ``"kv_groups"`` (a unit is a KV group with its query heads) or ``"query_heads"``, as in
            :func:`prunekit.prune_channels`.
    """

    heads: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    gqa: Literal["kv_groups", "query_heads"] = "kv_groups"

    def __post_init__(self) -> None:
        if not isinstance(self.heads, Mapping):
            raise ConfigError(f"heads must map module names to head indices; got {type(self.heads).__name__}")
        clean: dict[str, tuple[int, ...]] = {}
        for name, idx in self.heads.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"heads: keys are attention module names or globs; got {name!r}")
            values = [idx] if isinstance(idx, int) else list(idx) if isinstance(idx, Iterable) else None
            if values is None or any(isinstance(h, bool) or not isinstance(h, int) or h < 0 for h in values):
                raise ConfigError(f"heads[{name!r}]: head indices are integers >= 0; got {idx!r}")
            clean[name] = tuple(sorted(set(values)))
        object.__setattr__(self, "heads", clean)
        if self.gqa not in ("kv_groups", "query_heads"):
            raise ConfigError(f"gqa must be 'kv_groups' or 'query_heads', got {self.gqa!r}")


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
    heads: Mapping[str, Iterable[int]] = UNSET,
    *,
    gqa: str = UNSET,
    config: HeadPruneConfig | None = None,
) -> Any:
    """Physically remove the named attention heads of ``model`` in place.

    Args:
        model: the model (a Hugging Face transformer, ``nn.MultiheadAttention`` users, ...).
        example_inputs: one batch of inputs, for tracing.
        heads: attention module name (or glob) -> head indices, e.g. ``{"encoder.layer.0.attention": [3, 5]}``.
        gqa: ``"kv_groups"`` or ``"query_heads"``, as in :func:`prunekit.prune_channels`.
        config: a :class:`HeadPruneConfig` holding both options; a keyword that sets the same option
            raises ``ConfigError``.

    Returns:
        The :class:`~prunekit.structured.api.ChannelPruneResult`. Only heads projected by ``nn.Linear``
        (or GPT-2 ``Conv1D``) layers can be named (Hugging Face attention modules).

    Raises:
        UnknownModuleError: a name is not a module, or holds no head group (a glob: matches none).
        ConfigError: a head index is out of range.
        PlanError: all heads of a module would go. The model is then left untouched.

    Example::

        model = transformers.AutoModel.from_pretrained("all-MiniLM-L6-v2")
        pk.prune_heads(model, tok("a b c", return_tensors="pt").data, {"encoder.layer.0.attention": [3, 5]})
        model.encoder.layer[0].attention.self.num_attention_heads      # 10
    """
    from prunekit.structured.api import prune_channels

    cfg = merge_config(HeadPruneConfig, config, verb="prune_heads", heads=heads, gqa=gqa)
    gqa = cfg.gqa
    if not cfg.heads or not any(cfg.heads.values()):
        raise ConfigError("heads= names no head to remove, e.g. {'encoder.layer.0.attention': [3, 5]}")
    wanted = _expand(model, example_inputs, cfg.heads, gqa)
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
        gqa=gqa,
    )


def _expand(
    model: nn.Module, example_inputs: Any, heads: Mapping[str, Sequence[int]], gqa: str
) -> dict[str, list[int]]:
    """Exact names as given; each glob replaced by the matching modules that hold a head group."""
    out: dict[str, list[int]] = {}
    globs = {k: v for k, v in heads.items() if is_glob(k)}
    for k, v in heads.items():
        if not is_glob(k):
            out.setdefault(k, [])
            out[k] = sorted(set(out[k]) | set(v))
    if not globs:
        return out
    names = [n for n, _ in model.named_modules() if n]
    candidates = {n: sorted(set(v)) for k, v in globs.items() for n in names if matches(n, None, k)}
    probe = NamedHeads({n: [] for n in candidates})
    _score_only(model, example_inputs, probe, gqa)
    seen: set[str] = set(_query_module(model, n) for n in out if n in probe.matched)
    for k, v in globs.items():
        hits = [n for n in names if matches(n, None, k) and n in probe.matched]
        if not hits:
            raise UnknownModuleError(f"heads: the glob {k!r} matches no attention module with heads")
        for n in hits:  # a glob matching a module and its parent names the same heads once
            q = _query_module(model, n)
            if q not in seen:
                seen.add(q)
                out[n] = sorted(set(out.get(n, [])) | set(v))
    return out


def _score_only(model: nn.Module, example_inputs: Any, crit: NamedHeads, gqa: str) -> None:
    graph = build_graph(record(model, example_inputs), prune_heads=True, gqa=gqa)
    params = dict(model.named_parameters())
    for g in graph.groups:
        crit.score(g, params, {})


__all__ = ["HeadPruneConfig", "NamedHeads", "prune_heads"]
