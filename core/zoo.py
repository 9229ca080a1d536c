"""The CIFAR architectures the field's robust checkpoints use, with the parameter names of
RobustBench's model zoo (``robustbench/model_zoo/architectures``), so that their ``state_dict``s
load unchanged:

- ``wrn-D-W``: the WideResNet of TRADES (Zhang et al. 2019) as RobustBench keeps it in
  ``wide_resnet.py`` (``conv1``, ``block{1,2,3}.layer.i.{bn1,conv1,bn2,conv2,convShortcut}``,
  ``bn1``, ``fc``): Carmon2019's WRN-28-10, Zhang2019's WRN-34-10 and many others;
- ``dm-wrn-D-W``: DeepMind's WideResNet (Gowal et al. 2020) from ``dm_wide_resnet.py``
  (``mean``/``std`` buffers, ``init_conv``, ``layer.g.block.i.{batchnorm_0,conv_0,batchnorm_1,
  conv_1,shortcut}``, ``batchnorm``, ``logits``): Gowal2020's and Rebuffi2021's WRN-70-16;
- ``rb-preact-resnet18``: RobustBench's PreActResNet-18 from ``resnet.py`` (``conv1``,
  ``layer{1-4}.i.{bn1,conv1,bn2,conv2,shortcut.0}``, ``linear``; Wong2020, Rice2020).

Every network here takes the input it was trained on (normalized or not); the import wraps it
so that the lab's attacks see pixels in [0, 1].
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.paths import InputError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class _WideBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis 2016, "Wide Residual Networks")."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        # where the width changes the shortcut starts from the activated input, as in TRADES
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return shortcut + out


class _Group(nn.Module):
    """``n`` blocks, the first changing the width and stride, under the attribute ``key``
    (``layer`` in TRADES' names, ``block`` in DeepMind's)."""

    def __init__(self, block: type, key: str, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.key = key
        setattr(self, key, nn.Sequential(*[block(cin if i == 0 else cout, cout,
                                                 stride if i == 0 else 1) for i in range(n)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.key)(x)


class WideResNet(nn.Module):
    """WideResNet-D-W (Zagoruyko & Komodakis 2016) under the TRADES / RobustBench names."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        n = _blocks(depth)
        chans = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, chans[0], 3, 1, 1, bias=False)
        self.block1 = _Group(_WideBlock, "layer", n, chans[0], chans[1], 1)
        self.block2 = _Group(_WideBlock, "layer", n, chans[1], chans[2], 2)
        self.block3 = _Group(_WideBlock, "layer", n, chans[2], chans[3], 2)
        self.bn1 = nn.BatchNorm2d(chans[3])
        self.fc = nn.Linear(chans[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _DMBlock(nn.Module):
    """DeepMind's wide block: 'SAME' padding done by hand before the first convolution."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.batchnorm_0(x))
        shortcut = x if self.shortcut is None else self.shortcut(act)
        pad = (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)
        out = self.conv_1(F.relu(self.batchnorm_1(self.conv_0(F.pad(act, pad)))))
        return shortcut + out


class DMWideResNet(nn.Module):
    """DeepMind's WideResNet-D-W (Gowal et al. 2020, "Uncovering the Limits of Adversarial
    Training against Norm-Bounded Adversarial Examples"), which normalizes its own input with
    its ``mean`` and ``std`` buffers."""

    def __init__(self, depth: int = 70, width: int = 16, num_classes: int = 10,
                 in_channels: int = 3, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD) -> None:
        super().__init__()
        n = _blocks(depth)
        chans = [16, 16 * width, 32 * width, 64 * width]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
        self.init_conv = nn.Conv2d(in_channels, chans[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(*[_Group(_DMBlock, "block", n, chans[k], chans[k + 1],
                                            1 if k == 0 else 2) for k in range(3)])
        self.batchnorm = nn.BatchNorm2d(chans[3])
        self.logits = nn.Linear(chans[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = F.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016) with RobustBench's names; its shortcut starts
    from the raw input, as RobustBench's ``PreActBlock`` does."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(x) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut


class PreActResNet18(nn.Module):
    """PreAct-ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks") under
    RobustBench's names."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        cin = 64
        for k, cout in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if k == 1 else 2
            setattr(self, f"layer{k}", nn.Sequential(_PreActBlock(cin, cout, stride),
                                                     _PreActBlock(cout, cout, 1)))
            cin = cout
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _blocks(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise InputError(f"a WideResNet's depth must be 6n+4 (10, 16, 28, 34, 70), got {depth}")
    return (depth - 4) // 6


ZOO_NAMES = ("wrn-28-10", "wrn-34-10", "dm-wrn-28-10", "dm-wrn-70-16", "rb-preact-resnet18")
_WRN = re.compile(r"^(dm-)?wrn-(\d+)-(\d+)$")


def is_zoo_name(name: str) -> bool:
    """Whether ``name`` is one of this module's architectures (``wrn-D-W``, ``dm-wrn-D-W``,
    ``rb-preact-resnet18``)."""
    return name == "rb-preact-resnet18" or bool(_WRN.match(name))


def build_zoo(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """A zoo architecture by name, randomly initialized, for ``num_classes`` outputs."""
    if name == "rb-preact-resnet18":
        return PreActResNet18(num_classes, in_channels)
    match = _WRN.match(name)
    if not match:
        raise InputError(f"unknown zoo architecture {name!r}; valid: {', '.join(ZOO_NAMES)} "
                         "(wrn-D-W and dm-wrn-D-W for any depth 6n+4 and width)")
    depth, width = int(match.group(2)), int(match.group(3))
    if width < 1:
        raise InputError(f"a WideResNet's width must be at least 1, got {width}")
    if match.group(1):
        mean = CIFAR10_MEAN if in_channels == 3 else (0.5,) * in_channels
        std = CIFAR10_STD if in_channels == 3 else (0.5,) * in_channels
        return DMWideResNet(depth, width, num_classes, in_channels, mean, std)
    return WideResNet(depth, width, num_classes, in_channels)
