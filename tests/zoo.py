"""Test zoo for structured pruning: tiny CPU models, one per coupling pattern, written from scratch.

Every factory returns ``(model, example_inputs)``: the model in ``eval()`` mode with deterministic
weights (seeded inside the factory), and a tuple of example inputs for tracing. Building the same
factory twice gives bit-identical models, which the reload tests rely on.

    ZOO      plain PyTorch models (no torchvision)
    HF_ZOO   Hugging Face BERT, GPT-2 and LLaMA-GQA built offline from small configs

``random_inputs(example_inputs, seed)`` draws fresh inputs of the same shapes/dtypes (token ids stay in
the vocabulary) for the oracle tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Inputs = tuple[Any, ...]
Factory = Callable[[], tuple[nn.Module, Inputs]]


def _bn_randomize(model: nn.Module) -> None:
    """Give BatchNorms non-trivial affine parameters and running stats (a masked BN shift must leak)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                with torch.no_grad():
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def _finish(model: nn.Module, *inputs: Any) -> tuple[nn.Module, Inputs]:
    _bn_randomize(model)
    return model.eval(), tuple(inputs)


def _img(c: int = 3, hw: int = 16, b: int = 2) -> Tensor:
    return torch.randn(b, c, hw, hw, generator=torch.Generator().manual_seed(123))


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn(cin, cout, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in-place residual add
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn(cin, cout, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with configurable blocks; ``layers`` gives blocks per stage."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        widths: list[int],
        num_classes: int = 10,
        stem: int = 16,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        cin = stem
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, w, stride))
                cin = w * (block.expansion if block is Bottleneck else 1)
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def make_resnet_basic() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(ResNet(BasicBlock, [2, 2], [16, 32]), _img())


def make_resnet_bottleneck() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(ResNet(Bottleneck, [2, 1], [8, 16]), _img())


