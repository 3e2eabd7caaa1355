"""Warnings about what one traced forward pass cannot see."""

from __future__ import annotations

import warnings

from torch import nn

from prunekit.graph import Trace


def warn_unvisited(model: nn.Module, trace: Trace, verb: str = "prune_channels") -> list[str]:
    """Warn (and return the names) if modules holding parameters did not run in the traced forward.

    Such modules sit on a branch the example inputs did not take (data-dependent control flow) or are
    never called: their shapes are not followed, so running them after pruning may fail.
    """
    ran = trace.modules_run
    consumed = {vid for node in trace.nodes for vid in node.inputs}
    # parameters read by the traced ops (also functionally, as MultiheadAttention reads out_proj)
    used = {name for name, vid in trace.param_values.items() if vid in consumed}
    unvisited = []
    for name, module in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        if not own or name in ran or any(p in used for p in own):
            continue
        if not any(r.startswith(name + ".") for r in ran):
            unvisited.append(name or type(model).__name__)
    if unvisited:
        shown = ", ".join(unvisited[:8]) + (" ..." if len(unvisited) > 8 else "")
        warnings.warn(
            f"{verb}: {len(unvisited)} module(s) with parameters did not run on the example inputs: {shown}. "
            "They may sit on a branch of data-dependent control flow the trace did not take, and may fail "
            "after pruning; pass ignore=[...] for them or example inputs that take every branch",
            UserWarning,
            stacklevel=4,
        )
    return unvisited


__all__ = ["warn_unvisited"]
