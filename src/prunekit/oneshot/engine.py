"""Layer-by-layer calibration: run the calibration batches one transformer block at a time.

::

    model(batch) ──► embeddings ──► [pre-hook on block 0: store (args, kwargs), stop]   once
    for each block b:
        x ──► block b (dense)  ──► every Linear's input: H += xᵀx, Σx, tokens
        prune every Linear of b from its statistics (in place)
        x ──► block b (pruned) ──► x of block b+1        (the pruned outputs propagate)

Peak memory is one block, its statistics and the calibration activations of one block boundary.
Blocks are found from the model itself: the longest ``nn.ModuleList`` of modules of one class
that hold Linear layers (``encoder.layer``, ``model.layers``, ``transformer.h``, ...).
Padding tokens (``attention_mask == 0`` in a dict batch) are left out of every statistic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.core import is_hf_conv1d
from prunekit.errors import ConfigError, DataRequiredError, PrunekitError


class _StopForward(Exception):
    """Raised by the block-0 pre-hook once its inputs are stored (the rest of the model is not run)."""


@dataclass
class Batch:
    """The inputs of block 0 for one calibration batch (the hidden state is kept separately)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    token_mask: torch.Tensor | None  # (B, T) bool: real tokens, or None (all real)
    positional: bool  # hidden state passed as args[0] (else as kwargs["hidden_states"])


@dataclass
class LayerStats:
    """Calibration statistics of one layer input (shared by layers that read the same tensor)."""

    hessian: torch.Tensor  # (in, in) Σ xᵀx
    total: torch.Tensor | None = None  # (in,) Σ x (for the bias)
    tokens: int = 0


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the longest ``nn.ModuleList`` of same-class modules holding Linears.

    Raises:
        ConfigError: no such list (not a transformer-style model).
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(m) for m in module}
        if len(kinds) != 1:
            continue
        if not any(is_linear(m) for m in module[0].modules()):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise ConfigError(
            f"no transformer blocks found in {type(model).__name__}: one-shot pruning calibrates block by "
            "block and needs an nn.ModuleList of repeated layers holding Linear layers"
        )
    return best


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or Hugging Face's GPT-2 ``Conv1D``: the layers one-shot pruning reconstructs."""
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def _token_mask(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            return mask.to(torch.bool)
    return None


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple/list, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _strip_cache(value: Any) -> Any:
    """KV caches are not calibration inputs: a block run many times must not append to one."""
    return None if "Cache" in type(value).__name__ else value


@contextlib.contextmanager
def _no_cache(model: nn.Module) -> Iterator[None]:
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "use_cache", None)
    if isinstance(old, bool):
        cfg.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if isinstance(old, bool):
            cfg.use_cache = old  # type: ignore[union-attr]


def capture_inputs(
    model: nn.Module, first_block: nn.Module, data: Iterable[Any], max_batches: int | None
) -> tuple[list[Batch], list[torch.Tensor]]:
    """Run each batch up to block 0 and keep block 0's inputs: ``(batches, hidden states)``.

    Raises:
        DataRequiredError: ``data`` is empty or not iterable.
        PrunekitError: a batch does not fit the model (the model's own error is chained).
    """
    if data is None or isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise DataRequiredError(
            "one-shot pruning needs calibration data: an iterable of model inputs (token-id tensors or "
            "tokenizer dicts), e.g. pk.calibration_batches(texts, tokenizer)"
        )
    batches: list[Batch] = []
    hidden: list[torch.Tensor] = []
    stored: dict[str, Any] = {}

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        stored["args"], stored["kwargs"] = args, kwargs
        raise _StopForward

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), _no_cache(model):
            for i, batch in enumerate(data):
                if max_batches is not None and i >= max_batches:
                    break
                stored.clear()
                try:
                    call_model(model, batch)
                except _StopForward:
                    pass
                except Exception as e:
                    raise PrunekitError(
                        f"calibration batch {i} does not fit {type(model).__name__}: {type(e).__name__}: {e}. "
                        "Pass what model(**batch) / model(batch) accepts (e.g. a tokenizer's output)"
                    ) from e
                if "args" not in stored:
                    raise PrunekitError(
                        f"calibration batch {i} ran through {type(model).__name__} without reaching its first "
                        "transformer block; the blocks found are not on the forward path"
                    )
                args, kwargs = stored["args"], {k: _strip_cache(v) for k, v in stored["kwargs"].items()}
                if args:
                    state, rest, positional = args[0], tuple(_strip_cache(a) for a in args[1:]), True
                else:
                    state, rest, positional = kwargs.pop("hidden_states", None), (), False
                if not isinstance(state, torch.Tensor):
                    raise PrunekitError(
                        f"the first transformer block of {type(model).__name__} got no hidden-state tensor "
                        "(first positional argument or hidden_states=)"
                    )
                mask = _token_mask(batch)
                if mask is not None and tuple(mask.shape) != tuple(state.shape[:2]):
                    mask = None
                batches.append(Batch(rest, kwargs, mask, positional))
                hidden.append(state.detach())
    finally:
        handle.remove()
    if not batches:
        raise DataRequiredError(
            "the calibration data is empty: pass at least one batch (e.g. 128 sentences via "
            "pk.calibration_batches(texts, tokenizer))"
        )
    return batches, hidden


