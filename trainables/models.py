"""Models: normalization is the first layer, so every model takes images in [0, 1].

- ``small_cnn``: a 4-layer CNN with BatchNorm for digits/MNIST-size inputs (any H×W ≥ 8);
- ``mnist_cnn``: the 2-conv MNIST net of the fast-AT papers (Wong et al. 2020's MNIST model shape),
  no BatchNorm (any H×W ≥ 4);
- ``preact_resnet18``: PreActResNet-18 (He et al. 2016), the CIFAR standard of Wong/Rice et al.;
- ``wrn-D-W``: WideResNet-D-W (Zagoruyko & Komodakis), e.g. ``wrn-28-10``, ``wrn-34-10``;
- ``tv:<name>``: a torchvision classification architecture by name, e.g. ``tv:resnet18``;
- ``timm:<name>`` and ``package.module:function``: a timm architecture, or the user's own builder
  (see :mod:`trainables.external_models`).

Every model is a :class:`NormalizedModel` ``(normalize, net)``; :func:`head` and
:func:`last_block` find the classifier and the block before it for per-group learning rates.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Normalize", "NormalizedModel", "SmallCNN", "MnistCNN", "PreActResNet18", "WideResNet", "build_net",
           "build_model", "head", "last_block", "replace_head"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean/std are buffers, saved with the model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """The model advtune trains and attacks: ``net(normalize(x))`` for ``x`` in [0, 1]."""

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.functional_act: nn.Module | None = None  # set by activations.swap_activations
        self.head_module: str | None = None  # the classifier's name in `net`; None: the last nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.functional_act is None:
            return self.net(self.normalize(x))
        from .activations import intercept_relu

        with intercept_relu(self.functional_act):
            return self.net(self.normalize(x))


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.block1 = nn.Sequential(block(in_channels, width), block(width, 2 * width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(block(2 * width, 4 * width), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2))
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(16 * width, 128), nn.ReLU())
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.block2(self.block1(x))))


class MnistCNN(nn.Module):
    """Two strided 4×4 convolutions and two linear layers — conv 16 (stride 2, pad 1), conv 32
    (stride 2, pad 1), fc 100, fc classes, ReLUs between — the net of Wong et al. 2020's MNIST
    experiments and of the standard from-scratch FGSM-RS recipe. Each convolution halves the side
    (rounding down), so a C×H×W input reaches the first linear layer as 32·⌊⌊H/2⌋/2⌋·⌊⌊W/2⌋/2⌋
    features (28×28: 32·7·7 = 1568)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_hw: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        h, w = (s // 2 // 2 for s in input_hw)
        if h < 1 or w < 1:
            raise ValueError(f"mnist_cnn needs images of at least 4x4 pixels, got {input_hw[0]}x{input_hw[1]}")
        self.conv1 = nn.Conv2d(in_channels, 16, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(32 * h * w, 100)
        self.fc = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(F.relu(self.fc1(x.flatten(1))))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        widths, layers, cin = (64, 128, 256, 512), [], 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(PreActBlock(cin, w, stride), PreActBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512)
        self.relu = nn.ReLU()
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.adaptive_avg_pool2d(self.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        return self.conv2(self.relu2(self.bn2(self.conv1(out)))) + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, width: int = 10, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 28, 34), got {depth}")
        n, widths = (depth - 4) // 6, (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for i in range(3):
            cin, cout = widths[i], widths[i + 1]
            blocks.append(nn.Sequential(*[WideBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1)
                                          for j in range(n)]))
        self.block1, self.block2, self.block3 = blocks
        self.bn, self.relu = nn.BatchNorm2d(widths[3]), nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(self.relu(self.bn(out)), 1).flatten(1))


