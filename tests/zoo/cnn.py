"""Convolutional networks: ResNet, MobileNetV2/V3 (SE), DenseNet, EfficientNet-like, Inception-like, U-Net-like, ShuffleNet, grouped conv, flatten->Linear, 1x1-conv classifier, in-place ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Inputs, conv_bn, finish, img


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
    return finish(ResNet(BasicBlock, [2, 2], [16, 32]), img())


def make_resnet_bottleneck() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return finish(ResNet(Bottleneck, [2, 1], [8, 16]), img())


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
    return finish(MobileNetV2(), img())


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
    return finish(MobileNetV3(), img())


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
    return finish(DenseNet(), img())


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
    return finish(EfficientNetLike(), img())


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
    return finish(InceptionLike(), img())


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
    return finish(UNetLike(), img())


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
    return finish(ShuffleNetLike(), img())


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
    return finish(GroupedConvNet(), img())


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
    return finish(FlattenNet(), img(c=1, hw=16))


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
    return finish(ConvClassifier(), img())


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
    return finish(InplaceNet(), img())


# --------------------------------------------------------------------------- ViT
