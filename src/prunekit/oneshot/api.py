"""``prune_oneshot``: one-shot pruning of an in-memory transformer with calibration data."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from prunekit.core import Skipped, get_mask, remove_mask, resolve_targets
from prunekit.errors import ConfigError
from prunekit.oneshot.config import Method, OneShotConfig
from prunekit.oneshot.driver import Plan, bias_of, check_plan, layer_sparsities, run_blocks, weight_of
from prunekit.oneshot.engine import capture_inputs, find_blocks, is_linear
from prunekit.oneshot.result import OneShotResult


class Unset:
    """Type of :data:`UNSET`: "this keyword was not given" (a default can never clash with config=)."""

    def __repr__(self) -> str:
        return "<default>"


UNSET = Unset()


def resolve_config(config: OneShotConfig | None, options: Mapping[str, Any]) -> OneShotConfig:
    """``config`` (or the defaults) with the given keyword ``options``; both for one option is an error.

    Raises:
        ConfigError: ``config`` is not a :class:`OneShotConfig`, or it and a keyword both set something.
    """
    given = {k: v for k, v in options.items() if not isinstance(v, Unset)}
    if config is None:
        return OneShotConfig(**given)
    if not isinstance(config, OneShotConfig):
        raise ConfigError(f"config must be a OneShotConfig, got {type(config).__name__}")
    if given:
        raise ConfigError(
            f"pass either config= or the keyword(s) {sorted(given)}, not both; "
            "use dataclasses.replace(config, ...) for a variant"
        )
    return config


def plan_for(model: nn.Module, cfg: OneShotConfig) -> tuple[str, Plan, list[Skipped]]:
    """Blocks, the layers to prune inside each and their sparsities; nothing is changed.

    Raises:
        ConfigError: no transformer blocks, or nothing left to prune.
        UnknownModuleError: an include/exclude/layer_ratios name matches nothing.
        PatternError: a layer's inputs are not a multiple of M.
    """
    block_name, blocks = find_blocks(model)
    targets, skipped = resolve_targets(model, cfg.include, cfg.exclude)
    prefixes = [f"{block_name}.{i}." for i in range(len(blocks))]
    per_block: list[dict[str, nn.Module]] = [{} for _ in blocks]
    for t in targets:
        where = next((i for i, p in enumerate(prefixes) if t.name.startswith(p)), None)
        if where is None:
            skipped.append(Skipped(t.name, f"outside the transformer blocks {block_name!r}"))
        elif not is_linear(t.module):
            skipped.append(Skipped(t.name, f"{t.kind} is not a Linear layer"))
        else:
            per_block[where][t.name] = t.module
    names = [n for layers in per_block for n in layers]
    if not names:
        raise ConfigError(
            f"no Linear layers selected inside the transformer blocks {block_name!r}"
            + (" after include=/exclude=" if cfg.include is not None or cfg.exclude is not None else "")
        )
    plan = Plan(blocks=list(blocks), layers=per_block, sparsity=layer_sparsities(cfg, names))
    check_plan(cfg, plan)
    return block_name, plan, skipped


@contextlib.contextmanager
def rollback(plan: Plan) -> Iterator[None]:
    """Restore every planned layer's weight, bias and mask if the body raises (the model is left as it was)."""
    saved: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
    for layers in plan.layers:
        for module in layers.values():
            old = get_mask(module, "weight")
            bias = bias_of(module)
            saved.append(
                (
                    module,
                    weight_of(module).detach().clone(),
                    None if bias is None else bias.detach().clone(),
                    None if old is None else old.clone(),
                )
            )
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for module, weight, old_bias, mask in saved:
                if mask is None:
                    remove_mask(module, "weight")
                else:
                    get_mask(module, "weight").copy_(mask)  # type: ignore[union-attr]
                weight_of(module).copy_(weight)
                if old_bias is not None:
                    bias_of(module).copy_(old_bias)  # type: ignore[union-attr]
        raise


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while calibrating; every module's own train/eval flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def prune_oneshot(
    model: nn.Module,
    data: Iterable[Any],
    method: Method | Unset = UNSET,
    sparsity: float | None | Unset = UNSET,
    pattern: str | None | Unset = UNSET,
    include: Any = UNSET,
    exclude: Any = UNSET,
    layer_ratios: str | Mapping[str, float] | None | Unset = UNSET,
    block_size: int | Unset = UNSET,
    dampening: float | Unset = UNSET,
    max_batches: int | None | Unset = UNSET,
    *,
    progress: bool | Unset = UNSET,
    config: OneShotConfig | None = None,
) -> OneShotResult:
    """Prune a transformer in place, block by block, reconstructing the weights on calibration data.

    The calibration batches run through the model one block at a time; each block's Linear layers
    are pruned from their input statistics, and the *pruned* block's outputs feed the next block.
    Masks are prunekit's usual bool buffers (``pk.sparsity``, ``pk.save``, ``pk.make_permanent``
    work as after ``prune_weights``); the kept weights are updated.

    Args:
        model: the transformer (e.g. a ``transformers`` model); pruned in place.
        data: an iterable of model inputs (token-id tensors, tokenizer dicts, HF batches); no
            targets needed. :func:`calibration_batches` makes them from strings.
        method: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` or ``"refit"`` (default, see
            :class:`OneShotConfig`).
        sparsity: fraction of each layer pruned, in [0, 1) (default 0.5).
        pattern: ``"N:M"`` such as ``"2:4"``; with a larger ``sparsity``, N:M plus more.
        include: module names, globs or types to prune (default: every Linear in the blocks).
        exclude: module names, globs or types to leave dense.
        layer_ratios: ``None``, ``"owl"`` or ``{module name or glob: sparsity}``.
        block_size: SparseGPT's lazy column block.
        dampening: relative Hessian dampening.
        max_batches: use at most this many batches of ``data``.
        progress: a tqdm bar over blocks.
        config: a :class:`OneShotConfig` instead of the keywords (not both).

    Returns:
        A :class:`OneShotResult` (per-layer sparsity, reconstruction error, time).

    Raises:
        ConfigError: bad option, no blocks found, nothing to prune.
        UnknownModuleError: an include/exclude/layer_ratios name matches nothing.
        PatternError: a layer cannot take the pattern.
        DataRequiredError: empty calibration data.
        PrunekitError: a batch does not fit the model.

    On any error the model is left exactly as it was.

    Example:
        >>> import torch, prunekit as pk
        >>> from prunekit.oneshot import prune_oneshot
        >>> class Block(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(16, 16)
        ...     def forward(self, x):
        ...         return x + self.fc(x)
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layers = torch.nn.ModuleList(Block() for _ in range(2))
        ...     def forward(self, x):
        ...         for layer in self.layers:
        ...             x = layer(x)
        ...         return x
        >>> net = Net()
        >>> result = prune_oneshot(net, [torch.randn(4, 8, 16)], sparsity=0.5, progress=False)
        >>> round(pk.sparsity(net), 2)
        0.5
    """
    options = {
        "method": method,
        "sparsity": sparsity,
        "pattern": pattern,
        "include": include,
        "exclude": exclude,
        "layer_ratios": layer_ratios,
        "block_size": block_size,
        "dampening": dampening,
        "max_batches": max_batches,
        "progress": progress,
    }
    cfg = resolve_config(config, options)
    start = time.perf_counter()
    block_name, plan, skipped = plan_for(model, cfg)
    with eval_mode(model):
        batches, hidden = capture_inputs(model, plan.blocks[0], data, cfg.max_batches)
        tokens = sum(
            int(b.token_mask.sum()) if b.token_mask is not None else h.shape[:-1].numel()
            for b, h in zip(batches, hidden, strict=True)
        )
        with rollback(plan):
            layers, not_run = run_blocks(cfg, plan, batches, hidden)
    return OneShotResult(
        method=cfg.method,
        pattern=cfg.pattern,
        target_sparsity=cfg.target_sparsity,
        blocks=block_name,
        layers=tuple(layers),
        skipped=tuple(skipped + not_run),
        calibration_tokens=tokens,
        seconds=time.perf_counter() - start,
    )


def config_fields() -> tuple[str, ...]:
    """Names of every :class:`OneShotConfig` option (what a recipe's ``oneshot:`` step may set)."""
    return tuple(f.name for f in fields(OneShotConfig))


__all__ = [
    "UNSET",
    "Unset",
    "config_fields",
    "eval_mode",
    "plan_for",
    "prune_oneshot",
    "resolve_config",
    "rollback",
]
