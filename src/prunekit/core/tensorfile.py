"""Sealed safetensors files: a digest over the JSON header and every tensor, checked before use.

Every tensor file prunekit writes (model files, checkpoints, lottery tensors) goes through
:func:`write_sealed` and is read back with :func:`open_sealed`. The reader parses the safetensors
layout itself, so nothing is allocated before the file has been checked:

1. the 8-byte header length and the header table are checked against the file length (a file that
   claims a 1e12-element tensor fails here, having read a few hundred bytes);
2. the prunekit JSON document (one metadata key) is parsed, and its ``"digest"`` field checked: the
   SHA-256 of the canonical JSON of the document without ``digest.header`` (``json.dumps(...,
   sort_keys=True, separators=(",", ":"))``), and, per tensor, its dtype, shape and SHA-256;
3. the caller checks names, shapes and dtypes against its target (model, optimizer) from
   :attr:`SealedFile.entries`, still without reading any tensor;
4. :meth:`SealedFile.read` reads one tensor's bytes and checks their digest before returning it.

Files written before the digest existed (no ``"digest"`` field) still read; :attr:`SealedFile.sealed`
is then False and the caller decides (warn, or fall back on its own checksums).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunekit.core.files import atomic_write
from prunekit.errors import FormatError

DIGEST = "digest"
MAX_HEADER_BYTES = 64 * 2**20
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the file's table describes it (nothing read yet)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        """Number of elements the shape claims."""
        return math.prod(self.shape)


def canonical_json(obj: Any) -> bytes:
    """The byte form digests are taken of: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (C order)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def seal(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Return ``header`` with a ``"digest"`` field covering it and every tensor (see the module docstring)."""
    table = {
        name: [ST_NAMES[t.dtype], list(t.shape), tensor_sha256(t)] for name, t in sorted(tensors.items())
    }
    out = {k: v for k, v in header.items() if k != DIGEST}
    out[DIGEST] = {"algo": "sha256", "tensors": table}
    out[DIGEST]["header"] = hashlib.sha256(canonical_json(_without_header_digest(out))).hexdigest()
    return out


def _without_header_digest(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    digest = out.get(DIGEST)
    if isinstance(digest, dict):
        out[DIGEST] = {k: v for k, v in digest.items() if k != "header"}
    return out


def write_sealed(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], key: str, header: Mapping[str, Any]
) -> Path:
    """Write ``tensors`` and the sealed JSON ``header`` (metadata key ``key``) atomically; return the path."""
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name, t in clean.items():
        if t.dtype not in ST_NAMES:
            raise FormatError(f"cannot save tensor {name!r}: dtype {t.dtype} is not supported")
    try:
        text = json.dumps(seal(header, clean), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise FormatError(f"cannot save {Path(path).name}: its JSON header is not serialisable ({e})") from e
    return atomic_write(Path(path), lambda tmp: save_file(clean, tmp, metadata={key: text}))


class SealedFile:
    """A parsed, header-checked tensor file; tensors are read (and checked) one by one with :meth:`read`."""

    def __init__(self, path: Path, entries: dict[str, TensorInfo], data_start: int, header: dict[str, Any],
                 digests: dict[str, list[Any]] | None) -> None:  # fmt: skip
        self.path = path
        self.entries = entries
        self.header = header
        self.sealed = digests is not None
        self._data_start = data_start
        self._digests = digests or {}

    def fail(
        self, what: str, fix: str = "the file is corrupted or truncated; restore it or save again"
    ) -> FormatError:
        """A FormatError naming this file, the damaged part and the fix."""
        return FormatError(f"{self.path}: {what}; {fix}")

    def read(self, name: str) -> torch.Tensor:
        """Read tensor ``name``, checking its bytes against the digest first.

        Raises:
            FormatError: unknown name, or bytes that do not match the digest.
        """
        info = self.entries.get(name)
        if info is None:
            raise self.fail(f"tensor {name!r} is missing")
        n = info.end - info.begin
        buf = bytearray(n)
        with open(self.path, "rb") as fh:
            fh.seek(self._data_start + info.begin)
            if fh.readinto(buf) != n:
                raise self.fail(f"tensor {name!r} is truncated")
        if self.sealed and hashlib.sha256(buf).hexdigest() != self._digests[name][2]:
            raise self.fail(f"tensor {name!r} does not match its sha256 digest")
        if n == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        return torch.frombuffer(buf, dtype=info.dtype).reshape(info.shape)

    def read_all(self) -> dict[str, torch.Tensor]:
        """Every tensor, each checked (see :meth:`read`)."""
        return {name: self.read(name) for name in self.entries}


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def _table(path: Path, raw: bytes, data_len: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    def fail(what: str) -> FormatError:
        return FormatError(f"{path}: {what}; the file is corrupted or truncated")

    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"the safetensors header is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise fail("the safetensors header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise fail("the safetensors __metadata__ is not a table of strings")
    entries: dict[str, TensorInfo] = {}
    for name, spec in doc.items():
        try:
            if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
                raise ValueError("expected exactly dtype, shape and data_offsets")
            if spec["dtype"] not in ST_DTYPES:
                raise ValueError(f"dtype {spec['dtype']!r} is not one prunekit writes")
            dtype = ST_DTYPES[spec["dtype"]]
            if not isinstance(spec["shape"], list) or len(spec["shape"]) > 16:
                raise ValueError(f"shape {spec['shape']!r} is not a list of at most 16 sizes")
            shape = tuple(_int(s) for s in spec["shape"])
            offsets = spec["data_offsets"]
            if not isinstance(offsets, list) or len(offsets) != 2:
                raise ValueError(f"data_offsets {offsets!r} is not [begin, end]")
            begin, end = _int(offsets[0]), _int(offsets[1])
            nbytes = math.prod(shape) * (torch.finfo(dtype).bits if dtype.is_floating_point else
                                         (8 if dtype == torch.bool else torch.iinfo(dtype).bits)) // 8  # fmt: skip
            if end - begin != nbytes:
                raise ValueError(
                    f"shape {list(shape)} {spec['dtype']} needs {nbytes} bytes, offsets give {end - begin}"
                )
            if end > data_len:
                raise ValueError(f"its bytes end at {end}, past the {data_len} data bytes of the file")
        except ValueError as e:
            raise fail(f"tensor {name!r} in the safetensors table is invalid ({e})") from e
        entries[name] = TensorInfo(dtype, shape, begin, end)
    spans = sorted((i.begin, i.end, n) for n, i in entries.items())
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise fail(f"tensors {a!r} and {b!r} overlap in the file")
    return entries, metadata


def open_sealed(path: str | os.PathLike[str], key: str, what: str) -> SealedFile:
    """Parse and check ``path`` (see the module docstring) without reading any tensor.

    Args:
        path: the file.
        key: the metadata key holding prunekit's JSON document.
        what: what the file should be, for messages ("a prunekit model file", "a checkpoint").

    Raises:
        FormatError: missing file, not safetensors, no ``key`` document, invalid JSON, a table that does
            not fit the file length, or a header that does not match its digest.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file; pass the path of {what}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        first = fh.read(8)
        if len(first) < 8:
            raise FormatError(
                f"{path}: {size} bytes is too short for a safetensors file; expected {what} (truncated?)"
            )
        (n,) = struct.unpack("<Q", first)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise FormatError(f"{path}: header length {n} does not fit a file of {size} bytes; "
                              f"the file is corrupted, truncated or not {what}")  # fmt: skip
        raw = fh.read(n)
    entries, metadata = _table(path, raw, size - 8 - n)
    if key not in metadata:
        raise FormatError(
            f"{path}: a safetensors file without the {key!r} header, so not {what}; pass a file prunekit wrote"
        )
    try:
        header = json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: the {key!r} header is not valid JSON ({e}); the file is corrupted") from e
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the {key!r} header is not a JSON object; the file is corrupted")
    digests = _check_digest(path, header, entries, set(metadata) - {key})
    header.pop(DIGEST, None)
    return SealedFile(path, entries, 8 + n, header, digests)


def _check_digest(
    path: Path, header: dict[str, Any], entries: Mapping[str, TensorInfo], other_keys: set[str]
) -> dict[str, list[Any]] | None:
    def fail(what: str) -> FormatError:
        return FormatError(f"{path}: {what}; the file is corrupted (restore it or save again)")

    if DIGEST not in header:
        return None
    digest = header[DIGEST]
    if (
        not isinstance(digest, dict)
        or digest.get("algo") != "sha256"
        or not isinstance(digest.get("header"), str)
    ):
        raise fail("the header's digest record is damaged")
    try:
        expected = hashlib.sha256(canonical_json(_without_header_digest(header))).hexdigest()
    except ValueError as e:
        raise fail(f"the header holds a value that cannot be digested ({e})") from e
    if expected != digest["header"]:
        raise fail("the JSON header does not match its sha256 digest")
    if other_keys:
        raise fail(f"unexpected safetensors metadata keys {sorted(other_keys)}")
    table = digest.get("tensors")
    if not isinstance(table, dict) or set(table) != set(entries):
        raise fail("the tensor table does not match the digest's list of tensors")
    for name, info in entries.items():
        rec = table[name]
        if rec[:2] != [ST_NAMES[info.dtype], list(info.shape)]:
            raise fail(f"tensor {name!r}: the safetensors table says {ST_NAMES[info.dtype]} {list(info.shape)}, "
                       f"the digest {rec[:2]}")  # fmt: skip
    return table


def seal_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` with a ``"digest"`` field: the SHA-256 of its canonical JSON (run-directory JSON files)."""
    out = {k: v for k, v in doc.items() if k != DIGEST}
    out[DIGEST] = {"algo": "sha256", "header": hashlib.sha256(canonical_json(out)).hexdigest()}
    return out


def check_json_digest(doc: dict[str, Any], path: str | os.PathLike[str]) -> bool:
    """Check and remove the digest :func:`seal_json` added; False for a document without one (older files).

    Raises:
        FormatError: the document does not match its digest.
    """
    if DIGEST not in doc:
        return False
    digest = doc.pop(DIGEST)
    try:
        ok = (
            isinstance(digest, dict)
            and digest.get("header") == hashlib.sha256(canonical_json(doc)).hexdigest()
        )
    except ValueError:
        ok = False
    if not ok:
        raise FormatError(
            f"{path}: the JSON does not match its sha256 digest; the file is corrupted (write it again)"
        )
    return True


__all__ = [
    "check_json_digest",
    "SealedFile",
    "TensorInfo",
    "canonical_json",
    "open_sealed",
    "seal",
    "seal_json",
    "tensor_sha256",
    "write_sealed",
]
