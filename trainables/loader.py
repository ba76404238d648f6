"""Minibatches for the training loop and evaluation.

In-memory datasets (digits, MNIST, CIFAR: ``TensorDataset``) are batched by indexing, on the
training device when they fit, with augmentation done batched on that device. The order of an
epoch and its augmentation depend only on ``(seed, epoch, batch)``, so a run resumed from any
checkpoint sees exactly the batches an uninterrupted run would have. Other datasets (image
folders) go through a ``DataLoader`` over the same seeded permutation.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = ["num_batches", "iterate", "crop_flip", "to_device"]

_ON_DEVICE_LIMIT = 2 * 1024 ** 3  # bytes: datasets up to this size are moved to the GPU whole


def _gen(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:  # a simple, stable mix of the keys (Python's hash() is salted per process)
        seed = (seed * 1_000_003 + int(k) + 1) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(seed)


def num_batches(split: Dataset, batch_size: int) -> int:
    return math.ceil(len(split) / batch_size)


def to_device(split: Dataset, device: torch.device) -> Dataset:
    """Move an in-memory split to ``device`` once (when small enough), so batching is indexing."""
    if isinstance(split, TensorDataset) and device.type != "cpu":
        size = sum(t.numel() * t.element_size() for t in split.tensors)
        if size <= _ON_DEVICE_LIMIT:
            return TensorDataset(*(t.to(device) for t in split.tensors))
    return split


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding and horizontal flip, batched."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, :, None]  # n,h,1
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]  # n,1,w
    out = padded.permute(0, 2, 3, 1)[torch.arange(n, device=x.device)[:, None, None], rows, cols]
    return out.permute(0, 3, 1, 2).contiguous()


def iterate(split: Dataset, batch_size: int, device: torch.device, seed: int | None = None, epoch: int = 0,
            start: int = 0, augment: str = "none", num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches on ``device``, from batch index ``start`` on.

    ``seed=None`` keeps the stored order (evaluation); otherwise the order is a permutation drawn
    from ``(seed, epoch)`` and augmentation from ``(seed, epoch, batch)``.
    """
    n = len(split)
    order = torch.arange(n) if seed is None else torch.randperm(n, generator=_gen(seed, epoch))
    if isinstance(split, TensorDataset):
        x_all, y_all = split.tensors
        for b in range(start, math.ceil(n / batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size].to(x_all.device)
            x, y = x_all[idx], y_all[idx]
            if augment == "crop_flip":
                x = crop_flip(x, _gen(seed or 0, epoch, b, 7))
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    if augment != "none":
        raise ValueError("batched augmentation applies to in-memory datasets; image folders use their transforms")
    subset = Subset(split, order[start * batch_size:].tolist())
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
