"""Keep an optimizer usable across physical pruning: slice its state with the plan's kept indices.

:func:`prunekit.prune_channels` resizes parameters in place (``param.data = param.data[kept]``): the
parameter objects, and so the optimizer's ``param_groups``, stay the same, but per-parameter state
(SGD momentum, Adam's ``exp_avg``/``exp_avg_sq``, ...) still has the old shape. :func:`resize_optimizer`
slices every such state tensor with the plan entries ``{fqn, dim, size, kept}`` of
``model._prunekit_plan[-1]``, so a plain training loop goes on with the same optimizer::

    pk.prune_channels(model, x, ratio=0.2)
    pk.resize_optimizer(optimizer, model)     # momentum/moments of the kept channels, unchanged
    optimizer.step()                          # continues as if the removed channels never existed
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunekit.errors import PlanError


def _entries(model: nn.Module, plan: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if plan is None:
        plans = getattr(model, "_prunekit_plan", None)
        if not plans:
            raise PlanError(
                f"{type(model).__name__} has no structured pruning plan (model._prunekit_plan is empty); "
                "call pk.prune_channels(...) first or pass plan="
            )
        plan = plans[-1]
    try:
        return list(plan["entries"])
    except (KeyError, TypeError) as e:
        raise PlanError(f"not a prunekit plan (expected a dict with 'entries'): {e!r}") from e


def reset_grad_accumulators(model: nn.Module, plan: Mapping[str, Any] | None = None) -> None:
    """Make autograd forget the old shapes of the parameters resized by ``plan``.

    ``param.data = smaller`` keeps the parameter's cached gradient accumulator (with the old shape)
    alive as long as any graph built before pruning is (e.g. the last ``loss`` of a training loop);
    the next ``backward`` then fails with "returned an invalid gradient ... expected shape". A dtype
    change through ``set_data`` drops that cache, so the data is swapped out and back.
    """
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in {str(e["fqn"]) for e in _entries(model, plan)}:
            p = params.get(name)
            if p is None:
                continue
            data = p.data
            other = torch.float64 if data.dtype != torch.float64 else torch.float32
            p.data = torch.empty(0, dtype=other, device=data.device)
            p.data = data


def resize_optimizer(
    optimizer: torch.optim.Optimizer, model: nn.Module, plan: Mapping[str, Any] | None = None
) -> int:
    """Slice ``optimizer``'s per-parameter state to the parameters' pruned shapes, in place.

    Every state tensor whose shape is the parameter's old shape is cut along each entry's ``dim``
    to its ``kept`` indices; scalars (Adam's ``step``) are left alone. Everything is checked before
    anything is changed.

    Args:
        optimizer: any ``torch.optim`` optimizer built on ``model``'s parameters before pruning.
        model: the pruned model (``DistributedDataParallel`` wrappers are unwrapped).
        plan: a plan dict (``{"entries": [{fqn, dim, size, kept}, ...]}``); default: the last one
            recorded on the model (``model._prunekit_plan[-1]``).

    Returns:
        The number of state tensors that were sliced.

    Raises:
        PlanError: no plan, or a state tensor whose shape fits neither the old nor the new shape.

    Example:
        >>> import torch, prunekit as pk
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        >>> m(torch.randn(3, 4)).sum().backward(); opt.step()
        >>> _ = pk.prune_channels(m, torch.randn(1, 4), ratio=0.5)
        >>> pk.resize_optimizer(opt, m)  # momentum of m[0].weight, m[0].bias, m[2].weight
        3
        >>> opt.state[m[0].weight]["momentum_buffer"].shape
        torch.Size([4, 4])
    """
    model = (
        getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
    )
    entries = _entries(model, plan)
    params = dict(model.named_parameters())
    by_param: dict[str, list[Mapping[str, Any]]] = {}
    for e in entries:
        if e["fqn"] in params:
            by_param.setdefault(str(e["fqn"]), []).append(e)
    updates: list[tuple[dict[Any, Any], Any, torch.Tensor]] = []
    for name, ents in by_param.items():
        p = params[name]
        state = optimizer.state.get(p)
        if not state:
            continue
        old_shape = list(p.shape)
        for e in ents:
            old_shape[int(e["dim"])] = int(e["size"])
        for key, value in list(state.items()):
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                continue
            if list(value.shape) == list(p.shape) and list(p.shape) != old_shape:
                raise PlanError(
                    f"optimizer state {key!r} of '{name}' already has the pruned shape {tuple(p.shape)}; "
                    "resize_optimizer was probably called twice for the same plan"
                )
            if list(value.shape) != old_shape:
                raise PlanError(
                    f"optimizer state {key!r} of '{name}' has shape {tuple(value.shape)}, expected the "
                    f"parameter's shape before pruning {tuple(old_shape)}; rebuild the optimizer instead"
                )
            new = value
            for e in ents:
                idx = torch.as_tensor(list(e["kept"]), dtype=torch.long, device=value.device)
                new = new.index_select(int(e["dim"]), idx)
            updates.append((state, key, new.contiguous()))
    for state, key, new in updates:
        state[key] = new
    reset_grad_accumulators(model, plan)
    return len(updates)


__all__ = ["reset_grad_accumulators", "resize_optimizer"]
