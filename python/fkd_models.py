"""PyTorch definitions of fkd's model zoo (src/models/), layer for layer.

Parameter and buffer names, shapes and order equal the C++ models', so a state dict written
by fkd (save_state_dict_pickle) loads with ``load_state_dict(torch.load(path))`` and a
Python benchmark trains the same network. resnet18, resnet50 and mobilenetv2 are
torchvision's models with the first convolution adapted to ``in_channels``.

    import fkd_models
    net = fkd_models.make_model("resnet20", in_channels=1, num_classes=10)
"""
from typing import Callable, Dict, List

import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet18, resnet50
from torchvision.models.resnet import BasicBlock

__all__ = ["model_names", "make_model", "count_parameters", "CifarResNet", "Tiny"]


def _init_like_torchvision(model: nn.Module) -> None:
    """Conv: kaiming_normal_(fan_out, relu), bias 0; BatchNorm: weight 1, bias 0; Linear: default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarResNet(nn.Module):
    """He et al. 2016 CIFAR ResNet, depth 6n+2, with 1x1 conv + BN projection shortcuts."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_like_torchvision(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Tiny(nn.Module):
    """fkd's tiny student: 4x (conv3x3-BN-ReLU), strides 1/2/1/2, global pool, linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for cin, cout, stride in [(in_channels, 32, 1), (32, 64, 2), (64, 64, 1), (64, 64, 2)]:
            layers += [
                nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet_tv(factory: Callable[..., nn.Module], in_channels: int, num_classes: int) -> nn.Module:
    model = factory(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _mobilenetv2_tv(in_channels: int, num_classes: int) -> nn.Module:
    model = mobilenet_v2(num_classes=num_classes)  # width 1.0, dropout 0.2
    if in_channels != 3:
        conv = nn.Conv2d(in_channels, 32, kernel_size=3, stride=2, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        model.features[0][0] = conv
    return model


_FACTORIES: Dict[str, Callable[[int, int], nn.Module]] = {
    "tiny": lambda c, k: Tiny(c, k),
    "resnet20": lambda c, k: CifarResNet(20, c, k),
    "resnet32": lambda c, k: CifarResNet(32, c, k),
    "resnet44": lambda c, k: CifarResNet(44, c, k),
    "resnet56": lambda c, k: CifarResNet(56, c, k),
    "resnet110": lambda c, k: CifarResNet(110, c, k),
    "resnet18": lambda c, k: _resnet_tv(resnet18, c, k),
    "resnet50": lambda c, k: _resnet_tv(resnet50, c, k),
    "mobilenetv2": _mobilenetv2_tv,
}


def model_names() -> List[str]:
    """The zoo's names, in fkd's display order."""
    return list(_FACTORIES)


def make_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """A freshly initialized zoo model (same architecture and names as fkd's make_model)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(_FACTORIES)})")
    return _FACTORIES[name](in_channels, num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (fkd's count_parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
