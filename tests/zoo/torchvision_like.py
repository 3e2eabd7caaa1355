"""Twins of torchvision's Swin (v1) and MaxViT attention, written from scratch with the same op sequence.

torchvision does not import beside this torch, so the zoo mirrors what makes these models hard to prune:
Swin's attention is a *function* of the parent module that reads ``self.qkv.weight`` through ``F.linear``
(the qkv Linear never runs as a module), reshapes by ``C // num_heads`` with ``C`` read from the input
width, builds its shift mask with in-place writes into a fresh tensor, and pads; MaxViT reshapes the
attention output back with the input width ``D``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Inputs, finish, img


def shifted_window_attention(
    x: Tensor, qkv_weight: Tensor, proj_weight: Tensor, bias: Tensor, ws: int, heads: int, shift: int,
    qkv_bias: Tensor | None, proj_bias: Tensor | None,
) -> Tensor:  # fmt: skip
    b, h, w, c = x.shape
    pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = x.shape
    shift = 0 if ws >= ph else shift
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    nw = (ph // ws) * (pw // ws)
    x = x.view(b, ph // ws, ws, pw // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nw, ws * ws, c)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (c // heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1)) + bias
    if shift > 0:
        mask = x.new_zeros((ph, pw))
        slices = ((0, -ws), (-ws, -shift), (-shift, None))
        count = 0
        for hs in slices:
            for wsl in slices:
                mask[hs[0] : hs[1], wsl[0] : wsl[1]] = count
                count += 1
        mask = mask.view(ph // ws, ws, pw // ws, ws).permute(0, 2, 1, 3).reshape(nw, ws * ws)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        attn = attn.view(x.size(0) // nw, nw, heads, x.size(1), x.size(1)) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
    x = F.linear(x, proj_weight, proj_bias)
    x = x.view(b, ph // ws, pw // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if shift > 0:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


class ShiftedWindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, shift: int, num_heads: int) -> None:
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = ws, shift, num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(0.02 * torch.randn((2 * ws - 1) ** 2, num_heads))
        coords = torch.flatten(
            torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")), 1
        )
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1).flatten())

    def forward(self, x: Tensor) -> Tensor:
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index]
        bias = bias.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        return shifted_window_attention(
            x, self.qkv.weight, self.proj.weight, bias, self.window_size, self.num_heads, self.shift_size,
            self.qkv.bias, self.proj.bias,
        )  # fmt: skip


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return torch.permute(x, self.dims)


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0)
        )


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int, shift: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, ws, shift, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))  # stochastic depth is the identity in eval mode
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        h, w, _ = x.shape[-3:]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1
        )
        return self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    """torchvision ``swin_t`` at toy size: patch 2, embed 16, depths (2, 2), heads (2, 4), window 4."""

    def __init__(
        self, embed: int = 16, depths: tuple[int, ...] = (2, 2), heads: tuple[int, ...] = (2, 4)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, embed, 2, 2), Permute([0, 2, 3, 1]), nn.LayerNorm(embed))
        ]
        for i, depth in enumerate(depths):
            dim = embed * 2**i
            layers.append(
                nn.Sequential(
                    *(SwinTransformerBlock(dim, heads[i], 4, 0 if j % 2 == 0 else 2) for j in range(depth))
                )
            )
            if i < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        num_features = embed * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(num_features)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(num_features, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.flatten(self.avgpool(self.permute(self.norm(self.features(x))))))


class RelativePositionalMultiHeadAttention(nn.Module):
    """MaxViT's attention: q/k/v reshaped by ``n_heads``/``head_dim`` attributes, the output by the input width."""

    def __init__(self, feat_dim: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.n_heads = feat_dim // head_dim
        self.head_dim = head_dim
        self.size = int(max_seq_len**0.5)
        self.to_qkv = nn.Linear(feat_dim, self.n_heads * self.head_dim * 3)
        self.scale_factor = feat_dim**-0.5
        self.merge = nn.Linear(self.head_dim * self.n_heads, feat_dim)
        self.relative_position_bias_table = nn.Parameter(
            0.02 * torch.randn((2 * self.size - 1) ** 2, self.n_heads)
        )
        coords = torch.flatten(
            torch.stack(torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")), 1
        )
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += self.size - 1
        rel[:, :, 1] += self.size - 1
        rel[:, :, 0] *= 2 * self.size - 1
        self.register_buffer("relative_position_index", rel.sum(-1).flatten().unsqueeze(0))

    def get_relative_positional_bias(self) -> Tensor:
        bias_index = self.relative_position_index.view(-1)
        bias = self.relative_position_bias_table[bias_index].view(self.size**2, self.size**2, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        b, g, p, d = x.shape
        h, dh = self.n_heads, self.head_dim
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q = q.reshape(b, g, p, h, dh).permute(0, 1, 3, 2, 4)
        k = k.reshape(b, g, p, h, dh).permute(0, 1, 3, 2, 4)
        v = v.reshape(b, g, p, h, dh).permute(0, 1, 3, 2, 4)
        k = k * self.scale_factor
        dot_prod = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        attn = F.softmax(dot_prod + self.get_relative_positional_bias(), dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", attn, v)
        out = out.permute(0, 1, 3, 2, 4).reshape(b, g, p, d)
        return self.merge(out)


class MaxViTLike(nn.Module):
    """Stem conv, then window partition -> MaxViT attention + MLP (pre-norm residuals) -> pooled head."""

    def __init__(self, dim: int = 16, head_dim: int = 4, p: int = 4) -> None:
        super().__init__()
        self.p = p
        self.stem = nn.Conv2d(3, dim, 2, 2)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = RelativePositionalMultiHeadAttention(dim, head_dim, p * p)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        p = self.p
        x = (
            x.reshape(b, c, h // p, p, w // p, p)
            .permute(0, 2, 4, 3, 5, 1)
            .reshape(b, (h // p) * (w // p), p * p, c)
        )
        x = x + self.attn(self.attn_norm(x))
        x = x + self.mlp(self.mlp_norm(x))
        return self.head(x.mean((1, 2)))


def make_tv_swin() -> tuple[nn.Module, Inputs]:
    """swin_t's depths (2, 2, 6, 2): 12 attention modules that hold their widths by the input width."""
    torch.manual_seed(0)
    return finish(SwinTransformer(depths=(2, 2, 6, 2), heads=(1, 2, 4, 8)), img(hw=32))


def make_tv_maxvit() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return finish(MaxViTLike(), img(hw=16))


__all__: list[Any] = ["MaxViTLike", "SwinTransformer", "make_tv_maxvit", "make_tv_swin"]
