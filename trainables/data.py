"""Dataset loaders: train / validation / test splits for the supported datasets.

A dataset given as an import path (``package.module:function``) is the user's factory: see
:mod:`trainables.custom_data`. Every loader returns a :class:`Splits`. Images are float32 tensors C×H×W with
pixel values in [0, 1] (no normalization: the model owns a normalization layer
fed with ``Splits.mean`` / ``Splits.std``); labels are int64 class indices.

In-memory datasets (digits, mnist, fashion-mnist, cifar10, cifar100) come back
as :class:`torch.utils.data.TensorDataset` so the training loop can slice
``.tensors`` directly; ``imagefolder`` comes back as lazily decoded
:class:`torch.utils.data.Subset` objects over a torchvision ``ImageFolder``.

The test split never depends on ``split_seed``; the validation split is carved
from the remaining training data with ``split_seed`` and is disjoint from both.
Nothing touches the network unless ``download=True`` (CIFAR only).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from .config import DATASETS  # defined with the config, which must not import torch

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049
_MNIST_SIDE = 28
_STATS_MAX_IMAGES = 500  # images used for imagefolder mean/std


class DataError(ValueError):
    """A dataset cannot be loaded; the message names the problem and the fix."""


@dataclass(frozen=True)
class Splits:
    """Train / validation / test datasets plus what the model and loop need.

    Datasets yield ``(x, y)``: x float32 C×H×W in [0, 1], y int64 scalar.
    ``mean`` / ``std`` are per-channel statistics of the *train* split, in the
    same [0, 1] pixel units. ``augment`` is ``"none"`` or ``"crop_flip"``.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str


def load_splits(dataset: str, root: str | None, val_size: float | int, split_seed: int,
                download: bool = False, image_size: int | None = None, train_size: int | None = None) -> Splits:
    """Load ``dataset`` and split it into train / val / test.

    Args:
        dataset: one of :data:`DATASETS`.
        root: data folder (ignored for ``digits``; defaults to the Debian
            package path for ``fashion-mnist``).
        val_size: float in (0, 1) = fraction of the non-test training data, or
            int >= 1 = number of validation images.
        split_seed: non-negative seed of the validation carve (deterministic).
        download: CIFAR only: fetch the archive with torchvision first.
        image_size: imagefolder only: side in pixels of the square center crop
            (default 224). In-memory datasets keep their native resolution.
        train_size: keep only this many training images: a class-stratified
            subset of the train split (what is left after the validation carve),
            drawn with ``split_seed``. Validation and test are unchanged;
            ``mean``/``std`` are recomputed on the subset (imagefolder keeps
            its sampled statistics).
    """
    if not isinstance(split_seed, (int, np.integer)) or isinstance(split_seed, bool) or split_seed < 0:
        raise DataError(f"split_seed must be a non-negative int, got {split_seed!r}; pass --set split_seed=0")
    split_seed = int(split_seed)
    if ":" in dataset:  # the user's factory, package.module:function
        from .custom_data import load_factory_splits

        splits = load_factory_splits(dataset, root, val_size, split_seed, train_size)
    elif dataset == "digits":
        splits = _load_digits(val_size, split_seed)
    elif dataset in ("mnist", "fashion-mnist"):
        splits = _load_idx(dataset, root, val_size, split_seed)
    elif dataset in ("cifar10", "cifar100"):
        splits = _load_cifar(dataset, root, val_size, split_seed, download)
    elif dataset == "imagefolder":
        splits = _load_imagefolder(root, val_size, split_seed, image_size)
    else:
        raise DataError(f"unknown dataset {dataset!r}; pass --set dataset=NAME with NAME one of {', '.join(DATASETS)}")
    return splits if train_size is None else _train_subset(splits, train_size, split_seed)


