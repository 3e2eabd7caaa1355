"""Linear kernels for pruned weights, and the inference module that runs the chosen one.

A pruned ``nn.Linear`` computes ``y = x @ (W * mask).T + b``. :class:`SparseLinear` computes the
same thing faster where the zeros allow it, in two independent steps::

    x (..., in) ──► keep columns ──► inner kernel on W[rows][:, cols] ──► scatter rows ──► + b
                    (index_select:    "dense"  F.linear                   (zeros where a whole
                     whole zero        "csr"    CSR @ x.T, int32 indices    output row is pruned)
                     input columns)    "csr/K"  the same, W's columns in K
                                                parts (x.T row blocks stay in cache)
                                       "csr-numba" the same CSR arrays, run by
                                                a kernel numba compiles for this CPU
                                                (:mod:`prunekit.kernels.jit`; optional)
                                       "csr-numba/K" the same, W's columns in K
                                                parts in one call (many tokens)
                                       "bsrKxK" block-sparse @ x.T

Removing whole zero rows and columns is physical structured removal (a smaller dense matmul);
what is left goes to the inner kernel. Which combination wins depends on the shape, the number of
tokens, the sparsity pattern and the machine, so :func:`prunekit.accel.engine` measures them.

Kernel names are data (they go into saved files): ``"dense"``, ``"csr"``, ``"csr/2"``, ``"csr/4"``,
``"csr/8"``, ``"csr-numba"``, ``"csr-numba/2"``, ``"csr-numba/4"``, ``"csr-numba/8"``, ``"bsr4"``, ``"bsr8"``,
``"bsr16"``, each optionally prefixed by ``"compact+"`` (drop zero rows/columns first). The ``csr-numba``
kernels are candidates only where numba is installed; a layer saved with one and loaded where numba is
missing runs ``"csr"`` or ``"csr/K"`` (same arrays, same function).

Layout: the sparse kernels compute ``y.T = W @ x.T`` (MKL's CSR x dense wants the tokens as the
contiguous dimension). They take ``x.T`` as it comes (no copy when ``x`` is already a transposed
view, e.g. the GELU of the previous sparse layer's output) and, with ``transposed_output`` set,
return ``y`` as the transposed view of ``y.T`` (no copy; same values, other strides).
:func:`prunekit.accel.accelerate` sets it where the output feeds another sparse layer: copying both
ways was 17% of a 95%-sparse BERT's time at batch 1.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.kernels import jit

JIT = "csr-numba"
CSR_SPLITS: tuple[int, ...] = (2, 4, 8)
INNER_KERNELS: tuple[str, ...] = (
    "dense", "csr", *(f"csr/{k}" for k in CSR_SPLITS), JIT, *(f"{JIT}/{k}" for k in CSR_SPLITS),
    "bsr4", "bsr8", "bsr16",
)  # fmt: skip
MIN_SPLIT_COLUMNS = 256  # a column part narrower than this is not worth a call of its own
# csr-numba's parts run in one call: narrower parts pay (192 columns x 1024 tokens of x.T fit a 2 MB L2;
# 768x768 at 95%, 1024 tokens, 1 thread: 2.13 ms whole, 1.40 in 2 parts, 1.30 in 4; 768x3072: 16.3, 5.3 in 8)
JIT_MIN_SPLIT_COLUMNS = 192
COMPACT = "compact+"


class _SharedTranspose(threading.local):
    """The last ``x.T`` a sparse layer made contiguous, handed to the next sparse layer that reads the same
    ``x``, unchanged (same tensor object and version): attention's q, k and v projections, an MLP's gate and
    up projections. One tensor per thread stays referenced until the next layer replaces it. Inference
    tensors (``torch.inference_mode``) have no version counter, so they are copied every time."""

    def __init__(self) -> None:
        self.ref: weakref.ref[torch.Tensor] | None = None
        self.version = -1
        self.xt: torch.Tensor | None = None

    def get(self, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``x2.t().contiguous()`` for ``x2``, a ``(T, in)`` view of ``x``; reused while ``x`` is unchanged."""
        if x.is_inference() or (torch.is_grad_enabled() and x.requires_grad):
            return x2.t().contiguous()  # no version counter to see an in-place change / autograd's copy
        ref, xt = self.ref, self.xt
        if ref is not None and xt is not None and ref() is x and x._version == self.version:
            if xt.shape == (x2.shape[1], x2.shape[0]) and xt.dtype == x2.dtype:
                return xt
        xt = x2.t().contiguous()
        self.ref, self.version, self.xt = weakref.ref(x), x._version, xt
        return xt


