"""Structured pruning: physically remove channels, neurons and attention heads.

::

    record (1 eager forward)  ->  build_graph (coupled units, groups)  ->  score (criterion)
        ->  select (ratio / target, layer or global scope, round_to)  ->  Plan (data)
        ->  validate + apply (swap tensor.data, set attributes)  ->  verify forward  (restore on failure)

Example:
    >>> import torch, prunekit as pk
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
    ...                         torch.nn.Conv2d(16, 8, 3))
    >>> r = pk.prune_channels(m, torch.randn(1, 3, 8, 8), ratio=0.5)
    >>> m[0].out_channels, m[1].num_features, m[3].in_channels
    (8, 8, 8)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from prunekit.channel_criteria import ChannelCriterion, get_criterion
from prunekit.errors import ConfigError, DataRequiredError, ModuleNotFound, PlanError, UnsupportedOpError
from prunekit.graph import DependencyGraph, Group, build_graph
from prunekit.graph_rules_base import _SIZE_ATTR
from prunekit.metrics import count_macs, count_params
from prunekit.optim_state import reset_grad_accumulators
from prunekit.surgery import AttrUpdate, Plan, PlanEntry, apply, masked_reference, record_plan
from prunekit.trace import Trace, _flatten, as_args, record

logger = logging.getLogger(__name__)

IgnoreSpec = nn.Module | str | type


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChannelPruneConfig:
    """Everything ``prune_channels`` accepts besides the model and inputs.

    Attributes:
        ratio: Fraction of units (channels, neurons, heads) to remove in every group (``scope="layer"``) or
            over all groups (``scope="global"``); in [0, 1). Or a mapping ``{module_name: ratio}`` (layer
            scope): a group takes the largest ratio of the modules whose output channels it holds; groups
            of modules not in the mapping are kept.
        target_macs: Instead of ``ratio``: keep this fraction of the (estimated) MACs, in (0, 1].
        target_params: Instead of ``ratio``: keep this fraction of the parameters, in (0, 1].
        criterion: ``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"``, ``"fpgm"``, ``"random"`` or a
            :class:`prunekit.channel_criteria.ChannelCriterion` object.
        scope: ``"layer"`` (same ratio per group) or ``"global"`` (normalised scores ranked together).
        round_to: Keep a multiple of this many channels in every channel group (e.g. 8).
        prune_heads: Remove whole attention heads / KV groups; if False attention widths are kept.
        prune_normalized: Also prune dims normalised by LayerNorm/RMSNorm or averaged by mean/var/std (e.g. the
            transformer hidden size). Those statistics then run over the kept channels only, which is not
            the same as zeroing: expect a larger change than for other channels (the check models it).
        on_unknown: ``"keep"`` (default): channels touched by an op the graph cannot see through (or a custom
            autograd Function) are kept, with one warning; ``"raise"``: raise ``UnsupportedOpError`` instead.
        gqa: Grouped-query attention units: ``"kv_groups"`` (a KV head with all its query heads) or
            ``"query_heads"`` (KV heads kept, the same query position removed in every group; needs SDPA
            ``enable_gqa``, otherwise whole KV groups are used).
    """

    ratio: float | Mapping[str, float] = 0.5
    target_macs: float | None = None
    target_params: float | None = None
    criterion: str | ChannelCriterion = "l2"
    scope: Literal["layer", "global"] = "layer"
    round_to: int | None = None
    prune_heads: bool = True
    prune_normalized: bool = False
    on_unknown: Literal["keep", "raise"] = "keep"
    gqa: Literal["kv_groups", "query_heads"] = "kv_groups"

    def __post_init__(self) -> None:
        ratios = list(self.ratio.values()) if isinstance(self.ratio, Mapping) else [self.ratio]
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
                raise ConfigError(
                    f"ratio must be in [0, 1) (or a mapping of module name to such a ratio), got {r!r}"
                )
        if isinstance(self.ratio, Mapping) and (
            self.scope != "layer" or self.target_macs or self.target_params
        ):
            raise ConfigError(
                "a per-module ratio mapping works with scope='layer' and no target_macs/target_params"
            )
        if self.target_macs is not None and self.target_params is not None:
            raise ConfigError("give at most one of target_macs and target_params")
        for name in ("target_macs", "target_params"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0):
                raise ConfigError(f"{name} is the fraction to keep, in (0, 1]; got {v!r}")
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if self.gqa not in ("kv_groups", "query_heads"):
            raise ConfigError(f"gqa must be 'kv_groups' or 'query_heads', got {self.gqa!r}")
        if self.on_unknown not in ("keep", "raise"):
            raise ConfigError(f"on_unknown must be 'keep' or 'raise', got {self.on_unknown!r}")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ConfigError(f"round_to must be a positive int or None, got {self.round_to!r}")
        get_criterion(self.criterion)


@dataclasses.dataclass(frozen=True)
class GroupChange:
    """Width of one coupled group before and after."""

    name: str
    kind: str
    before: int
    after: int
    members: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Something kept at full width, and why."""

    where: str
    reason: str


