"""Reference CNNs used by the main job, the tests and the benchmarks (random init; no weights are
downloaded)."""
from typing import List, Sequence, Union

import torch
from torch import nn

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
        self.features = vgg_features(cfg, in_channels, batch_norm)
        width = [v for v in cfg if v != "M"][-1]
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