# --------------------------------------------------------------------------- MobileNetV2 / V3


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, width, 3, 2), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(
            InvertedResidual(width, 16, 1, 1),
            InvertedResidual(16, 16, 1, 4),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
        )
        self.head = nn.Sequential(conv_bn(24, 64, 1), nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def make_mobilenet_v2() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(MobileNetV2(), _img())


class SqueezeExcite(nn.Module):
    """SE gate: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hardsigmoid -> multiply."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.fc2(F.relu(self.fc1(s)))
        return x * F.hardsigmoid(s)


class V3Block(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, stride: int) -> None:
        super().__init__()
        self.expand = conv_bn(cin, hidden, 1)
        self.dw = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.se = SqueezeExcite(hidden, max(4, hidden // 4))
        self.project = conv_bn(hidden, cout, 1)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.hardswish(self.expand(x))
        y = F.hardswish(self.dw(y))
        y = self.project(self.se(y))
        return x + y if self.use_res else y


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.blocks = nn.Sequential(V3Block(16, 32, 16, 1), V3Block(16, 48, 24, 2), V3Block(24, 64, 24, 1))
        self.last = conv_bn(24, 64, 1)
        self.classifier = nn.Sequential(nn.Linear(64, 48), nn.Hardswish(), nn.Linear(48, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = F.hardswish(self.stem(x))
        x = F.hardswish(self.last(self.blocks(x)))
        return self.classifier(x.mean((2, 3)))


def make_mobilenet_v3() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(MobileNetV3(), _img())


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(y)))


class DenseNet(nn.Module):
    def __init__(self, num_classes: int = 10, growth: int = 8, n_layers: int = 3) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        c = 16
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            self.layers.append(DenseLayer(c, growth))
            c += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 16, 1, bias=False))
        self.norm = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = [self.conv0(x)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        x = self.transition(torch.cat(features, 1))
        x = F.avg_pool2d(x, 2)
        x = F.relu(self.norm(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_densenet() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(DenseNet(), _img())


# --------------------------------------------------------------------------- EfficientNet-like


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: identity in eval, per-sample drop in training."""
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= p
    return x * keep / (1 - p)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int, p_drop: float) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(conv_bn(cin, hidden, 1), nn.SiLU())
        self.dw = nn.Sequential(conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.SiLU())
        self.se_reduce = nn.Conv2d(hidden, max(2, cin // 4), 1)
        self.se_expand = nn.Conv2d(max(2, cin // 4), hidden, 1)
        self.project = conv_bn(hidden, cout, 1)
        self.use_res = stride == 1 and cin == cout
        self.p_drop = p_drop

    def forward(self, x: Tensor) -> Tensor:
        y = self.dw(self.expand(x))
        s = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        y = self.project(y * s)
        if self.use_res:
            return x + drop_path(y, self.p_drop, self.training)
        return y


class EfficientNetLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.SiLU())
        self.blocks = nn.Sequential(
            MBConv(16, 16, 1, 1, 0.1), MBConv(16, 24, 4, 2, 0.1), MBConv(24, 24, 4, 1, 0.2)
        )
        self.head = nn.Sequential(conv_bn(24, 64, 1), nn.SiLU())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_efficientnet() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(EfficientNetLike(), _img())


# --------------------------------------------------------------------------- Inception-like


class InceptionBlock(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(conv_bn(cin, 8, 1), nn.ReLU())
        self.b3 = nn.Sequential(conv_bn(cin, 6, 1), nn.ReLU(), conv_bn(6, 12, 3), nn.ReLU())
        self.b5 = nn.Sequential(conv_bn(cin, 4, 1), nn.ReLU(), conv_bn(4, 6, 5), nn.ReLU())
        self.pool_proj = nn.Sequential(conv_bn(cin, 6, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        p = F.max_pool2d(x, 3, 1, 1)
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool_proj(p)], dim=1)


class InceptionLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3), nn.ReLU())
        self.inc1 = InceptionBlock(16)
        self.inc2 = InceptionBlock(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inc2(self.inc1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def make_inception() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(InceptionLike(), _img())


# --------------------------------------------------------------------------- U-Net-like


class UNetLike(nn.Module):
    def __init__(self, cin: int = 3, cout: int = 2) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn(cin, 8), nn.ReLU(), conv_bn(8, 8), nn.ReLU())
        self.enc2 = nn.Sequential(conv_bn(8, 16), nn.ReLU(), conv_bn(16, 16), nn.ReLU())
        self.bottom = nn.Sequential(conv_bn(16, 32), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.dec2 = nn.Sequential(conv_bn(32, 16), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(16, 8, 2, 2)
        self.dec1 = nn.Sequential(conv_bn(16, 8), nn.ReLU())
        self.out = nn.Conv2d(8, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


def make_unet() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(UNetLike(), _img())


# --------------------------------------------------------------------------- ShuffleNet-like


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1),
            nn.ReLU(),
            conv_bn(half, half, 3, groups=half),
            conv_bn(half, half, 1),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], dim=1), 2)


class ShuffleNetLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.last = nn.Sequential(conv_bn(16, 32, 1), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.last(self.units(self.stem(x))).mean((2, 3)))


def make_shufflenet() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(ShuffleNetLike(), _img())


# --------------------------------------------------------------------------- grouped conv, 1-channel conv


class GroupedConvNet(nn.Module):
    """Grouped conv (groups=4), GroupNorm, and a conv with a single output channel (an attention map)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 16, 3)
        self.gconv = nn.Conv2d(16, 32, 3, 1, 1, groups=4, bias=False)
        self.gn = nn.GroupNorm(4, 32)
        self.conv2 = nn.Conv2d(32, 16, 1)
        self.att = nn.Conv2d(16, 1, 1)  # one output channel: never prunable
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.gn(self.gconv(x)))
        x = F.relu(self.conv2(x))
        x = x * torch.sigmoid(self.att(x))
        return self.fc(x.mean((2, 3)))


def make_grouped_conv() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(GroupedConvNet(), _img())


# --------------------------------------------------------------------------- flatten into Linear


class FlattenNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU()
        )
        self.fc1 = nn.Linear(16 * 4 * 4, 32)  # channel c -> columns [c*16, (c+1)*16)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.features(x), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def make_flatten_linear() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(FlattenNet(), _img(c=1, hw=16))


# --------------------------------------------------------------------------- 1x1-conv classifier


class ConvClassifier(nn.Module):
    """SqueezeNet-style head: the 1x1 conv produces the logits, so its width must be kept."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU(), conv_bn(16, 32, 3), nn.ReLU())
        self.classifier = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.classifier(self.features(x)), 1).flatten(1)


def make_conv_classifier() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(ConvClassifier(), _img())


# --------------------------------------------------------------------------- in-place ops


class InplaceNet(nn.Module):
    """In-place ReLU, ``+=``, and an in-place add into a channel slice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 16)
        self.conv2 = conv_bn(16, 16)
        self.side = nn.Conv2d(16, 8, 1)
        self.conv3 = nn.Conv2d(16, 16, 3, 1, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x), inplace=True)
        y = self.conv2(x)
        y += x
        y.relu_()
        y[:, :8] += self.side(y)  # in-place add into a channel slice
        return self.fc(self.conv3(y).mean((2, 3)))


def make_inplace() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(InplaceNet(), _img())


# --------------------------------------------------------------------------- ViT


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
    return _finish(ViT(), _img())


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
    return _finish(SwinLike(), _img(hw=16))


# --------------------------------------------------------------------------- custom autograd Function


class ScaledTanh(torch.autograd.Function):
    """A custom op the tracer cannot see through: its channels must be frozen, with a warning."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = torch.tanh(x) * 1.5
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1.5 - y * y / 1.5)


class CustomFunctionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 16)
        self.conv_a = nn.Conv2d(16, 16, 3, 1, 1)  # goes through ScaledTanh: frozen
        self.conv_b = nn.Conv2d(16, 24, 3, 1, 1)  # ordinary path: prunable
        self.conv_b2 = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        a = ScaledTanh.apply(self.conv_a(x))
        b = self.conv_b2(F.relu(self.conv_b(x)))
        return self.fc((a + b).mean((2, 3)))


