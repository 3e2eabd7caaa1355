"""Activation-aware channel importance: ``||W[:, j]|| * ||a_j||`` on calibration data (Wanda for channels).

A unit ``j`` of a group is scored by what the layers that *read* it do with it: for every member that
is an input dimension (dim 1 of an ``nn.Linear``/``nn.Conv*`` weight, dim 0 of a GPT-2 ``Conv1D``), the
norm of the weight column times the L2 norm of the input feature over all calibration tokens::

    score_j = sum over readers r of ||W_r[:, j]||_2 * ||x_r[..., j]||_2

For the MLP of a transformer layer this is the down-projection's column norm times the norm of the
intermediate activation, the criterion behind the README's best MiniLM number. Padding tokens
(``attention_mask == 0`` in a dict batch) are left out. A group no reader with statistics touches is
scored by ``l2``. Calibration data needs no targets (tensors, dicts, HF batches, 1-tuples or pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from prunekit.core import EvalMode, call_model, model_device, take_inputs, to_device
from prunekit.errors import DataRequiredError
from prunekit.graph import Group
from prunekit.structured.criteria import CRITERIA, L2, reduce_members

logger = logging.getLogger(__name__)

_READERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _in_dim(module: nn.Module) -> int | None:
    if isinstance(module, _READERS):
        return 1
    if type(module).__name__ == "Conv1D":  # transformers GPT-2: weight (in, out)
        return 0
    return None


def input_norms(
    model: nn.Module, data: Iterable[Any], max_batches: int | None = None
) -> dict[str, tuple[int, torch.Tensor]]:
    """Weight name -> (input dim, L2 norm of every input feature over the real tokens of ``data``)."""
    batches = take_inputs(data, max_batches, "criterion='activation'")
    sums: dict[str, torch.Tensor] = {}
    dims: dict[str, int] = {}
    pad: list[torch.Tensor | None] = [None]
    names = {id(p): n for n, p in model.named_parameters()}
    handles = []

    def hook_for(key: str, conv: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0].detach().float()
            if conv:  # (B, C, *spatial) -> channels last
                x = x.movedim(1, -1) if x.ndim >= 3 else x
            elif pad[0] is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(pad[0].shape):
                x = x * pad[0].to(x.device, x.dtype).unsqueeze(-1)
            s = x.pow(2).reshape(-1, x.shape[-1]).sum(0)
            sums[key] = sums[key] + s if key in sums else s

        return hook

    for _, module in model.named_modules():
        dim = _in_dim(module)
        weight = getattr(module, "weight", None)
        if dim is None or not isinstance(weight, torch.Tensor) or id(weight) not in names:
            continue
        if int(getattr(module, "groups", 1)) != 1:
            continue  # grouped/depthwise: an input channel is read by one group only (use l2 there)
        key = names[id(weight)]
        dims[key] = dim
        handles.append(
            module.register_forward_pre_hook(hook_for(key, isinstance(module, nn.modules.conv._ConvNd)))
        )
    device = model_device(model)
    try:
        with torch.no_grad(), EvalMode(model):
            for inputs in batches:
                mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
                pad[0] = (mask != 0) if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
                call_model(model, to_device(inputs, device))
    finally:
        for h in handles:
            h.remove()
    logger.info("activation criterion: statistics of %d layers over %d batches", len(sums), len(batches))
    return {k: (dims[k], v.sqrt()) for k, v in sums.items()}


class Activation:
    """``criterion="activation"`` (alias ``"wanda"``) for :func:`prunekit.prune_channels`.

    ``prune_channels`` calls :meth:`prepare` with its ``data=`` before tracing; without data it raises
    :class:`~prunekit.errors.DataRequiredError`. An object built from norms of your own works too.
    """

    name = "activation"
    needs_grad = False
    needs_data = True

    def __init__(self, norms: Mapping[str, tuple[int, torch.Tensor]] | None = None) -> None:
        self.norms: dict[str, tuple[int, torch.Tensor]] = dict(norms or {})

    def prepare(self, model: nn.Module, data: Iterable[Any] | None, max_batches: int | None = None) -> None:
        """Collect the input-feature norms of every Linear/Conv on ``data``."""
        if data is None:
            raise DataRequiredError(
                "criterion='activation' scores channels on calibration data: pass data= (batches of model "
                "inputs: tensors, dicts or (inputs, targets) pairs), or use criterion='l2'"
            )
        self.norms = input_norms(model, data, max_batches)

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        used = [False]

        def per_index(t: torch.Tensor, dim: int, name: str) -> torch.Tensor | None:
            entry = self.norms.get(name)
            if entry is None or entry[0] != dim or entry[1].numel() != t.shape[dim]:
                return None
            used[0] = True
            cols: torch.Tensor = t.float().movedim(dim, 0).reshape(t.shape[dim], -1).norm(dim=1)
            act: torch.Tensor = entry[1].to(cols.device)
            return cols * act

        total = reduce_members(group, params, per_index)
        return total if used[0] else L2().score(group, params, module_types)


for _name in ("activation", "wanda"):  # ||W_out[:, j]|| x ||a_j|| on calibration data
    CRITERIA.register(_name, Activation, overwrite=False)


__all__ = ["Activation", "input_norms"]
