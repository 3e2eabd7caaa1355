"""Dry run: what a pruning call would remove, without changing the model.

``preview(model, example_inputs, what="channels", ratio=0.3)`` runs the real verb on a deep copy and
returns its result (groups, widths before/after, params, MACs, per-layer sparsity, removed blocks)
together with the MACs and non-zero parameters before and after. The user's model is not touched (its
tensors, masks and plans stay bit-identical); the copy costs one extra model in memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from prunekit.core import count_macs, count_nonzeros, count_params
from prunekit.errors import ConfigError

What = Literal["channels", "weights", "layers", "heads"]


@dataclass(frozen=True, kw_only=True)
class Preview:
    """What a pruning call would do.

    Attributes:
        what: ``"channels"``, ``"weights"``, ``"layers"`` or ``"heads"``.
        result: the verb's own result object (``ChannelPruneResult``, ``WeightPruningResult``, ...).
        params_before / params_after: parameter counts.
        nonzeros_before / nonzeros_after: non-zero parameters (weight pruning changes these).
        macs_before / macs_after: MACs of one forward pass on ``example_inputs`` (``None`` without them).
    """

    what: str
    result: Any
    params_before: int
    params_after: int
    nonzeros_before: int
    nonzeros_after: int
    macs_before: int | None
    macs_after: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the verb's result under ``"result"``)."""
        inner = self.result.to_dict() if hasattr(self.result, "to_dict") else None
        return {
            "what": self.what,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "nonzeros_before": self.nonzeros_before,
            "nonzeros_after": self.nonzeros_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "result": inner,
        }

    def __str__(self) -> str:
        def ratio(a: int | None, b: int | None) -> str:
            return f"{b / a:.1%}" if a and b is not None else "-"

        lines = [
            f"preview ({self.what}): nothing was changed",
            f"  params    {self.params_before:,} -> {self.params_after:,} ({ratio(self.params_before, self.params_after)})",
            f"  non-zeros {self.nonzeros_before:,} -> {self.nonzeros_after:,} "
            f"({ratio(self.nonzeros_before, self.nonzeros_after)})",
        ]
        if self.macs_before is not None:
            lines.append(f"  MACs      {self.macs_before:,} -> {self.macs_after:,} "
                         f"({ratio(self.macs_before, self.macs_after)})")  # fmt: skip
        return "\n".join([*lines, "", str(self.result)])


def preview(model: nn.Module, example_inputs: Any = None, what: What = "channels", **kwargs: Any) -> Preview:
    """Run ``prune_<what>`` on a copy of ``model`` and report what it would remove.

    Args:
        model: the model (left exactly as it is).
        example_inputs: one batch of inputs (needed for channels, heads and layers; used for MACs).
        what: ``"channels"`` (:func:`prunekit.prune_channels`), ``"weights"``
            (:func:`prunekit.prune_weights`), ``"layers"`` (:func:`prunekit.prune_layers`) or
            ``"heads"`` (:func:`prunekit.prune_heads`, with ``heads=``).
        **kwargs: the verb's own arguments (``ratio=``, ``sparsity=``, ``criterion=``, ``data=``, ...).

    Returns:
        A :class:`Preview`; ``print`` it for a table.

    Example:
        >>> import torch, prunekit as pk
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> p = pk.preview(model, torch.randn(1, 8), ratio=0.5)
        >>> p.params_before, p.params_after, model[0].out_features
        (178, 90, 16)
    """
    from prunekit.structured import prune_channels, prune_heads, prune_layers
    from prunekit.weights import prune_weights

    if what not in ("channels", "weights", "layers", "heads"):
        raise ConfigError(f"what must be 'channels', 'weights', 'layers' or 'heads', got {what!r}")
    if what != "weights" and example_inputs is None:
        raise ConfigError(f"preview(what={what!r}) needs example_inputs to trace the model")
    trial = copy.deepcopy(model)
    macs_before = count_macs(model, example_inputs) if example_inputs is not None else None
    before = (count_params(model), count_nonzeros(model))
    if what == "channels":
        result: Any = prune_channels(trial, example_inputs, **kwargs)
    elif what == "heads":
        result = prune_heads(trial, example_inputs, **kwargs)
    elif what == "layers":
        result = prune_layers(trial, example_inputs, **kwargs)
    else:
        result = prune_weights(trial, **kwargs)
    macs_after = count_macs(trial, example_inputs) if example_inputs is not None else None
    return Preview(
        what=what,
        result=result,
        params_before=before[0],
        params_after=count_params(trial),
        nonzeros_before=before[1],
        nonzeros_after=count_nonzeros(trial),
        macs_before=macs_before,
        macs_after=macs_after,
    )


__all__ = ["Preview", "preview"]
