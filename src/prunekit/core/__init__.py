"""Shared pieces every other package builds on.

- :mod:`~prunekit.core.batches`: batches (pairs, dicts, HF batches, bare inputs), devices, the one ``evaluate``.
- :mod:`~prunekit.core.masks`: one bool buffer per pruned weight, kept in force through training.
- :mod:`~prunekit.core.select`: the one module selector (names, globs, types, module objects).
- :mod:`~prunekit.core.metrics`: parameters, non-zeros, MACs, latency, memory, file size.
- :mod:`~prunekit.core.files`: atomic writes.  :mod:`~prunekit.core.datasets`: built-in datasets.
"""

from __future__ import annotations

from prunekit.core.batches import (
    EvalMode,
    EvalResult,
    LossFn,
    batch_size,
    call_model,
    evaluate,
    inputs_only,
    loss_and_metric,
    model_device,
    model_output,
    split_batch,
    take_batches,
    take_inputs,
    to_device,
    weight_of,
)
from prunekit.core.config import (
    UNSET,
    ConfigMixin,
    config_from_dict,
    config_to_dict,
    merge_config,
    option_help,
    register_config,
)
from prunekit.core.datasets import BUILTIN, Split, default_data_dir, digits, idx_dataset, load_builtin
from prunekit.core.files import atomic_dir, atomic_write, atomic_write_bytes
from prunekit.core.masks import (
    MASK_SUFFIX,
    get_mask,
    make_permanent,
    masked_parameters,
    refresh,
    remove_mask,
    set_mask,
)
from prunekit.core.metrics import (
    HardwareInfo,
    LatencyResult,
    count_macs,
    count_nonzeros,
    count_params,
    forward_peak_memory,
    hardware_info,
    human_bytes,
    measure_latency,
    param_bytes,
)
from prunekit.core.registry import Registry, criterion_registry, register_criterion
from prunekit.core.select import (
    PRUNABLE_TYPES,
    Skipped,
    Spec,
    Target,
    is_default_type,
    is_glob,
    is_hf_conv1d,
    match_names,
    matches,
    resolve_targets,
    select_modules,
)

__all__ = [
    "atomic_dir",
    "atomic_write",
    "atomic_write_bytes",
    "batch_size",
    "BUILTIN",
    "call_model",
    "config_from_dict",
    "config_to_dict",
    "ConfigMixin",
    "count_macs",
    "count_nonzeros",
    "count_params",
    "criterion_registry",
    "default_data_dir",
    "digits",
    "EvalMode",
    "EvalResult",
    "evaluate",
    "forward_peak_memory",
    "get_mask",
    "hardware_info",
    "HardwareInfo",
    "human_bytes",
    "idx_dataset",
    "inputs_only",
    "is_default_type",
    "is_glob",
    "is_hf_conv1d",
    "LatencyResult",
    "load_builtin",
    "loss_and_metric",
    "LossFn",
    "make_permanent",
    "MASK_SUFFIX",
    "masked_parameters",
    "match_names",
    "matches",
    "measure_latency",
    "merge_config",
    "model_device",
    "model_output",
    "option_help",
    "param_bytes",
    "PRUNABLE_TYPES",
    "refresh",
    "register_config",
    "register_criterion",
    "Registry",
    "remove_mask",
    "resolve_targets",
    "select_modules",
    "set_mask",
    "Skipped",
    "Spec",
    "Split",
    "split_batch",
    "take_batches",
    "take_inputs",
    "Target",
    "to_device",
    "UNSET",
    "weight_of",
]