def _train_subset(splits: Splits, train_size: int, seed: int) -> Splits:
    """``splits`` with its train split cut to a class-stratified subset of ``train_size`` images."""
    train = splits.train
    n = len(train)
    if isinstance(train_size, bool) or not isinstance(train_size, (int, np.integer)) or train_size < 1:
        raise DataError(f"train_size must be a whole number of images >= 1, got {train_size!r}; "
                        "pass e.g. --set train_size=5000, or leave it unset to train on the whole split")
    if train_size > n:
        raise DataError(f"train_size={train_size} asks for more training images than the train split holds ({n} "
                        f"after the validation carve); pass --set train_size={n} or less, or leave it unset")
    if train_size == n:
        return splits
    if isinstance(train, TensorDataset):
        _, keep = _stratified_split(np.arange(n), train.tensors[1].numpy(), int(train_size), seed)
        idx = torch.from_numpy(keep)
        subset = TensorDataset(*(t[idx] for t in train.tensors))
        mean, std = _channel_stats(subset.tensors[0])
        return dataclasses.replace(splits, train=subset, mean=mean, std=std)
    indices = np.asarray(train.indices)  # imagefolder: a Subset of an ImageFolder
    labels = np.asarray(train.dataset.targets)[indices]
    _, keep = _stratified_split(np.arange(n), labels, int(train_size), seed)
    return dataclasses.replace(splits, train=Subset(train.dataset, indices[keep].tolist()))


# ---------------------------------------------------------------- helpers

def _val_count(val_size: float | int, n: int) -> int:
    """Number of validation images out of ``n`` candidates (leaves >= 1 for training)."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise DataError(f"val_size must be a float in (0,1) or an int >= 1, got {val_size!r}; "
                        f"pass e.g. --set val_size=0.1")
    if isinstance(val_size, (int, np.integer)):
        if val_size < 1:
            raise DataError(f"val_size={val_size} must be >= 1 images; "
                            f"pass e.g. --set val_size=0.1 or --set val_size=5000")
        count = int(val_size)
    else:
        if not 0.0 < val_size < 1.0:
            raise DataError(f"val_size={val_size} is not a fraction in (0,1); "
                            f"pass e.g. --set val_size=0.1 or an int count")
        count = max(1, int(round(float(val_size) * n)))
    if count >= n:
        raise DataError(f"val_size={val_size} asks for {count} validation images but only {n} training images "
                        f"are available (at least one must stay for training); pass a smaller --set val_size=...")
    return count


def _permutation_split(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n)`` into (train, val) sorted index arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _stratified_split(indices: np.ndarray, labels: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, carved-out of size n_out), stratified by ``labels`` when possible."""
    from sklearn.model_selection import train_test_split

    try:
        kept, out = train_test_split(indices, test_size=n_out, stratify=labels, random_state=seed % 2**32)
    except ValueError:  # too few samples per class to stratify: plain random split
        keep_pos, out_pos = _permutation_split(len(indices), n_out, seed)
        kept, out = indices[keep_pos], indices[out_pos]
    return np.sort(kept), np.sort(out)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean / std (population) of an N×C×H×W batch, as Python floats."""
    std, mean = torch.std_mean(x.float(), dim=(0, 2, 3), correction=0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _tensor_splits(x: np.ndarray, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                   x_test: np.ndarray, y_test: np.ndarray, scale: float, num_classes: int, augment: str) -> Splits:
    """Index raw N×C×H×W arrays into TensorDatasets of float32 pixels ``x / scale`` and int64 labels."""
    def pixels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32)).div_(scale)  # copy: source may be read-only

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.int64))

    x_train = pixels(x[train_idx])
    mean, std = _channel_stats(x_train)
    return Splits(train=TensorDataset(x_train, labels(y[train_idx])),
                  val=TensorDataset(pixels(x[val_idx]), labels(y[val_idx])),
                  test=TensorDataset(pixels(x_test), labels(y_test)), num_classes=num_classes,
                  input_shape=tuple(int(d) for d in x.shape[1:]), mean=mean, std=std, augment=augment)


# ---------------------------------------------------------------- digits

def _load_digits(val_size: float | int, split_seed: int) -> Splits:
    """scikit-learn's bundled 8×8 digits (values 0..16); fixed stratified 20% test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None]  # N×1×8×8, values 0..16
    labels = bunch.target.astype(np.int64)
    rest, test_idx = _stratified_split(np.arange(len(labels)), labels, int(round(0.2 * len(labels))), seed=0)
    train_idx, val_idx = _stratified_split(rest, labels[rest], _val_count(val_size, len(rest)), split_seed)
    return _tensor_splits(x, labels, train_idx, val_idx, x[test_idx], labels[test_idx], scale=16.0,
                          num_classes=10, augment="none")


# ---------------------------------------------------------------- mnist / fashion-mnist (IDX)

def _idx_fix(dataset: str) -> str:
    sub = "MNIST" if dataset == "mnist" else "FashionMNIST"
    fix = (f"pass --set data_root=PATH to a folder holding {sub}/raw/{_IDX_FILES[0]}[.gz] "
           f"(or the four IDX files directly in PATH or PATH/raw)")
    if dataset == "fashion-mnist":
        fix += f" (Debian: apt-get install dataset-fashion-mnist puts them in {DEBIAN_FASHION_MNIST})"
    return fix


