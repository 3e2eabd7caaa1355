"""Conv kernels for pruned weights: :class:`SparseConv2d`, the inference form of a pruned ``nn.Conv2d``.

A conv is a matmul of its weight seen as a ``(out, in * kh * kw)`` matrix with the input's patches::

    x (N, in, H, W) ──► keep input channels ──► patches per sample ──► kernel ──► scatter output ──► + b
                        (index_select:           1x1, stride 1,        "dense"  F.conv2d    channels
                         whole zero input         padding 0: the       "csr"    CSR @ patches  (zeros where a
                         channels)                (in, H*W) view       (int32 indices,     whole output
                                                  (no copy);           bias fused)         channel is
                                                  otherwise F.unfold                       pruned)

``"taps"`` needs no patches: one CSR matrix ``W[:, :, dy, dx]`` per kernel tap, each
multiplied with a shifted view of the zero-padded input flattened to ``(in, H_pad * W_pad)``; the sum
is the output on the padded width, whose last ``W_pad - W_out`` columns are dropped (stride 1)::

    y[:, i * W_pad + j] = sum over taps (dy, dx) of  W[:, :, dy, dx] @ x_pad[:, (i + d*dy) * W_pad + j + d*dx]

With stride ``s`` the padded input is first split into its ``s x s`` phases (one copy of the input;
im2col copies ``kh * kw / s**2`` times it) and each tap reads one phase, shifted.

F.unfold's copy is ``kh * kw`` times the input; on a 3x3 conv at 56x56 it took as long as the CSR
matmul itself, so ``taps`` is what makes 3x3 convs faster (at 95%, 1 thread: 1.4-2.9x vs dense where
im2col gave 0.4-2.3x).

Kernel names (data, as for :class:`~prunekit.kernels.SparseLinear`): ``"dense"``, ``"csr"``,
``"taps"``, each optionally prefixed ``"compact+"``, which drops whole zero output channels and whole
zero input channels first (a smaller conv). Batches run one sample at a time (``torch.mm(..., out=)``
into the output): one matmul on a permuted ``(in, N*H*W)`` copy took 0.89-1.64x the loop's time at
batch 8 on four ResNet shapes (faster on one, by 11%) and needs two copies. The output is contiguous NCHW.

Only plain ``nn.Conv2d`` with ``groups=1`` and ``padding_mode="zeros"`` (any stride, padding,
``"same"``/``"valid"``, dilation); :func:`prunekit.accel.accelerate` leaves the others dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.kernels import jit
from prunekit.kernels.kernels import (
    COMPACT,
    JIT,
    InferenceOnlyError,
    build_csr,
    column_parts,
    compact_buffers,
    csr_parts,
    runnable,
    split_kernel_name,
)

CONV_KERNELS: tuple[str, ...] = ("dense", "csr", JIT, "taps")
Pair = tuple[int, int]


def parse_conv_kernel(name: str) -> tuple[bool, str]:
    """``"compact+csr"`` -> ``(True, "csr")``.

    Raises:
        ConfigError: not a conv kernel.
    """
    return split_kernel_name(name, CONV_KERNELS, "conv kernel")


def channel_structure(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the output and input channels of a 4-D mask that keep at least one weight (int64)."""
    rows = mask.flatten(1).any(dim=1).nonzero().view(-1)
    cols = mask.any(dim=(0, 2, 3)).nonzero().view(-1)
    return rows, cols


