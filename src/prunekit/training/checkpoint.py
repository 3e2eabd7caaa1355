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

import copy
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.core import (
    MASK_SUFFIX,
    SealedFile,
    masked_parameters,
    open_sealed,
    remove_mask,
    set_mask,
    write_sealed,
)
from prunekit.errors import FormatError

FORMAT = "prunekit.training.checkpoint"
VERSION = 2  # 2: sealed (sha256 of the JSON and of every tensor, see prunekit.core.tensorfile)
TENSORS_KEY = "prunekit.meta"


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


def _fail(path: Path, what: str, fix: str) -> FormatError:
    return FormatError(f"{path}: {what}; {fix}")


_ARCH_FIX = "resume with the same model architecture (and the same pruning) that wrote the checkpoint"


def _check_model(path: Path, f: SealedFile, model: nn.Module) -> None:
    """Every ``model/`` tensor of the file fits ``model`` (name, shape, dtype); nothing read, nothing changed."""
    state = model.state_dict()
    params = dict(model.named_parameters(remove_duplicate=False))
    seen: set[str] = set()
    for name, info in f.entries.items():
        if not name.startswith("model/"):
            continue
        key = name[len("model/") :]
        seen.add(key)
        if key.endswith(MASK_SUFFIX) and key not in state:
            pname = key[: -len(MASK_SUFFIX)]
            if pname not in params:
                raise _fail(
                    path, f"checkpoint has mask {key!r} but the model has no parameter {pname!r}", _ARCH_FIX
                )
            want: tuple[tuple[int, ...], torch.dtype] = (tuple(params[pname].shape), torch.bool)
        elif key in state:
            want = (tuple(state[key].shape), state[key].dtype)
        else:
            raise _fail(path, f"checkpoint does not fit the model: unexpected key {key!r}", _ARCH_FIX)
        if (info.shape, info.dtype) != want:
            raise _fail(path, f"checkpoint does not fit the model: {key!r} is {list(info.shape)} {info.dtype} "
                              f"in the file, {list(want[0])} {want[1]} in the model", _ARCH_FIX)  # fmt: skip
    ptrs: dict[int, int] = {}
    for v in state.values():
        ptrs[v.data_ptr()] = ptrs.get(v.data_ptr(), 0) + 1
    missing = [k for k, v in state.items() if k not in seen and not (v.numel() and ptrs[v.data_ptr()] > 1)]
    if missing:
        raise _fail(path, f"checkpoint does not fit the model: missing keys {missing[:5]}", _ARCH_FIX)


def _check_optimizer(
    path: Path, f: SealedFile, meta: dict[str, Any] | None, optimizer: torch.optim.Optimizer
) -> None:
    fix = "resume with the same optimizer (type, parameter groups) that wrote the checkpoint"
    if meta is None:
        raise _fail(
            path, "holds no optimizer state", "it was saved without optimizer=; load without optimizer="
        )
    saved_type = meta.get("type")
    if saved_type is not None and saved_type != type(optimizer).__name__:
        raise _fail(path, f"holds {saved_type} state, the optimizer given is {type(optimizer).__name__}", fix)
    groups, mine = meta.get("param_groups"), optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(mine):
        raise _fail(path, f"holds {len(groups) if isinstance(groups, list) else '?'} parameter groups, "
                          f"the optimizer has {len(mine)}", fix)  # fmt: skip
    params: list[torch.Tensor] = []
    for i, (g, m) in enumerate(zip(groups, mine, strict=True)):
        if (
            not isinstance(g, dict)
            or not isinstance(g.get("params"), list)
            or len(g["params"]) != len(m["params"])
        ):
            raise _fail(
                path, f"parameter group {i} has another number of parameters than the optimizer's", fix
            )
        if set(g) - {"params"} != set(m) - {"params"}:
            raise _fail(path, f"parameter group {i} has options {sorted(set(g) - {'params'})}, the optimizer "
                              f"{sorted(set(m) - {'params'})} (another optimizer type?)", fix)  # fmt: skip
        params.extend(m["params"])
    if not isinstance(meta.get("scalars"), dict):
        raise _fail(path, "optimizer scalars are missing", "the file is corrupted")
    for name, info in f.entries.items():
        if not name.startswith("optim/"):
            continue
        _, idx, _key = name.split("/", 2)
        if not idx.isdigit() or int(idx) >= len(params):
            raise _fail(
                path, f"optimizer state {name!r} names parameter {idx}, the optimizer has {len(params)}", fix
            )
        p = params[int(idx)]
        if info.shape not in ((), tuple(p.shape)):
            raise _fail(
                path, f"optimizer state {name!r} is {list(info.shape)}, its parameter {list(p.shape)}", fix
            )


