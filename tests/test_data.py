"""Tests for trainables.data: every dataset file is generated here, tiny, in tmp_path."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from advtune.trainables import data
from advtune.trainables.data import DATASETS, DataError, Splits, load_splits

N_TRAIN, N_TEST = 40, 12


# ---------------------------------------------------------------- helpers

def unique_images(n: int, shape: tuple[int, ...], offset: int, seed: int) -> np.ndarray:
    """uint8 images that are pairwise distinct: the first two pixels encode offset + index."""
    imgs = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = imgs.reshape(n, -1)
    ids = np.arange(offset, offset + n)
    flat[:, 0], flat[:, 1] = ids // 256, ids % 256
    return imgs


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 2051 if arr.ndim == 3 else 2049
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *arr.shape))
    return header + arr.astype(np.uint8).tobytes()


def write_idx(folder: Path, gz: bool, n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, np.ndarray]:
    """Write the four MNIST IDX files into ``folder``; return the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": unique_images(n_train, (28, 28), 0, seed=1),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": unique_images(n_test, (28, 28), 1000, seed=2),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, arr in arrays.items():
        payload = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    return arrays


def write_cifar(root: Path, hundred: bool = False, per_batch: int = 6,
                n_test: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Write a tiny CIFAR-10 (or -100) python-pickle dataset; return (train rows, test rows) uint8 N×3072."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key, classes = ("fine_labels", 100) if hundred else ("labels", 10)
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    n_per = per_batch * (5 if hundred else 1)
    rows = []
    for b, name in enumerate(names):
        x = unique_images(n_per, (3072,), b * 100, seed=10 + b)
        rows.append(x)
        entry = {"data": x, key: [int(v) for v in (np.arange(n_per) * 7 + b) % classes]}
        (folder / name).write_bytes(pickle.dumps(entry))
    x_test = unique_images(n_test, (3072,), 5000, seed=99)
    (folder / ("test" if hundred else "test_batch")).write_bytes(
        pickle.dumps({"data": x_test, key: [int(v) for v in np.arange(n_test) % classes]}))
    return np.concatenate(rows), x_test


def write_image_folder(root: Path, split: str, classes=("cat", "dog", "emu"), per_class: int = 6, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(12, 14, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def keys(ds) -> list[bytes]:
    """Hashable (image, label) keys of every item of a TensorDataset."""
    x, y = ds.tensors
    return [xi.numpy().tobytes() + int(yi).to_bytes(2, "big") for xi, yi in zip(x, y)]


def assert_tensor_split(s: Splits, shape: tuple[int, int, int], num_classes: int) -> None:
    assert s.input_shape == shape and s.num_classes == num_classes
    for ds in (s.train, s.val, s.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape and len(x) == len(y) > 0
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert 0 <= int(y.min()) and int(y.max()) < num_classes
    x_train = s.train.tensors[0]
    assert s.mean == pytest.approx(x_train.mean(dim=(0, 2, 3)).tolist(), abs=2e-6)
    assert s.std == pytest.approx(x_train.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=2e-6)
    assert all(isinstance(v, float) for v in (*s.mean, *s.std)) and len(s.mean) == len(s.std) == shape[0]


def assert_disjoint(s: Splits) -> None:
    tr, va, te = (set(keys(d)) for d in (s.train, s.val, s.test))
    assert not (tr & va) and not (tr & te) and not (va & te)


# ---------------------------------------------------------------- generic

def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError) as err:
        load_splits("svhn", None, 0.1, 0)
    assert "svhn" in str(err.value) and all(name in str(err.value) for name in DATASETS)
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("bad", [0, -3, 0.0, 1.0, 1.5, "0.1", True, 10_000])
def test_bad_val_size_raises(bad):
    with pytest.raises(DataError, match="val_size"):
        load_splits("digits", None, bad, 0)


def test_splits_is_frozen():
    s = load_splits("digits", None, 0.1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_classes = 3  # type: ignore[misc]


# ---------------------------------------------------------------- digits

def test_digits_shapes_partition_and_sizes():
    from sklearn.datasets import load_digits

    s = load_splits("digits", None, 0.1, split_seed=3)
    assert_tensor_split(s, (1, 8, 8), 10)
    assert s.augment == "none"
    n = len(load_digits().target)
    n_test = round(0.2 * n)
    assert len(s.test) == n_test
    assert len(s.val) == round(0.1 * (n - n_test)) and len(s.train) + len(s.val) + len(s.test) == n
    # the three splits partition the full data set (as a multiset: digits holds duplicate images)
    full = load_digits()
    full_keys = Counter(
        torch.from_numpy(im.astype(np.float32) / 16).unsqueeze(0).numpy().tobytes() + int(t).to_bytes(2, "big")
        for im, t in zip(full.images, full.target))
    assert Counter(keys(s.train) + keys(s.val) + keys(s.test)) == full_keys
    assert set(s.test.tensors[1].tolist()) == set(range(10))  # stratified: every class in test
    assert set(s.val.tensors[1].tolist()) == set(range(10))


def test_digits_test_split_fixed_val_depends_on_seed():
    a, b, a2 = (load_splits("digits", None, 100, seed) for seed in (0, 1, 0))
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert len(a.val) == len(b.val) == 100
    assert not torch.equal(a.val.tensors[0], b.val.tensors[0])
    for x, y in zip(a.val.tensors + a.train.tensors, a2.val.tensors + a2.train.tensors):
        assert torch.equal(x, y)


# ---------------------------------------------------------------- mnist / fashion-mnist

@pytest.mark.parametrize("dataset,sub,gz", [
    ("mnist", "", False), ("mnist", "raw", True), ("mnist", "MNIST/raw", True), ("mnist", "MNIST/raw", False),
    ("fashion-mnist", "FashionMNIST/raw", False), ("fashion-mnist", "", True),
])
def test_idx_layouts(tmp_path, dataset, sub, gz):
    arrays = write_idx(tmp_path / sub if sub else tmp_path, gz)
    s = load_splits(dataset, str(tmp_path), 0.25, split_seed=0)
    assert_tensor_split(s, (1, 28, 28), 10)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, N_TEST)
    # the test split is exactly the t10k files, in order, scaled to [0, 1]
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255).unsqueeze(1)
    assert torch.equal(s.test.tensors[0], expected)
    assert s.test.tensors[1].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # train + val are exactly the train files
    train_keys = [
        (torch.from_numpy(im.astype(np.float32) / 255).unsqueeze(0).numpy().tobytes() + int(t).to_bytes(2, "big"))
        for im, t in zip(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"])]
    assert sorted(keys(s.train) + keys(s.val)) == sorted(train_keys)
    assert_disjoint(s)


def test_idx_split_determinism(tmp_path):
    write_idx(tmp_path, gz=True)
    a, a2, b = (load_splits("mnist", str(tmp_path), 8, seed) for seed in (5, 5, 6))
    assert len(a.val) == 8 and len(a.train) == N_TRAIN - 8
    assert keys(a.val) == keys(a2.val) and keys(a.train) == keys(a2.train)
    assert set(keys(a.val)) != set(keys(b.val))
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])


def test_idx_missing_root_names_root_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_splits("fashion-mnist", str(missing), 0.1, 0)
    msg = str(err.value)
    assert str(missing) in msg and "data_root" in msg and "dataset-fashion-mnist" in msg


def test_idx_missing_files(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError) as err:
        load_splits("mnist", str(tmp_path), 0.1, 0)
    assert "train-images-idx3-ubyte" in str(err.value) and "data_root" in str(err.value)
    with pytest.raises(DataError, match="data_root"):
        load_splits("mnist", None, 0.1, 0)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file(tmp_path, gz):
    write_idx(tmp_path, gz=False)
    target = tmp_path / "train-images-idx3-ubyte"
    payload = target.read_bytes()[:-100]  # cut the last 100 bytes
    if gz:
        target.unlink()
        target = tmp_path / "train-images-idx3-ubyte.gz"
        payload = gzip.compress(payload)
    target.write_bytes(payload)
    with pytest.raises(DataError) as err:
        load_splits("mnist", str(tmp_path), 0.1, 0)
    assert str(target) in str(err.value) and "truncated" in str(err.value) and "re-fetch" in str(err.value)


def test_idx_cut_gzip_stream(tmp_path):
    write_idx(tmp_path, gz=True)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:200])  # the gzip stream itself ends early
    with pytest.raises(DataError) as err:
        load_splits("mnist", str(tmp_path), 0.1, 0)
    assert str(target) in str(err.value) and "re-fetch" in str(err.value)


