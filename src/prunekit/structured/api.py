"""Structured pruning: physically remove channels, neurons and attention heads.

::

    record (1 eager forward)  ->  build_graph (coupled units, groups)  ->  score (criterion)
        ->  select (ratio / target, layer or global scope, round_to)  ->  Plan (data)
        ->  validate + apply (swap tensor.data, set attributes)  ->  verify forward  (restore on failure)

This module holds the verb, its config and result types, and :func:`summary`; selection and planning
live in :mod:`prunekit.structured.select`, the apply-and-verify round in :mod:`prunekit.structured.check`.

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
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from prunekit.compat import renamed_kwargs, warn
from prunekit.core import (
    UNSET,
    ConfigMixin,
    Skipped,
    count_macs,
    count_params,
    exclusive_verb,
    merge_config,
    register_config,
)
from prunekit.errors import ConfigError, DataRequiredError, PlanError
from prunekit.graph import record
from prunekit.structured.check import apply_checked
from prunekit.structured.criteria import ChannelCriterion, get_criterion
from prunekit.structured.select import IgnoreSpec, build_plan, compute_grads, match_modules, resolve_ignore
from prunekit.structured.surgery import masked_reference

logger = logging.getLogger(__name__)


COST_GOALS: tuple[str, ...] = ("reduce_macs", "reduce_params")


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class ChannelPruneConfig(ConfigMixin):
    """Every option of the one-shot verb ``prune_channels`` (the model, inputs and data are arguments of the verb).

    Not to be confused with :class:`prunekit.ChannelPrunerConfig`, the options of the training-time
    :class:`prunekit.ChannelPruner` (gradual masking on a schedule).

    Attributes:
        ratio: Fraction of units (channels, neurons, heads) to remove in every group (``scope="layer"``) or
            over all groups (``scope="global"``); in [0, 1). Or a mapping ``{module_name: ratio}`` (layer
            scope): a group takes the largest ratio of the modules whose output channels it holds; groups
            of modules not in the mapping are kept.
        reduce_macs: Instead of ``ratio``: remove this fraction of the (estimated) MACs, in [0, 1)
            (the same sense as ``ratio`` and ``allocate(target=)``: how much goes).
        reduce_params: Instead of ``ratio``: remove this fraction of the parameters, in [0, 1).
        criterion: ``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"``, ``"fpgm"``, ``"random"`` or a
            :class:`prunekit.structured.criteria.ChannelCriterion` object.
        scope: ``"layer"`` (same ratio per group) or ``"global"`` (normalised scores ranked together).
        round_to: Keep a multiple of this many channels in every channel group (e.g. 8).
        prune_heads: Remove whole attention heads / KV groups; if False attention widths are kept;
            ``"auto"``: True unless a Hugging Face config could not express fewer heads.
        prune_normalized: Also prune dims normalised by LayerNorm/RMSNorm or averaged by mean/var/std (e.g. the
            transformer hidden size). Those statistics then run over the kept channels only, which is not
            the same as zeroing: expect a larger change than for other channels (the check models it).
        on_unknown: ``"keep"`` (default): channels touched by an op the graph cannot see through (or a custom
            autograd Function) are kept, with one warning; ``"raise"``: raise ``UnsupportedOpError`` instead.
        gqa: Grouped-query attention units: ``"kv_groups"`` (a KV head with all its query heads) or
            ``"query_heads"`` (KV heads kept, the same query position removed in every group; needs SDPA
            ``enable_gqa``, otherwise whole KV groups are used).
        exclude: Modules (objects, name globs, or types) whose output width is kept (was ``ignore``).
        check: Compare the pruned model's outputs with the masked original's (one extra forward); a
            mismatch restores the model and raises.
        allow_partial: With ``reduce_macs``/``reduce_params`` that cannot be reached, prune as much as
            allowed instead of raising ``PlanError``.

    ``target_macs=t`` / ``target_params=t`` (the fraction *kept*, in (0, 1]) are deprecated spellings of
    ``reduce_macs=1 - t`` / ``reduce_params=1 - t``: init-only, they warn and set the ``reduce_*`` field.
    """

    ratio: float | Mapping[str, float] = 0.5
    reduce_macs: float | None = None
    reduce_params: float | None = None
    criterion: str | ChannelCriterion = "l2"
    scope: Literal["layer", "global"] = "layer"
    round_to: int | None = None
    prune_heads: bool | Literal["auto"] = "auto"
    prune_normalized: bool = False
    on_unknown: Literal["keep", "raise"] = "keep"
    gqa: Literal["kv_groups", "query_heads"] = "kv_groups"
    exclude: Any = None
    check: bool = True
    allow_partial: bool = False
    target_macs: dataclasses.InitVar[float | None] = None  # deprecated: reduce_macs = 1 - target_macs
    target_params: dataclasses.InitVar[float | None] = None  # deprecated: reduce_params = 1 - target_params

    #: deprecated init-only spellings -> their field (``config_from_dict`` still reads them)
    DEPRECATED_OPTIONS: ClassVar[dict[str, str]] = {
        "target_macs": "reduce_macs",
        "target_params": "reduce_params",
    }

    def __post_init__(self, target_macs: float | None, target_params: float | None) -> None:
        for old, kept in (("target_macs", target_macs), ("target_params", target_params)):
            if kept is not None:
                new = self.DEPRECATED_OPTIONS[old]
                object.__setattr__(
                    self, new, removed_for_kept(old, kept, getattr(self, new), "ChannelPruneConfig")
                )
        if isinstance(self.exclude, (list, set, frozenset)):
            object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.prune_heads not in (True, False, "auto"):
            raise ConfigError(f"prune_heads must be True, False or 'auto', got {self.prune_heads!r}")
        ratios = list(self.ratio.values()) if isinstance(self.ratio, Mapping) else [self.ratio]
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
                raise ConfigError(
                    f"ratio must be in [0, 1) (or a mapping of module name to such a ratio), got {r!r}"
                )
        goals = [n for n in COST_GOALS if getattr(self, n) is not None]
        if isinstance(self.ratio, Mapping) and (self.scope != "layer" or goals):
            raise ConfigError("a per-module ratio mapping works with scope='layer' and no reduce_* cost goal")
        if len(goals) > 1:
            raise ConfigError(f"give at most one of {', '.join(COST_GOALS)}; got {', '.join(goals)}")
        for name in goals:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
                raise ConfigError(f"{name} is the fraction to remove, in [0, 1); got {v!r}")
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if self.gqa not in ("kv_groups", "query_heads"):
            raise ConfigError(f"gqa must be 'kv_groups' or 'query_heads', got {self.gqa!r}")
        if self.on_unknown not in ("keep", "raise"):
            raise ConfigError(f"on_unknown must be 'keep' or 'raise', got {self.on_unknown!r}")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise ConfigError(f"round_to must be a positive int or None, got {self.round_to!r}")
        get_criterion(self.criterion)

    def cost_goal(self) -> tuple[str, float] | None:
        """``("macs" | "params", fraction kept)`` of the cost goal, or ``None`` when ``ratio`` is used."""
        for kind in ("macs", "params"):
            removed = getattr(self, f"reduce_{kind}")
            if removed is not None:
                return kind, 1.0 - float(removed)
        return None


def removed_for_kept(old: str, kept: Any, removed: Any, verb: str, stacklevel: int = 5) -> float:
    """``1 - kept`` for a deprecated ``target_*=kept`` (fraction kept), with a ``DeprecationWarning``.

    Raises:
        ConfigError: ``kept`` is not in (0, 1], or the new spelling is given too.
    """
    new = "reduce_" + old.removeprefix("target_")
    if removed is not None:
        raise ConfigError(f"{verb}: give {new}= (the fraction removed), not both {new}= and {old}=")
    if isinstance(kept, bool) or not isinstance(kept, (int, float)) or not 0.0 < float(kept) <= 1.0:
        raise ConfigError(
            f"{old} is the fraction to keep, in (0, 1] (deprecated: use {new}=1 - {old}); got {kept!r}"
        )
    warn(
        f"{verb}({old}=)",
        f"{verb}({new}=) with the fraction removed ({new}=1 - {old})",
        stacklevel=stacklevel,
    )
    return 1.0 - float(kept)


@dataclasses.dataclass(frozen=True)
class GroupChange:
    """Width of one coupled group before and after."""

    name: str
    kind: str
    before: int
    after: int
    members: tuple[str, ...]


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


@renamed_kwargs(ignore="exclude")
@exclusive_verb("prune_channels")
def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | Mapping[str, float] = UNSET,
    *,
    reduce_macs: float | None = UNSET,
    reduce_params: float | None = UNSET,
    target_macs: float | None = UNSET,
    target_params: float | None = UNSET,
    criterion: str | ChannelCriterion = UNSET,
    scope: Literal["layer", "global"] = UNSET,
    exclude: Iterable[IgnoreSpec] | IgnoreSpec | None = UNSET,
    round_to: int | None = UNSET,
    prune_heads: bool | Literal["auto"] = UNSET,
    prune_normalized: bool = UNSET,
    on_unknown: Literal["keep", "raise"] = UNSET,
    gqa: Literal["kv_groups", "query_heads"] = UNSET,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    config: ChannelPruneConfig | None = None,
    check: bool = UNSET,
    allow_partial: bool = UNSET,
) -> ChannelPruneResult:
    """Physically remove channels, neurons and attention heads of ``model``, in place.

    The model is traced once on ``example_inputs``; coupled slices (residual adds, concat, depthwise
    convs, heads, tied weights, ...) are removed together, module attributes are updated, and the pruned
    model is run once to check it. On any failure the model is left exactly as it was. Optimizers and EMA
    copies built on the old parameters must be rebuilt (the parameter objects are the same, their
    shapes are not). Weight masks already on the model are re-sliced with their weights. Do not run
    the model in another thread meanwhile: such a forward raises ``ConfigError`` while this runs.

    Args:
        model: Any ``nn.Module``.
        example_inputs: A tensor, a tuple of positional inputs, or a dict of keyword inputs.
        ratio: Fraction of units to remove (per group for ``scope="layer"``, overall for ``"global"``).
        reduce_macs: Remove this fraction of the estimated MACs instead (searches the ratio).
        reduce_params: Remove this fraction of the parameters instead (searches the ratio).
        target_macs: Deprecated: keep this fraction of the MACs; use ``reduce_macs=1 - target_macs``.
        target_params: Deprecated: keep this fraction of the parameters; use ``reduce_params=1 - target_params``.
        criterion: Importance of units: ``"l2"``, ``"l1"``, ``"bn_scale"``, ``"taylor"``, ``"fpgm"``,
            ``"random"`` or a :class:`~prunekit.structured.criteria.ChannelCriterion`.
        scope: ``"layer"`` or ``"global"``.
        exclude: Modules (objects, name globs, or types) whose output width is kept (``ignore=`` is the
            deprecated spelling).
        round_to: Keep a multiple of this many channels per channel group.
        prune_heads: Allow removing whole attention heads. ``"auto"`` (default): yes, except in Hugging
            Face models whose config cannot express fewer heads (BERT, GPT-2: no explicit ``head_dim``),
            so that ``save_pretrained`` keeps working; remove their heads with ``prune_heads=True``
            (then save with ``pk.save``) or by name with :func:`prunekit.structured.prune_heads`.
        prune_normalized: Allow removing channels under LayerNorm/RMSNorm (see :class:`ChannelPruneConfig`).
        on_unknown: ``"keep"`` (warn and keep what unknown ops touch) or ``"raise"`` (``UnsupportedOpError``).
        gqa: ``"kv_groups"`` or ``"query_heads"`` (see :class:`ChannelPruneConfig`).
        data: Batches ``(inputs, targets)`` for ``criterion="taylor"`` (at most 8 are used).
        loss_fn: ``loss_fn(outputs, targets)`` for ``criterion="taylor"``.
        config: A :class:`ChannelPruneConfig` holding every option above (all but ``data``/``loss_fn``);
            a keyword that sets the same option as ``config`` raises ``ConfigError``.
        allow_partial: An unreachable ``reduce_macs``/``reduce_params`` prunes as much as allowed
            (with a warning) instead of raising ``PlanError``.
        check: Compare the pruned model's outputs on ``example_inputs`` with the original's with the
            removed slices zeroed (one extra forward); a mismatch restores the model and raises.

    Returns:
        A :class:`ChannelPruneResult` (plan, widths before/after, what was kept and why).

    Raises:
        ConfigError: bad ratio/target/scope/criterion.
        UnknownModuleError: an ``ignore`` entry matches nothing.
        DataRequiredError: ``taylor`` without data and without gradients.
        PlanError: the pruned model could not be built or run (the model is restored).
    """
    t0 = time.perf_counter()
    if target_macs is not UNSET and target_macs is not None:  # deprecated: the fraction kept
        reduce_macs = removed_for_kept(
            "target_macs", target_macs, None if reduce_macs is UNSET else reduce_macs, "prune_channels", 6
        )
    if target_params is not UNSET and target_params is not None:
        reduce_params = removed_for_kept(
            "target_params",
            target_params,
            None if reduce_params is UNSET else reduce_params,
            "prune_channels",
            6,
        )
    cfg = merge_config(
        ChannelPruneConfig,
        config,
        verb="prune_channels",
        ratio=ratio,
        reduce_macs=reduce_macs,
        reduce_params=reduce_params,
        criterion=criterion,
        scope=scope,
        round_to=round_to,
        prune_heads=prune_heads,
        prune_normalized=prune_normalized,
        on_unknown=on_unknown,
        gqa=gqa,
        exclude=exclude,
        check=check,
        allow_partial=allow_partial,
    )
    ignore, check = cfg.exclude, cfg.check
    crit = get_criterion(cfg.criterion)
    if getattr(crit, "needs_data", False):  # e.g. criterion="activation": statistics on calibration data
        crit.prepare(model, data)  # type: ignore[attr-defined]
    frozen_names = resolve_ignore(model, ignore)
    ignored = frozenset(match_modules(model, ignore))
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
    from prunekit.structured.guards import warn_unvisited

    warn_unvisited(model, trace)
    params = dict(model.named_parameters())
    saved_grads: dict[int, torch.Tensor | None] = {}
    grads_ready = False
    if getattr(crit, "needs_grad", False) and data is not None and loss_fn is not None:
        saved_grads = {id(p): p.grad for p in model.parameters()}
        modes = {m: m.training for m in model.modules()}
        try:
            compute_grads(model, data, loss_fn)
        except Exception:
            _restore_grads(model, saved_grads)
            raise
        finally:
            for m, t in modes.items():
                m.training = t
        grads_ready = True
    auto_kept: list[Skipped] = []
    auto_names: set[str] = set()
    modules = dict(model.named_modules())
    max_attempts = 8 + len(trace.modules_run)  # each failed attempt keeps at least one more module
    try:
        for _attempt in range(max_attempts):
            graph, removed, plan, cands, sel = build_plan(
                model, trace, cfg, crit, frozen_names, params, ignored
            )
            mask = sel.removed_labels(removed)
            failure, applied = apply_checked(model, example_inputs, trace, plan, cands, check, graph, mask)
            if failure is None:
                plan = applied
                break
            where, why = failure
            if not where or where in auto_names or where == "<root>":
                raise PlanError(
                    f"the pruned model {why} in module '{where or '<root>'}'; the model was restored unchanged. "
                    f"A size is probably held outside the weights there: pass exclude=['{where or '...'}'] to keep it"
                )
            # modules of the same class as the failing one (repeated blocks: swin_t has 12 attention modules) are
            # kept in the same retry: they hold their sizes the same way. The check still proves the result.
            # (only for classes defined outside torch.nn: a built-in layer fails for reasons of its own instance)
            kind = type(modules[where]) if where in modules else None
            if kind is not None and kind.__module__.startswith("torch.nn"):
                kind = None
            twins = [
                n for n, m in modules.items() if kind is not None and type(m) is kind and n not in auto_names
            ]
            for name in [where] + [n for n in twins if n != where]:
                logger.info(
                    "pruning changed module %s in a way it does not support (%s): keeping it", name, why
                )
                auto_names.add(name)
                reason = why if name == where else f"like {where} ({kind.__name__ if kind else ''}): {why}"
                auto_kept.append(
                    Skipped(name, f"kept at full width: pruning it made the model fail ({reason})")
                )
            frozen_names = {**frozen_names, **resolve_ignore(model, [where, *twins], all_dims=True)}
        else:
            raise PlanError(
                f"pruning kept failing ({why}); the model was restored unchanged. Use exclude= on '{where}'"
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
            "width (see result.skipped). Pass those modules in exclude=[...] to keep them without this warning",
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
