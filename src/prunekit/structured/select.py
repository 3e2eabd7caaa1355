"""Which channels go: ignore specs, gradients for data-aware criteria, selection by ratio or target, the Plan.

::

    build_graph -> score every group (criterion) -> _Selector.select(ratio, scope, round_to)
        (or bisect the ratio until the cost goal reduce_macs / reduce_params is met) -> _make_plan (data, not yet applied)

Used by :func:`prunekit.structured.api.prune_channels`; nothing here changes the model.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from prunekit.core import inputs_only, select_modules
from prunekit.errors import ConfigError, PlanError, UnsupportedOpError
from prunekit.graph import SIZE_ATTR, DependencyGraph, Group, Trace, as_args, build_graph
from prunekit.structured.criteria import ChannelCriterion
from prunekit.structured.surgery import AttrUpdate, Plan, PlanEntry

if TYPE_CHECKING:
    from prunekit.structured.api import ChannelPruneConfig

logger = logging.getLogger("prunekit.structured.api")

IgnoreSpec = nn.Module | str | type


def match_modules(model: nn.Module, ignore: Iterable[IgnoreSpec] | IgnoreSpec | None) -> set[str]:
    """Names of the modules matched by ``ignore`` (objects, names, globs, types; see ``select_modules``)."""
    return {n for n, _ in select_modules(model, ignore, what="exclude")}


def resolve_ignore(
    model: nn.Module, ignore: Iterable[IgnoreSpec] | IgnoreSpec | None, all_dims: bool = False
) -> dict[str, list[int]]:
    """Parameter name -> dims kept at full width for the modules matched by ``ignore``."""
    matched = match_modules(model, ignore)
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


def _accepts_labels(model: nn.Module) -> bool:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "labels" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def compute_grads(
    model: nn.Module,
    data: Iterable[Any],
    loss_fn: Callable[..., torch.Tensor],
    max_batches: int | None = None,
) -> int:
    """Accumulate ``loss_fn(outputs, targets)`` gradients over ``data``; return the batches used.

    Batches are ``(inputs, targets)`` pairs, dicts with ``labels`` (passed to the model too when its
    ``forward`` takes ``labels``, as Hugging Face models do, so ``loss_fn=lambda out, y: out.loss`` works),
    or bare inputs (then ``targets`` is ``None``).
    """
    model.zero_grad(set_to_none=True)
    used = 0
    takes_labels = _accepts_labels(model)
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        if isinstance(batch, Mapping) and "labels" in batch:
            y = batch["labels"]
            x = dict(batch) if takes_labels else {k: v for k, v in batch.items() if k != "labels"}
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = batch
        else:
            x, y = inputs_only(batch), None
        args, kwargs = as_args(dict(x) if isinstance(x, Mapping) else x)
        loss = loss_fn(model(*args, **kwargs), y)
        loss.backward()  # type: ignore[no-untyped-call]
        used += 1
    logger.info("taylor: gradients accumulated over %d calibration batches", used)
    return used


class _Segments:
    """Label arrays laid end to end: how many labels of each are set in a mask, in one pass."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.lengths = np.array([len(p) for p in parts], dtype=np.int64)
        self.labels = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1])) if parts else self.lengths
        self.nonempty = self.lengths > 0

    def removed(self, mask: np.ndarray) -> np.ndarray:
        """Per part: the number of its labels set in ``mask``."""
        out = np.zeros(len(self.lengths), dtype=np.int64)
        if self.nonempty.any():
            out[self.nonempty] = np.add.reduceat(
                mask[self.labels].astype(np.int64), self.starts[self.nonempty]
            )
        return out


class _Selector:
    """Chooses units to remove and estimates params/MACs of a choice (used for target search)."""

    def __init__(self, graph: DependencyGraph, scores: list[np.ndarray], round_to: int | None) -> None:
        self.g = graph
        self.scores = scores
        self.round_to = round_to
        self.order = [np.argsort(s, kind="stable") for s in scores]
        n_labels = int(graph.labels.max()) + 1 if len(graph.labels) else 1
        self.n_labels = n_labels
        # cost(): every MAC factor / parameter dim is a segment of one label array, so a choice is
        # costed with one gather and one segment sum (the target searches call it ~25 times)
        factors = [[graph.labels[f] for f in c.factors] for c in graph.costs]
        self.cost_macs = [float(c.macs) for c in graph.costs]
        self.cost_segs = _Segments([lab for fs in factors for lab in fs if len(lab)])
        self.cost_of_seg = np.array(
            [i for i, fs in enumerate(factors) for lab in fs if len(lab)], dtype=np.int64
        )
        param_dims: dict[int, list[np.ndarray]] = defaultdict(list)
        for vid, _d, start, size in graph.param_dims:
            if graph.trace.values[vid].kind == "param":
                param_dims[vid].append(graph.labels[start : start + size])
        self.param_segs = _Segments([lab for dims in param_dims.values() for lab in dims])
        self.param_of_seg = np.array(
            [i for i, dims in enumerate(param_dims.values()) for _ in dims], dtype=np.int64
        )
        self.n_params = len(param_dims)
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
        """(MACs, parameters) left after removing ``removed``: each MAC count scales with the kept fraction
        of every factor dimension, each parameter with the product of its kept dims."""
        mask = self.removed_labels(removed)
        frac = np.ones(len(self.cost_macs))
        np.multiply.at(frac, self.cost_of_seg, 1.0 - self.cost_segs.removed(mask) / self.cost_segs.lengths)
        macs = 0.0
        for base, f in zip(self.cost_macs, frac.tolist(), strict=True):
            macs += base * f
        sizes = np.ones(self.n_params, dtype=np.int64)
        np.multiply.at(sizes, self.param_of_seg, self.param_segs.lengths - self.param_segs.removed(mask))
        return macs, float(sizes.sum())


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
        kept = np.flatnonzero(~hit)
        entries.append(PlanEntry.from_kept_array(name, dim, sizes[(name, dim)], kept))
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
    _head_count_attrs(modules, new_shape, canonical, put)
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


