"""Helpers of the fault-injection suites (tests/test_faults_*.py): model snapshots and file damage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class ModelSnapshot:
    """Everything a failed verb must leave as it was."""

    state: dict[str, torch.Tensor]
    params: dict[str, tuple[int, bool, tuple[int, ...]]]
    buffers: dict[str, tuple[int, ...]]
    hooks: dict[str, tuple[int, int, int, int]]
    attrs: dict[str, dict[str, Any]]
    training: dict[str, bool]
    modules: list[tuple[str, str]]


def _plain_attrs(m: nn.Module) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(m).items()
        if not k.startswith("_") and isinstance(v, (int, float, str, bool, tuple))
    }


def snapshot(model: nn.Module) -> ModelSnapshot:
    """Take a :class:`ModelSnapshot` of ``model`` (tensors copied bit for bit)."""
    return ModelSnapshot(
        state={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        params={n: (id(p), p.requires_grad, tuple(p.shape)) for n, p in model.named_parameters()},
        buffers={n: tuple(b.shape) for n, b in model.named_buffers()},
        hooks={
            n: (
                len(m._forward_pre_hooks),
                len(m._forward_hooks),
                len(m._backward_hooks),
                len(m._load_state_dict_post_hooks),
            )
            for n, m in model.named_modules()
        },  # fmt: skip
        attrs={n: _plain_attrs(m) for n, m in model.named_modules()},
        training={n: m.training for n, m in model.named_modules()},
        modules=[(n, type(m).__name__) for n, m in model.named_modules()],
    )


def _bits(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def assert_model_unchanged(before: ModelSnapshot, model: nn.Module) -> None:
    """Assert ``model`` is bit-identical to ``before``: tensors, buffers, hooks, attributes, flags."""
    after = snapshot(model)
    assert after.modules == before.modules, "module tree changed"
    assert after.params == before.params, "parameters changed (identity, requires_grad or shape)"
    assert after.buffers == before.buffers, "buffers changed"
    assert after.hooks == before.hooks, "hooks changed"
    assert after.attrs == before.attrs, "module attributes changed"
    assert after.training == before.training, "training flags changed"
    assert list(after.state) == list(before.state), "state_dict keys changed"
    for k, v in before.state.items():
        w = after.state[k]
        assert w.dtype == v.dtype and w.shape == v.shape and _bits(w) == _bits(v), f"{k} changed"


def listing(directory: Path) -> set[str]:
    """Every file and folder under ``directory`` (relative names), to prove nothing stray was left."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def flip_bit(src: Path, dst: Path, bit: int) -> None:
    """Copy ``src`` to ``dst`` with one bit flipped."""
    data = bytearray(src.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    dst.write_bytes(bytes(data))


def truncate(src: Path, dst: Path, size: int) -> None:
    """Copy the first ``size`` bytes of ``src`` to ``dst``."""
    dst.write_bytes(src.read_bytes()[:size])


def header_span(path: Path) -> int:
    """Bytes of the 8-byte length plus the safetensors JSON header."""
    with open(path, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


__all__ = [
    "ModelSnapshot",
    "assert_model_unchanged",
    "flip_bit",
    "header_span",
    "listing",
    "snapshot",
    "truncate",
]