def _find_idx_files(dataset: str, root: Path) -> list[Path]:
    """Locate the four IDX files (plain or .gz) in the supported layouts under ``root``."""
    sub = "MNIST" if dataset == "mnist" else "FashionMNIST"
    for folder in (root, root / "raw", root / sub / "raw"):
        found = []
        for name in _IDX_FILES:
            variants = (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz")
            hit = next((folder / v for v in variants if (folder / v).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        if len(found) == len(_IDX_FILES):
            return found
    raise DataError(f"no {dataset} IDX files ({', '.join(_IDX_FILES)}, optionally .gz) found in '{root}', "
                    f"'{root / 'raw'}' or '{root / sub / 'raw'}'; {_idx_fix(dataset)}")


def _read_idx(path: Path, magic: int, fix: str) -> np.ndarray:
    """Read one IDX file: uint8 array N×28×28 (magic 2051) or N (magic 2049)."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file '{path}' ({exc}); re-fetch the file; {fix}") from exc
    header = 16 if magic == _IDX_IMAGES_MAGIC else 8
    if len(raw) < header:
        raise DataError(f"IDX file '{path}' is truncated: {len(raw)} bytes, shorter than its {header}-byte header; "
                        f"re-fetch the file; {fix}")
    dims = [int.from_bytes(raw[i:i + 4], "big") for i in range(0, header, 4)]
    if dims[0] != magic:
        kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
        raise DataError(f"IDX file '{path}' has magic number {dims[0]}, expected {magic} ({kind}); "
                        f"wrong or corrupt file, re-fetch it; {fix}")
    shape = tuple(dims[1:])
    if magic == _IDX_IMAGES_MAGIC and shape[1:] != (_MNIST_SIDE, _MNIST_SIDE):
        raise DataError(f"IDX file '{path}' holds {shape[1]}×{shape[2]} images, expected 28×28; "
                        f"wrong file, re-fetch it; {fix}")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"IDX file '{path}' is {what}: {len(raw)} bytes, expected {expected} for shape {shape}; "
                        f"re-fetch the file; {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_idx(dataset: str, root: str | None, val_size: float | int, split_seed: int) -> Splits:
    fix = _idx_fix(dataset)
    if root is None:
        if dataset == "mnist":
            raise DataError(f"dataset 'mnist' needs a data root; {fix}")
        root = DEBIAN_FASHION_MNIST
    if not Path(root).is_dir():
        raise DataError(f"dataset root '{root}' does not exist; {fix}")
    paths = _find_idx_files(dataset, Path(root))
    arrays = [_read_idx(p, _IDX_IMAGES_MAGIC if "images" in p.name else _IDX_LABELS_MAGIC, fix) for p in paths]
    for images, labels, i in ((arrays[0], arrays[1], 0), (arrays[2], arrays[3], 2)):
        if len(images) != len(labels):
            raise DataError(f"'{paths[i]}' has {len(images)} images but '{paths[i + 1]}' has {len(labels)} labels; "
                            f"the files do not belong together; {fix}")
        if labels.size and labels.max() > 9:
            raise DataError(f"'{paths[i + 1]}' has label {labels.max()} outside 0..9; wrong file; {fix}")
    x, y, x_test, y_test = arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3]
    train_idx, val_idx = _permutation_split(len(x), _val_count(val_size, len(x)), split_seed)
    return _tensor_splits(x, y, train_idx, val_idx, x_test, y_test, scale=255.0, num_classes=10, augment="none")


# ---------------------------------------------------------------- cifar10 / cifar100 (python pickles)

def _read_cifar_batch(path: Path, label_key: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> (uint8 N×3×32×32, int64 N). Pickles execute code: only load trusted files."""
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except Exception as exc:  # truncated pickle: EOFError / UnpicklingError / KeyError / ...
        raise DataError(f"CIFAR file '{path}' is truncated or corrupt ({type(exc).__name__}: {exc}); "
                        f"delete it and re-fetch; {fix}") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"CIFAR file '{path}' has data of shape {data.shape} and {len(labels)} labels, "
                        f"expected N×3072 with N labels; delete it and re-fetch; {fix}")
    return data.reshape(-1, 3, 32, 32), labels  # rows are stored channel-major (R, G, B planes)


def _load_cifar(dataset: str, root: str | None, val_size: float | int, split_seed: int, download: bool) -> Splits:
    folder_name, train_names, test_name, label_key, classes = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10)
        if dataset == "cifar10" else ("cifar-100-python", ["train"], "test", "fine_labels", 100))
    fix = (f"pass --set download=true to fetch it, or point --set data_root=PATH at the folder "
           f"containing {folder_name}/")
    if root is None:
        raise DataError(f"dataset {dataset!r} needs a data root; {fix}")
    if download:
        import torchvision

        os.makedirs(root, exist_ok=True)
        cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(root, train=True, download=True)
        except Exception as exc:
            raise DataError(f"downloading {dataset} into '{root}' failed ({exc}); check network access "
                            f"or fetch the archive yourself and point --set data_root=PATH at it") from exc
    base = Path(root)
    folder = base if base.name == folder_name else base / folder_name  # root may name the folder itself
    missing = [n for n in [*train_names, test_name] if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{dataset} files missing in '{folder}': {', '.join(missing)}; {fix}")
    parts = [_read_cifar_batch(folder / n, label_key, fix) for n in train_names]
    x_test_u8, y_test = _read_cifar_batch(folder / test_name, label_key, fix)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    for labels, name in ((y, train_names[0]), (y_test, test_name)):
        if labels.size and not 0 <= labels.min() <= labels.max() < classes:
            raise DataError(f"{dataset} labels in '{folder / name}' fall outside 0..{classes - 1}; "
                            f"wrong dataset in this folder; {fix}")
    train_idx, val_idx = _permutation_split(len(x), _val_count(val_size, len(x)), split_seed)
    return _tensor_splits(x, y, train_idx, val_idx, x_test_u8, y_test, scale=255.0,
                          num_classes=classes, augment="crop_flip")


# ---------------------------------------------------------------- imagefolder

def _to_int64(label: int) -> torch.Tensor:
    return torch.tensor(label, dtype=torch.int64)


def _image_folder(path: Path, transform, fix: str):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path), transform=transform, target_transform=_to_int64)
    except (FileNotFoundError, OSError) as exc:  # no class folders / no image files
        raise DataError(f"image folder '{path}' holds no usable images ({exc}); {fix}") from exc