_HEAD_ATTRS = (("num_attention_heads", "attention_head_size"), ("num_heads", "head_dim"))
_QUERY_NAMES = ("query", "q_proj", "q")


def _head_count_attrs(
    modules: dict[str, nn.Module],
    new_shape: dict[str, list[int]],
    canonical: dict[str, str],
    put: Callable[[str, str, Any], None],
) -> None:
    """Attention modules that store their head count (BERT ``num_attention_heads``/``all_head_size``,
    ``num_heads``/``head_dim``): keep it true when whole heads are removed from their query projection."""
    for mname, mod in modules.items():
        own, cls = vars(mod), type(mod)
        for count_attr, size_attr in _HEAD_ATTRS:
            # instance attributes first: a missing name through nn.Module.__getattr__ costs an exception
            if (count_attr not in own and not hasattr(cls, count_attr)) or (
                size_attr not in own and not hasattr(cls, size_attr)
            ):
                continue
            count, size = getattr(mod, count_attr, None), getattr(mod, size_attr, None)
            if type(count) is not int or type(size) is not int or size <= 0:
                continue
            for q in _QUERY_NAMES:
                key = canonical.get(f"{mname}.{q}.weight".lstrip("."), "")
                child = getattr(mod, q, None)
                if key not in new_shape or not isinstance(child, nn.Linear):
                    continue
                width = new_shape[key][0]
                if width % size == 0 and width // size != count and child.out_features == count * size:
                    put(mname, count_attr, width // size)
                    if type(getattr(mod, "all_head_size", None)) is int:
                        put(mname, "all_head_size", width)
                break


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
            if not a.startswith("_") and type(v) is int and v == old and SIZE_ATTR.search(a)
        ]
        if hits:
            return hits
    return []


def resolve_prune_heads(model: nn.Module, prune_heads: bool | str) -> bool:
    """``prune_heads="auto"``: False for Hugging Face models whose config derives the head size from
    ``hidden_size // num_attention_heads`` (no explicit ``head_dim``: BERT, GPT-2), so ``save_pretrained``
    can still express the pruned model; True otherwise."""
    if prune_heads != "auto":
        return bool(prune_heads)
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict") or not hasattr(model, "save_pretrained"):
        return True
    if isinstance(getattr(cfg, "head_dim", None), int):
        return True
    logger.info(
        "prune_heads='auto': keeping every attention head of %s (its config has no head_dim, so "
        "save_pretrained could not express fewer heads); pass prune_heads=True to remove heads",
        type(model).__name__,
    )
    return False


def build_plan(
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
        prune_heads=resolve_prune_heads(model, cfg.prune_heads),
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
            f"Pass exclude=['{r.where}'] to keep that module at full width, or on_unknown='keep'"
        )
    scores = [np.asarray(crit.score(g, params, trace.module_types), dtype=np.float64) for g in graph.groups]
    for g, sc in zip(graph.groups, scores, strict=True):
        if sc.shape != (g.n_units,):
            raise ConfigError(
                f"criterion {getattr(crit, 'name', crit)!r} returned shape {sc.shape} for group '{g.name}', "
                f"expected ({g.n_units},)"
            )
    sel = _Selector(graph, scores, cfg.round_to)
    cost_goal = cfg.cost_goal()
    if cost_goal is not None:
        which = 0 if cost_goal[0] == "macs" else 1
        target = cost_goal[1]
        goal = target * sel.cost({})[which]
        lo, hi = 0.0, 0.999
        best = sel.select(hi, cfg.scope)
        if sel.cost(best)[which] > goal:
            name = "reduce_macs" if which == 0 else "reduce_params"
            reachable = sel.cost(best)[which] / max(sel.cost({})[which], 1e-12)
            asked = 1 - target  # the fraction to remove
            if not cfg.allow_partial:
                raise PlanError(
                    f"{name}={asked:g} cannot be reached: the most prunekit can remove is {1 - reachable:.3f} "
                    f"(ignored modules, round_to and coupled slices limit it); lower {name} to at most "
                    f"{1 - reachable:.3f}, or pass allow_partial=True to prune as much as allowed"
                )
            warnings.warn(f"{name}={asked:g} cannot be reached; pruned as much as allowed (removes {1 - reachable:.3f})",
                          UserWarning, stacklevel=3)  # fmt: skip
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
    """A float, or per group the largest ratio of the modules whose weight dim 0 (output) it holds.

    Keys of a mapping are selectors (names, globs, types) as in ``exclude=``; a name also sets the
    ratio of the Linear/Conv layers inside that module.
    """
    if not isinstance(ratio, Mapping):
        return float(ratio)
    names = dict(model.named_modules())
    per_module: dict[str, float] = {}
    for key, value in ratio.items():  # later keys win; a name/glob also covers the layers inside it
        for name, _ in select_modules(model, key, what="ratio", children=True):
            per_module[name] = float(value)
    out: dict[int, float] = {}
    for g in graph.groups:
        for m in g.members:
            mod, _, attr = m.name.rpartition(".")
            odim = 1 if type(names.get(mod)).__name__ == "Conv1D" else 0
            if attr == "weight" and m.dim == odim and mod in per_module:
                out[g.gid] = max(out.get(g.gid, 0.0), per_module[mod])
    return out
