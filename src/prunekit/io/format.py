"""Save and load pruned models: safetensors + a JSON header, never pickle.

A file is an ordinary safetensors file. Its ``__metadata__`` holds one key, ``"prunekit"``, a JSON
object::

    {"format": "prunekit.model", "version": 1,
     "tensors": {"0.weight": {"enc": "rice", "shape": [300, 784], "dtype": "float32", "nnz": 23520,
                              "k": 3, "qbits": 45117, "mask": true, "crc32": {...}}, ...},
     "aliases": {"lm_head.weight": "wte.weight"},      # tied parameters are stored once
     "plan": null}                                     # structured plan (prunekit.structured.surgery), if any

Sparse tensors (masked, or mostly zero) are stored close to the information limit
``nnz * bits + log2 C(n, nnz)``: the non-zero values (``<key>.__values__``, their own dtype) and
their flat positions as Golomb-Rice codes of the gaps between them, in two packed bit streams::

    gap g_i = p_i - p_{i-1} - 1            (p_{-1} = -1)
    q_i = g_i >> k  -> unary: q_i zeros then a one    ``<key>.__gaps_q__`` (np.packbits)
    r_i = g_i & (2^k - 1) -> k bits, MSB first        ``<key>.__gaps_r__``

For a masked weight the positions are those of the mask, so weights and masks both come back
exactly: every non-zero value bit for bit, every zero as ``+0.0`` (the sign of a zero is not kept). Dense tensors are stored plainly. Encoding and decoding are vectorised numpy.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import warnings
import zlib
from collections.abc import Mapping
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

FORMAT = "prunekit.model"
VERSION = 2  # 2: the header carries a sha256 digest of itself and of every tensor (prunekit.core.tensorfile)
_VALUES, _Q, _R = ".__values__", ".__gaps_q__", ".__gaps_r__"
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool)
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Golomb-Rice coding of positions


def _rice_bits(gaps: np.ndarray, k: int) -> int:
    return int((gaps >> k).sum()) + gaps.size * (k + 1)


def rice_encode(positions: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Code sorted flat positions; return ``(k, qbits, q_bytes, r_bytes)``.

    Example:
        >>> k, qbits, q, r = rice_encode(np.array([2, 3, 9, 40]))
        >>> rice_decode(k, qbits, q, r, nnz=4).tolist()
        [2, 3, 9, 40]
    """
    positions = np.asarray(positions, dtype=np.int64)
    nnz = positions.size
    if nnz == 0:
        return 0, 0, np.zeros(0, np.uint8), np.zeros(0, np.uint8)
    gaps = np.diff(positions, prepend=-1) - 1
    if gaps.min() < 0:
        raise ValueError("positions must be strictly increasing and non-negative")
    mean = float(gaps.mean())
    guess = max(0, int(math.log2(mean * math.log(2))) if mean >= 1 else 0)
    k = min(range(max(0, guess - 2), guess + 3), key=lambda c: _rice_bits(gaps, c))
    q = gaps >> k
    ends = np.cumsum(q + 1) - 1  # position of each terminating one
    qbits = int(ends[-1]) + 1
    unary = np.zeros(qbits, dtype=np.uint8)
    unary[ends] = 1
    q_bytes = np.packbits(unary)
    del unary
    if k == 0:
        return 0, qbits, q_bytes, np.zeros(0, np.uint8)
    planes = np.empty((nnz, k), dtype=np.uint8)  # bit j of every remainder, MSB first
    for j in range(k):
        planes[:, j] = (gaps >> (k - 1 - j)) & 1
    return k, qbits, q_bytes, np.packbits(planes.reshape(-1))


