"""Gradual structured pruning during training: :class:`ChannelPruner` masks whole channels on a schedule and removes them physically (through :mod:`prunekit.structured` surgery) at ``finalize()`` or at every step."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from prunekit.core import (
    PRUNABLE_TYPES,
    UNSET,
    ConfigMixin,
    get_mask,
    masked_parameters,
    merge_config,
    register_config,
    select_modules,
    set_mask,
)
from prunekit.errors import ConfigError, PlanError
from prunekit.training.schedules import Schedule

if TYPE_CHECKING:
    from prunekit.structured import Plan
from prunekit.training.pruner import broadcast_masks, unwrap

log = logging.getLogger(__name__)


@register_config
@dataclass(frozen=True, kw_only=True)
class ChannelPrunerConfig(ConfigMixin):
    """Options of the training-time :class:`ChannelPruner` (gradual: mask channels on a schedule, cut at the end).

    Not to be confused with :class:`prunekit.ChannelPruneConfig`, the options of the one-shot verb
    :func:`prunekit.prune_channels` (``ChannelPrun-e-Config`` = *prune* once; ``ChannelPrun-er-Config``
    = the *pruner* object used during training).

    Args:
        schedule: fraction of output channels masked in every included layer, per step.
        include: modules to prune (names, globs, types or module objects; a name covers the Linear/Conv
            layers inside it); default: every Linear/Conv except the last one (the output).
        criterion: ``"l2"`` or ``"l1"`` norm of each output channel (its weights and bias; with
            ``physical="each_step"``, of every slice coupled to it, as :func:`prunekit.prune_channels` scores).
        physical: ``"end"`` masks channels and removes them at :meth:`ChannelPruner.finalize`;
            ``"each_step"`` removes them physically at every schedule update (needs ``example_inputs``
            on the pruner; pass ``optimizer`` to have its state resized).
    """

    schedule: Schedule
    include: tuple[Any, ...] | None = None
    criterion: Literal["l1", "l2"] = "l2"
    physical: Literal["end", "each_step"] = "end"

    def __post_init__(self) -> None:
        if self.criterion not in ("l1", "l2"):
            raise ConfigError(f"channel criterion must be 'l1' or 'l2', got {self.criterion!r}")
        if self.physical not in ("end", "each_step"):
            raise ConfigError(f"physical must be 'end' or 'each_step', got {self.physical!r}")
        if self.include is not None:
            object.__setattr__(self, "include", tuple(self.include))


CHANNEL_TYPES = PRUNABLE_TYPES


class ChannelPruner:
    """Masks whole output channels gradually during training; :meth:`finalize` removes them physically.

    After :meth:`finalize` the model holds new, smaller parameter tensors: the old optimizer refers to
    the old tensors, so **build a new optimizer** (and any EMA/DDP wrapper) after finalizing.

    Args:
        model: the model to prune in place.
        config: a :class:`ChannelPrunerConfig`; or give its fields (``schedule``, ``include``,
            ``criterion``, ``physical``) as keywords. A keyword that sets the same option as ``config``
            raises ``ConfigError`` (``schedule=`` was silently dropped before 0.2).
        schedule: shortcut for ``ChannelPrunerConfig(schedule=schedule)``.
        example_inputs: inputs to trace the model with (``physical="each_step"``; also used by
            :meth:`finalize` for non-chain models).
        optimizer: with ``physical="each_step"``, its state (momentum, Adam moments) is sliced to the
            kept channels after every physical step, so it can be used on (see
            :func:`prunekit.resize_optimizer`).

    Raises:
        UnknownModuleError: if an ``include`` name is not a Linear/Conv module of the model.
        ConfigError: ``physical="each_step"`` without ``example_inputs``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ChannelPrunerConfig | None = None,
        *,
        schedule: Schedule = UNSET,
        example_inputs: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        include: Any = UNSET,
        criterion: Literal["l1", "l2"] = UNSET,
        physical: Literal["end", "each_step"] = UNSET,
    ) -> None:
        if config is None and schedule is UNSET:
            raise ConfigError("ChannelPruner needs config=ChannelPrunerConfig(...) or schedule=...")
        config = merge_config(
            ChannelPrunerConfig,
            config,
            verb="ChannelPruner",
            schedule=schedule,
            include=include,
            criterion=criterion,
            physical=physical,
        )
        if config.physical == "each_step" and example_inputs is None:
            raise ConfigError(
                "ChannelPrunerConfig(physical='each_step') removes channels with pk.prune_channels, which traces "
                "the model: pass example_inputs= (a batch of inputs) to ChannelPruner"
            )
        self.model = model
        self.config = config
        self.example_inputs = example_inputs
        self.optimizer = optimizer
        self.step_count = 0
        modules = dict(unwrap(model).named_modules())
        if config.include is None:
            names = [n for n, m in modules.items() if isinstance(m, CHANNEL_TYPES)][:-1]
        else:
            from prunekit.errors import UnknownModuleError

            picked = {
                spec: [
                    n
                    for n, m in select_modules(unwrap(model), spec, children=True)
                    if isinstance(m, CHANNEL_TYPES)
                ]
                for spec in config.include
            }
            bad = [spec for spec, hits in picked.items() if not hits]
            chosen = {n for hits in picked.values() for n in hits}
            names = [n for n in modules if n in chosen]
            if bad:
                valid = [n for n, m in modules.items() if isinstance(m, CHANNEL_TYPES)]
                raise UnknownModuleError(
                    f"ChannelPruner include names {bad} are not Linear/Conv modules; valid: {valid}"
                )
        self.layers = names
        self.initial_widths = {n: int(modules[n].weight.shape[0]) for n in names}

    def channel_masks(self) -> dict[str, torch.Tensor]:
        """Per included layer, a bool vector over output channels (``True`` = kept)."""
        out = {}
        modules = dict(unwrap(self.model).named_modules())
        for name in self.layers:
            m = modules[name]
            mask = get_mask(m, "weight")
            c = m.weight.shape[0]
            out[name] = torch.ones(c, dtype=torch.bool) if mask is None else mask.view(c, -1).any(dim=1)
        return out

    def sparsity(self) -> float:
        """Fraction of pruned (masked or removed) output channels over the included layers."""
        if self.config.physical == "each_step":
            modules = dict(unwrap(self.model).named_modules())
            now = sum(int(modules[n].weight.shape[0]) for n in self.layers)
            return 1.0 - now / max(1, sum(self.initial_widths.values()))
        masks = self.channel_masks()
        total = sum(m.numel() for m in masks.values())
        return sum(int((~m).sum()) for m in masks.values()) / total if total else 0.0

    def step(self) -> float:
        """Advance one step; mask channels when the schedule updates. Returns the target fraction."""
        t = self.step_count
        if self.config.schedule.is_update(t):
            self.prune_to(self.config.schedule.sparsity(t))
        self.step_count += 1
        return self.config.schedule.sparsity(t)

    @torch.no_grad()
    def prune_to(self, fraction: float) -> None:
        """Mask ``round(fraction * C)`` output channels (at most ``C - 1``) of each included layer.

        ``C`` is the layer's initial width; with ``physical="each_step"`` the channels are removed instead.
        """
        if self.config.physical == "each_step":
            self._remove_to(fraction)
            return
        modules = dict(unwrap(self.model).named_modules())
        order = list(modules)
        kept = self.channel_masks()
        for name in self.layers:
            m = modules[name]
            c = m.weight.shape[0]
            k = min(int(round(fraction * c)), c - 1)
            w = m.weight.detach().reshape(c, -1)
            parts = [w] + ([m.bias.detach().view(c, 1)] if m.bias is not None else [])
            rows = torch.cat(parts, dim=1)
            score = rows.abs().sum(1) if self.config.criterion == "l1" else rows.pow(2).sum(1)
            score = torch.where(kept[name], score, torch.full_like(score, -1.0))
            drop = torch.topk(score, k, largest=False).indices if k else torch.empty(0, dtype=torch.long)
            keep = torch.ones(c, dtype=torch.bool)
            keep[drop] = False
            set_mask(m, "weight", keep.view(c, *([1] * (m.weight.dim() - 1))).expand_as(m.weight))
            if m.bias is not None:
                set_mask(m, "bias", keep)
            norm = following_norm(modules, order, name, c)
            if norm is not None:  # a zeroed filter would leak through BatchNorm's shift
                set_mask(norm, "weight", keep)
                set_mask(norm, "bias", keep)
        broadcast_masks(self.model)

    def _remove_to(self, fraction: float) -> None:
        """Physically remove channels so that each layer keeps ``C0 - min(round(fraction * C0), C0 - 1)``."""
        from prunekit.structured import prune_channels, reset_grad_accumulators, resize_optimizer

        model = unwrap(self.model)
        modules = dict(model.named_modules())
        ratio: dict[str, float] = {}
        for name in self.layers:
            c0 = self.initial_widths[name]
            keep = c0 - min(int(round(fraction * c0)), c0 - 1)
            width = int(modules[name].weight.shape[0])
            if keep < width:  # prune_channels removes floor(r * width): (k + 0.5) / width removes exactly k
                ratio[name] = (width - keep + 0.5) / width
        if not ratio:
            return
        plans_before = len(getattr(model, "_prunekit_plan", []))
        prune_channels(
            model, self.example_inputs, ratio=ratio, criterion=self.config.criterion, scope="layer"
        )
        if len(getattr(model, "_prunekit_plan", [])) > plans_before:
            if self.optimizer is not None:
                resize_optimizer(self.optimizer, model)
            else:
                reset_grad_accumulators(model)
        log.info(
            "channel pruner step %d: removed channels physically to fraction %.4f", self.step_count, fraction
        )

    def _cut_chain(
        self,
        model: nn.Module,
        modules: dict[str, nn.Module],
        chain: list[tuple[str, nn.Module, nn.Module, torch.Tensor, int]],
    ) -> None:
        """Remove the masked channels of a plain chain through :mod:`prunekit.structured` surgery.

        Parameters keep their identity (their ``.data`` is sliced, as ``prune_channels`` does), the plan is
        recorded in ``model._prunekit_plan`` (so ``pk.save`` / ``pk.load`` re-apply it), and the weight masks
        are sliced with the same indices.
        """
        from prunekit.structured import apply_surgery, record_plan, reset_grad_accumulators

        plan = chain_plan(modules, chain)
        apply_surgery(model, plan)  # slices each weight's mask buffer with it
        record_plan(model, plan)
        reset_grad_accumulators(model)  # autograd caches the old shapes of the sliced parameters

    def _finalize_with_graph(self, example_inputs: Any, keep: dict[str, torch.Tensor]) -> nn.Module:
        return finalize_with_graph(self, example_inputs, keep)

    def finalize(self, example_inputs: Any = None) -> nn.Module:
        """Remove the masked channels physically (in place) and return the model. Rebuild the optimizer after.

        A chain of Linear/Conv layers in module order (each pruned layer feeding the next Linear/Conv,
        with an optional BatchNorm, activations or a flatten between) is cut directly. Any other graph
        (grouped/depthwise convs, residuals, concatenations, ...) goes through
        :func:`prunekit.prune_channels` with ``example_inputs``, removing exactly the masked channels
        of each pruned layer and everything coupled to them (their traced dependency groups).

        With ``physical="each_step"`` the channels are already gone: the model is returned as is.

        Raises:
            PlanError: if the model is not a chain and ``example_inputs`` is missing, or
                :func:`prunekit.prune_channels` cannot apply the plan; nothing is changed in that case.
        """
        if self.config.physical == "each_step":
            self.layers_finalized = True
            return self.model
        if example_inputs is None:
            example_inputs = self.example_inputs
        model = unwrap(self.model)
        modules = dict(model.named_modules())
        order = [n for n, m in modules.items() if isinstance(m, CHANNEL_TYPES)]
        keep = self.channel_masks()
        plan = []
        for name in self.layers:
            idx = order.index(name)
            producer = modules[name]
            if idx + 1 >= len(order):
                raise PlanError(f"cannot remove output channels of {name!r}: no Linear/Conv consumes them")
            consumer = modules[order[idx + 1]]
            c = producer.weight.shape[0]
            cin = consumer.weight.shape[1]
            groups = getattr(consumer, "groups", 1)
            if groups != 1 or getattr(producer, "groups", 1) != 1 or cin % c:
                if example_inputs is not None:
                    return self._finalize_with_graph(example_inputs, keep)
                raise PlanError(
                    f"cannot remove channels of {name!r} ({c} outputs) into {order[idx + 1]!r} "
                    f"({cin} inputs, groups={groups}): not a plain chain. Pass example_inputs= so that "
                    "finalize can use pk.prune_channels' dependency graph."
                )
            plan.append((name, producer, consumer, keep[name], cin // c))
        self._cut_chain(model, modules, plan)
        from prunekit.core import remove_mask

        for mp in list(masked_parameters(model)):  # the masks of removed channels are all-True now
            if bool(mp.mask.all()):
                remove_mask(mp.module, mp.name)
        self.layers_finalized = True
        return self.model


def chain_plan(
    modules: dict[str, nn.Module], chain: list[tuple[str, nn.Module, nn.Module, torch.Tensor, int]]
) -> Plan:
    """The surgery plan of a plain chain: each producer's kept rows, its BatchNorm, the consumer's columns."""
    from prunekit.structured import AttrUpdate, Plan, PlanEntry

    entries: list[PlanEntry] = []
    attrs: list[AttrUpdate] = []
    order = list(modules)
    names = {id(m): n for n, m in modules.items()}

    def keep(module: nn.Module, tensors: tuple[str, ...], dim: int, idx: list[int]) -> None:
        for tname in tensors:
            tensor = getattr(module, tname, None)
            if isinstance(tensor, torch.Tensor):
                fqn = f"{names[id(module)]}.{tname}"
                entries.append(PlanEntry(fqn=fqn, dim=dim, size=tensor.shape[dim], kept=tuple(idx)))

    def width(module: nn.Module, attr: str, new: int) -> None:
        attrs.append(AttrUpdate(module=names[id(module)], name=attr, old=getattr(module, attr), new=new))

    for name, producer, consumer, kept, per in chain:
        rows = kept.nonzero().view(-1)
        # a Linear after flatten(C, H*W) sees channel c as columns [c*HW, (c+1)*HW)
        cols = (rows.view(-1, 1) * per + torch.arange(per).view(1, -1)).view(-1).tolist()
        keep(producer, ("weight", "bias"), 0, rows.tolist())
        width(producer, "out_features" if isinstance(producer, nn.Linear) else "out_channels", len(rows))
        norm = following_norm(modules, order, name, kept.numel())
        if norm is not None:
            keep(norm, ("weight", "bias", "running_mean", "running_var"), 0, rows.tolist())
            width(norm, "num_features", len(rows))
        keep(consumer, ("weight",), 1, cols)
        width(consumer, "in_features" if isinstance(consumer, nn.Linear) else "in_channels", len(cols))
    return Plan(entries=tuple(entries), attributes=tuple(attrs))


class KeepMaskCriterion:
    """Channel criterion scoring each unit by the channel masks: masked channels score 0, kept ones 1."""

    name = "channel-mask"
    needs_grad = False

    def __init__(self, keep: dict[str, torch.Tensor]) -> None:
        self.keep = keep

    def score(self, group: Any, params: Any, module_types: Any) -> torch.Tensor:
        total = torch.zeros(group.n_units, dtype=torch.float64)
        for m in group.members:
            module_name, _, attr = m.name.rpartition(".")
            kept = self.keep.get(module_name)
            if kept is None or attr != "weight" or m.dim != 0:
                continue
            units = torch.as_tensor(m.units)
            sel = units >= 0
            total.index_add_(0, units[sel], kept.double()[sel])
        return total


def finalize_with_graph(
    pruner: ChannelPruner, example_inputs: Any, keep: dict[str, torch.Tensor]
) -> nn.Module:
    from prunekit.core import remove_mask
    from prunekit.structured import prune_channels

    model = unwrap(pruner.model)
    modules = dict(model.named_modules())
    # masks of the pruned layers (and the norms masked with them) go away: their zeros stay in the weights
    touched = set(pruner.layers)
    order = list(modules)
    for name in pruner.layers:
        norm = following_norm(modules, order, name, modules[name].weight.shape[0])
        if norm is not None:
            touched.add(next(n for n, m in modules.items() if m is norm))
    saved = [
        (mp.module, mp.name, mp.mask.clone()) for mp in masked_parameters(model) if mp.module_name in touched
    ]
    for module, pname, _ in saved:
        remove_mask(module, pname)
    ratio = {name: float((~k).sum()) / k.numel() for name, k in keep.items()}
    try:
        prune_channels(model, example_inputs, ratio=ratio, criterion=KeepMaskCriterion(keep), scope="layer")
    except Exception as e:
        for module, pname, mask in saved:
            set_mask(module, pname, mask)
        if isinstance(e, PlanError):
            raise
        raise PlanError(f"pk.prune_channels could not remove the masked channels: {e}") from e
    return pruner.model


def following_norm(modules: dict[str, nn.Module], order: list[str], name: str, c: int) -> nn.Module | None:
    i = order.index(name)
    if i + 1 < len(order):
        nxt = modules[order[i + 1]]
        if isinstance(nxt, nn.modules.batchnorm._BatchNorm) and nxt.num_features == c and nxt.affine:
            return nxt
    return None


__all__ = [
    "ChannelPruner",
    "ChannelPrunerConfig",
    "KeepMaskCriterion",
    "chain_plan",
    "finalize_with_graph",
    "following_norm",
]