_shared_t = _SharedTranspose()


class InferenceOnlyError(PrunekitError, RuntimeError):
    """An accelerated layer was asked to train (its weights are not parameters)."""


def runnable(kernel: str, compact: bool, inner: str, weight: torch.Tensor) -> tuple[str, str]:
    """``(kernel, inner)`` as they will run: ``csr-numba`` (``/K``) compiled now for the weight's dtype, or,
    where numba cannot run it (not installed, e.g. a saved plan loaded elsewhere), ``csr`` (``csr/K``) on
    the same arrays."""
    base, _, parts = inner.partition("/")
    if base != JIT:
        return kernel, inner
    if jit.supports(weight.dtype, weight.device):
        jit.compile_for(weight.dtype)
        return kernel, inner
    fallback = f"csr/{parts}" if parts else "csr"
    return (COMPACT + fallback if compact else fallback), fallback


def split_kernel_name(name: str, kernels: Sequence[str], what: str) -> tuple[bool, str]:
    """``"compact+csr"`` -> ``(True, "csr")`` if ``"csr"`` is one of ``kernels``.

    Raises:
        ConfigError: ``name`` is not one of ``kernels`` (optionally ``compact+``-prefixed); ``what``
            names the family in the message ("linear kernel", "conv kernel").
    """
    compact = name.startswith(COMPACT)
    inner = name.removeprefix(COMPACT)
    if inner not in kernels:
        valid = [*kernels, *(COMPACT + k for k in kernels)]
        raise ConfigError(f"unknown {what} {name!r}; valid {what}s: {valid}")
    return compact, inner


def parse_kernel(name: str) -> tuple[bool, str]:
    """``"compact+csr"`` -> ``(True, "csr")``.

    Raises:
        ConfigError: an unknown kernel name.
    """
    return split_kernel_name(name, INNER_KERNELS, "linear kernel")


def quiet_sparse(dense: torch.Tensor, layout: str, block: int = 0) -> torch.Tensor:
    """``dense.to_sparse_csr()`` / ``to_sparse_bsr`` without torch's one-time "beta" UserWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if layout == "csr":
            return dense.to_sparse_csr()
        return dense.to_sparse_bsr((block, block))


def csr_parts(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR arrays ``(crow, col, values)`` of the kept entries (int32 indices; mask positions kept)."""
    rows, cols = mask.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=mask.shape[0])
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int32)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow, cols.to(torch.int32), weight[rows, cols].contiguous()


def build_csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: Sequence[int]
) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, tuple(shape), check_invariants=False)


def split_bounds(columns: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous column ranges of nearly equal width covering ``range(columns)``."""
    edges = jit.column_edges(columns, parts)
    return [(lo, hi) for lo, hi in zip(edges, edges[1:], strict=False) if hi > lo]


def column_parts(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: Sequence[int],
                 parts: int) -> list[tuple[int, int, torch.Tensor]]:  # fmt: skip
    """``(lo, hi, csr)`` per column range: the CSR matrix ``W[:, lo:hi]`` (local column indices), cut from
    :func:`prunekit.kernels.jit.column_split`'s reordering (the ranges of :func:`split_bounds`)."""
    columns = int(shape[1])
    split, pcol, pval = jit.column_split(crow, col, values, columns, parts)
    edges = jit.column_edges(columns, parts)
    out = []
    for p, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False)):
        if hi == lo:  # split_bounds leaves empty ranges out
            continue
        start, end = int(split[p, 0]), int(split[p, -1])
        csr = build_csr((split[p] - start).to(torch.int32), pcol[start:end] - lo, pval[start:end],
                        (int(shape[0]), hi - lo))  # fmt: skip
        out.append((lo, hi, csr))
    return out