def rice_decode(k: int, qbits: int, q_bytes: np.ndarray, r_bytes: np.ndarray, nnz: int) -> np.ndarray:
    """Inverse of :func:`rice_encode`: the sorted flat positions (int64).

    Raises:
        ValueError: the streams do not hold ``nnz`` codes.
    """
    if nnz == 0:
        return np.zeros(0, np.int64)
    if q_bytes.size * 8 < qbits or r_bytes.size * 8 < nnz * k:
        raise ValueError("bit streams are shorter than their header says")
    unary = np.unpackbits(q_bytes, count=qbits)
    ends = np.flatnonzero(unary)
    if ends.size != nnz or (qbits and unary[-1] != 1):
        raise ValueError(f"unary stream holds {ends.size} codes, header says {nnz}")
    gaps = np.diff(ends, prepend=-1) - 1
    if k:
        planes = np.unpackbits(r_bytes, count=nnz * k).reshape(nnz, k)
        rem = np.zeros(nnz, dtype=np.int64)
        for j in range(k):
            rem = (rem << 1) | planes[:, j]
        gaps = (gaps << k) | rem
    return np.cumsum(gaps + 1) - 1


# ---------------------------------------------------------------------------------------------
# information limit


def _log2_binomial(n: int, k: int) -> float:
    if k <= 0 or k >= n:
        return 0.0
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def tensor_information_bits(tensor: torch.Tensor) -> float:
    """``nnz * bits + log2 C(n, nnz)``: the bits needed for the non-zero values and their positions."""
    bits = tensor.element_size() * 8
    n = tensor.numel()
    if not torch.is_floating_point(tensor):
        return float(n * bits)
    nnz = int(torch.count_nonzero(tensor))
    return nnz * bits + _log2_binomial(n, nnz)


def _sig(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    """State tensors stored once (aliases point at the first key), mask buffers left out.

    Returns ``(unique, aliases, masked)``; ``masked`` maps a unique key to the :class:`MaskedParam`
    holding its mask (which may sit on the module of a tied alias).
    """
    state = model.state_dict()
    masked_params = list(masked_parameters(model))
    mask_keys = {mp.fqn + MASK_SUFFIX for mp in masked_params}
    by_sig = {_sig(mp.param.detach()): mp for mp in masked_params}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    masked: dict[str, Any] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for key, t in state.items():
        if key in mask_keys:
            continue
        sig = _sig(t)
        if t.numel() and sig in seen:
            aliases[key] = seen[sig]
            continue
        seen[sig] = key
        unique[key] = t
        if sig in by_sig:
            masked[key] = by_sig[sig]
    return unique, aliases, masked


def information_limit_bits(model: nn.Module) -> float:
    """Information limit of a model's state in bits: :func:`tensor_information_bits` summed over
    its tensors (tied parameters once, masks implied by the zeros).

    Example:
        >>> layer = torch.nn.Linear(100, 10, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        >>> information_limit_bits(layer)
        0.0
    """
    unique, _, _ = _unique_state(model)
    return sum(tensor_information_bits(t) for t in unique.values())


# ---------------------------------------------------------------------------------------------
# save


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().view(-1).view(torch.uint8).numpy().data)


def _nonzero_positions(flat: torch.Tensor) -> np.ndarray:
    # -0.0 is a zero here: a masked multiply leaves many, and keeping their sign would cost ~1 bit each
    return np.flatnonzero((flat != 0).numpy())