def _load_imagefolder(root: str | None, val_size: float | int, split_seed: int, image_size: int | None) -> Splits:
    from torchvision import transforms

    fix = ("pass --set data_root=PATH to a folder with PATH/train/<class>/<image>.jpg|png "
           "and optionally PATH/test/ or PATH/val/ with the same class folders")
    if root is None or not Path(root).is_dir():
        raise DataError(f"dataset root '{root}' does not exist; {fix}")
    size = int(image_size or 224)
    transform = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
                                    transforms.ToTensor()])
    base = Path(root)
    if not (base / "train").is_dir():
        raise DataError(f"image folder '{base}' has no 'train' subfolder; {fix}")
    full = _image_folder(base / "train", transform, fix)
    test_dir = next((base / n for n in ("test", "val") if (base / n).is_dir()), None)
    candidates = np.arange(len(full))
    if test_dir is not None:
        test: Dataset = _image_folder(test_dir, transform, fix)
        if test.classes != full.classes:
            raise DataError(f"class folders of '{test_dir}' {test.classes} differ from those of '{base / 'train'}' "
                            f"{full.classes}; make both hold the same class folders; {fix}")
    else:  # fixed 10% test split, independent of split_seed
        n_test = max(1, int(round(0.1 * len(full))))
        if n_test >= len(full):
            raise DataError(f"'{base / 'train'}' has only {len(full)} image(s), too few to carve a test split; {fix}")
        candidates, test_idx = _permutation_split(len(full), n_test, seed=0)
        test = Subset(full, test_idx.tolist())
    keep_pos, val_pos = _permutation_split(len(candidates), _val_count(val_size, len(candidates)), split_seed)
    train, val = Subset(full, candidates[keep_pos].tolist()), Subset(full, candidates[val_pos].tolist())
    # statistics from an evenly spaced sample of at most 500 train images
    sample = np.linspace(0, len(train) - 1, min(len(train), _STATS_MAX_IMAGES)).round().astype(int)
    mean, std = _channel_stats(torch.stack([train[int(i)][0] for i in np.unique(sample)]))
    return Splits(train=train, val=val, test=test, num_classes=len(full.classes), input_shape=(3, size, size),
                  mean=mean, std=std, augment="none")
