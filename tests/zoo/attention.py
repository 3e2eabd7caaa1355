"""Attention models: ViT (MHA, class token), Swin-like (windows, roll, bias table)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import Inputs, finish, img


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, class token, learned position embedding, MHA blocks, stored hidden size."""

    def __init__(
        self, img: int = 16, patch: int = 4, dim: int = 32, depth: int = 2, heads: int = 4, mlp: int = 64
    ) -> None:
        super().__init__()
        self.hidden_size = dim  # stored size used in a reshape below
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        n = (img // patch) ** 2
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x = self.patch_embed(x)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        cls = x[:, 0].reshape(b, self.hidden_size)
        return self.head(cls)


def make_vit() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return finish(ViT(), img())


# --------------------------------------------------------------------------- Swin-like


def window_partition(x: Tensor, ws: int) -> Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).contiguous()
    return x.view(-1, ws * ws, c)  # (B*nW, ws*ws, C)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).contiguous()
    return x.view(b, h, w, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(0.02 * torch.randn((2 * ws - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, hd)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int, shift: int) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:  # x: (B, H, W, C) channel-last
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, self.ws)), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
        x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], -1)))  # last-dim concat


class SwinLike(nn.Module):
    def __init__(self, dim: int = 16, ws: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 2, 2)
        self.norm0 = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(SwinBlock(dim, ws, heads, 0), SwinBlock(dim, ws, heads, ws // 2))
        self.merge = PatchMerging(dim)
        self.block2 = SwinBlock(2 * dim, ws, 2 * heads, 0)
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm0(self.patch_embed(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        x = self.block2(self.merge(self.blocks(x)))
        return self.head(self.norm(x).mean((1, 2)))


def make_swin() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return finish(SwinLike(), img(hw=16))


# --------------------------------------------------------------------------- custom autograd Function
