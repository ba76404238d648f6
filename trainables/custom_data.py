"""Datasets by import path: ``dataset: "package.module:function"``.

advtune calls, once per trial (and once per ``advtune eval``)::

    function(data_root=ROOT)  ->  (train, test, num_classes)

``ROOT`` is the config's ``data_root`` (None unless set). ``train`` and ``test`` are
``torch.utils.data.Dataset`` objects whose items are ``(image, label)``: the image a float tensor
C×H×W with values in [0, 1] (not normalized: the model does that), the label an int in
``[0, num_classes)``. A ``TensorDataset`` is held in memory and batched by indexing (the fast path,
with ``augment: crop_flip`` available); any other dataset is read through a ``DataLoader``.

As for the built-in datasets, advtune carves the validation split from ``train`` with
``split_seed`` (a seeded permutation, the same for every trial) and computes the normalization
statistics from the train part (all of it in memory, else an evenly spaced sample of 500 images).
The test split is not read during a study: advtune checks that it is non-empty and that its first
image has the train images' shape and range, nothing else; ``advtune eval`` evaluates on it.

The first items are checked (type, shape, range [0, 1], label range) and a bad one is refused with
a :class:`~trainables.data.DataError` that names the item and the fix.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from .user_code import resolve

__all__ = ["load_factory_splits", "CHECKED_ITEMS"]

CHECKED_ITEMS = 16  # items of the train split checked before training (all of it for a TensorDataset)
_STATS_MAX_IMAGES = 500


def load_factory_splits(path: str, root: str | None, val_size: float | int, split_seed: int,
                        train_size: int | None = None):
    """Train / val / test :class:`~trainables.data.Splits` from the user's factory at ``path``."""
    from .data import DataError, Splits, _channel_stats, _permutation_split, _val_count

    fn = resolve(path, "dataset")
    call = f"{path.partition(':')[2]}(data_root={root!r})"
    try:
        out = fn(data_root=root)
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise DataError(f"dataset {path!r}: advtune called {call}, which raised {type(exc).__name__}: {exc}; it must "
                        "accept the keyword data_root and return (train, test, num_classes)") from None
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise DataError(f"dataset {path!r}: {call} returned {_describe(out)}; it must return a tuple "
                        "(train, test, num_classes) of two Datasets and the class count")
    train, test, num_classes = out
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise DataError(f"dataset {path!r}: the class count (third value returned) is {num_classes!r}; it must be an "
                        "int >= 2")
    num_classes = int(num_classes)
    for name, ds, least in (("train", train, 2), ("test", test, 1)):
        if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise DataError(f"dataset {path!r}: its {name} split is {_describe(ds)}, not a Dataset; return a "
                            "torch.utils.data.Dataset (e.g. TensorDataset(images, labels))")
        if len(ds) < least:
            raise DataError(f"dataset {path!r}: its {name} split has {len(ds)} item(s); it needs at least {least}")
    in_memory = isinstance(train, TensorDataset) and isinstance(test, TensorDataset) and len(train.tensors) == 2
    n_check = len(train) if in_memory else min(CHECKED_ITEMS, len(train))
    shape = _check_items(path, "train", train, range(n_check), num_classes, None, DataError, in_memory)
    _check_items(path, "test", test, range(1), num_classes, shape, DataError, False)
    train_idx, val_idx = _permutation_split(len(train), _val_count(val_size, len(train)), split_seed)
    if in_memory:
        x, y = train.tensors[0].float(), train.tensors[1].long()
        x_train = x[torch.from_numpy(train_idx)]
        mean, std = _channel_stats(x_train)
        return Splits(train=TensorDataset(x_train, y[torch.from_numpy(train_idx)]),
                      val=TensorDataset(x[torch.from_numpy(val_idx)], y[torch.from_numpy(val_idx)]),
                      test=TensorDataset(test.tensors[0].float(), test.tensors[1].long()), num_classes=num_classes,
                      input_shape=shape, mean=mean, std=std, augment="none")
    typed = _Typed(train)
    if train_size is not None and typed.targets is None:
        raise DataError(f"dataset {path!r}: train_size needs the labels of the train split: give your train Dataset a "
                        "`targets` attribute (a list of labels, as torchvision datasets have), or return a TensorDataset")
    train_part = Subset(typed, train_idx.tolist())
    sample = np.unique(np.linspace(0, len(train_part) - 1, min(len(train_part), _STATS_MAX_IMAGES)).round().astype(int))
    mean, std = _channel_stats(torch.stack([train_part[int(i)][0] for i in sample]))
    return Splits(train=train_part, val=Subset(typed, val_idx.tolist()), test=_Typed(test), num_classes=num_classes,
                  input_shape=shape, mean=mean, std=std, augment="none")


class _Typed(Dataset):
    """Items as the loop needs them: float32 image, int64 label tensor."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner
        targets = getattr(inner, "targets", None)
        self.targets = list(targets) if targets is not None else None

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        x, y = self.inner[i]
        return x.float(), torch.as_tensor(int(y), dtype=torch.int64)


def _describe(obj: Any) -> str:
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} value(s)"
    return f"a {type(obj).__name__}"


def _check_items(path: str, split: str, ds, indices, num_classes: int, shape, DataError, whole: bool):
    """Check ``ds[i]`` for ``i`` in ``indices`` (or, ``whole``, the TensorDataset's tensors at once)."""
    fix_range = "images must be float tensors C×H×W with values in [0, 1] (e.g. uint8 pixels / 255, or torchvision's ToTensor)"
    if whole:
        x, y = ds.tensors
        if not x.is_floating_point() or x.ndim != 4:
            raise DataError(f"dataset {path!r}: its {split} images are a {x.dtype} tensor of shape {tuple(x.shape)}; "
                            f"{fix_range}, stacked N×C×H×W")
        lo, hi = float(x.min()), float(x.max())
        if not (0 <= lo and hi <= 1):
            raise DataError(f"dataset {path!r}: its {split} images have values in [{lo:g}, {hi:g}]; {fix_range}")
        if y.is_floating_point() or y.ndim != 1 or int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise DataError(f"dataset {path!r}: its {split} labels must be integers in [0, {num_classes}) (the class "
                            f"count it returned), got {y.dtype} values in [{y.min().item()}, {y.max().item()}]")
        return tuple(int(d) for d in x.shape[1:])
    for i in indices:
        item = ds[i]
        where = f"dataset {path!r}: {split}[{i}]"
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"{where} is {_describe(item)}; an item must be a pair (image, label)")
        x, y = item
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 3:
            what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else _describe(x)
            raise DataError(f"{where}: the image is {what}; {fix_range}")
        lo, hi = float(x.min()), float(x.max())
        if not (0 <= lo and hi <= 1):
            raise DataError(f"{where}: the image has values in [{lo:g}, {hi:g}]; {fix_range}")
        if shape is not None and tuple(x.shape) != tuple(shape):
            raise DataError(f"{where}: the image has shape {tuple(x.shape)}, the train images {tuple(shape)}; every "
                            "image must have the same C×H×W (resize them in your Dataset)")
        shape = tuple(int(d) for d in x.shape)
        label_ok = isinstance(y, (int, np.integer)) and not isinstance(y, bool) or \
            (isinstance(y, torch.Tensor) and y.ndim == 0 and not y.is_floating_point())
        if not label_ok or not 0 <= int(y) < num_classes:
            raise DataError(f"{where}: the label is {y!r}; labels must be ints in [0, {num_classes}) (the class count "
                            "your factory returned)")
    return shape