def save(model: nn.Module, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights, masks and structured plan to a safetensors file; return the path.

    ``extra`` is JSON-able data stored in the sealed header beside the plan (read back with
    :func:`read_extra`), e.g. the kernel choices of :func:`prunekit.accelerate`.

    Masked and mostly-zero tensors are stored compressed (values + Rice-coded positions), the
    rest plainly; tied parameters once. The write is atomic (temporary file, then rename).

    Example:
        >>> import tempfile, os, prunekit as pk
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
        >>> _ = pk.prune_weights(model, 0.9)
        >>> path = pk.save(model, os.path.join(tempfile.mkdtemp(), "model.safetensors"))
        >>> fresh = pk.load(path, torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)))
        >>> torch.equal(fresh[0].weight, model[0].weight), pk.sparsity(fresh) == pk.sparsity(model)
        (True, True)
    """
    path = Path(path)
    unique, aliases, masked = _unique_state(model)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for key, t in unique.items():
        t = t.detach().cpu().contiguous()
        if str(t.dtype).removeprefix("torch.") not in _DTYPES:
            raise FormatError(
                f"cannot save {key!r}: dtype {t.dtype} is not supported; convert the model first"
            )
        entry: dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        flat = t.view(-1)
        mp = masked.get(key)
        positions: np.ndarray | None = None
        if mp is not None:
            positions = np.flatnonzero(mp.mask.detach().cpu().reshape(-1).numpy())
        elif torch.is_floating_point(t) and t.numel() >= 64:
            candidate = _nonzero_positions(flat)
            sparse_bits = candidate.size * (t.element_size() * 8 + 2) + _log2_binomial(
                t.numel(), candidate.size
            )
            if sparse_bits < 0.9 * t.numel() * t.element_size() * 8:
                positions = candidate
        if positions is None:
            entry["enc"] = "dense"
            tensors[key] = t
            entry["crc32"] = _crc(t)
        else:
            k, qbits, q_bytes, r_bytes = rice_encode(positions)
            values = flat[torch.from_numpy(positions)]
            streams = {_VALUES: values, _Q: torch.from_numpy(q_bytes), _R: torch.from_numpy(r_bytes)}
            mask_owner = mp.fqn if mp is not None else None  # the parameter whose module holds the mask
            entry.update(enc="rice", nnz=int(positions.size), k=k, qbits=qbits, mask=mask_owner)
            entry["crc32"] = {suffix: _crc(s) for suffix, s in streams.items()}
            for suffix, s in streams.items():
                tensors[key + suffix] = s
        entries[key] = entry
    header = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": entries,
        "aliases": aliases,
        "plan": getattr(model, "_prunekit_plan", None),
    }
    if extra:
        header["extra"] = dict(extra)
    try:
        json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise FormatError(
            f"cannot save {type(model).__name__}: model._prunekit_plan is not JSON-serialisable ({e}); "
            "plans must be lists of dicts of numbers/strings, as prunekit.structured.surgery records them"
        ) from e
    return write_sealed(path, tensors, "prunekit", header)


# ---------------------------------------------------------------------------------------------
# load


def _fail(path: Path, what: str, fix: str = "re-save it with prunekit.save(model, path)") -> FormatError:
    return FormatError(f"{path}: {what}; {fix}")


def read_extra(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``extra`` data a file written by :func:`save` carries (``{}`` if none); no tensor is read.

    Raises:
        FormatError: a missing, corrupted or foreign file (the header digest is checked).
    """
    extra = _open(Path(path)).header.get("extra") or {}
    if not isinstance(extra, dict):
        raise _fail(Path(path), "its 'extra' header entry is not a table", "the file is corrupted")
    return extra


def _open(path: Path) -> SealedFile:
    """Parse and check the header (digest included); no tensor read yet."""
    f = open_sealed(path, "prunekit", "a file written by prunekit.save(model, path)")
    header = f.header
    if header.get("format") != FORMAT:
        raise _fail(path, f"header format is {header.get('format')!r}, expected {FORMAT!r}")
    version = header.get("version")
    if version not in (1, VERSION) or type(version) is not int:
        raise _fail(path, f"format version {version!r}, this prunekit reads versions 1 and {VERSION}",
                    "upgrade prunekit or re-save with this version")  # fmt: skip
    if version == VERSION and not f.sealed:
        raise _fail(path, "the header's digest is missing", "the file is corrupted")
    if version == 1:
        warnings.warn(f"{path} was written by an older prunekit (format 1, no header digest); "
                      "re-save it with prunekit.save to protect it end to end", UserWarning, stacklevel=3)  # fmt: skip
    if not isinstance(header.get("tensors"), dict) or not isinstance(header.get("aliases", {}), dict):
        raise _fail(path, "header has no 'tensors' table", "the file is corrupted")
    return f