def _check_rng(path: Path, f: SealedFile, meta: Any, generators: Sequence[torch.Generator]) -> None:
    fix = "pass the same generators as when saving (or restore_rng=False)"
    if not isinstance(meta, dict) or not isinstance(meta.get("loaders"), int):
        raise _fail(path, "the RNG record is damaged", "the file is corrupted")
    if meta["loaders"] != len(generators):
        raise _fail(path, f"checkpoint holds {meta['loaders']} DataLoader generator state(s), "
                          f"{len(generators)} generator(s) were given", fix)  # fmt: skip
    wanted = {"rng/torch": torch.get_rng_state(), "rng/numpy": torch.zeros(624, dtype=torch.int64)}
    wanted.update({f"rng/loader/{i}": g.get_state() for i, g in enumerate(generators)})
    for name, t in wanted.items():
        info = f.entries.get(name)
        if info is None or info.shape != tuple(t.shape) or info.dtype != t.dtype:
            raise _fail(path, f"RNG state {name!r} is missing or has another shape", fix)
    npm, py = meta.get("numpy"), meta.get("python")
    if not isinstance(npm, dict) or not isinstance(py, dict) or not isinstance(py.get("state"), list):
        raise _fail(path, "the RNG record is damaged", "the file is corrupted")


def _restore_rng(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], generators: Sequence[torch.Generator]
) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    for i, gen in enumerate(generators):
        gen.set_state(tensors[f"rng/loader/{i}"])
    npm = meta["numpy"]
    keys = tensors["rng/numpy"].numpy().astype(np.uint32)
    np.random.set_state((npm["kind"], keys, npm["pos"], npm["has_gauss"], npm["cached"]))
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


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
    groups = copy.deepcopy(meta["param_groups"])
    for group in groups:  # JSON turned tuples into lists; optimizers index them the same way
        for key, value in group.items():
            if key != "params" and isinstance(value, list):
                group[key] = tuple(value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _restore_model(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Apply checked tensors: create missing masks, overwrite existing ones (regrowth), copy the rest."""
    state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    current = model.state_dict()
    for key, value in state.items():
        if key.endswith(MASK_SUFFIX) and key not in current:
            module_name, _, buffer = key.rpartition(".")
            set_mask(model.get_submodule(module_name), buffer[: -len(MASK_SUFFIX)], value.clone())
    current = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            current[key].copy_(value)


class _Snapshot:
    """Everything :func:`load_checkpoint` may change, to put back if applying fails half way."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 generators: Sequence[torch.Generator]) -> None:  # fmt: skip
        self.model = model
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.masked = {(mp.module, mp.name) for mp in masked_parameters(model)}
        self.optimizer = optimizer
        self.optim = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        self.rng = (
            torch.get_rng_state(),
            [g.get_state() for g in generators],
            np.random.get_state(),
            random.getstate(),
        )
        self.generators = generators

    def restore(self) -> None:
        for mp in list(masked_parameters(self.model)):
            if (mp.module, mp.name) not in self.masked:
                remove_mask(mp.module, mp.name)
        current = self.model.state_dict()
        with torch.no_grad():
            for key, value in self.state.items():
                current[key].copy_(value)
        if self.optimizer is not None and self.optim is not None:
            self.optimizer.load_state_dict(self.optim)
        torch.set_rng_state(self.rng[0])
        for g, st in zip(self.generators, self.rng[1], strict=True):
            g.set_state(st)
        np.random.set_state(self.rng[2])
        random.setstate(self.rng[3])


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
        meta["optimizer"] = {**opt_meta, "type": type(optimizer).__name__}
    for name, t in (extra_tensors or {}).items():
        tensors["extra/" + name] = t.detach().clone().contiguous()
    write_sealed(path, tensors, FORMAT, meta)


def atomic_save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None
) -> None:
    """Write plain named tensors (+ optional JSON ``meta``) to a sealed safetensors file atomically."""
    write_sealed(path, tensors, TENSORS_KEY, {"meta": meta or {}})


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`atomic_save_tensors`, every byte checked against its digest.

    Raises:
        FormatError: missing, corrupted or truncated file, naming the damaged part.
    """
    f = open_sealed(path, TENSORS_KEY, "a tensor file written by atomic_save_tensors")
    if not f.sealed:  # written before the digest: the JSON is the meta itself
        _warn_old(f.path)
        return f.read_all(), f.header
    meta = f.header.get("meta")
    if not isinstance(meta, dict):
        raise f.fail("the 'meta' record is missing")
    return f.read_all(), meta


def _warn_old(path: Path) -> None:
    warnings.warn(f"{path} was written by an older prunekit without a digest, so damage cannot be detected; "
                  "it is read as is (save it again to protect it)", UserWarning, stacklevel=3)  # fmt: skip


def _open_checkpoint(path: str | Path) -> tuple[SealedFile, dict[str, Any]]:
    f = open_sealed(path, FORMAT, "a prunekit checkpoint (written by save_checkpoint)")
    meta = f.header
    version = meta.get("version")
    if version not in (1, VERSION) or type(version) is not int:
        raise f.fail(
            f"checkpoint version {version!r}; this prunekit reads 1 and {VERSION}", "upgrade prunekit"
        )
    if version == VERSION and not f.sealed:
        raise f.fail("the header's digest is missing")
    if version == 1:
        _warn_old(f.path)
    for key, kind in (("position", dict), ("extra", dict), ("rng", dict)):
        if not isinstance(meta.get(key), kind):
            raise f.fail(f"the {key!r} record is missing or damaged")
    return f, meta


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors and JSON without applying them (every byte checked).

    Raises:
        FormatError: if the file is missing, corrupted or not a prunekit checkpoint.
    """
    f, meta = _open_checkpoint(path)
    return f.read_all(), meta


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: Sequence[torch.Generator] = (),
    restore_rng: bool = True,
) -> Checkpoint:
    """Restore a checkpoint in place into ``model`` (masks included), ``optimizer``, RNGs and generators.

    Everything is checked before anything changes: the digest of the header and of every tensor, and
    every name, shape and dtype against ``model``, ``optimizer`` and ``generators``. If applying still
    fails, the model, optimizer and RNGs are put back as they were.

    Returns:
        The saved ``position`` and ``extra`` dicts; ``extra["tensors"]`` holds any extra tensors.

    Raises:
        FormatError: if the file is not a checkpoint, is damaged, or does not fit the model/optimizer/generators.
    """
    f, meta = _open_checkpoint(path)
    _check_model(f.path, f, model)
    if optimizer is not None:
        _check_optimizer(f.path, f, meta.get("optimizer"), optimizer)
    if restore_rng:
        _check_rng(f.path, f, meta["rng"], generators)
    tensors = f.read_all()
    snapshot = _Snapshot(model, optimizer, generators if restore_rng else ())
    try:
        _restore_model(model, tensors)
        if optimizer is not None:
            _restore_optimizer(optimizer, tensors, meta["optimizer"])
        if restore_rng:
            _restore_rng(tensors, meta["rng"], generators)
    except Exception as e:
        snapshot.restore()
        raise f.fail(f"cannot be applied ({type(e).__name__}: {e}); nothing was changed", _ARCH_FIX) from e
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
