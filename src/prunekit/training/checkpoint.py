"""Resumable runs: atomic checkpoints of everything a training run needs, as safetensors + JSON.

One checkpoint is ONE ``.safetensors`` file (tensors) whose header metadata holds a JSON document
(everything that is not a tensor)::

    tensors                                   JSON (metadata key "prunekit.training.checkpoint")
    model/<state_dict key>  (incl. *_mask)    version, position (any JSON the caller gives)
    optim/<param index>/<state key>           optimizer param_groups + non-tensor state
    rng/torch, rng/numpy, rng/loader/<i>      python random state, numpy RNG scalars
    extra/<name>                              pruner state, lr-scheduler state, results so far

Writes are atomic: a temporary file in the same folder, flushed and fsynced, then ``os.replace``,
so a run SIGKILLed at any point leaves either the previous checkpoint or the new one, never half
a file. No pickle anywhere: loading never executes code from the file.

Example:
    >>> import tempfile, os, torch
    >>> from prunekit.training.checkpoint import save_checkpoint, load_checkpoint
    >>> model = torch.nn.Linear(3, 2); opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
    >>> save_checkpoint(path, model=model, optimizer=opt, position={"step": 7})
    >>> load_checkpoint(path, model=model, optimizer=opt).position
    {'step': 7}
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prunekit.core import MASK_SUFFIX, atomic_write, get_mask, set_mask
from prunekit.errors import FormatError

FORMAT = "prunekit.training.checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read besides the states it restored in place."""

    position: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def _rng_state(generators: Sequence[torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
    for i, gen in enumerate(generators):
        tensors[f"rng/loader/{i}"] = gen.get_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "loaders": len(generators),
    }
    return tensors, meta


def _restore_rng(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], generators: Sequence[torch.Generator]
) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    if meta["loaders"] != len(generators):
        raise FormatError(
            f"checkpoint holds {meta['loaders']} DataLoader generator state(s), {len(generators)} generator(s) "
            "were given; pass the same generators as when saving"
        )
    for i, gen in enumerate(generators):
        gen.set_state(tensors[f"rng/loader/{i}"])
    npm = meta["numpy"]
    keys = tensors["rng/numpy"].numpy().astype(np.uint32)
    np.random.set_state((npm["kind"], keys, npm["pos"], npm["has_gauss"], npm["cached"]))
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = meta["param_groups"]
    for group in groups:  # JSON turned tuples into lists; optimizers index them the same way
        for key, value in group.items():
            if key != "params" and isinstance(value, list):
                group[key] = tuple(value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for key, value in model.state_dict(keep_vars=False).items():
        t = value.detach()
        # safetensors refuses shared storage: store a tied tensor once, restore by the model's own tie
        if t.data_ptr() in seen and t.numel():
            continue
        seen[t.data_ptr()] = key
        out["model/" + key] = t.clone().contiguous()
    return out


def _restore_model(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    modules = dict(model.named_modules())
    # masks saved in the checkpoint but absent in a freshly built model: create them first
    for key, value in state.items():
        if not key.endswith(MASK_SUFFIX):
            continue
        module_name, _, buffer = key.rpartition(".")
        pname = buffer[: -len(MASK_SUFFIX)]
        module = modules.get(module_name)
        if module is None or not isinstance(getattr(module, pname, None), nn.Parameter):
            raise FormatError(
                f"checkpoint has mask {key!r} but the model has no parameter {module_name}.{pname}"
            )
        current = get_mask(module, pname)
        if tuple(value.shape) != tuple(getattr(module, pname).shape):
            raise FormatError(
                f"checkpoint does not fit the model: mask {key!r} has shape {tuple(value.shape)}, "
                f"the parameter has {tuple(getattr(module, pname).shape)}"
            )
        if current is None:
            set_mask(module, pname, value)
        else:  # masks may grow back (regrowth): overwrite, do not AND
            with torch.no_grad():
                current.copy_(value)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise FormatError(
            f"checkpoint does not fit the model: {e}. Resume with the same architecture that wrote it."
        ) from e
    really_missing = [k for k in missing if not _is_tied(model, k)]
    if really_missing or unexpected:
        raise FormatError(
            f"checkpoint does not fit the model: missing keys {really_missing[:5]}, unexpected keys {unexpected[:5]}. "
            "Resume with the same model architecture (and the same pruning) that wrote the checkpoint."
        )


def _is_tied(model: nn.Module, key: str) -> bool:
    sd = model.state_dict()
    ptr = sd[key].data_ptr()
    return any(k != key and v.data_ptr() == ptr for k, v in sd.items())


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    position: dict[str, Any] | None = None,
    generators: Sequence[torch.Generator] = (),
    extra: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a checkpoint atomically (tmp file + ``os.replace``): model (with masks), optimizer, RNGs.

    Args:
        path: destination ``.safetensors`` file.
        model: the model; its ``state_dict`` includes the ``*_mask`` buffers.
        optimizer: optional optimizer whose state (momentum, Adam moments, step) is saved.
        position: JSON-able dict saying where the run is (epoch, batch, step, round, ...).
        generators: ``torch.Generator`` objects to save, e.g. the DataLoader's shuffling generator.
        extra: JSON-able dict (pruner state, results so far, ...).
        extra_tensors: additional named tensors (e.g. initial weights for rewinding).
    """
    path = Path(path)
    tensors = _model_state(model)
    rng_tensors, rng_meta = _rng_state(generators)
    tensors.update(rng_tensors)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "position": position or {},
        "rng": rng_meta,
        "extra": extra or {},
        "optimizer": None,
    }
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_state(optimizer)
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    for name, t in (extra_tensors or {}).items():
        tensors["extra/" + name] = t.detach().clone().contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={FORMAT: json.dumps(meta)}))


def atomic_save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None
) -> None:
    """Write plain named tensors (+ optional JSON ``meta``) to a safetensors file atomically."""
    clean = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata={"prunekit.meta": json.dumps(meta or {})}))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`atomic_save_tensors`."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("prunekit.meta", "{}"))
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta
    except Exception as e:
        raise FormatError(f"cannot read tensors from {path}: {e}") from e


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors and JSON without applying them.

    Raises:
        FormatError: if the file is missing, corrupted or not a prunekit checkpoint.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise FormatError(
            f"cannot read checkpoint {path}: {e}. Expected a file written by save_checkpoint."
        ) from e
    if FORMAT not in metadata:
        raise FormatError(
            f"{path} is a safetensors file but not a prunekit checkpoint (no {FORMAT!r} metadata)"
        )
    meta = json.loads(metadata[FORMAT])
    if meta.get("version") != VERSION:
        raise FormatError(
            f"{path} has checkpoint version {meta.get('version')!r}; this prunekit reads {VERSION}"
        )
    return tensors, meta


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: Sequence[torch.Generator] = (),
    restore_rng: bool = True,
) -> Checkpoint:
    """Restore a checkpoint in place into ``model`` (masks included), ``optimizer``, RNGs and generators.

    Returns:
        The saved ``position`` and ``extra`` dicts; ``extra["tensors"]`` holds any extra tensors.

    Raises:
        FormatError: if the file is not a checkpoint or does not fit the model/optimizer.
    """
    tensors, meta = read_checkpoint(path)
    _restore_model(model, tensors)
    if optimizer is not None:
        if meta["optimizer"] is None:
            raise FormatError(f"{path} holds no optimizer state; it was saved without optimizer=")
        _restore_optimizer(optimizer, tensors, meta["optimizer"])
    if restore_rng:
        _restore_rng(tensors, meta["rng"], generators)
    extra = dict(meta["extra"])
    extra_tensors = {k[len("extra/") :]: v for k, v in tensors.items() if k.startswith("extra/")}
    if extra_tensors:
        extra["tensors"] = extra_tensors
    return Checkpoint(position=meta["position"], extra=extra)


__all__ = [
    "Checkpoint",
    "atomic_save_tensors",
    "load_checkpoint",
    "load_tensors",
    "read_checkpoint",
    "save_checkpoint",
]
