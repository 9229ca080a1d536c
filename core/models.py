"""Model registry. Every model takes pixels in [0, 1] and returns logits; normalization is its
first layer, so attack budgets are always in pixel units."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.paths import InputError


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as a layer, so the model's input stays in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Conv-BN-ReLU-Conv-BN plus the (possibly downsampled) input, then ReLU (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLUs: the same values with half the memory traffic, which bounds these
        # small convolutions' elementwise passes (no backward needs the overwritten tensors).
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.extra:
            # Option A of He et al.: subsample and zero-pad channels, no parameters.
            shortcut = x[:, :, ::self.stride, ::self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu_(out + shortcut)


class SeedResNet(nn.Module):
    """The seed study's net: conv-BN-ReLU, ``blocks`` residual blocks at full resolution,
    AvgPool2d(8), and a linear layer on the flattened pooled map."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 blocks: int = 3, image_size: int = 32,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(_conv3x3(in_channels, width), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*[BasicBlock(width, width) for _ in range(blocks)])
        self.pool = nn.AvgPool2d(8)
        side = image_size // 8
        self.fc = nn.Linear(width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(self.normalize(x))))
        return self.fc(out.flatten(1))


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet-(6n+2): stages of 16/32/64 channels, global pooling."""

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10,
                 image_size: int = 32, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (0.5,)) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise InputError(f"resnet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(_conv3x3(in_channels, 16), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))
        layers, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, 2 if stage and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(self.normalize(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016, "Identity Mappings in Deep Residual Networks"):
    BN-ReLU-conv twice, plus a 1x1 projection of the activated input where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct-ResNet-18, the adversarial-training literature's CIFAR-10 model (Rice et al.
    2020, Wong et al. 2020): stages of 64/128/256/512 channels, two blocks each (11M
    parameters; meant for a GPU)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        layers, cin = [], 64
        for stage, cout in enumerate((64, 128, 256, 512)):
            for i in range(2):
                layers.append(PreActBlock(cin, cout, 2 if stage and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(self.normalize(x)))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _seed_resnet(input_shape: Sequence[int], num_classes: int, mean, std, **kw) -> nn.Module:
    c, h, _ = input_shape
    return SeedResNet(in_channels=c, num_classes=num_classes, image_size=h, mean=mean, std=std,
                      width=int(kw.pop("width", 16)), blocks=int(kw.pop("blocks", 3)), **kw)


def _resnet(input_shape: Sequence[int], num_classes: int, mean, std, **kw) -> nn.Module:
    c, h, _ = input_shape
    return CifarResNet(depth=int(kw.pop("depth", 20)), in_channels=c, num_classes=num_classes,
                       image_size=h, mean=mean, std=std, **kw)


def _preact18(input_shape: Sequence[int], num_classes: int, mean, std, **kw) -> nn.Module:
    c, h, _ = input_shape
    return PreActResNet18(in_channels=c, num_classes=num_classes, image_size=h, mean=mean,
                          std=std, **kw)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed-resnet": _seed_resnet,
    "resnet20": _resnet,
    "preact-resnet18": _preact18,
}


def build_model(name: str, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,),
                **kwargs) -> nn.Module:
    """Build a registered model for inputs of ``input_shape`` (C, H, W) in [0, 1]."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    if len(input_shape) != 3 or min(input_shape) <= 0:
        raise InputError(f"input shape must be (C, H, W) with positive sizes, got {input_shape}")
    if input_shape[1] < 8:
        raise InputError(f"images must be at least 8x8 pixels, got {input_shape[1:]}")
    try:
        return MODELS[name](tuple(input_shape), num_classes, tuple(mean), tuple(std), **kwargs)
    except TypeError as err:
        raise InputError(f"bad arguments for model {name!r}: {err}") from err


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_image(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates x2 of the convolution and linear layers for one forward pass."""
    total = 0

    def hook(mod: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            total += 2 * k * out[0].numel()
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