def conv_candidate_kernels(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> list[str]:
    """Conv kernels worth timing for a 4-D mask and weight ``dtype`` (``taps`` for kernels larger than 1x1;
    ``csr-numba`` where numba is installed; compaction only where whole zero channels remove >= 5%)."""
    if int(mask.sum()) == mask.numel():
        return ["dense"]
    rows, cols = channel_structure(mask)
    names = ["dense", "csr"]
    if jit.supports(dtype, mask.device):
        names.append(JIT)
    if tuple(mask.shape[2:]) != (1, 1):  # a 1x1 conv reads its input as it is (or strided: a quarter of it)
        names.append("taps")
    if rows.numel() * cols.numel() <= 0.95 * mask.shape[0] * mask.shape[1]:
        names += [COMPACT + k for k in names]
    return names


@dataclass(frozen=True)
class ConvGeometry:
    """What a conv does besides its weight: stride, padding (ints or ``"same"``/``"valid"``), dilation."""

    stride: Pair
    padding: Pair | str
    dilation: Pair

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        pad = conv.padding if isinstance(conv.padding, str) else (int(conv.padding[0]), int(conv.padding[1]))
        return cls(
            (int(conv.stride[0]), int(conv.stride[1])), pad, (int(conv.dilation[0]), int(conv.dilation[1]))
        )


def same_padding(kernel: Pair, dilation: Pair) -> tuple[int, int, int, int]:
    """``F.pad`` amounts of ``padding="same"`` (stride 1): left/right, top/bottom; the odd one goes last."""
    out: list[int] = []
    for k, d in ((kernel[1], dilation[1]), (kernel[0], dilation[0])):
        total = d * (k - 1)
        out += [total // 2, total - total // 2]
    return out[0], out[1], out[2], out[3]


class SparseConv2d(nn.Module):
    """Inference form of a pruned ``nn.Conv2d`` (groups 1, zero padding): the same function, one chosen kernel.

    The weights are buffers, not parameters: this module does not train. Call
    :func:`prunekit.accel.deaccelerate` to get masked ``nn.Conv2d`` layers back.

    Args:
        weight: the dense ``(out, in, kh, kw)`` weight (pruned entries may hold anything; they are masked).
        bias: the bias or ``None``.
        mask: bool, the weight's shape, ``True`` where a weight is kept.
        kernel: ``"dense"``, ``"csr"``, ``"taps"``, optionally prefixed ``"compact+"``.
        geometry: stride, padding and dilation (:meth:`ConvGeometry.of` a conv).

    Example:
        >>> conv = nn.Conv2d(8, 16, 3, padding=1); mask = torch.rand(16, 8, 3, 3) > 0.9
        >>> layer = SparseConv2d(conv.weight, conv.bias, mask, kernel="csr", geometry=ConvGeometry.of(conv))
        >>> x = torch.randn(2, 8, 10, 10)
        >>> ref = F.conv2d(x, conv.weight * mask, conv.bias, padding=1)
        >>> torch.allclose(layer(x), ref, atol=1e-5)
        True
    """

    weight: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None
    row_index: torch.Tensor | None
    col_index: torch.Tensor | None
    sub_mask: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor, *, kernel: str,
                 geometry: ConvGeometry) -> None:  # fmt: skip
        super().__init__()
        compact, inner = parse_conv_kernel(kernel)
        weight = weight.detach()
        mask = mask.detach().to(device=weight.device, dtype=torch.bool)
        if tuple(mask.shape) != tuple(weight.shape) or weight.dim() != 4:
            raise ConfigError(f"SparseConv2d needs a 4-D weight and a mask of its shape, got {tuple(weight.shape)} "
                              f"and {tuple(mask.shape)}")  # fmt: skip
        kernel, inner = runnable(kernel, compact, inner, weight)
        self.kernel, self.inner, self.geometry = kernel, inner, geometry
        self.out_channels, self.in_channels = int(weight.shape[0]), int(weight.shape[1])
        self.kernel_size = (int(weight.shape[2]), int(weight.shape[3]))
        pad = geometry.padding
        # the padding the patches are cut with; "same" is applied by F.pad first (it may be asymmetric)
        self.pre_pad = same_padding(self.kernel_size, geometry.dilation) if pad == "same" else None
        self.unfold_padding: Pair = (0, 0) if isinstance(pad, str) else pad
        self.pointwise = (
            self.kernel_size == (1, 1) and geometry.stride == (1, 1) and self.unfold_padding == (0, 0)
        )
        weight, mask = compact_buffers(self, weight, bias, mask, channel_structure if compact else None)
        self.sub_shape = tuple(int(s) for s in weight.shape)
        masked = torch.where(mask, weight, weight.new_zeros(()))
        if inner != "dense":  # "taps": columns ordered (dy, dx, in), so tap t is the column range t * in...
            order = (0, 2, 3, 1) if inner == "taps" else (0, 1, 2, 3)
            flat = (self.sub_shape[0], math.prod(self.sub_shape[1:]))  # explicit: the matrix may be empty
            flat_w, flat_m = (t.permute(order).reshape(flat) for t in (masked, mask))
            crow, col, values = csr_parts(flat_w, flat_m)
            self.register_buffer("crow", crow)
            self.register_buffer("col", col)
            self.register_buffer("values", values)
        else:
            self.register_buffer("weight", masked.contiguous())
            if not bool(mask.all()):  # kept only to give the exact mask back (deaccelerate / save)
                self.sub_mask = mask.clone()
        self._csr: torch.Tensor | None = None
        self._csr_key: tuple[int, int, int] | None = None
        self._taps: list[tuple[int, torch.Tensor]] = []
        self._taps_key: tuple[int, int, int] | None = None
        self._bounds = jit.ThreadBounds()  # csr-numba's row parts per thread
        self.train(False)  # born in inference mode

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: torch.Tensor, kernel: str) -> SparseConv2d:
        """The kernel ``kernel`` of ``conv`` with ``mask`` (``conv`` is not changed)."""
        bias = None if conv.bias is None else conv.bias.detach()
        return cls(conv.weight.detach(), bias, mask, kernel=kernel, geometry=ConvGeometry.of(conv))

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_csr"] = state["_csr_key"] = state["_taps_key"] = (
            None  # sparse tensors have no storage to copy
        )
        state["_taps"] = []  # rebuilt on use
        state["_bounds"] = jit.ThreadBounds()
        return state

    def _csr_tensor(self) -> torch.Tensor:
        key = (self.crow.data_ptr(), self.col.data_ptr(), self.values.data_ptr())
        if self._csr is None or self._csr_key != key:
            with torch.inference_mode(False):  # a normal tensor even when built during timing
                shape = (self.sub_shape[0], self.sub_shape[1] * self.sub_shape[2] * self.sub_shape[3])
                self._csr = build_csr(self.crow, self.col, self.values, shape)
            self._csr_key = key
        return self._csr

    def _tap_matrices(self) -> list[tuple[int, torch.Tensor]]:
        """``(tap, CSR of W[:, :, dy, dx])`` of the taps that keep a weight (tap = dy * kw + dx)."""
        key = (self.crow.data_ptr(), self.col.data_ptr(), self.values.data_ptr())
        if self._taps_key != key:
            shape = (self.sub_shape[0], self.sub_shape[1] * self.sub_shape[2] * self.sub_shape[3])
            taps = self.sub_shape[2] * self.sub_shape[3]
            with torch.inference_mode(False), torch.no_grad():  # normal tensors even when built during timing
                parts = column_parts(self.crow, self.col, self.values, shape, taps)
            self._taps = [(t, csr) for t, (_, _, csr) in enumerate(parts) if csr.values().numel()]
            self._taps_key = key
        return self._taps

    def _run_taps(self, x: torch.Tensor) -> torch.Tensor:
        """The ``"taps"`` kernel (see module docstring) on ``x`` (N, in, H, W).

        Stride ``s > 1``: the padded input is split once into its ``s x s`` phases (``x_pad[a::s, b::s]``, one
        copy of the input in all); tap ``(dy, dx)`` then reads phase ``(d*dy % s, d*dx % s)`` shifted by
        ``(d*dy // s, d*dx // s)``, a stride-1 problem on the phase grid.
        """
        (kh, kw), (dh, dw), (sh, sw) = self.kernel_size, self.geometry.dilation, self.geometry.stride
        left, right, top, bottom = self.pre_pad or (self.unfold_padding[1], self.unfold_padding[1],
                                                   self.unfold_padding[0], self.unfold_padding[0])  # fmt: skip
        n, c, h, w = x.shape
        hp, wp = h + top + bottom, w + left + right
        h_out, w_out = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        wq = -(-wp // sw)  # phase grid width
        oy, ox = dh * (kh - 1) // sh, dw * (kw - 1) // sw  # the largest tap offsets on the phase grid
        # rows of the phase grid: the last tap's view of the last output row runs ox columns past it
        hq = max(-(-hp // sh), oy + h_out + -(-ox // wq))
        xp = F.pad(x, (left, right + wq * sw - wp, top, bottom + hq * sh - hp)).contiguous()  # NCHW
        if (sh, sw) != (1, 1):  # (N, sh, sw, in, hq * wq): every phase contiguous
            xp = xp.view(n, c, hq, sh, wq, sw).permute(0, 3, 5, 1, 2, 4).contiguous()
        phases = xp.view(n, sh, sw, c, hq * wq)
        span = h_out * wq
        rows = self.sub_shape[0]
        bias = self.bias.reshape(-1, 1) if self.bias is not None and self.row_index is None else None
        taps = self._tap_matrices()
        grad = torch.is_grad_enabled() and xp.requires_grad  # in-place addmm_ would not record autograd
        outs = []
        for i in range(n):
            acc = x.new_zeros(rows, span) if bias is None else bias.expand(rows, span).clone()
            for t, csr in taps:
                ry, rx = (t // kw) * dh, (t % kw) * dw
                off = (ry // sh) * wq + rx // sw
                seg = phases[i, ry % sh, rx % sw, :, off : off + span]  # a view, columns contiguous
                acc = torch.addmm(acc, csr, seg) if grad else acc.addmm_(csr, seg)
            outs.append(acc.view(rows, h_out, wq)[:, :, :w_out])
        return outs[0].unsqueeze(0).contiguous() if n == 1 else torch.stack(outs)

    def _patches(self, x: torch.Tensor) -> tuple[torch.Tensor, Pair]:
        """``(N, in * kh * kw, L)`` patches of ``x`` (N, in, H, W) and the output's ``(H_out, W_out)``."""
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        n, c, h, w = x.shape
        if self.pointwise:
            return x.contiguous().view(n, c, h * w), (h, w)
        g = self.geometry
        cols = F.unfold(
            x, self.kernel_size, dilation=g.dilation, padding=self.unfold_padding, stride=g.stride
        )
        return cols, self._out_hw(h, w)

    def _out_hw(self, h: int, w: int) -> Pair:
        """Output height and width for an input of ``h x w`` (already ``"same"``-padded)."""
        g = self.geometry
        h_out, w_out = ((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                        zip((h, w), self.unfold_padding, g.dilation, self.kernel_size, g.stride, strict=True))  # fmt: skip
        return h_out, w_out

    def _empty(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 0, H_out, W_out)``: the compacted output of a conv whose every weight is pruned."""
        h, w = int(x.shape[2]), int(x.shape[3])
        if self.pre_pad is not None:
            h, w = h + self.pre_pad[2] + self.pre_pad[3], w + self.pre_pad[0] + self.pre_pad[1]
        return x.new_zeros(x.shape[0], 0, *self._out_hw(h, w))

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        bias = self.bias if self.row_index is None else None
        return F.conv2d(x, self.weight, bias, g.stride, g.padding, g.dilation)

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        cols, (h_out, w_out) = self._patches(x)
        n, rows = cols.shape[0], self.sub_shape[0]
        grad = cols.requires_grad and torch.is_grad_enabled()
        if self.inner == JIT and not grad and cols.dtype == self.values.dtype:
            bias_1d = self.bias if self.row_index is None else None
            bounds = self._bounds.get(self.crow, cols.shape[2])
            y = cols.new_empty(n, rows, cols.shape[2])
            for i in range(n):
                jit.csr_mm(
                    self.crow, self.col, self.values, cols[i].contiguous(), bias_1d, bounds=bounds, out=y[i]
                )
            return y.view(n, rows, h_out, w_out)
        csr = self._csr_tensor()
        bias = self.bias.reshape(-1, 1) if self.bias is not None and self.row_index is None else None
        if n == 1 or grad:  # out= does not record autograd
            ys = [torch.sparse.mm(csr, c) if bias is None else torch.addmm(bias, csr, c) for c in cols]
            y = ys[0].unsqueeze(0) if n == 1 else torch.stack(ys)
        else:
            y = cols.new_empty(n, rows, cols.shape[2])
            for i in range(n):
                if bias is None:
                    torch.mm(csr, cols[i], out=y[i])
                else:
                    torch.addmm(bias, csr, cols[i], out=y[i])
        return y.view(n, rows, h_out, w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise InferenceOnlyError(
                f"SparseConv2d ({self.kernel}, {self.out_channels}x{self.in_channels}x{self.kernel_size[0]}x"
                f"{self.kernel_size[1]}) is inference-only and the model is in train mode; call model.eval() for "
                "inference, or prunekit.accel.deaccelerate(model) to get masked nn.Conv2d layers back for training"
            )
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if self.sub_shape[0] == 0:  # every weight pruned (compact+): only the bias is left
            y = self._empty(x)
        else:
            if self.col_index is not None:
                x = x.index_select(1, self.col_index)
            y = (
                self._dense(x)
                if self.inner == "dense"
                else self._run_taps(x)
                if self.inner == "taps"
                else self._sparse(x)
            )
        if self.row_index is not None:
            full = y.new_zeros(y.shape[0], self.out_channels, y.shape[2], y.shape[3])
            full.index_copy_(1, self.row_index, y)
            if self.bias is not None:
                full.add_(self.bias.view(1, -1, 1, 1))
            y = full
        return y.squeeze(0) if unbatched else y

    def dense_weight_and_mask(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full ``(out, in, kh, kw)`` masked weight and its bool mask (what the layer computes with)."""
        if self.inner != "dense":
            co, ci, kh, kw = self.sub_shape
            stored = (co, kh, kw, ci) if self.inner == "taps" else (co, ci, kh, kw)
            back = (0, 3, 1, 2) if self.inner == "taps" else (0, 1, 2, 3)
            shape2 = self._csr_tensor().shape
            ones = torch.ones_like(self.values, dtype=torch.bool)
            sub_w = self._csr_tensor().to_dense().view(stored).permute(back).contiguous()
            sub_m = (
                build_csr(self.crow, self.col, ones, shape2)
                .to_dense()
                .view(stored)
                .permute(back)
                .contiguous()
            )
        else:
            sub_w = self.weight
            sub_m = self.sub_mask if self.sub_mask is not None else torch.ones_like(sub_w, dtype=torch.bool)
        if self.row_index is None or self.col_index is None:
            return sub_w.clone(), sub_m.clone()
        full = (self.out_channels, self.in_channels, *self.kernel_size)
        w = sub_w.new_zeros(full)
        m = torch.zeros(full, dtype=torch.bool, device=sub_w.device)
        w[self.row_index[:, None], self.col_index[None, :]] = sub_w
        m[self.row_index[:, None], self.col_index[None, :]] = sub_m
        return w, m

    def to_conv(self) -> nn.Conv2d:
        """A masked ``nn.Conv2d`` with the same function (mask set with :func:`prunekit.masks.set_mask`)."""
        from prunekit.core import set_mask

        w, m = self.dense_weight_and_mask()
        g = self.geometry
        layer = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, g.stride, g.padding, g.dilation,
                          bias=self.bias is not None, device=w.device, dtype=w.dtype)  # fmt: skip
        with torch.no_grad():
            layer.weight.copy_(w)
            if self.bias is not None:
                assert layer.bias is not None
                layer.bias.copy_(self.bias)
        if not bool(m.all()):
            set_mask(layer, "weight", m)
        return layer

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={g.stride}, "
                f"padding={g.padding}, dilation={g.dilation}, kernel={self.kernel!r}")  # fmt: skip


__all__ = [
    "CONV_KERNELS",
    "ConvGeometry",
    "SparseConv2d",
    "channel_structure",
    "conv_candidate_kernels",
    "parse_conv_kernel",
    "same_padding",
]
