"""A user's own code, as advtune imports it by path (``tests.own_code:build`` etc.) in the tests.

Ray workers import it too: a local study's workers run in the driver's folder (the repository root
under pytest), where advtune finds the ``tests`` folder.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class TinyNet(nn.Module):
    """Conv features, then a named classifier."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return TinyNet(input_shape[0], num_classes)


class ConvHead(nn.Module):
    """A classifier that is a 1×1 convolution: no nn.Linear anywhere, so head_module must name it."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU())
        self.logits = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(x)).mean((2, 3))


def build_conv_head(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return ConvHead(input_shape[0], num_classes)


def not_a_module(num_classes: int, input_shape: tuple[int, int, int]) -> dict:
    return {"classifier": num_classes}


def wrong_columns(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return TinyNet(input_shape[0], num_classes + 1)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    return x, torch.tensor(bunch.target, dtype=torch.int64)


def splits(data_root: str | None = None):
    """The digits as a factory would return them: in-memory train and test, and the class count."""
    x, y = _digits()
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:]), 10


class LazyDigits(Dataset):
    """The same images, one item at a time (as a Dataset that reads files would give them)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, targets: bool = False) -> None:
        self.x, self.y = x, y
        if targets:
            self.targets = y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def lazy_splits(data_root: str | None = None):
    x, y = _digits()
    return LazyDigits(x[:1500], y[:1500]), LazyDigits(x[1500:], y[1500:]), 10


def pixels_0_to_16(data_root: str | None = None):
    x, y = _digits()
    return LazyDigits(x[:1500] * 16, y[:1500]), LazyDigits(x[1500:], y[1500:]), 10


def too_few_classes(data_root: str | None = None):
    x, y = _digits()
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:]), 5


def only_train(data_root: str | None = None):
    x, y = _digits()
    return TensorDataset(x, y)