def make_custom_function() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _finish(CustomFunctionNet(), _img())


# --------------------------------------------------------------------------- data-dependent branch + MoE


class Expert(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MoENet(nn.Module):
    """Top-1 routed experts (expert 3 never chosen: its router bias is -1e4) and a data-dependent branch."""

    def __init__(self, dim: int = 16, hidden: int = 32, n_experts: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.router = nn.Linear(dim, n_experts)
        with torch.no_grad():
            self.router.bias[-1] = -1e4
        self.experts = nn.ModuleList([Expert(dim, hidden) for _ in range(n_experts)])
        self.pos_branch = nn.Linear(dim, dim)  # taken when the mean is positive
        self.neg_branch = nn.Linear(dim, dim)  # never taken by the example inputs
        self.out = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)  # (T, D)
        choice = self.router(h).argmax(-1)
        y = torch.zeros_like(h)
        for i, expert in enumerate(self.experts):
            sel = choice == i
            if sel.any():
                y[sel] = expert(h[sel])
        h = h + y
        h = self.pos_branch(h) if bool(x.mean() > -10.0) else self.neg_branch(h)
        return self.out(F.relu(h))


def make_moe() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(5))
    return _finish(MoENet(), x)


# --------------------------------------------------------------------------- frozen


def make_frozen() -> tuple[nn.Module, Inputs]:
    """ResNet basic with every parameter ``requires_grad=False`` (autograd-walk tools see nothing)."""
    model, inputs = make_resnet_basic()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, inputs


# --------------------------------------------------------------------------- Hugging Face

VOCAB = 96


def _tokens(b: int = 2, t: int = 8, seed: int = 7) -> Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def make_bert(attn: str = "eager") -> tuple[nn.Module, Inputs]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        attn_implementation=attn,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    return _finish(model, _tokens())


def make_gpt2(attn: str = "eager") -> tuple[nn.Module, Inputs]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn,
    )
    model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    return _finish(model, _tokens())


def make_llama(attn: str = "eager") -> tuple[nn.Module, Inputs]:
    """LLaMA with grouped-query attention: 8 query heads share 2 KV heads (SwiGLU, RMSNorm, RoPE)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=96,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(cfg)
    _randomize_rmsnorm(model)
    return _finish(model, _tokens())


def _randomize_rmsnorm(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            with torch.no_grad():
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


def small_cnn() -> nn.Sequential:
    """A seeded Conv-BN-ReLU / Linear chain on (N, 1, H, W) inputs, 3 classes (schedule and pruner tests)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


ZOO: dict[str, Factory] = {
    "resnet_basic": make_resnet_basic,
    "resnet_bottleneck": make_resnet_bottleneck,
    "mobilenet_v2": make_mobilenet_v2,
    "mobilenet_v3": make_mobilenet_v3,
    "densenet": make_densenet,
    "efficientnet": make_efficientnet,
    "inception": make_inception,
    "unet": make_unet,
    "shufflenet": make_shufflenet,
    "grouped_conv": make_grouped_conv,
    "flatten_linear": make_flatten_linear,
    "conv_classifier": make_conv_classifier,
    "inplace": make_inplace,
    "vit": make_vit,
    "swin": make_swin,
    "custom_function": make_custom_function,
    "moe": make_moe,
    "frozen": make_frozen,
}

HF_ZOO: dict[str, Factory] = {
    "bert_eager": lambda: make_bert("eager"),
    "bert_sdpa": lambda: make_bert("sdpa"),
    "gpt2_eager": lambda: make_gpt2("eager"),
    "gpt2_sdpa": lambda: make_gpt2("sdpa"),
    "llama_gqa_eager": lambda: make_llama("eager"),
    "llama_gqa_sdpa": lambda: make_llama("sdpa"),
}


def random_inputs(example_inputs: Inputs, seed: int) -> Inputs:
    """Fresh inputs shaped like ``example_inputs``: normal floats, token ids within the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    out: list[Any] = []
    for x in example_inputs:
        if isinstance(x, Tensor) and x.is_floating_point():
            out.append(torch.randn(x.shape, generator=g, dtype=x.dtype))
        elif isinstance(x, Tensor):
            out.append(torch.randint(0, max(1, int(x.max()) + 1), x.shape, generator=g, dtype=x.dtype))
        else:
            out.append(x)
    return tuple(out)


def output_tensors(y: Any) -> list[Tensor]:
    """Flatten a model output (tensor, tuple, dict or Hugging Face ModelOutput) to its tensors."""
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, dict):  # ModelOutput is a dict subclass
        return [t for v in y.values() for t in output_tensors(v)]
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in output_tensors(v)]
    return []


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = [
    "HF_ZOO",
    "ZOO",
    "n_parameters",
    "output_tensors",
    "random_inputs",
]