def test_idx_bad_magic_and_swapped_files(tmp_path):
    arrays = write_idx(tmp_path, gz=False)
    target = tmp_path / "train-labels-idx1-ubyte"
    target.write_bytes(idx_bytes(arrays["train-images-idx3-ubyte"]))  # images where labels belong
    with pytest.raises(DataError) as err:
        load_splits("mnist", str(tmp_path), 0.1, 0)
    assert str(target) in str(err.value) and "magic" in str(err.value) and "2049" in str(err.value)


def test_idx_wrong_image_size_and_count_mismatch(tmp_path):
    write_idx(tmp_path, gz=False)
    small = tmp_path / "t10k-images-idx3-ubyte"
    small.write_bytes(idx_bytes(np.zeros((N_TEST, 10, 10), dtype=np.uint8)))
    with pytest.raises(DataError, match="28×28"):
        load_splits("mnist", str(tmp_path), 0.1, 0)
    small.write_bytes(idx_bytes(np.zeros((N_TEST - 1, 28, 28), dtype=np.uint8)))
    with pytest.raises(DataError, match="labels"):
        load_splits("mnist", str(tmp_path), 0.1, 0)


@pytest.mark.skipif(not Path(data.DEBIAN_FASHION_MNIST).is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    s = load_splits("fashion-mnist", None, 0.1, split_seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (54_000, 6_000, 10_000)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.test.tensors[1].bincount().tolist() == [1000] * 10
    assert s.mean[0] == pytest.approx(0.286, abs=0.002) and s.std[0] == pytest.approx(0.353, abs=0.002)
    x = s.val.tensors[0]
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1


# ---------------------------------------------------------------- cifar

def test_cifar10_layout_values_and_channel_order(tmp_path):
    train_rows, test_rows = write_cifar(tmp_path)
    s = load_splits("cifar10", str(tmp_path), 6, split_seed=0)
    assert_tensor_split(s, (3, 32, 32), 10)
    assert s.augment == "crop_flip"
    assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 8)
    # rows are R, G, B planes of 32×32: test image 0 must match plane by plane
    expected = torch.from_numpy(test_rows[0].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(s.test.tensors[0][0], expected)
    assert s.test.tensors[1].tolist() == [i % 10 for i in range(8)]
    all_train = {r.reshape(3, 32, 32).astype(np.float32).tobytes() for r in train_rows.astype(np.float32) / 255}
    seen = [x.numpy().tobytes() for x in torch.cat([s.train.tensors[0], s.val.tensors[0]])]
    assert set(seen) == all_train and len(seen) == len(all_train)
    assert_disjoint(s)


def test_cifar_root_may_name_the_batch_folder(tmp_path):
    write_cifar(tmp_path)
    s = load_splits("cifar10", str(tmp_path / "cifar-10-batches-py"), 0.2, 0)
    assert len(s.train) + len(s.val) == 30 and len(s.test) == 8


def test_cifar100(tmp_path):
    write_cifar(tmp_path, hundred=True)
    s = load_splits("cifar100", str(tmp_path), 0.2, split_seed=1)
    assert_tensor_split(s, (3, 32, 32), 100)
    assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 8)
    assert max(s.train.tensors[1].max(), s.val.tensors[1].max()) > 9  # fine labels, not 10 classes
    assert s.augment == "crop_flip"
    assert_disjoint(s)
    again = load_splits("cifar100", str(tmp_path), 0.2, split_seed=1)
    assert keys(again.val) == keys(s.val)


def test_cifar_missing_files_suggest_download(tmp_path, monkeypatch):
    import torchvision

    def forbidden(*args, **kwargs):
        raise AssertionError("download attempted although download=False")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", forbidden)
    with pytest.raises(DataError) as err:
        load_splits("cifar10", str(tmp_path), 0.1, 0)
    msg = str(err.value)
    assert "download=true" in msg and "cifar-10-batches-py" in msg and "data_batch_1" in msg
    with pytest.raises(DataError, match="download=true"):
        load_splits("cifar100", None, 0.1, 0)


def test_cifar_download_calls_torchvision_only_when_asked(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_cifar10(root, train=True, download=False, **kwargs):
        calls.append((root, download))
        if not (Path(root) / "cifar-10-batches-py").exists():
            write_cifar(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    s = load_splits("cifar10", str(tmp_path / "dl"), 0.2, 0, download=True)
    assert calls == [(str(tmp_path / "dl"), True)] and len(s.test) == 8


def test_cifar_truncated_pickle_names_file(tmp_path):
    write_cifar(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(DataError) as err:
        load_splits("cifar10", str(tmp_path), 0.1, 0)
    assert str(target) in str(err.value) and "download=true" in str(err.value)


# ---------------------------------------------------------------- imagefolder

def _subset_sets(s: Splits):
    return set(s.train.indices), set(s.val.indices), set(getattr(s.test, "indices", []))


def test_imagefolder_with_test_dir(tmp_path):
    write_image_folder(tmp_path, "train", per_class=6)
    write_image_folder(tmp_path, "val", per_class=2, seed=1)
    s = load_splits("imagefolder", str(tmp_path), 3, split_seed=0, image_size=8)
    assert s.input_shape == (3, 8, 8) and s.num_classes == 3 and s.augment == "none"
    assert (len(s.train), len(s.val), len(s.test)) == (15, 3, 6)
    tr, va, _ = _subset_sets(s)
    assert not tr & va and len(tr | va) == 18
    for ds in (s.train, s.val, s.test):
        x, y = ds[0]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert y.dtype == torch.int64 and 0 <= int(y) < 3
    imgs = torch.stack([s.train[i][0] for i in range(len(s.train))])
    assert s.mean == pytest.approx(imgs.mean(dim=(0, 2, 3)).tolist(), abs=2e-6)
    assert s.std == pytest.approx(imgs.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=2e-6)
    b = load_splits("imagefolder", str(tmp_path), 3, split_seed=1, image_size=8)
    a2 = load_splits("imagefolder", str(tmp_path), 3, split_seed=0, image_size=8)
    assert a2.val.indices == s.val.indices and b.val.indices != s.val.indices


def test_imagefolder_carves_fixed_test_split(tmp_path):
    write_image_folder(tmp_path, "train", per_class=10)
    a = load_splits("imagefolder", str(tmp_path), 0.25, split_seed=0, image_size=16)
    b = load_splits("imagefolder", str(tmp_path), 0.25, split_seed=7, image_size=16)
    assert a.input_shape == (3, 16, 16) and a.train[0][0].shape == (3, 16, 16)
    assert len(a.test) == 3 and a.test.indices == b.test.indices  # fixed 10%, independent of split_seed
    assert (len(a.train), len(a.val)) == (20, 7)
    tr, va, te = _subset_sets(a)
    assert not (tr & va) and not (tr & te) and not (va & te) and len(tr | va | te) == 30
    assert a.val.indices != b.val.indices


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits("imagefolder", str(tmp_path / "missing"), 0.1, 0)
    with pytest.raises(DataError, match="train"):
        load_splits("imagefolder", str(tmp_path), 0.1, 0)  # no train/ subfolder
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError) as err:
        load_splits("imagefolder", str(tmp_path), 0.1, 0)  # no class folders
    assert str(tmp_path / "train") in str(err.value) and "data_root" in str(err.value)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no usable images"):
        load_splits("imagefolder", str(tmp_path), 0.1, 0)  # class folder without images


def test_imagefolder_class_mismatch(tmp_path):
    write_image_folder(tmp_path, "train", classes=("a", "b"), per_class=3)
    write_image_folder(tmp_path, "test", classes=("a", "c"), per_class=1)
    with pytest.raises(DataError, match="class folders"):
        load_splits("imagefolder", str(tmp_path), 1, 0, image_size=8)


# ---------------------------------------------------------------- train_size

def test_train_size_keeps_a_fixed_stratified_subset_and_leaves_val_and_test_alone():
    full = load_splits("digits", None, 0.2, 0)
    s = load_splits("digits", None, 0.2, 0, train_size=200)
    assert len(s.train) == 200
    assert keys(s.val) == keys(full.val) and keys(s.test) == keys(full.test)
    assert set(keys(s.train)) <= set(keys(full.train))  # drawn from the train split only: no val/test image
    assert_disjoint(s)
    assert_tensor_split(s, (1, 8, 8), 10)  # mean/std are the subset's
    counts = np.bincount(s.train.tensors[1].numpy(), minlength=10)
    assert counts.min() >= 19 and counts.max() <= 21  # class-stratified
    again = load_splits("digits", None, 0.2, 0, train_size=200)
    other = load_splits("digits", None, 0.2, 5, train_size=200)
    assert keys(again.train) == keys(s.train) and keys(other.train) != keys(s.train)
    assert keys(load_splits("digits", None, 0.2, 0, train_size=len(full.train)).train) == keys(full.train)


def test_train_size_larger_than_the_split_names_the_limit():
    n = len(load_splits("digits", None, 0.2, 0).train)
    with pytest.raises(DataError, match=rf"train_size={n + 1} .*\({n} after the validation carve\).*--set train_size={n}"):
        load_splits("digits", None, 0.2, 0, train_size=n + 1)


def test_train_size_on_an_image_folder(tmp_path):
    write_image_folder(tmp_path, "train", per_class=6)
    write_image_folder(tmp_path, "val", per_class=2, seed=1)
    full = load_splits("imagefolder", str(tmp_path), 3, split_seed=0, image_size=8)
    s = load_splits("imagefolder", str(tmp_path), 3, split_seed=0, image_size=8, train_size=6)
    tr, va, _ = _subset_sets(s)
    assert len(tr) == 6 and tr <= set(full.train.indices) and not tr & va
    assert s.val.indices == full.val.indices
    assert sorted(int(s.train[i][1]) for i in range(6)) == [0, 0, 1, 1, 2, 2]