def zero_structure(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the output rows and input columns that keep at least one weight (int64)."""
    rows = mask.any(dim=1).nonzero().view(-1)
    cols = mask.any(dim=0).nonzero().view(-1)
    return rows, cols


@dataclass(frozen=True)
class KernelStats:
    """What a weight looks like to the kernels: shape, kept entries, kept rows/columns, block fill."""

    out_features: int
    in_features: int
    nnz: int
    kept_rows: int
    kept_cols: int

    @property
    def sparsity(self) -> float:
        n = self.out_features * self.in_features
        return 1.0 - self.nnz / n if n else 0.0

    @property
    def compactable(self) -> bool:
        """Whole zero rows or columns remove at least 5% of the matrix."""
        kept = self.kept_rows * self.kept_cols
        return kept <= 0.95 * self.out_features * self.in_features


def block_fill(mask: torch.Tensor, block: int) -> float:
    """Kept entries / entries of the non-empty ``block x block`` tiles (1.0 = tiles are full)."""
    out, inp = mask.shape
    if out % block or inp % block:
        return 0.0
    tiles = mask.reshape(out // block, block, inp // block, block).any(dim=(1, 3))
    stored = int(tiles.sum()) * block * block
    return int(mask.sum()) / stored if stored else 1.0


def csr_kernels(in_features: int, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> list[str]:  # fmt: skip
    """The CSR-family kernels for a weight with ``in_features`` columns: ``"csr"``, the column splits
    wide enough to be worth it, and ``"csr-numba"`` (with its splits) where numba can run this dtype and
    device."""
    names = ["csr", *(f"csr/{k}" for k in CSR_SPLITS if in_features >= k * MIN_SPLIT_COLUMNS)]
    if jit.supports(dtype, torch.device(device)):
        names += [JIT, *(f"{JIT}/{k}" for k in CSR_SPLITS if in_features >= k * JIT_MIN_SPLIT_COLUMNS)]
    return names


def candidate_kernels(
    mask: torch.Tensor, *, min_block_fill: float = 0.5, dtype: torch.dtype = torch.float32
) -> list[str]:
    """Kernels worth timing for this mask and weight ``dtype`` (BSR only where tiles are mostly full,
    compaction only where zero rows/columns remove at least 5%, ``"csr-numba"`` where numba is installed)."""
    rows, cols = zero_structure(mask)
    stats = KernelStats(mask.shape[0], mask.shape[1], int(mask.sum()), rows.numel(), cols.numel())
    sub = mask.index_select(0, rows).index_select(1, cols) if stats.compactable else mask
    inner = ["dense"]
    if stats.nnz < mask.numel():
        inner += csr_kernels(sub.shape[1], dtype, mask.device)
        inner += [f"bsr{b}" for b in (4, 8, 16) if sub.numel() and block_fill(sub, b) >= min_block_fill]
    names = list(inner)
    if stats.compactable:
        names += [COMPACT + k for k in inner]
    return names


def compact_buffers(
    layer: nn.Module,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor,
    structure: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Register a sparse layer's ``bias``, ``row_index``, ``col_index`` and ``sub_mask`` buffers; with a
    ``structure`` (kept output rows, kept input columns of the mask), keep only those and return the
    compacted weight and mask (else both unchanged)."""
    layer.register_buffer("bias", None if bias is None else bias.detach().clone())
    layer.register_buffer("row_index", None)
    layer.register_buffer("col_index", None)
    layer.register_buffer("sub_mask", None)
    if structure is None:
        return weight, mask
    rows, cols = structure(mask)
    layer.row_index, layer.col_index = rows, cols
    return (
        weight.index_select(0, rows).index_select(1, cols),
        mask.index_select(0, rows).index_select(1, cols),
    )


class SparseLinear(nn.Module):
    """Inference form of a pruned ``nn.Linear``: the same function, run by one chosen kernel.

    The weights are buffers, not parameters: this module does not train. Call
    :func:`prunekit.accel.deaccelerate` to get masked ``nn.Linear`` layers back for training.

    Args:
        weight: the dense ``(out, in)`` weight (pruned entries may hold anything; they are masked).
        bias: the bias or ``None``.
        mask: bool ``(out, in)``, ``True`` where a weight is kept.
        kernel: a name from :data:`INNER_KERNELS`, optionally prefixed ``"compact+"``.

    Example:
        >>> w = torch.randn(8, 16); mask = torch.rand(8, 16) > 0.9
        >>> layer = SparseLinear(w, None, mask, kernel="csr")
        >>> x = torch.randn(3, 16)
        >>> torch.allclose(layer(x), x @ (w * mask).T, atol=1e-6)
        True
    """

    weight: torch.Tensor
    blocks: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None
    row_index: torch.Tensor | None
    col_index: torch.Tensor | None
    sub_mask: torch.Tensor | None

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor, *, kernel: str
    ) -> None:
        super().__init__()
        compact, inner = parse_kernel(kernel)
        weight = weight.detach()
        mask = mask.detach().to(device=weight.device, dtype=torch.bool)
        if tuple(mask.shape) != tuple(weight.shape) or weight.dim() != 2:
            raise ConfigError(f"SparseLinear needs a 2-D weight and a mask of its shape, got {tuple(weight.shape)} "
                              f"and {tuple(mask.shape)}")  # fmt: skip
        kernel, inner = runnable(kernel, compact, inner, weight)
        self.kernel = kernel
        self.inner = inner
        self.splits = int(inner.rpartition("/")[2]) if inner.startswith("csr") and "/" in inner else 1
        self.numba = inner.partition("/")[0] == JIT
        self.transposed_output = False  # True: return y as the transposed view of y.T (no copy)
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        weight, mask = compact_buffers(self, weight, bias, mask, zero_structure if compact else None)
        self.sub_shape = (int(weight.shape[0]), int(weight.shape[1]))
        masked = torch.where(mask, weight, weight.new_zeros(()))
        if inner.startswith("csr"):
            crow, col, values = csr_parts(masked, mask)
            self.register_buffer("crow", crow)
            self.register_buffer("col", col)
            self.register_buffer("values", values)
        else:
            if inner == "dense":
                self.register_buffer("weight", masked.contiguous())
            else:
                self.register_buffer("blocks", quiet_sparse(masked, "bsr", int(inner[3:])))
            if not bool(mask.all()):  # kept only to give the exact mask back (deaccelerate / save)
                self.sub_mask = mask.clone()
        self._csr: torch.Tensor | None = None
        self._csr_key: tuple[int, int, int] | None = None
        self._parts: list[tuple[int, int, torch.Tensor]] = []
        self._parts_key: tuple[int, int, int] | None = None
        self._jit_split: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # csr-numba/K's arrays
        self._jit_key: tuple[int, int, int] | None = None
        self._bounds = jit.ThreadBounds()  # csr-numba's row parts per thread
        self.train(False)  # born in inference mode

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        # a sparse tensor has no storage to copy: rebuilt on use
        state["_csr"] = state["_csr_key"] = state["_parts_key"] = state["_jit_split"] = state["_jit_key"] = (
            None
        )
        state["_bounds"] = jit.ThreadBounds()
        state["_parts"] = []
        return state

    def _key(self) -> tuple[int, int, int]:
        return (self.crow.data_ptr(), self.col.data_ptr(), self.values.data_ptr())

    def _csr_tensor(self) -> torch.Tensor:
        key = self._key()
        if self._csr is None or self._csr_key != key:
            with torch.inference_mode(False):  # a normal tensor even when built during timing
                self._csr = build_csr(self.crow, self.col, self.values, self.sub_shape)
            self._csr_key = key
        return self._csr

    def _csr_parts(self) -> list[tuple[int, int, torch.Tensor]]:
        """The CSR matrices the kernel multiplies with: one, or one per column range (``csr/K``)."""
        key = self._key()
        if self._parts_key != key:
            if self.splits == 1:
                self._parts = [(0, self.sub_shape[1], self._csr_tensor())]
            else:  # normal tensors even when first called under inference_mode (timing), reused outside
                with torch.inference_mode(False), torch.no_grad():
                    self._parts = column_parts(self.crow, self.col, self.values, self.sub_shape, self.splits)
            self._parts_key = key
        return self._parts

    def _jit_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(crow, col, values)`` as ``csr-numba`` reads them: the buffers, or for ``csr-numba/K`` a copy
        in K column parts (:func:`prunekit.kernels.jit.column_split`; the saved buffers stay plain CSR)."""
        if self.splits == 1:
            return self.crow, self.col, self.values
        key = self._key()
        if self._jit_split is None or self._jit_key != key:
            with torch.inference_mode(False), torch.no_grad():
                self._jit_split = jit.column_split(self.crow, self.col, self.values, self.sub_shape[1],
                                                   self.splits)  # fmt: skip
            self._jit_key = key
        return self._jit_split

    def _sparse_t(self, xt: torch.Tensor) -> torch.Tensor:
        """``W @ xt`` for ``xt`` (in, T) contiguous; the bias added here when no row scatter follows."""
        bias = self.bias.reshape(-1, 1) if self.bias is not None and self.row_index is None else None
        if self.inner.startswith("bsr"):
            yt = torch.mm(self.blocks, xt)
            return yt if bias is None else yt.add_(bias)
        if (
            self.numba
            and xt.dtype == self.values.dtype
            and not (xt.requires_grad and torch.is_grad_enabled())
        ):
            crow, col, values = self._jit_arrays()
            return jit.csr_mm(crow, col, values, xt, None if bias is None else self.bias,
                              bounds=self._bounds.get(self.crow, xt.shape[1]))  # fmt: skip
        parts = self._csr_parts()
        (lo, hi, first), rest = parts[0], parts[1:]
        xs = xt if hi - lo == xt.shape[0] else xt[lo:hi]
        yt = torch.sparse.mm(first, xs) if bias is None else torch.addmm(bias, first, xs)
        for lo, hi, part in rest:
            yt.addmm_(part, xt[lo:hi])
        return yt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise InferenceOnlyError(
                f"SparseLinear ({self.kernel}, {self.out_features}x{self.in_features}) is inference-only and the "
                "model is in train mode; call model.eval() for inference, or prunekit.accel.deaccelerate(model) "
                "to get masked nn.Linear layers back for training"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (T, in); a view, also of a transposed-layout x
        if self.inner == "dense":
            if self.col_index is not None:
                x2 = x2.index_select(1, self.col_index)  # (T, kept_in)
            if self.row_index is None:
                return F.linear(x2, self.weight, self.bias).reshape(*lead, self.out_features)
            y = F.linear(x2, self.weight)
            full = y.new_zeros(y.shape[0], self.out_features)
            full.index_copy_(1, self.row_index, y)
            if self.bias is not None:
                full.add_(self.bias)
            return full.reshape(*lead, self.out_features)
        xt = x2.t()  # (in, T): contiguous when x came transposed (from a previous sparse layer)
        if self.col_index is not None:
            xt = xt.index_select(0, self.col_index)  # a fresh contiguous (kept_in, T)
        elif not xt.is_contiguous():
            xt = _shared_t.get(x, x2)  # q, k and v read one copy
        yt = self._sparse_t(xt)  # (kept_out, T)
        if self.row_index is not None:
            full = yt.new_zeros(self.out_features, yt.shape[1])
            full.index_copy_(0, self.row_index, yt)
            if self.bias is not None:
                full.add_(self.bias.reshape(-1, 1))
            yt = full
        y = yt.t() if self.transposed_output else yt.t().contiguous()
        return y.reshape(*lead, self.out_features)

    def dense_weight_and_mask(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full ``(out, in)`` masked weight and its bool mask (what the layer computes with)."""
        if self.inner.startswith("csr"):
            csr = self._csr_tensor()
            sub_w = csr.to_dense()
            sub_m = build_csr(self.crow, self.col, torch.ones_like(self.values, dtype=torch.bool),
                              self.sub_shape).to_dense()  # fmt: skip
        else:
            sub_w = self.weight if self.inner == "dense" else self.blocks.to_dense()
            sub_m = self.sub_mask if self.sub_mask is not None else torch.ones_like(sub_w, dtype=torch.bool)
        if self.row_index is None or self.col_index is None:
            return sub_w.clone(), sub_m.clone()
        w = sub_w.new_zeros(self.out_features, self.in_features)
        m = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=sub_w.device)
        w[self.row_index[:, None], self.col_index[None, :]] = sub_w
        m[self.row_index[:, None], self.col_index[None, :]] = sub_m
        return w, m

    def to_linear(self) -> nn.Linear:
        """A masked ``nn.Linear`` with the same function (mask set with :func:`prunekit.masks.set_mask`)."""
        from prunekit.core import set_mask

        w, m = self.dense_weight_and_mask()
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=w.device, dtype=w.dtype)  # fmt: skip
        with torch.no_grad():
            layer.weight.copy_(w)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        if not bool(m.all()):
            set_mask(layer, "weight", m)
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel!r}"


__all__ = [
    "COMPACT",
    "CSR_SPLITS",
    "INNER_KERNELS",
    "JIT",
    "JIT_MIN_SPLIT_COLUMNS",
    "MIN_SPLIT_COLUMNS",
    "InferenceOnlyError",
    "KernelStats",
    "SparseLinear",
    "block_fill",
    "build_csr",
    "candidate_kernels",
    "column_parts",
    "compact_buffers",
    "csr_kernels",
    "csr_parts",
    "parse_kernel",
    "quiet_sparse",
    "runnable",
    "split_bounds",
    "split_kernel_name",
    "zero_structure",
]