@dataclasses.dataclass
class ChannelPruneResult:
    """What ``prune_channels`` did.

    Attributes:
        plan: The applied plan (JSON-able dict; also appended to ``model._prunekit_plan``).
        groups: Every prunable group with its width before and after.
        skipped: Modules and ops kept at full width, with the reason.
        params_before: Parameter count before.
        params_after: Parameter count after.
        macs_before: MACs before, estimated from the traced conv/linear/matmul shapes.
        macs_after: MACs after (same estimate).
        seconds: Wall time of the whole call.
    """

    plan: dict[str, Any]
    groups: list[GroupChange]
    skipped: list[Skipped]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-able)."""
        return {
            "plan": self.plan,
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        pruned = [g for g in self.groups if g.after < g.before]
        lines = [
            f"prune_channels: {len(pruned)}/{len(self.groups)} groups pruned in {self.seconds:.2f} s",
            f"  params {self.params_before:,} -> {self.params_after:,} ({self.params_after / max(self.params_before, 1):.1%})",
            f"  MACs   {self.macs_before:,} -> {self.macs_after:,} ({self.macs_after / max(self.macs_before, 1):.1%})",
        ]
        for g in pruned[:40]:
            lines.append(f"  {g.name:<50} {g.before:>6} -> {g.after:<6} ({g.kind})")
        if len(pruned) > 40:
            lines.append(f"  ... {len(pruned) - 40} more groups")
        for s in self.skipped[:40]:
            lines.append(f"  kept: {s.where}: {s.reason}")
        return "\n".join(lines)


def _match_modules(model: nn.Module, ignore: Iterable[IgnoreSpec] | IgnoreSpec | None) -> set[str]:
    """Names of the modules matched by ``ignore`` (objects, name globs, types)."""
    if ignore is None:
        return set()
    if isinstance(ignore, (nn.Module, str, type)):
        ignore = [ignore]
    names = dict(model.named_modules())
    by_id = {id(m): n for n, m in names.items()}
    matched: set[str] = set()
    for spec in ignore:
        if isinstance(spec, nn.Module):
            if id(spec) not in by_id:
                raise ModuleNotFound(
                    f"ignore= has a {type(spec).__name__} module that is not part of the model; pass a submodule of the model, its name, or a type"
                )
            matched.add(by_id[id(spec)])
        elif isinstance(spec, str):
            hits = [n for n in names if n and fnmatch.fnmatchcase(n, spec)]
            if not hits:
                sample = ", ".join(n for n in list(names)[1:8])
                raise ModuleNotFound(
                    f"ignore= pattern {spec!r} matches no module; module names look like: {sample}"
                )
            matched.update(hits)
        elif isinstance(spec, type):
            hits = [n for n, m in names.items() if isinstance(m, spec)]
            if not hits:
                raise ModuleNotFound(f"ignore= type {spec.__name__} matches no module of the model")
            matched.update(hits)
        else:
            raise ConfigError(
                f"ignore= entries must be modules, name globs or types, got {type(spec).__name__}"
            )
    return matched


def _resolve_ignore(
    model: nn.Module, ignore: Iterable[IgnoreSpec] | IgnoreSpec | None, all_dims: bool = False
) -> dict[str, list[int]]:
    """Parameter name -> dims kept at full width for the modules matched by ``ignore``."""
    matched = _match_modules(model, ignore)
    names = dict(model.named_modules())
    frozen: dict[str, list[int]] = {}
    for prefix in matched:
        for sub, m in names[prefix].named_modules():
            full = f"{prefix}.{sub}".strip(".") if sub else prefix
            for pname, p in m.named_parameters(recurse=False):
                dims = list(range(p.dim())) if all_dims else [1] if type(m).__name__ == "Conv1D" else [0]
                frozen[f"{full}.{pname}".lstrip(".")] = [d for d in dims if d < p.dim()]
    # map to canonical names (tied parameters)
    canon: dict[int, str] = {}
    for n, p in model.named_parameters():
        canon.setdefault(id(p), n)
    all_params = dict(model.named_parameters(remove_duplicate=False))
    return {canon.get(id(all_params[n]), n): d for n, d in frozen.items() if n in all_params}


def _compute_grads(
    model: nn.Module, data: Iterable[Any], loss_fn: Callable[..., torch.Tensor], max_batches: int = 8
) -> None:
    model.zero_grad(set_to_none=True)
    for i, batch in enumerate(data):
        if i >= max_batches:
            break
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = batch
            args, kwargs = as_args(x)
            loss = loss_fn(model(*args, **kwargs), y)
        else:
            args, kwargs = as_args(batch)
            loss = loss_fn(model(*args, **kwargs))
        loss.backward()  # type: ignore[no-untyped-call]


class _Selector:
    """Chooses units to remove and estimates params/MACs of a choice (used for target search)."""

    def __init__(self, graph: DependencyGraph, scores: list[np.ndarray], round_to: int | None) -> None:
        self.g = graph
        self.scores = scores
        self.round_to = round_to
        self.order = [np.argsort(s, kind="stable") for s in scores]
        n_labels = int(graph.labels.max()) + 1 if len(graph.labels) else 1
        self.n_labels = n_labels
        self.cost_labels = [([graph.labels[f] for f in c.factors], c.macs) for c in graph.costs]
        self.param_labels: dict[int, list[np.ndarray]] = defaultdict(list)
        for vid, _d, start, size in graph.param_dims:
            if graph.trace.values[vid].kind == "param":
                self.param_labels[vid].append(graph.labels[start : start + size])
        norm = []
        for s in scores:
            m = float(np.mean(s)) if len(s) else 1.0
            norm.append(s / m if m > 0 else np.ones_like(s))
        self.norm = norm

    def _round(self, keep: int, n: int, grp: Group) -> int:
        keep = max(1, min(n, keep))
        r = self.round_to
        if r and grp.kind == "channel" and n > r:
            keep = min(n, max(r, int(math.ceil(keep / r)) * r))
        return keep

    def select(self, ratio: float | Mapping[int, float], scope: str) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        groups = self.g.groups
        if scope == "layer" or isinstance(ratio, Mapping):
            for g in groups:
                r = ratio.get(g.gid, 0.0) if isinstance(ratio, Mapping) else ratio
                keep = self._round(g.n_units - int(math.floor(r * g.n_units)), g.n_units, g)
                if keep < g.n_units:
                    out[g.gid] = self.order[g.gid][: g.n_units - keep]
            return out
        if not groups:
            return out
        allv = np.concatenate(self.norm)
        gid = np.concatenate([np.full(g.n_units, g.gid) for g in groups])
        count = int(math.floor(ratio * len(allv)))
        if count == 0:
            return out
        lowest = np.argsort(allv, kind="stable")[:count]
        per = np.bincount(gid[lowest], minlength=len(groups))
        for g in groups:
            keep = self._round(g.n_units - int(per[g.gid]), g.n_units, g)
            if keep < g.n_units:
                out[g.gid] = self.order[g.gid][: g.n_units - keep]
        return out

    def removed_labels(self, removed: Mapping[int, np.ndarray]) -> np.ndarray:
        mask = np.zeros(self.n_labels, dtype=bool)
        for gid, units in removed.items():
            mask[self.g.groups[gid].labels[units]] = True
        return mask

    def cost(self, removed: Mapping[int, np.ndarray]) -> tuple[float, float]:
        mask = self.removed_labels(removed)
        macs = 0.0
        for factors, base in self.cost_labels:
            frac = 1.0
            for lab in factors:
                if len(lab):
                    frac *= 1.0 - float(mask[lab].mean())
            macs += base * frac
        params = 0.0
        for dims in self.param_labels.values():
            params += math.prod(int(len(lab) - mask[lab].sum()) for lab in dims) if dims else 1
        return macs, params


def _make_plan(
    model: nn.Module, graph: DependencyGraph, removed: Mapping[int, np.ndarray], mask: np.ndarray
) -> tuple[Plan, tuple[AttrUpdate, ...]]:
    """The plan (slices + attributes of known module types) and candidate updates of stored sizes."""
    rm: dict[tuple[str, int], np.ndarray] = {}
    sizes: dict[tuple[str, int], int] = {}
    modules = dict(model.named_modules())
    for gid, units in removed.items():
        grp = graph.groups[gid]
        gone = np.zeros(grp.n_units + 1, dtype=bool)  # last slot: unit -1 (index not in any unit)
        gone[units] = True
        for m in grp.members:
            key = (m.name, m.dim)
            hit = gone[np.where(m.units >= 0, m.units, grp.n_units)]
            rm[key] = rm[key] | hit if key in rm else hit
            sizes[key] = m.size
    entries = []
    new_shape: dict[str, list[int]] = {}
    for (name, dim), hit in sorted(rm.items()):
        if not hit.any():
            continue
        kept = tuple(np.flatnonzero(~hit).tolist())
        entries.append(PlanEntry(fqn=name, dim=dim, size=sizes[(name, dim)], kept=kept))
        if name not in new_shape:
            mod, _, attr = name.rpartition(".")
            new_shape[name] = list(getattr(modules[mod], attr).shape)
        new_shape[name][dim] = len(kept)
    attrs: dict[tuple[str, str], AttrUpdate] = {}

    claimed: set[tuple[str, str]] = set()

    def put(module: str, attr: str, new: Any) -> None:
        mod = modules[module]
        old = getattr(mod, attr)
        claimed.add((module, attr))
        if old != new and (module, attr) not in attrs:
            attrs[(module, attr)] = AttrUpdate(module=module, name=attr, old=old, new=new)

    conv_in: dict[str, tuple[int, bool]] = {}
    for c in graph.convs:
        kept_in = int((~mask[graph.labels[c.in_ids]]).sum())
        conv_in[c.module] = (kept_in, c.depthwise)
    canonical = {alias: v.names[0] for v in graph.trace.values for alias in v.names}
    aliases = [a for a, c in canonical.items() if c in new_shape]
    touched = {n.rpartition(".")[0] for n in aliases}
    for mname in sorted(touched):
        mod = modules[mname]

        def shp(attr: str, mname: str = mname, mod: nn.Module = mod) -> list[int] | None:
            key = canonical.get(f"{mname}.{attr}".lstrip("."), "")
            if key in new_shape:
                return new_shape[key]
            t = getattr(mod, attr, None)
            return list(t.shape) if isinstance(t, torch.Tensor) else None

        w = shp("weight")
        if isinstance(mod, nn.Linear) and w is not None:
            put(mname, "in_features", w[1])
            put(mname, "out_features", w[0])
        elif isinstance(mod, nn.modules.conv._ConvTransposeNd) and w is not None:
            put(mname, "in_channels", w[0])
            put(mname, "out_channels", w[1] * mod.groups)
        elif isinstance(mod, nn.modules.conv._ConvNd) and w is not None:
            kin, dw = conv_in.get(mname, (w[1] * mod.groups, False))
            if dw:
                put(mname, "groups", kin)
            put(mname, "in_channels", kin)
            put(mname, "out_channels", w[0])
        elif isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            s = w or shp("running_mean")
            if s is not None:
                put(mname, "num_features", s[0])
        elif isinstance(mod, nn.Embedding) and w is not None:
            put(mname, "embedding_dim", w[1])
            put(mname, "num_embeddings", w[0])
        elif isinstance(mod, nn.LayerNorm) and w is not None:
            put(mname, "normalized_shape", tuple(w))
        elif isinstance(mod, nn.GroupNorm) and w is not None:
            put(mname, "num_channels", w[0])
        elif isinstance(mod, nn.PReLU) and w is not None:
            put(mname, "num_parameters", w[0])
        elif isinstance(mod, nn.MultiheadAttention) and shp("in_proj_weight") is not None:
            e_new = shp("in_proj_weight")[1]  # type: ignore[index]
            put(mname, "embed_dim", e_new)
            put(mname, "kdim", e_new)
            put(mname, "vdim", e_new)
            put(mname, "num_heads", e_new // mod.head_dim)
        elif type(mod).__name__ == "Conv1D" and w is not None:
            if hasattr(mod, "nf"):
                put(mname, "nf", w[1])
            if hasattr(mod, "nx"):
                put(mname, "nx", w[0])
    for gg in graph.gqa_groups:
        new_rep = int((~mask[graph.labels[gg.ids]]).sum()) // gg.kv_heads
        if new_rep != gg.rep and gg.module in modules:
            for attr, val in vars(modules[gg.module]).items():
                if type(val) is int and val == gg.rep and "group" in attr:
                    put(gg.module, attr, new_rep)
    # size literals in reshapes/splits (stored head counts, hidden sizes): candidates only, tried if needed
    extra: dict[tuple[str, str], AttrUpdate | None] = {}
    for ev in graph.events:
        new = int((~mask[graph.labels[ev.ids]]).sum())
        if new == ev.old:
            continue
        for mname, attr in _find_size_attrs(model, ev.module, ev.old):
            akey = (mname, attr)
            if akey in attrs or akey in claimed:
                continue
            prev = extra.get(akey)
            if akey in extra and (prev is None or prev.new != new):
                extra[akey] = None  # two different new values: ambiguous, never set
            else:
                extra[akey] = AttrUpdate(module=mname, name=attr, old=ev.old, new=new)
    cands = tuple(a for a in extra.values() if a is not None)
    return Plan(entries=tuple(entries), attributes=tuple(attrs.values())), cands


def _find_size_attrs(model: nn.Module, module: str, old: int) -> list[tuple[str, str]]:
    parts = module.split(".") if module else []
    for k in range(len(parts), -1, -1):
        name = ".".join(parts[:k])
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        hits = [
            (name, a)
            for a, v in vars(mod).items()
            if not a.startswith("_") and type(v) is int and v == old and _SIZE_ATTR.search(a)
        ]
        if hits:
            return hits
    return []


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | Mapping[str, float] = 0.5,
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    criterion: str | ChannelCriterion = "l2",
    scope: Literal["layer", "global"] = "layer",
    ignore: Iterable[IgnoreSpec] | IgnoreSpec | None = None,
    round_to: int | None = None,
    prune_heads: bool = True,
    prune_normalized: bool = False,
    on_unknown: Literal["keep", "raise"] = "keep",
    gqa: Literal["kv_groups", "query_heads"] = "kv_groups",
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    config: ChannelPruneConfig | None = None,
    check: bool = True,
) -> ChannelPruneResult:
    """Physically remove channels, neurons and attention heads of ``model``, in place.

    The model is traced once on ``example_inputs``; coupled slices (residual adds, concat, depthwise
    convs, heads, tied weights, ...) are removed together, module attributes are updated, and the pruned
    model is run once to check it. On any failure the model is left exactly as it was. Optimizers and EMA
    copies built on the old parameters must be rebuilt (the parameter objects are the same, their
    shapes are not).

    Args:
        model: Any ``nn.Module``.
        example_inputs: A tensor, a tuple of positional inputs, or a dict of keyword inputs.
        ratio: Fraction of units to remove (per group for ``scope="layer"``, overall for ``"global"``).
        target_macs: Keep this fraction of the estimated MACs instead (searches the ratio).
        target_params: Keep this fraction of the parameters instead (searches the ratio).
        criterion: Importance of units: ``"l2"``, ``"l1"``, ``"bn_scale"``, ``"taylor"``, ``"fpgm"``,
            ``"random"`` or a :class:`~prunekit.channel_criteria.ChannelCriterion`.
        scope: ``"layer"`` or ``"global"``.
        ignore: Modules (objects, name globs, or types) whose output width is kept.
        round_to: Keep a multiple of this many channels per channel group.
        prune_heads: Allow removing whole attention heads.
        prune_normalized: Allow removing channels under LayerNorm/RMSNorm (see :class:`ChannelPruneConfig`).
        on_unknown: ``"keep"`` (warn and keep what unknown ops touch) or ``"raise"`` (``UnsupportedOpError``).
        gqa: ``"kv_groups"`` or ``"query_heads"`` (see :class:`ChannelPruneConfig`).
        data: Batches ``(inputs, targets)`` for ``criterion="taylor"`` (at most 8 are used).
        loss_fn: ``loss_fn(outputs, targets)`` for ``criterion="taylor"``.
        config: A :class:`ChannelPruneConfig` instead of the keyword arguments above.
        check: Compare the pruned model's outputs on ``example_inputs`` with the original's with the
            removed slices zeroed (one extra forward); a mismatch restores the model and raises.

    Returns:
        A :class:`ChannelPruneResult` (plan, widths before/after, what was kept and why).

    Raises:
        ConfigError: bad ratio/target/scope/criterion.
        ModuleNotFound: an ``ignore`` entry matches nothing.
        DataRequiredError: ``taylor`` without data and without gradients.
        PlanError: the pruned model could not be built or run (the model is restored).
    """
    t0 = time.perf_counter()
    cfg = config or ChannelPruneConfig(
        ratio=ratio,
        target_macs=target_macs,
        target_params=target_params,
        criterion=criterion,
        scope=scope,
        round_to=round_to,
        prune_heads=prune_heads,
        prune_normalized=prune_normalized,
        on_unknown=on_unknown,
        gqa=gqa,
    )
    crit = get_criterion(cfg.criterion)
    frozen_names = _resolve_ignore(model, ignore)
    ignored = frozenset(_match_modules(model, ignore))
    if getattr(crit, "needs_grad", False) and data is None:
        used = [p for p in model.parameters() if p.requires_grad]
        if not used or any(p.grad is None for p in used):
            raise DataRequiredError(
                f"criterion {getattr(crit, 'name', crit)!r} needs gradients: pass data=[(inputs, targets), ...] and "
                "loss_fn=..., or call loss.backward() before prune_channels"
            )
    if getattr(crit, "needs_grad", False) and data is not None and loss_fn is None:
        raise DataRequiredError("criterion 'taylor' with data= also needs loss_fn=(outputs, targets) -> loss")

    trace = record(model, example_inputs)
    params = dict(model.named_parameters())
    saved_grads: dict[int, torch.Tensor | None] = {}
    grads_ready = False
    if getattr(crit, "needs_grad", False) and data is not None and loss_fn is not None:
        saved_grads = {id(p): p.grad for p in model.parameters()}
        modes = {m: m.training for m in model.modules()}
        try:
            _compute_grads(model, data, loss_fn)
        except Exception:
            _restore_grads(model, saved_grads)
            raise
        finally:
            for m, t in modes.items():
                m.training = t
        grads_ready = True
    auto_kept: list[Skipped] = []
    auto_names: set[str] = set()
    try:
        for _attempt in range(8):
            graph, removed, plan, cands, sel = _plan(model, trace, cfg, crit, frozen_names, params, ignored)
            mask = sel.removed_labels(removed)
            failure, applied = _apply_checked(model, example_inputs, trace, plan, cands, check, graph, mask)
            if failure is None:
                plan = applied
                break
            where, why = failure
            if not where or where in auto_names or where == "<root>":
                raise PlanError(
                    f"the pruned model {why} in module '{where or '<root>'}'; the model was restored unchanged. "
                    f"A size is probably held outside the weights there: pass ignore=['{where or '...'}'] to keep it"
                )
            logger.info("pruning changed module %s in a way it does not support (%s): keeping it", where, why)
            auto_names.add(where)
            auto_kept.append(Skipped(where, f"kept at full width: pruning it made the model fail ({why})"))
            frozen_names = {**frozen_names, **_resolve_ignore(model, [where], all_dims=True)}
        else:
            raise PlanError(
                f"pruning kept failing ({why}); the model was restored unchanged. Use ignore= on '{where}'"
            )
    finally:
        if grads_ready:
            _restore_grads(model, saved_grads)

    groups = []
    for g in graph.groups:
        nrm = len(removed.get(g.gid, ()))
        groups.append(
            GroupChange(
                g.name, g.kind, g.n_units, g.n_units - nrm, tuple(sorted({m.name for m in g.members}))
            )
        )
    skipped = auto_kept + [Skipped(r.where, f"{r.op}: {r.reason}") for r in graph.frozen]
    with_params = {n.rpartition(".")[0] for n in params}
    for mname in sorted(with_params):
        if mname not in trace.modules_run and mname:
            skipped.append(Skipped(mname, "did not run on example_inputs: left unchanged"))
    for s in skipped:
        logger.info("kept %s: %s", s.where, s.reason)
    unknown = sorted({f"'{r.op}' in '{r.where}'" for r in graph.frozen if r.unknown})
    if unknown:
        warnings.warn(
            f"prune_channels cannot see through {', '.join(unknown)}; the channels they touch were kept at full "
            "width (see result.skipped). Pass those modules in ignore=[...] to keep them without this warning",
            UserWarning,
            stacklevel=2,
        )
    base_macs, _ = sel.cost({})
    macs_after, _ = sel.cost(removed)
    return ChannelPruneResult(
        plan=plan.to_dict(),
        groups=groups,
        skipped=_dedupe(skipped),
        params_before=sum(
            int(np.prod(trace.values[v].shape)) for v in {trace.param_values[n] for n in params}
        ),
        params_after=count_params(model),
        macs_before=int(base_macs),
        macs_after=int(macs_after),
        seconds=time.perf_counter() - t0,
    )


def _restore_grads(model: nn.Module, saved: Mapping[int, torch.Tensor | None]) -> None:
    for p in model.parameters():
        p.grad = saved.get(id(p))


def _plan(
    model: nn.Module,
    trace: Trace,
    cfg: ChannelPruneConfig,
    crit: ChannelCriterion,
    frozen_names: dict[str, list[int]],
    params: Mapping[str, torch.Tensor],
    ignored_modules: frozenset[str] = frozenset(),
) -> tuple[DependencyGraph, dict[int, np.ndarray], Plan, tuple[AttrUpdate, ...], _Selector]:
    graph = build_graph(
        trace,
        prune_heads=cfg.prune_heads,
        frozen_names=frozen_names,
        prune_normalized=cfg.prune_normalized,
        ignored_modules=ignored_modules,
        gqa=cfg.gqa,
    )
    unknown = [r for r in graph.frozen if r.unknown]
    if unknown and cfg.on_unknown == "raise":
        r = unknown[0]
        raise UnsupportedOpError(
            f"prune_channels cannot see through {r.op!r} in module '{r.where}' ({r.reason}); the model is unchanged. "
            f"Pass ignore=['{r.where}'] to keep that module at full width, or on_unknown='keep'"
        )
    scores = [np.asarray(crit.score(g, params, trace.module_types), dtype=np.float64) for g in graph.groups]
    for g, sc in zip(graph.groups, scores, strict=True):
        if sc.shape != (g.n_units,):
            raise ConfigError(
                f"criterion {getattr(crit, 'name', crit)!r} returned shape {sc.shape} for group '{g.name}', "
                f"expected ({g.n_units},)"
            )
    sel = _Selector(graph, scores, cfg.round_to)
    target = cfg.target_macs if cfg.target_macs is not None else cfg.target_params
    if target is not None:
        which = 0 if cfg.target_macs is not None else 1
        goal = target * sel.cost({})[which]
        lo, hi = 0.0, 0.999
        best = sel.select(hi, cfg.scope)
        if sel.cost(best)[which] > goal:
            logger.warning("target %.3f cannot be reached; pruning as much as allowed", target)
        else:
            for _ in range(24):
                mid = (lo + hi) / 2
                cand = sel.select(mid, cfg.scope)
                if sel.cost(cand)[which] <= goal:
                    hi, best = mid, cand
                else:
                    lo = mid
        removed = best
    else:
        removed = sel.select(_group_ratios(model, graph, cfg.ratio), cfg.scope)
    mask = sel.removed_labels(removed)
    plan, cands = _make_plan(model, graph, removed, mask)
    return graph, removed, plan, cands, sel


def _group_ratios(
    model: nn.Module, graph: DependencyGraph, ratio: float | Mapping[str, float]
) -> float | dict[int, float]:
    """A float, or per group the largest ratio of the modules whose weight dim 0 (output) it holds."""
    if not isinstance(ratio, Mapping):
        return float(ratio)
    names = dict(model.named_modules())
    missing = [n for n in ratio if n not in names]
    if missing:
        raise ModuleNotFound(
            f"ratio= names modules {missing} that are not in the model; e.g. {list(names)[1:6]}"
        )
    out: dict[int, float] = {}
    for g in graph.groups:
        for m in g.members:
            mod, _, attr = m.name.rpartition(".")
            odim = 1 if type(names.get(mod)).__name__ == "Conv1D" else 0
            if attr == "weight" and m.dim == odim and mod in ratio:
                out[g.gid] = max(out.get(g.gid, 0.0), float(ratio[mod]))
    return out


def _masked_outputs(
    model: nn.Module, example_inputs: Any, plan: Plan, graph: DependencyGraph, mask: np.ndarray
) -> list[torch.Tensor]:
    """Outputs of ``model`` with the plan's removed slices zeroed (and norm statistics over kept channels).

    Every tensor the plan slices is swapped (``tensor.data``) for a copy with its removed slices set to
    zero (``torch.where`` with a broadcast keep-mask, so NaN/inf in removed slices become 0 too) and
    swapped back afterwards: the original tensors are never written, so they come back bit-identical.
    A tensor whose every use in the trace ran inside its own module's ``forward`` is swapped only while
    that module runs (forward pre/post hooks): extra memory is then one module's tensors at a time and the
    same buffers are reused. Any other tensor (used by a parent module, in place, ...) is swapped for the
    whole forward (and every tensor when norm statistics are replayed over kept channels).
    """
    modules = dict(model.named_modules())
    substitute = {}
    for st in graph.stats:
        keep = np.nonzero(~mask[graph.labels[st.ids]])[0]
        if len(keep) < len(st.ids):
            name = graph.trace.nodes[st.node].name
            substitute[st.node] = (name, _kept_stat(name, st.dim, torch.from_numpy(keep)))
    tensors: dict[int, torch.Tensor] = {}
    keep_masks: dict[int, torch.Tensor] = {}
    fqns: dict[int, str] = {}
    for e in plan.entries:
        mod, _, attr = e.fqn.rpartition(".")
        t = getattr(modules[mod], attr)
        keep_np = np.zeros(e.size, dtype=bool)
        keep_np[np.asarray(e.kept, dtype=np.int64)] = True
        shape = [1] * t.dim()
        shape[e.dim] = e.size
        km = torch.from_numpy(keep_np).view(shape)
        prev = keep_masks.get(id(t))
        keep_masks[id(t)] = (km if prev is None else prev & km).to(t.device)
        tensors[id(t)] = t
        fqns[id(t)] = e.fqn
    # with substitutes the forward is a trace replay matched by node index: swap everything up front
    owners = {} if substitute else _own_module_uses(graph.trace, {k: fqns[k] for k in tensors})
    lazy: dict[str, list[int]] = defaultdict(list)
    for key, owner in owners.items():
        if owner is not None and owner in modules:
            lazy[owner].append(key)
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tensor, original data), in swap order
    frames: list[int] = []  # len(swapped) at each lazy pre-hook, to undo that module's swaps

    def zero(key: int) -> None:
        t = tensors[key]
        masked = torch.where(keep_masks[key], t.data, 0)
        swapped.append((t, t.data))
        t.data = masked

    def pre(keys: list[int]) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            frames.append(len(swapped))
            with torch.no_grad():
                for key in keys:
                    zero(key)

        return hook

    def post(module: nn.Module, args: Any, output: Any) -> None:
        if frames:
            start = frames.pop()
            while len(swapped) > start:
                t, original = swapped.pop()
                t.data = original

    handles = []
    try:
        for owner, keys in lazy.items():
            handles.append(modules[owner].register_forward_pre_hook(pre(keys)))
            handles.append(modules[owner].register_forward_hook(post, always_call=True))
        lazy_keys = {k for keys in lazy.values() for k in keys}
        with torch.no_grad():
            for key in tensors:
                if key not in lazy_keys:
                    zero(key)
        frames.clear()
        if substitute:
            return record(model, example_inputs, substitute).outputs
        args, kwargs = as_args(example_inputs)
        return _run(lambda: model(*args, **kwargs), model)
    finally:
        for h in handles:
            h.remove()
        for t, original in reversed(swapped):
            t.data = original


def _own_module_uses(trace: Trace, fqns: Mapping[int, str]) -> dict[int, str | None]:
    """For each tensor: the module whose ``forward`` ran every recorded use of it (None if there is none
    such, e.g. a parent module reads it, it is shared by several modules, or it is written in place)."""
    vids = {k: trace.param_values.get(f) for k, f in fqns.items()}
    wanted = {v for v in vids.values() if v is not None}
    used_in: dict[int, set[str]] = defaultdict(set)
    bad: set[int] = set()
    for node in trace.nodes:
        for vid in node.inputs:
            if vid in wanted:
                used_in[vid].add(node.module)
                if node.inplace:
                    bad.add(vid)
    out: dict[int, str | None] = {}
    for key, value in vids.items():
        out[key] = None
        if value is None or value in bad or len(trace.values[value].names) != 1:
            continue
        owner = fqns[key].rpartition(".")[0]
        if used_in.get(value, {owner}) == {owner}:
            out[key] = owner
    return out


def _kept_stat(name: str, dim: int, keep: torch.Tensor) -> Any:
    """A replacement for a norm/mean call that only looks at the kept channels of ``dim``."""

    def norm(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = args[0]
        k = keep.to(x.device)
        if name in ("layer_norm", "rms_norm"):
            rest = list(args[1:]) + [None] * (4 - len(args))
            params = {
                "layer_norm": ["normalized_shape", "weight", "bias", "eps"],
                "rms_norm": ["normalized_shape", "weight", "eps"],
            }[name]
            call = dict(zip(params, rest, strict=False))
            call.update(kwargs)
            call["normalized_shape"] = (len(k),)
            for p in ("weight", "bias"):
                if call.get(p) is not None:
                    call[p] = call[p].index_select(0, k)
            out = torch.zeros_like(x)
            out.index_copy_(
                x.dim() - 1,
                k,
                func(x.index_select(x.dim() - 1, k), **{p: call[p] for p in params if p in call}),
            )
            return out
        if name == "group_norm":
            call = dict(zip(["num_groups", "weight", "bias", "eps"], args[1:], strict=False))
            call.update(kwargs)
            for p in ("weight", "bias"):
                if call.get(p) is not None:
                    call[p] = call[p].index_select(0, k)
            out = torch.zeros_like(x)
            out.index_copy_(1, k, func(x.index_select(1, k), **call))
            return out
        return func(x.index_select(dim, k), *args[1:], **kwargs)

    return norm


def _run(fn: Callable[[], Any], model: nn.Module) -> list[torch.Tensor]:
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            out = fn()
    finally:
        for m, t in modes.items():
            m.training = t
    outs: list[torch.Tensor] = []
    _flatten(out, outs)
    return outs


def _same(got: list[torch.Tensor], want: list[torch.Tensor]) -> str | None:
    if [tuple(g.shape) for g in got] != [tuple(w.shape) for w in want]:
        return (
            f"changed the output shapes {[tuple(w.shape) for w in want]} -> {[tuple(g.shape) for g in got]}"
        )
    for g, w in zip(got, want, strict=True):
        if not w.is_floating_point():
            if not torch.equal(g, w):
                return "changed an integer output"
            continue
        scale = float(w.abs().max()) if w.numel() else 0.0
        if not torch.allclose(g.float(), w.float(), rtol=1e-3, atol=1e-3 * scale + 1e-5):
            diff = float((g.float() - w.float()).abs().max())
            return f"no longer equals the original with the removed slices zeroed (max diff {diff:.3g})"
    return None


def _apply_checked(
    model: nn.Module,
    example_inputs: Any,
    trace: Trace,
    plan: Plan,
    cands: tuple[AttrUpdate, ...],
    check: bool,
    graph: DependencyGraph,
    mask: np.ndarray,
) -> tuple[tuple[str, str] | None, Plan]:
    """Apply ``plan`` (then, if needed, with the candidate size attributes); keep it if it runs and
    matches the masked original. Returns (None, applied plan) on success, else ((module, reason), plan) with
    the model restored."""
    want = _masked_outputs(model, example_inputs, plan, graph, mask) if check else None
    attempts = [plan] + ([dataclasses.replace(plan, attributes=plan.attributes + cands)] if cands else [])
    first: tuple[str, str] | None = None
    for p in attempts:
        snap = apply(model, p)
        failure = _try_run(model, example_inputs, trace, want)
        if failure is None:
            record_plan(model, p)
            # a graph built before pruning (the last `loss` of a training loop) would keep the old
            # gradient shapes cached and break the next backward
            reset_grad_accumulators(model, p.to_dict())
            return None, p
        snap.restore()
        first = first or failure
    return first, plan


def _try_run(
    model: nn.Module, example_inputs: Any, trace: Trace, want: list[torch.Tensor] | None
) -> tuple[str, str] | None:
    args, kwargs = as_args(example_inputs)
    try:
        got = _run(lambda: model(*args, **kwargs), model)
    except Exception as e:  # the pruned model does not run: run it again with hooks to report where
        return (_failing_module(model, args, kwargs), f"failed to run ({type(e).__name__}: {str(e)[:200]})")
    if want is None:
        shapes = [trace.values[v].shape for v in trace.output_values]
        if [tuple(g.shape) for g in got] != shapes:
            return ("", f"changed the output shapes {shapes} -> {[tuple(g.shape) for g in got]}")
        return None
    why = _same(got, want)
    return None if why is None else ("", why)


def _failing_module(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Name of the innermost module running when ``model(*args, **kwargs)`` raises ("" if it does not).

    Only called after a failed run (the forward is deterministic in eval mode without gradients), so the
    successful path pays no hook overhead.
    """
    stack: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}

    def pre(m: nn.Module, a: Any) -> None:
        stack.append(names.get(id(m), type(m).__name__))

    def post(m: nn.Module, a: Any, o: Any) -> None:
        if stack:
            stack.pop()

    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post)
    try:
        _run(lambda: model(*args, **kwargs), model)
    except Exception:
        return stack[-1] if stack else ""
    finally:
        h1.remove()
        h2.remove()
    return ""