def _entry_layout(f: SealedFile) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Check every header entry against the file's tensor table; return ``key -> (shape, dtype)``."""
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    used: set[str] = set()
    for key, entry in f.header["tensors"].items():
        try:
            if not isinstance(entry, dict):
                raise ValueError("entry is not a table")
            shape = tuple(entry["shape"])
            if not all(type(s) is int and s >= 0 for s in shape):
                raise ValueError(f"shape {entry['shape']!r} is not a list of sizes")
            dtype = _DTYPES[entry["dtype"]]
            numel = math.prod(shape)
            if entry["enc"] == "dense":
                info = f.entries.get(key)
                if info is None or info.shape != shape or info.dtype != dtype:
                    stored = None if info is None else f"{list(info.shape)} {info.dtype}"
                    raise ValueError(f"stored {stored}, header says {list(shape)} {dtype}")
                used.add(key)
            elif entry["enc"] == "rice":
                streams = {s: f.entries.get(key + s) for s in (_VALUES, _Q, _R)}
                if any(v is None for v in streams.values()):
                    raise ValueError("a value or position stream is missing")
                nnz, k, qbits = (entry[n] for n in ("nnz", "k", "qbits"))
                if not all(type(v) is int and v >= 0 for v in (nnz, k, qbits)) or k > 62 or nnz > numel:
                    raise ValueError(f"nnz={nnz!r}, k={k!r}, qbits={qbits!r} do not fit {numel} elements")
                values, q, r = (streams[s] for s in (_VALUES, _Q, _R))
                assert values is not None and q is not None and r is not None
                if values.dtype != dtype or values.numel != nnz:
                    raise ValueError(f"{values.numel} {values.dtype} values, header says {nnz} {dtype}")
                if (
                    q.dtype != torch.uint8
                    or r.dtype != torch.uint8
                    or q.numel * 8 < qbits
                    or r.numel * 8 < nnz * k
                ):
                    raise ValueError("bit streams are shorter than their header says")
                owner = entry.get("mask")
                if owner is not None and not isinstance(owner, str):
                    raise ValueError(f"mask owner must be a parameter name, got {owner!r}")
                used.update(key + s for s in streams)
            else:
                raise ValueError(f"unknown encoding {entry['enc']!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(f.path, f"tensor {key!r} in the header is invalid ({type(e).__name__}: {e})",
                        "the file is corrupted or truncated") from e  # fmt: skip
        out[key] = (shape, dtype)
    extra = sorted(set(f.entries) - used)
    if extra:
        raise _fail(f.path, f"holds tensors the header does not list: {extra[:5]}", "the file is corrupted")
    for alias, target in f.header.get("aliases", {}).items():
        if not isinstance(target, str) or target not in out:
            raise _fail(
                f.path, f"alias {alias!r} points at missing tensor {target!r}", "the file is corrupted"
            )
        out[alias] = out[target]
    return out


def _mask_owners(f: SealedFile) -> dict[str, str]:
    """``owner parameter -> header key`` for every stored mask."""
    return {
        e["mask"]: key for key, e in f.header["tensors"].items() if e.get("enc") == "rice" and e.get("mask")
    }


