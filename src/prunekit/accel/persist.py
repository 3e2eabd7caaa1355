"""Save and load accelerated models: the masked model as :func:`prunekit.save` writes it, plus the plan.

The file is an ordinary prunekit file (so :func:`prunekit.load` reads it as a masked model) with one
more ``__metadata__`` key, ``"prunekit.accel"``: the JSON plan of :class:`AccelerationResult`.
Kernels are not stored, only their names: they are rebuilt from the masked weights on load::

    save: SparseLinear / SparseConv2d --masked_form()--> masked Linear / Conv2d --prunekit.save--> file + plan
    load: file --prunekit.load--> masked model --same fingerprint?--> install the plan's kernels
                                               --other machine/threads--> re-measure every layer

A plan measured on another machine or thread count is never trusted: its layers are timed again on
the recorded shapes.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.accel.engine import (
    AccelerateConfig,
    AccelerationError,
    apply_choices,
    choose_layer,
    masked_form,
    replace_module,
    sparse_layers,
)
from prunekit.core import hardware_info
from prunekit.errors import ConfigError
from prunekit.kernels import (
    AccelerationResult,
    LayerChoice,
    SparseLinear,
    attach_plan,
    attached_plan,
    fingerprint,
    num_threads,
)

PLAN_KEY = "accel"  # the entry of the sealed header's "extra" table


def save(model: nn.Module, path: str | os.PathLike[str], result: AccelerationResult | None = None) -> Path:
    """Write an accelerated model (masked weights + its plan) to a safetensors file; return the path.

    The model is not changed: each :class:`SparseLinear` / :class:`SparseConv2d` is swapped for its masked
    ``nn.Linear`` / ``nn.Conv2d`` while :func:`prunekit.save` writes, then put back. The write is atomic.

    Args:
        model: a model after :func:`prunekit.accel.engine` (or any prunekit model).
        path: where to write.
        result: the plan; default the one ``accelerate`` attached to ``model``.

    Raises:
        FormatError: as :func:`prunekit.save`.
    """
    from prunekit.io import save as pk_save

    path = Path(path)
    plan = result if result is not None else attached_plan(model)
    swapped = list(sparse_layers(model))
    try:
        for name, m in swapped:
            replace_module(model, name, masked_form(m))
        return pk_save(model, path, extra={PLAN_KEY: plan.to_dict()} if plan is not None else None)
    finally:
        for name, m in swapped:
            replace_module(model, name, m)


def read_plan(path: str | os.PathLike[str]) -> AccelerationResult | None:
    """The plan stored in a file written by :func:`save` (``None`` if it has none).

    Raises:
        FormatError: unreadable file or malformed plan.
    """
    from prunekit.io import read_extra

    data = read_extra(path).get(PLAN_KEY)
    if data is None:
        return None
    return AccelerationResult.from_dict(data)


def remeasure(
    model: nn.Module, plan: AccelerationResult, config: AccelerateConfig | None = None
) -> AccelerationResult:
    """Time every layer of ``plan`` again on its recorded shape here, install the winners; return the new plan."""
    cfg = config or AccelerateConfig(measure_model=False)
    with num_threads(cfg.threads) as threads:
        choices: list[LayerChoice] = []
        staged: dict[str, nn.Module] = {}
        for old in plan.layers:
            module = model.get_submodule(old.name)
            want = nn.Conv2d if old.kind == "conv2d" else nn.Linear
            if type(module) is not want:
                raise AccelerationError(f"plan names {old.name!r}, which is {type(module).__name__} here, "
                                        f"not nn.{want.__name__}; re-run accelerate() on this model")  # fmt: skip
            if isinstance(module, nn.Conv2d):
                if tuple(module.weight.shape) != old.weight_shape:
                    raise AccelerationError(f"plan expects {old.name!r} to be a Conv2d {old.weight_shape}, found "
                                            f"{tuple(module.weight.shape)}; re-run accelerate() on this model")  # fmt: skip
                choice, fast = choose_layer(old.name, module, old.input_shape, cfg, None)
            else:
                assert isinstance(module, nn.Linear)
                choice, fast = choose_layer(old.name, module, (old.tokens, module.in_features), cfg, None)
            choice = replace(choice, transposed_output=old.transposed_output and fast is not None)
            choices.append(choice)
            if fast is not None:
                if isinstance(fast, SparseLinear):
                    fast.transposed_output = choice.transposed_output  # the layout accelerate found safe
                staged[old.name] = fast
        for name, new in staged.items():
            replace_module(model, name, new)
    info = hardware_info(threads)
    return AccelerationResult(layers=tuple(choices), skipped=plan.skipped, hardware=info,
                              fingerprint=fingerprint(info))  # fmt: skip


def load(path: str | os.PathLike[str], model: nn.Module, *, remeasure_on: str = "other_hardware",
         config: AccelerateConfig | None = None) -> nn.Module:  # fmt: skip
    """Load a file written by :func:`save` into a freshly built ``model`` and accelerate it; return it.

    Args:
        path: the file.
        model: the same architecture, unpruned (as for :func:`prunekit.load`); changed in place.
        remeasure_on: ``"other_hardware"`` (default: re-time when the fingerprint differs),
            ``"always"`` or ``"never"`` (trust the stored choices).
        config: timing settings for a re-measurement.

    Raises:
        FormatError: as :func:`prunekit.load`, or a malformed plan.
        AccelerationError: the plan does not fit the model.
    """
    from prunekit.io import load as pk_load

    if remeasure_on not in ("other_hardware", "always", "never"):
        raise ConfigError(f"remeasure_on must be 'other_hardware', 'always' or 'never', got {remeasure_on!r}")
    plan = read_plan(path)
    pk_load(path, model)
    if plan is None:
        return model
    threads = config.threads if config is not None and config.threads is not None else torch.get_num_threads()
    same = plan.fingerprint == fingerprint(hardware_info(threads))
    if remeasure_on == "always" or (remeasure_on == "other_hardware" and not same):
        plan = remeasure(model, plan, config)
    else:
        apply_choices(model, plan)
    attach_plan(model, plan)
    return model


def describe(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The stored plan as a dict (for reports), or ``None``."""
    plan = read_plan(path)
    return plan.to_dict() if plan is not None else None


__all__ = ["PLAN_KEY", "describe", "load", "read_plan", "remeasure", "save"]