def build_net(name: str, in_channels: int, num_classes: int, tv_weights: str | None = None,
              input_hw: tuple[int, int] = (28, 28)) -> nn.Module:
    """The bare network (no normalization) for ``name``; ``tv_weights`` e.g. "DEFAULT"; ``input_hw``
    the image side (only ``mnist_cnn``'s linear layer depends on it)."""
    if name == "mnist_cnn":
        return MnistCNN(in_channels, num_classes, input_hw)
    if name == "small_cnn":
        return SmallCNN(in_channels, num_classes)
    match = re.fullmatch(r"small_cnn-(\d+)", name)
    if match and int(match[1]) >= 1:
        return SmallCNN(in_channels, num_classes, width=int(match[1]))
    if name == "preact_resnet18":
        return PreActResNet18(in_channels, num_classes)
    match = re.fullmatch(r"wrn-(\d+)-(\d+)", name)
    if match:
        return WideResNet(int(match[1]), int(match[2]), in_channels, num_classes)
    if name.startswith("tv:"):
        import torchvision

        arch = name[3:]
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"'{arch}' is not a torchvision classification model; e.g. tv:resnet18, tv:resnet50, "
                             "tv:vit_b_16 (torchvision.models.list_models() lists them)")
        net = torchvision.models.get_model(arch, weights=tv_weights)
        if in_channels != 3:
            raise ValueError(f"torchvision models expect 3-channel images; dataset has {in_channels}")
        replace_head(net, num_classes)
        return net
    raise ValueError(f"unknown model {name!r}: use small_cnn, small_cnn-W (e.g. small_cnn-16), mnist_cnn, preact_resnet18, wrn-D-W (e.g. wrn-28-10) or tv:<name>")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, mean: tuple[float, ...],
                std: tuple[float, ...], tv_weights: str | None = None, head_module: str | None = None) -> NormalizedModel:
    """``name``'s network behind a :class:`Normalize` of ``mean``/``std``; ``head_module`` names its
    classifier where the last ``nn.Linear`` is not it."""
    from .config import is_import_path

    if name.startswith("timm:") or is_import_path(name):
        from .external_models import build_external_net, classifier_name

        net = build_external_net(name, tuple(input_shape), num_classes)
        head_module = classifier_name(net, head_module)
    else:
        net = build_net(name, input_shape[0], num_classes, tv_weights, input_hw=tuple(input_shape[1:]))
        if head_module is not None:
            from .external_models import classifier_name

            head_module = classifier_name(net, head_module)
    model = NormalizedModel(Normalize(mean, std), net)
    model.head_module = head_module
    return model


def _head_name(net: nn.Module) -> str:
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(net).__name__} has no nn.Linear classifier head")
    return last


def _head_of(model: nn.Module) -> tuple[nn.Module, str]:
    """(the network, its classifier's name): ``head_module`` where set, else the last ``nn.Linear``."""
    if isinstance(model, NormalizedModel):
        return model.net, model.head_module or _head_name(model.net)
    return model, _head_name(model)


def head(model: nn.Module) -> nn.Module:
    """The classifier: ``head_module`` where the model names one, else the last ``nn.Linear``."""
    net, name = _head_of(model)
    return net.get_submodule(name)


def last_block(model: nn.Module) -> nn.Module:
    """The last top-level child with parameters before the head (e.g. ``layer4`` of a ResNet)."""
    net, name = _head_of(model)
    head_top = name.split(".")[0]
    children = [(n, m) for n, m in net.named_children() if any(True for _ in m.parameters())]
    before = [m for n, m in children if n != head_top]
    # a block has submodules: skip a lone final norm layer (PreActResNet's and WRN's `bn`)
    before = [m for m in before if any(True for _ in m.children())] or before
    return before[-1] if before else net.get_submodule(head_top)


def replace_head(net: nn.Module, num_classes: int) -> bool:
    """Swap the last Linear for a fresh one with ``num_classes`` outputs if the count differs."""
    name = _head_name(net)
    old = net.get_submodule(name)
    if old.out_features == num_classes:
        return False
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return True