def _decode(f: SealedFile) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read and decode every tensor (digest and crc32 checked): state by key, masks by owner parameter."""
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for key, entry in f.header["tensors"].items():
        try:
            shape, dtype = list(entry["shape"]), _DTYPES[entry["dtype"]]
            numel = math.prod(shape)
            if entry["enc"] == "dense":
                t = f.read(key)
                if _crc(t) != entry["crc32"]:
                    raise ValueError("checksum mismatch")
                state[key] = t
                continue
            streams = {s: f.read(key + s) for s in (_VALUES, _Q, _R)}
            for suffix, s in streams.items():
                if _crc(s) != entry["crc32"][suffix]:
                    raise ValueError(f"checksum mismatch in {suffix.strip('._')}")
            nnz = int(entry["nnz"])
            positions = rice_decode(int(entry["k"]), int(entry["qbits"]), streams[_Q].numpy(),
                                    streams[_R].numpy(), nnz)  # fmt: skip
            if nnz and positions[-1] >= numel:
                raise ValueError(f"position {int(positions[-1])} outside a tensor of {numel} elements")
            index = torch.from_numpy(positions)
            flat = torch.zeros(numel, dtype=dtype)
            flat[index] = streams[_VALUES]
            state[key] = flat.view(shape)
            owner = entry.get("mask")
            if owner is not None:
                mask = torch.zeros(numel, dtype=torch.bool)
                mask[index] = True
                masks[owner] = mask.view(shape)
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise _fail(f.path, f"tensor {key!r} cannot be decoded ({type(e).__name__}: {e})",
                        "the file is corrupted or truncated") from e  # fmt: skip
    for alias, target in f.header.get("aliases", {}).items():
        state[alias] = state[target]
    return state, masks


def _check_fits(
    path: Path, model: nn.Module, layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    owners: Mapping[str, str],
) -> None:  # fmt: skip
    current = {mp.fqn + MASK_SUFFIX for mp in masked_parameters(model)}
    expected = {k: v for k, v in model.state_dict().items() if k not in current}
    params = dict(model.named_parameters(remove_duplicate=False))
    fix = "build the same architecture (and config) as the saved model before calling load(path, model)"
    for owner, key in owners.items():
        if owner not in params:
            raise _fail(
                path, f"holds a mask for {owner!r}, which is not a parameter of {type(model).__name__}", fix
            )
        if tuple(params[owner].shape) != layout[key][0]:
            raise _fail(path, f"mask of {owner!r} is {list(layout[key][0])} in the file but the parameter is "
                              f"{list(params[owner].shape)}", fix)  # fmt: skip
    missing = sorted(set(expected) - set(layout))
    extra = sorted(set(layout) - set(expected))
    if missing or extra:
        what = []
        if missing:
            what.append(f"the model has {len(missing)} tensors the file lacks: {missing[:5]}")
        if extra:
            what.append(f"the file has {len(extra)} tensors the model lacks: {extra[:5]}")
        raise _fail(path, f"does not fit {type(model).__name__}: " + "; ".join(what), fix)
    for key, (shape, dtype) in layout.items():
        mine = expected[key]
        if tuple(mine.shape) != shape or mine.dtype != dtype:
            raise _fail(path, f"tensor {key!r} is {shape} {dtype} in the file but "
                              f"{tuple(mine.shape)} {mine.dtype} in the model", fix)  # fmt: skip


def file_size(model: nn.Module) -> int:
    """Size in bytes of the file :func:`save` writes for ``model`` (sparse models save compressed)."""
    with tempfile.TemporaryDirectory(prefix="prunekit-size-") as tmp:
        return save(model, Path(tmp) / "model.safetensors").stat().st_size


def load(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load a file written by :func:`save` into a freshly built ``model`` in place; return the model.

    Weights and masks come back exactly (masks are re-created with :func:`prunekit.core.masks.set_mask`,
    so they stay in force in training). If the file holds a structured plan, it is first applied
    with ``prunekit.structured.surgery.apply_plan`` to the unpruned model.

    Raises:
        FormatError: missing, corrupted, truncated or foreign file, or a file that does not fit
            ``model`` (missing/extra tensors, other shapes). The model is then left untouched.
    """
    path = Path(path)
    f = _open(path)
    layout = _entry_layout(f)
    owners = _mask_owners(f)
    plan = f.header.get("plan")
    if plan is not None:
        try:
            from prunekit.structured import apply_plan
        except ImportError as e:
            raise _fail(path, "holds a structured pruning plan but prunekit.structured.surgery is not available",
                        "use a prunekit with structured pruning") from e  # fmt: skip
        trial = copy.deepcopy(model)  # check the plan fits before touching the user's model
        try:
            apply_plan(trial, plan)
        except Exception as e:
            raise _fail(path, f"its structured plan does not apply to {type(model).__name__} ({e})",
                        "build the same architecture as the saved model") from e  # fmt: skip
        _check_fits(path, trial, layout, owners)
        del trial
    else:
        _check_fits(path, model, layout, owners)
    state, masks = _decode(f)  # every byte checked before the model is touched
    if plan is not None:
        apply_plan(model, plan)
    for mp in list(masked_parameters(model)):
        remove_mask(mp.module, mp.name)
    target = model.state_dict()
    with torch.no_grad():
        for key, t in state.items():
            target[key].copy_(t)
        for owner, mask in masks.items():
            module_name, _, name = owner.rpartition(".")
            set_mask(model.get_submodule(module_name), name, mask.to(target[owner].device))
    return model


__all__ = [
    "FORMAT",
    "VERSION",
    "information_limit_bits",
    "load",
    "rice_decode",
    "rice_encode",
    "save",
    "tensor_information_bits",
]