def _dedupe(items: list[Skipped]) -> list[Skipped]:
    seen: set[tuple[str, str]] = set()
    out = []
    for s in items:
        if (s.where, s.reason) not in seen:
            seen.add((s.where, s.reason))
            out.append(s)
    return out


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One module with its own parameters."""

    name: str
    type: str
    shapes: dict[str, tuple[int, ...]]
    params: int


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Parameters, MACs and per-layer shapes of a model (``str`` is a table, ``to_dict`` plain data)."""

    params: int
    macs: int
    layers: tuple[LayerInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "macs": self.macs,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }

    def __str__(self) -> str:
        w = max([len(layer.name) for layer in self.layers] + [5])
        lines = [f"{'layer':<{w}}  {'type':<16} {'params':>10}  shapes"]
        for layer in self.layers:
            shapes = ", ".join(f"{k} {tuple(v)}" for k, v in layer.shapes.items())
            lines.append(f"{layer.name:<{w}}  {layer.type:<16} {layer.params:>10,}  {shapes}")
        lines.append(f"total params {self.params:,}   MACs {self.macs:,}")
        return "\n".join(lines)


def summary(model: nn.Module, example_inputs: Any) -> ModelSummary:
    """Parameters, MACs (one forward on ``example_inputs``) and the shapes of every layer.

    Example:
        >>> import torch
        >>> s = summary(torch.nn.Linear(4, 3), torch.randn(2, 4))
        >>> s.params, s.macs
        (15, 24)
    """
    layers = []
    seen: set[int] = set()
    for name, mod in model.named_modules():
        own = [(n, p) for n, p in mod.named_parameters(recurse=False) if id(p) not in seen]
        own_all = list(mod.named_parameters(recurse=False))
        if not own_all:
            continue
        for _, p in own:
            seen.add(id(p))
        layers.append(
            LayerInfo(
                name or "<root>",
                type(mod).__name__,
                {n: tuple(p.shape) for n, p in own_all},
                sum(p.numel() for _, p in own),
            )
        )
    return ModelSummary(
        params=count_params(model), macs=count_macs(model, example_inputs), layers=tuple(layers)
    )


__all__ = [
    "ChannelPruneConfig",
    "ChannelPruneResult",
    "GroupChange",
    "LayerInfo",
    "ModelSummary",
    "Skipped",
    "masked_reference",
    "prune_channels",
    "summary",
]
