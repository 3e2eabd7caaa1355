"""Layer pruning: score whole blocks and remove the least important ones physically.

Blocks are found by one recorded forward pass. A block is a composite module (a module with
parameterised children, itself not a ModuleList/Sequential) held in an ``nn.ModuleList`` or ``nn.Sequential`` whose siblings run as a
chain (each one's output is the next one's input), called once, and whose hidden state keeps its
shape and dtype across it::

    ModuleList ──► block 0 ──► block 1 ──► block 2 ──► ...     x_out.shape == x_in.shape
                                 │
                 removing it == skipping it (output := input), so the model stays valid

Importance of a block (lowest is removed first):

* ``block_influence``: ``1 - cos(x_in, x_out)`` averaged over tokens (ShortGPT, Men et al. 2024);
  tokens are the last dim of (B, T, D) / (B, D) states, the channel dim of conv maps;
  padding tokens are ignored when the inputs carry an ``attention_mask``;
* ``loss``: the measured loss increase on ``data`` when the block alone is skipped;
* ``position``: later blocks first (the "drop the last layers" baseline).

Removal deletes the blocks from their container (re-indexed), and for Hugging Face models updates
``config.num_hidden_layers``, ``config.layer_types`` and every ``layer_idx`` attribute, so
``save_pretrained`` -> ``from_pretrained`` rebuilds the shallower model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from prunekit.compat import renamed_kwargs
from prunekit.core import (
    UNSET,
    ConfigMixin,
    EvalMode,
    check_count,
    evaluate,
    is_glob,
    merge_config,
    register_config,
    select_modules,
    take_batches,
    take_inputs,
)
from prunekit.errors import ConfigError, DataRequiredError, PlanError, UnknownModuleError
from prunekit.structured.blocks import (
    BlockInfo,
    block_influence,
    find_blocks,
    layer_removals,
    remove_blocks,
    remove_blocks_undoable,
    skip_blocks,
)
from prunekit.structured.surgery import LayerRemoval, Plan, record_plan

LayerCriterion = Literal["block_influence", "loss", "position"]
LAYER_CRITERIA: tuple[str, ...] = ("block_influence", "loss", "position")


@register_config
@dataclass(frozen=True, kw_only=True)
class LayerPruningConfig(ConfigMixin):
    """Every option of :func:`prune_layers` (the model, inputs and data are arguments of the verb).

    Attributes:
        n: number of blocks to remove (at least 1; at least one block of each container stays).
        criterion: ``"block_influence"`` (default), ``"loss"`` or ``"position"`` (last blocks).
        include: candidate blocks: one container (its qualified name, e.g. ``"model.layers"``) or a
            list of blocks (names, globs, types, module objects; was ``blocks``); by default every
            removable block found.
        exclude: blocks never removed: names, fnmatch globs, module types or module objects.
        max_batches: use at most this many batches of ``data``.
    """

    n: int = 1
    criterion: LayerCriterion = "block_influence"
    include: str | tuple[Any, ...] | None = None
    exclude: tuple[Any, ...] | None = None
    max_batches: int | None = None

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, (list, set, frozenset)):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        if self.criterion not in LAYER_CRITERIA:
            raise ConfigError(
                f"unknown layer criterion {self.criterion!r}; valid names are {', '.join(LAYER_CRITERIA)}"
            )
        check_count("prune_layers", "n", self.n, minimum=1)  # the number of blocks to remove
        check_count("prune_layers", "max_batches", self.max_batches, minimum=1, optional=True)


@dataclass(frozen=True, kw_only=True)
class LayerPruningResult:
    """What :func:`prune_layers` removed.

    Attributes:
        removed: original qualified names of the removed blocks, in model order.
        scores: importance of every candidate block (higher = more important).
        criterion: the criterion used.
        blocks_before: number of candidate blocks before.
        blocks_after: number of candidate blocks after.
        config_updated: names of the Hugging Face config fields that were updated.
    """

    removed: tuple[str, ...]
    scores: dict[str, float]
    criterion: str
    blocks_before: int
    blocks_after: int
    config_updated: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "removed": list(self.removed),
            "scores": dict(self.scores),
            "criterion": self.criterion,
            "blocks_before": self.blocks_before,
            "blocks_after": self.blocks_after,
            "config_updated": list(self.config_updated),
        }

    def __str__(self) -> str:
        lines = [
            f"Layer pruning ({self.criterion}): removed {len(self.removed)} of {self.blocks_before} blocks",
            *(
                f"  {n:<40} {s:10.5f}{'  removed' if n in self.removed else ''}"
                for n, s in self.scores.items()
            ),
        ]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Recording hidden states across blocks.
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Scoring.
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Removal.
# ----------------------------------------------------------------------------------------------


@renamed_kwargs(blocks="include")
def prune_layers(
    model: nn.Module,
    example_inputs: Any,
    n: int = UNSET,
    *,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    criterion: LayerCriterion = UNSET,
    include: str | Sequence[Any] | None = UNSET,
    exclude: Sequence[Any] | None = UNSET,
    max_batches: int | None = UNSET,
    config: LayerPruningConfig | None = None,
) -> LayerPruningResult:
    """Remove the ``n`` least important blocks of ``model`` in place; the model gets shallower.

    Args:
        model: the model (e.g. a Hugging Face transformer or a ResNet-like network).
        example_inputs: one batch of inputs (tensor, tuple or kwargs dict), used to find blocks and,
            without ``data``, to score them.
        n: number of blocks to remove (at least 1; at least one block of each container stays).
        data: needed by ``criterion="loss"`` (``(inputs, targets)`` pairs or dicts with ``labels``);
            optional for ``block_influence``, which averages over these batches' inputs and accepts
            calibration data without targets (tensors, dicts / HF batches, 1-tuples). Padding tokens
            (``attention_mask == 0``) are left out. Unused by ``position``.
        loss_fn: ``loss_fn(outputs, targets)`` for ``criterion="loss"``.
        criterion: ``"block_influence"`` (default), ``"loss"`` or ``"position"`` (last blocks).
        include: restrict candidates to one container (its qualified name, e.g. ``"model.layers"``)
            or to a list of blocks (names, globs, types, module objects); by default every removable
            block found (``blocks=`` is the
            deprecated spelling).
        exclude: blocks never removed: names, fnmatch globs, module types or module objects.
        max_batches: use at most this many batches of ``data``.
        config: a :class:`LayerPruningConfig` holding every option above but ``data``/``loss_fn``;
            a keyword that sets the same option as ``config`` raises ``ConfigError``.

    Returns:
        A :class:`LayerPruningResult` with the removed names and every candidate's score.

    Raises:
        PlanError: a named block cannot be removed (its shape changes, or it is not in a chain),
            or fewer than ``n`` blocks can be removed. The model is left untouched.
        ConfigError: bad ``n`` or ``criterion``.
        DataRequiredError: ``criterion="loss"`` without ``data`` and ``loss_fn``.

    Example:
        >>> import torch, prunekit as pk
        >>> class Res(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.f = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())
        ...     def forward(self, x):
        ...         return x + self.f(x)
        >>> model = torch.nn.Sequential(*[Res() for _ in range(4)])
        >>> res = pk.prune_layers(model, torch.randn(2, 8), n=1, criterion="position")
        >>> len(model), res.removed
        (3, ('3',))
    """
    cfg = merge_config(
        LayerPruningConfig,
        config,
        verb="prune_layers",
        n=n,
        criterion=criterion,
        include=include,
        exclude=exclude,
        max_batches=max_batches,
    )
    n, criterion, blocks, max_batches = cfg.n, cfg.criterion, cfg.include, cfg.max_batches
    if criterion not in LAYER_CRITERIA:
        raise ConfigError(
            f"unknown layer criterion {criterion!r}; valid names are {', '.join(LAYER_CRITERIA)}"
        )
    if criterion == "loss" and (data is None or loss_fn is None):
        raise DataRequiredError("criterion='loss' needs data= (iterable of (inputs, targets)) and loss_fn=")
    infos = find_blocks(model, example_inputs)
    candidates = _candidates(model, infos, blocks)
    if cfg.exclude:
        excluded = {n for n, _ in select_modules(model, cfg.exclude, what="exclude")}
        candidates = [b for b in candidates if b.name not in excluded]
    if len(candidates) < n:
        pool = [b for b in infos if blocks is None or b.container == blocks or b.name in blocks]
        not_removable = [f"{b.name}: {b.reason}" for b in pool if not b.removable][:8]
        raise PlanError(
            f"cannot remove {n} blocks: only {len(candidates)} removable block(s) found "
            f"({[b.name for b in candidates]}). Not removable: {not_removable or 'none'}. Lower n"
        )
    sizes = {
        b.container: len(list((model.get_submodule(b.container) if b.container else model).children()))
        for b in candidates
    }

    names = [b.name for b in candidates]
    if criterion == "block_influence":  # calibration: inputs only (tensors, dicts, 1-tuples or pairs)
        inputs = take_inputs(data, max_batches, "prune_layers") if data is not None else [example_inputs]
        scores = block_influence(model, names, inputs)
    elif criterion == "loss":
        batches = take_batches(data, max_batches, "prune_layers")
        assert loss_fn is not None
        with EvalMode(model):
            base = evaluate(model, batches, loss_fn).loss
            scores = {}
            for name in names:
                with skip_blocks(model, [name]):
                    scores[name] = evaluate(model, batches, loss_fn).loss - base
    else:
        scores = {name: float(len(names) - i) for i, name in enumerate(names)}

    chosen: list[BlockInfo] = []
    left = dict(sizes)
    for b in sorted(candidates, key=lambda b: (scores[b.name], -names.index(b.name))):
        if len(chosen) == n:
            break
        if left[b.container] > 1:  # never empty a container
            chosen.append(b)
            left[b.container] -= 1
    if len(chosen) < n:
        raise PlanError(f"cannot remove {n} blocks without emptying a container ({sizes}); lower n")
    chosen.sort(key=lambda b: names.index(b.name))
    removals = layer_removals(model, chosen)
    updated = remove_blocks(model, chosen)
    record_plan(model, Plan(entries=(), layers=tuple(LayerRemoval.from_dict(r) for r in removals)))
    return LayerPruningResult(
        removed=tuple(b.name for b in chosen),
        scores=scores,
        criterion=criterion,
        blocks_before=len(candidates),
        blocks_after=len(candidates) - len(chosen),
        config_updated=updated,
    )


def _candidates(
    model: nn.Module, infos: Sequence[BlockInfo], blocks: str | Sequence[Any] | None
) -> list[BlockInfo]:
    if blocks is None:
        return [b for b in infos if b.removable]
    by_name = {b.name: b for b in infos}
    if isinstance(blocks, str):
        chosen = [b for b in infos if b.container == blocks]
        if not chosen:
            containers = sorted({b.container for b in infos})
            raise UnknownModuleError(
                f"{blocks!r} is not a ModuleList/Sequential of blocks in {type(model).__name__}; "
                f"containers with blocks: {containers}"
            )
        return [b for b in chosen if b.removable]  # the count check reports the others' reasons
    else:
        picked = {n for n, _ in select_modules(model, blocks, what="include")}
        unknown = [s for s in blocks if isinstance(s, str) and not is_glob(s) and s not in by_name]
        if unknown:
            raise UnknownModuleError(
                f"{unknown} are not blocks (composite children of a ModuleList/Sequential that ran); "
                f"blocks found: {list(by_name)[:12]}"
            )
        chosen = [b for b in infos if b.name in picked]
    bad = [b for b in chosen if not b.removable]
    if bad:
        raise PlanError(
            "cannot remove "
            + "; ".join(f"{b.name!r}: {b.reason}" for b in bad[:5])
            + ". Only blocks whose output has the input's shape, in a chain of blocks, can be removed; "
            "leave these out of include="
        )
    return chosen


__all__ = [
    "LayerPruningConfig",
    "BlockInfo",
    "LayerPruningResult",
    "block_influence",
    "find_blocks",
    "layer_removals",
    "prune_layers",
    "remove_blocks",
    "remove_blocks_undoable",
    "skip_blocks",
]