def run_block(block: nn.Module, batch: Batch, state: torch.Tensor) -> torch.Tensor:
    """One block's output hidden state for one batch."""
    if batch.positional:
        out = block(state, *batch.args, **batch.kwargs)
    else:
        out = block(*batch.args, hidden_states=state, **batch.kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise PrunekitError(f"block {type(block).__name__} returned {type(out).__name__}, expected a tensor")
    return out.detach()


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The ``(tokens, features)`` float32 matrix of an input, padding tokens removed."""
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        x = x[mask]
    return x.reshape(-1, x.shape[-1]).to(torch.float32)


@dataclass
class _Recorder:
    """Forward pre-hooks on a block's layers accumulating :class:`LayerStats` (one per distinct input)."""

    stats: dict[str, LayerStats] = field(default_factory=dict)
    mask: torch.Tensor | None = None
    _seen: dict[int, tuple[torch.Tensor, str]] = field(default_factory=dict)

    def hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            prev = self._seen.get(id(x))
            if prev is not None and prev[0] is x:  # same tensor as a sibling layer (q/k/v): share
                self.stats.setdefault(name, self.stats[prev[1]])
                return
            self._seen[id(x)] = (x, name)
            rows = _rows(x, self.mask)
            st = self.stats.get(name)
            if st is None:
                d = rows.shape[1]
                st = LayerStats(torch.zeros(d, d), torch.zeros(d))
                self.stats[name] = st
            st.hessian.addmm_(rows.T, rows)
            assert st.total is not None
            st.total.add_(rows.sum(0))
            st.tokens += rows.shape[0]

        return pre


def block_statistics(
    block: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Sequence[Batch],
    hidden: Sequence[torch.Tensor],
) -> dict[str, LayerStats]:
    """Statistics of every layer of ``block`` (still dense) on the calibration stream ``hidden``.

    Args:
        block: the block.
        layers: ``{name: module}`` of the layers inside ``block`` to measure.
        batches: the captured block inputs.
        hidden: the hidden states at this block's input (outputs of the pruned blocks before).

    Returns:
        Statistics by layer name (layers the forward never reached are missing).
    """
    rec = _Recorder()
    handles = [m.register_forward_pre_hook(rec.hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for j, batch in enumerate(batches):
                rec.mask = batch.token_mask
                run_block(block, batch, hidden[j])
                rec._seen.clear()
    finally:
        for h in handles:
            h.remove()
    return rec.stats


def propagate(
    block: nn.Module, batches: Sequence[Batch], hidden: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Every batch's hidden state after ``block`` (the block as it is now: pruned)."""
    with torch.no_grad():
        return [run_block(block, b, h) for b, h in zip(batches, hidden, strict=True)]


__all__ = [
    "Batch",
    "LayerStats",
    "block_statistics",
    "call_model",
    "capture_inputs",
    "find_blocks",
    "is_linear",
    "propagate",
    "run_block",
]
