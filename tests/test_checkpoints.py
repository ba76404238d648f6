"""Tests for trainables.checkpoints: every starting-point format loads the right tensors, and every
kind of bad file is refused with a CheckpointError that says what is wrong (and never runs code)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from advtune.trainables.checkpoints import FORMAT, CheckpointError, LoadReport, load_file, load_starting_point, save_atomic
from advtune.trainables.models import NormalizedModel, build_model

SHAPE, MEAN, STD = (1, 8, 8), (0.5,), (0.5,)


def small_cnn(num_classes: int = 10, seed: int = 0) -> NormalizedModel:
    torch.manual_seed(seed)
    return build_model("small_cnn", SHAPE, num_classes, MEAN, STD)


def trained_like(seed: int = 1, num_classes: int = 10) -> NormalizedModel:
    """A small CNN whose every tensor (BN statistics included) differs from a fresh one."""
    model = small_cnn(num_classes, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g).abs() + 0.1 if "running_var" in name else
                        torch.randn(t.shape, generator=g))
            else:
                t.fill_(7)
    return model


def assert_net_equal(model: NormalizedModel, expected: dict[str, torch.Tensor], keys=None) -> None:
    got = model.net.state_dict()
    for k in keys if keys is not None else expected:
        assert torch.equal(got[k], expected[k]), k


@pytest.fixture
def source() -> NormalizedModel:
    return trained_like()


# ---------------------------------------------------------------- each format loads the right tensors

def test_advtune_checkpoint_loads_exactly(tmp_path, source):
    path = tmp_path / "best.pt"
    save_atomic({"format": FORMAT, "kind": "best", "config": {}, "model": source.state_dict(), "metrics": {}}, path)
    target = small_cnn()
    report = load_starting_point(target, path)
    assert isinstance(report, LoadReport) and report.format == "advtune"
    assert not report.missing and not report.unexpected and not report.reinitialized
    assert sorted(report.loaded) == sorted(target.net.state_dict())
    assert_net_equal(target, source.net.state_dict())
    x = torch.rand(5, *SHAPE)
    source.eval(), target.eval()
    assert torch.equal(source(x), target(x))


def test_checkpoint_written_by_a_real_run_loads(tmp_path, tiny_config, recorder):
    from advtune.trainables import finetune

    rep = recorder()
    finetune.run(tiny_config.replace(epochs=1, val_steps=1, train_steps=1), rep)
    best = rep.checkpoints[-1] / "best.pt"
    payload = load_file(best)
    assert payload["format"] == FORMAT and payload["kind"] == "best"
    target = small_cnn()
    report = load_starting_point(target, best)
    assert report.format == "advtune" and not report.missing and not report.reinitialized
    saved = {k[len("net."):]: v for k, v in payload["model"].items() if k.startswith("net.")}
    assert_net_equal(target, saved)
    # the folder itself is accepted too (load_file finds best.pt)
    assert load_file(rep.checkpoints[-1])["kind"] == "best"


def test_plain_state_dict_of_normalized_model(tmp_path, source):
    with torch.no_grad():
        source.normalize.mean.fill_(0.25)
        source.normalize.std.fill_(0.75)
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)
    target = small_cnn()
    report = load_starting_point(target, path)
    assert report.format == "state dict" and not report.missing and not report.unexpected
    assert_net_equal(target, source.net.state_dict())
    assert report.normalizer
    assert target.normalize.mean.flatten().tolist() == [0.25] and target.normalize.std.flatten().tolist() == [0.75]


def test_bare_net_state_dict_torchvision_style(tmp_path, source):
    path = tmp_path / "bare.pth"
    torch.save(source.net.state_dict(), path)  # keys like "block1.0.0.weight", no "net." prefix
    assert not any(k.startswith("net.") for k in torch.load(path))
    target = small_cnn()
    report = load_starting_point(target, path)
    assert not report.missing and not report.unexpected and not report.normalizer
    assert_net_equal(target, source.net.state_dict())
    assert target.normalize.mean.flatten().tolist() == [0.5]  # the model's own normalization stays


def test_robustness_library_checkpoint(tmp_path, source):
    net = source.net.state_dict()
    attacker_copy = {k: v.clone() + 100 for k, v in net.items()}  # must be ignored, not loaded
    state = {f"module.model.{k}": v for k, v in net.items()}
    state.update({f"module.attacker.model.{k}": v for k, v in attacker_copy.items()})
    state["module.normalizer.new_mean"] = torch.tensor([0.1307]).view(1, 1, 1)
    state["module.normalizer.new_std"] = torch.tensor([0.3081]).view(1, 1, 1)
    path = tmp_path / "robust.ckpt"
    torch.save({"model": state, "epoch": 3}, path)
    target = small_cnn()
    report = load_starting_point(target, path)
    assert report.format == "robustness library"
    assert not report.missing and not report.reinitialized
    assert_net_equal(target, net)
    assert report.normalizer
    assert target.normalize.mean.flatten().tolist() == pytest.approx([0.1307])
    assert target.normalize.std.flatten().tolist() == pytest.approx([0.3081])
    assert target.normalize.mean.shape == (1, 1, 1, 1)


def test_state_dict_key_wrapper(tmp_path, source):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": source.net.state_dict(), "epoch": 5, "arch": "small_cnn"}, path)
    target = small_cnn()
    report = load_starting_point(target, path)
    assert report.format == "dict['state_dict']" and not report.missing and not report.unexpected
    assert_net_equal(target, source.net.state_dict())


def test_data_parallel_prefix_is_stripped(tmp_path, source):
    path = tmp_path / "dp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.net.state_dict().items()}}, path)
    target = small_cnn()
    report = load_starting_point(target, path)
    assert not report.missing and not report.unexpected
    assert_net_equal(target, source.net.state_dict())


# ---------------------------------------------------------------- partial loads

def test_partial_load_reports_missing_and_unexpected(tmp_path, source):
    state = dict(source.net.state_dict())
    dropped = ["hidden.1.weight", "hidden.1.bias"]
    for k in dropped:
        del state[k]
    state["projection.weight"] = torch.zeros(4, 4)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    target = small_cnn()
    fresh = {k: v.clone() for k, v in target.net.state_dict().items()}
    report = load_starting_point(target, path)
    assert sorted(report.missing) == sorted(dropped)
    assert report.unexpected == ["projection.weight"]
    assert set(report.loaded) == set(fresh) - set(dropped)
    assert_net_equal(target, fresh, dropped)  # missing tensors keep their initial values
    assert_net_equal(target, source.net.state_dict(), report.loaded)
    summary = report.summary()
    assert "hidden.1.weight" in summary and "projection.weight" in summary


def test_new_class_count_reinitialises_head(tmp_path, source):
    path = tmp_path / "ten.pt"
    torch.save(source.state_dict(), path)
    target = small_cnn(num_classes=3, seed=5)
    fresh_head = {k: v.clone() for k, v in target.net.state_dict().items() if k.startswith("fc.")}
    report = load_starting_point(target, path)
    assert sorted(report.reinitialized) == ["fc.bias", "fc.weight"]
    assert "re-initialised" in report.summary() and "fc.weight" in report.summary()
    assert target.net.fc.weight.shape == (3, 128)
    assert_net_equal(target, fresh_head)
    backbone = [k for k in source.net.state_dict() if not k.startswith("fc.")]
    assert_net_equal(target, source.net.state_dict(), backbone)
    assert target(torch.rand(2, *SHAPE)).shape == (2, 3)


def test_too_small_a_match_is_refused(tmp_path, source):
    state = {k: v for k, v in source.net.state_dict().items() if k.startswith("fc.")}
    path = tmp_path / "head_only.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"does not fit this model: only 2 of its \d+ tensors"):
        load_starting_point(small_cnn(), path)


# ---------------------------------------------------------------- bad files

def _assert_refused(path: Path, pattern: str, model: NormalizedModel | None = None) -> str:
    model = model or small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=pattern) as err:
        load_starting_point(model, path)
    assert str(path) in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "a refused file changed the model"
    return str(err.value)


def test_missing_file(tmp_path):
    _assert_refused(tmp_path / "nope.pt", "does not exist")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    _assert_refused(path, "empty")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_corrupt_not_untrusted(tmp_path, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.uint8).numpy().tobytes())
    msg = _assert_refused(path, "corrupt")
    assert "--trust-checkpoint" not in msg  # trusting a corrupt file would not help


def test_truncated_checkpoint(tmp_path, source):
    full = tmp_path / "full.pt"
    torch.save({"format": FORMAT, "model": source.state_dict()}, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    _assert_refused(cut, "corrupt, truncated")


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is a text file, not a checkpoint\n")
    _assert_refused(path, "not a PyTorch checkpoint")


def test_pytorch_file_without_weights(tmp_path):
    path = tmp_path / "metrics.pt"
    torch.save({"epoch": 3, "acc": 0.5}, path)
    _assert_refused(path, "holds no model weights")


def test_checkpoint_of_another_architecture(tmp_path):
    torch.manual_seed(0)
    other = build_model("preact_resnet18", SHAPE, 10, MEAN, STD)
    path = tmp_path / "resnet.pt"
    torch.save(other.state_dict(), path)
    msg = _assert_refused(path, "does not fit this model")
    assert "model=" in msg  # says what to change


class _Malicious:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": _Malicious(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    msg = _assert_refused(path, "refused|corrupt")
    assert not marker.exists()
    if writer == "torch.save":
        assert "Python objects" in msg and "--trust-checkpoint" in msg
    with pytest.raises(CheckpointError):
        load_file(path)
    assert not marker.exists()


def test_harmless_python_objects_need_trust(tmp_path, source):
    import argparse

    path = tmp_path / "with_args.pt"
    torch.save({"model": source.net.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    _assert_refused(path, "Python objects.*--trust-checkpoint")
    target = small_cnn()
    report = load_starting_point(target, path, trust=True)
    assert not report.missing
    assert_net_equal(target, source.net.state_dict())
