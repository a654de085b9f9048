"""Reference CNNs used by the main job, the tests and the benchmarks (random init; no weights are
downloaded)."""
from typing import List, Sequence, Union

import torch
from torch import nn

from . import constraints as C
from .patterns import PatternSet

# VGG-16 feature config: numbers are 3x3 conv widths, "M" a 2x2 max pool.
VGG16_CFG: List[Union[int, str]] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                    512, 512, 512, "M"]
# A narrower VGG-style net for 28x28 Fashion-MNIST (the main job's default model).
FMNIST_VGG_CFG: List[Union[int, str]] = [32, 32, "M", 64, 64, "M", 128, 128, "M"]


def vgg_features(cfg: Sequence[Union[int, str]], in_channels: int = 3, batch_norm: bool = True) -> nn.Sequential:
    layers: List[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-style CNN: 3x3 conv blocks, then global average pooling and a classifier."""

    def __init__(self, cfg: Sequence[Union[int, str]] = VGG16_CFG, in_channels: int = 3, num_classes: int = 1000,
                 batch_norm: bool = True, hidden: int = 0):
        super().__init__()
        widths = [v for v in cfg if v != "M"]
        if not widths:
            raise ValueError(f"VGG: cfg must name at least one conv width (ints, 'M' for a max-pool), got {cfg!r}")
        self.features = vgg_features(cfg, in_channels, batch_norm)
        width = widths[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden:
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(inplace=True),
                                            nn.Linear(hidden, num_classes))
        else:
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def vgg16(num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = True) -> VGG:
    """VGG-16 conv stack (13 3x3 convs) with a global-pool classifier (the FC head is not the
    subject of pattern pruning; latency benchmarks cover the convs)."""
    return VGG(VGG16_CFG, in_channels, num_classes, batch_norm)


def fmnist_vgg(num_classes: int = 10) -> VGG:
    """Small VGG-style CNN for 1x28x28 inputs (six 3x3 convs, ~0.3M parameters)."""
    return VGG(FMNIST_VGG_CFG, 1, num_classes, batch_norm=True, hidden=256)


class LeNet5(nn.Module):
    """Classic LeNet-5: two 5x5 convs, three fully connected layers (for 1x28x28 inputs).

    ``widths`` = (conv1 channels, conv2 channels, fc1 units, fc2 units); the classic is (6, 16, 120, 84).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (6, 16, 120, 84)):
        super().__init__()
        c1, c2, h1, h2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 5 * 5, h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.ReLU(inplace=True), nn.Linear(h2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# 3x3 conv layer shapes for the layer benchmarks: (name, Cin, Cout, H=W at 224x224 input, stride).
VGG16_LAYERS = [
    ("conv1_2", 64, 64, 224, 1), ("conv2_1", 64, 128, 112, 1), ("conv2_2", 128, 128, 112, 1),
    ("conv3_1", 128, 256, 56, 1), ("conv3_2", 256, 256, 56, 1), ("conv4_1", 256, 512, 28, 1),
    ("conv4_2", 512, 512, 28, 1), ("conv5_1", 512, 512, 14, 1),
]
RESNET18_LAYERS = [
    ("layer1", 64, 64, 56, 1), ("layer2_down", 64, 128, 56, 2), ("layer2", 128, 128, 28, 1),
    ("layer3_down", 128, 256, 28, 2), ("layer3", 256, 256, 14, 1), ("layer4_down", 256, 512, 14, 2),
    ("layer4", 512, 512, 7, 1),
]


# ---------------------------------------------------------------- ImageNet-shaped models (benchmarks)
class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), He et al. 2016."""
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1; stride on the 3x3)."""
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """ResNet for 224x224 inputs (7x7 stem, max pool, four stages, global pool, FC)."""

    def __init__(self, block, depths: Sequence[int], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expand, 3x3 depthwise, 1x1 project (linear), residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: List[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """MobileNet-V2 (Sandler et al. 2018), width 1.0, for 224x224 inputs."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # (expansion, channels, repeats, first stride)
    layers: List[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
    cin = 32
    for t, c, n, s in settings:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True),
               nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(nn.Sequential(*layers), nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes)))


@torch.no_grad()
def sparsify_random(model: nn.Module, keep3x3: float = 0.25, group: int = 4, patterns: int = 8,
                    keep1x1: float = 0.2, seed: int = 0, group1x1: int = 1) -> nn.Module:
    """Gives ``model`` (in place) random weights with the sparsity structure the benchmarks use, and
    non-trivial BatchNorm statistics (so folding is not a no-op): every dense 3x3 conv with more than
    3 input channels is projected onto ``patterns`` patterns of 4 + connectivity ``keep3x3`` in groups
    of ``group`` (``keep3x3=None``: pattern only); every dense 1x1 conv onto ``keep1x1`` of its
    weights, unstructured (``None``: left dense), ``group1x1`` consecutive output channels keeping the
    same positions (:class:`constraints.Unstructured`'s ``group``). ``seed`` draws the weights of the convs with
    ``groups=1`` and the BatchNorm parameters and statistics; depthwise / grouped convs and Linear
    layers keep the weights they have (dense)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # (affine=False / track_running_stats=False: what it has)
            for t, low, span in ((m.running_mean, -0.1, 0.2), (m.running_var, 0.5, 1.0), (m.weight, 0.5, 1.0),
                                 (m.bias, -0.1, 0.2)):
                if t is not None:
                    t.copy_(torch.rand(t.shape, generator=gen) * span + low)
        if not isinstance(m, nn.Conv2d) or m.groups != 1:
            continue
        w = torch.randn(m.weight.shape, generator=gen) * (2.0 / (m.in_channels * m.weight[0, 0].numel())) ** 0.5
        if m.kernel_size == (3, 3) and m.in_channels > 3:
            pset = PatternSet.select(w, k=patterns)
            cons = [C.Pattern(k=patterns, group=group)]
            if keep3x3 is not None:
                cons.append(C.Connectivity(keep3x3, group=group))
            for c in cons:
                w = c.project(w, pset)
        elif m.kernel_size == (1, 1) and keep1x1 is not None:
            w = C.Unstructured(keep1x1, group=group1x1).project(w)
        m.weight.copy_(w)
    return model
