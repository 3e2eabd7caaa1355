"""Independent masked-model reference for structured pruning ("removal == zeroing").

Given the original (unpruned) model and, for each pruned parameter, the kept indices along each
pruned dim, build a copy of the original that computes what the pruned model must compute:

- every removed slice of every pruned parameter is set to zero (producers' output rows and biases,
  BatchNorm weight+bias, consumers' input columns, class tokens, position embeddings, bias tables);
- norms whose statistics run over a pruned dim (LayerNorm, RMSNorm, GroupNorm) are wrapped so their
  statistics use the kept positions only (zeroing alone would change the mean/variance);
- nothing else: the attention scale stays 1/sqrt(original head_dim), RoPE keeps its frequencies.

It reads only the original model and the kept indices, never the pruned model's modules, so it is an
oracle for the surgery, not a copy of it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Kept = Mapping[str, Mapping[int, Sequence[int]]]


def _resolve(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = fqn.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


class _MaskedNorm(nn.Module):
    """Apply ``inner`` (a physically sliced norm) to the kept positions of ``dim``; zeros elsewhere."""

    def __init__(self, inner: nn.Module, kept: Tensor, dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.dim = dim
        self.register_buffer("kept", kept)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        kept: Tensor = self.kept
        y = self.inner(x.index_select(self.dim, kept), *args, **kwargs)
        out = torch.zeros(x.shape, dtype=y.dtype, device=y.device)
        return out.index_copy(self.dim, kept, y)


def _sliced_norm(norm: nn.Module, kept: Tensor) -> tuple[nn.Module, int]:
    """A copy of ``norm`` over the kept channels only, and the dim it normalises."""
    k = len(kept)
    if isinstance(norm, nn.GroupNorm):
        c = norm.num_channels
        per = c // norm.num_groups
        counts = torch.bincount(kept // per, minlength=norm.num_groups)
        nonzero = counts[counts > 0]
        if not bool((nonzero == nonzero[0]).all()):
            raise AssertionError(
                f"GroupNorm kept unequal counts per group {counts.tolist()}: not expressible physically"
            )
        new: nn.Module = nn.GroupNorm(len(nonzero), k, norm.eps, norm.affine)
        dim = 1
    else:
        new = copy.deepcopy(norm)
        if hasattr(new, "normalized_shape"):
            new.normalized_shape = (k,)
        dim = -1
    for name in ("weight", "bias"):
        p = getattr(norm, name, None)
        if isinstance(p, Tensor):
            setattr(new, name, nn.Parameter(p.detach()[kept].clone(), requires_grad=False))
    return new, dim


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or type(m).__name__.endswith("RMSNorm")


def masked_reference(original: nn.Module, kept: Kept) -> nn.Module:
    """Deep copy of ``original`` computing what the pruned model must compute (see module docstring).

    Args:
        original: the model before pruning (not modified).
        kept: ``{param_fqn: {dim: kept_indices}}`` for every pruned parameter.

    Returns:
        A new module in eval mode.
    """
    ref = copy.deepcopy(original).eval()
    named = {
        **dict(ref.named_buffers(remove_duplicate=False)),
        **dict(ref.named_parameters(remove_duplicate=False)),
    }
    norms: dict[str, Tensor] = {}
    with torch.no_grad():
        for fqn, dims in kept.items():
            if fqn not in named:
                raise KeyError(f"plan names {fqn!r}, which is no parameter or buffer of the original model")
            p = named[fqn]
            for dim, idx in dims.items():
                keep = torch.zeros(p.shape[dim], dtype=torch.bool)
                keep[torch.as_tensor(list(idx), dtype=torch.long)] = True
                shape = [1] * p.dim()
                shape[dim] = -1
                p.mul_(keep.view(shape).to(p.dtype))
            owner_name, attr = fqn.rpartition(".")[0], fqn.rpartition(".")[2]
            owner = ref.get_submodule(owner_name) if owner_name else ref
            if attr == "weight" and _is_norm(owner) and 0 in dims:
                norms[owner_name] = torch.as_tensor(sorted(dims[0]), dtype=torch.long)
    for name, idx in norms.items():
        norm = ref.get_submodule(name)
        inner, dim = _sliced_norm(norm, idx)
        parent_name, _, child = name.rpartition(".")
        parent = ref.get_submodule(parent_name) if parent_name else ref
        setattr(parent, child, _MaskedNorm(inner, idx, dim))
    return ref


def _entries(plan: Any) -> list[Any]:
    entries = plan.get("entries") if isinstance(plan, Mapping) else getattr(plan, "entries", None)
    if entries is None:
        raise TypeError(f"cannot read kept indices from plan of type {type(plan).__name__}")
    return list(entries)


def kept_from_plan(plan: Any) -> dict[str, dict[int, list[int]]]:
    """Read ``{fqn: {dim: kept}}`` from a prunekit plan, or a list of plans applied in order (composed).

    A later plan's kept indices index into the widths left by the earlier ones, so they are mapped
    back to original indices: ``kept_total = kept_first[kept_second]``.
    """
    plans = plan if isinstance(plan, list) else [plan]
    out: dict[str, dict[int, list[int]]] = {}
    for one in plans:
        for e in _entries(one):
            get = e.get if isinstance(e, Mapping) else (lambda k, e=e: getattr(e, k, None))
            fqn = str(get("fqn") or get("param") or get("name"))
            dim = int(get("dim"))
            idx = [int(i) for i in (get("kept") if get("kept") is not None else get("kept_indices"))]
            prev = out.setdefault(fqn, {}).get(dim)
            out[fqn][dim] = idx if prev is None else [prev[i] for i in idx]
    return out
