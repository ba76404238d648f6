"""Starting points (issue 11, defects 3, 5, 6): a partial load is reported, stored and refused
below ``min_loaded_fraction``; a learned activation reloads bit-exact, and keys that do not load
are reported; torchvision weights keep their own (ImageNet) normalization unless overridden."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from advtune.study.cli import main
from advtune.trainables.checkpoints import FORMAT, load_starting_point, save_atomic
from advtune.trainables.config import ConfigError, TrialConfig
from advtune.trainables.load_report import read_report
from advtune.trainables.models import build_model
from advtune.trainables.normalization import IMAGENET, choose_normalization, torchvision_stats
from advtune.trainables.setup import model_from_checkpoint, prepare

from conftest import TINY
from test_data import write_cifar

SETS = [arg for key, value in {**TINY, "epochs": 1}.items() for arg in ("--set", f"{key}={value}")]


def _partial_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The issue's file: a digits small_cnn without block2 and fc, plus a key the model lacks."""
    torch.manual_seed(3)
    state = {k: v for k, v in build_model("small_cnn", (1, 8, 8), 10, (0.5,), (0.5,)).net.state_dict().items()
             if not k.startswith(("block2.", "fc."))}
    state["projection.weight"] = torch.zeros(4, 4)
    torch.save(state, path)
    return state


# ---------------------------------------------------------------- defect 3: partial loads are not silent

def test_partial_load_is_refused_by_default_naming_the_fraction_and_the_key(tmp_path, capsys):
    path = tmp_path / "partial.pt"
    _partial_checkpoint(path)
    out = tmp_path / "run"
    code = main(["train", "--quiet", "--out", str(out), *SETS, "--set", f"pretrained={path}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    # 12 of the 17 tensors outside the head (BN counters not counted) = 71% < 75%
    assert "71% of the 17" in err and "min_loaded_fraction=0.75" in err and "--set min_loaded_fraction=" in err
    assert not (out / "last.pt").exists()


def test_lowered_bar_trains_and_prints_and_stores_the_report(tmp_path, capsys):
    path = tmp_path / "partial.pt"
    state = _partial_checkpoint(path)
    out = tmp_path / "run"
    code = main(["train", "--quiet", "--out", str(out), *SETS, "--set", f"pretrained={path}",
                 "--set", "min_loaded_fraction=0.5"])
    printed = capsys.readouterr().out
    assert code == 0
    line = next(ln for ln in printed.splitlines() if ln.startswith("starting point:"))
    assert "block2.0.0.weight" in line and "projection.weight" in line and "71%" in line
    report = read_report(out)
    assert report is not None and report.source == str(path)
    assert report.unexpected == ["projection.weight"]
    assert {k for k in report.missing} >= {"block2.0.0.weight", "fc.weight", "fc.bias"}
    assert sorted(report.loaded) == sorted(k for k in state if k != "projection.weight")
    assert report.fraction == pytest.approx(12 / 17) and report.counted == 17
    assert report.normalization == "train-split statistics"


def test_min_loaded_fraction_is_validated():
    with pytest.raises(ConfigError, match="min_loaded_fraction"):
        TrialConfig(min_loaded_fraction=1.5)


# ---------------------------------------------------------------- defect 5: learned beta of functional ReLUs

@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root)
    return root


def _densenet_cfg(root: Path, **kw) -> TrialConfig:
    # densenet's forward calls F.relu: its activations are swapped by interception (functional_act)
    return TrialConfig(dataset="cifar10", data_root=str(root), model="tv:densenet121", pretrained="none",
                       device="cpu", val_size=6, **{"activation": "psoftplus", **kw})


def _psoftplus_checkpoint(root: Path, path: Path):
    cfg = _densenet_cfg(root)
    model = prepare(cfg).model.eval()
    assert model.functional_act is not None, "densenet121 should use functional ReLUs"
    with torch.no_grad():  # learned betas, all different from the initial 10
        for i, (name, p) in enumerate(n for n in model.named_parameters() if n[0].endswith("log_beta")):
            p.fill_(math.log(1.0 + 0.1 * i))
        model.functional_act.log_beta.fill_(0.0)  # beta 1.0, as in the issue
    save_atomic({"format": FORMAT, "kind": "best", "config": cfg.to_dict(), "model": model.state_dict(),
                 "metrics": {}}, path)
    return cfg, model


def test_advtune_checkpoint_with_learned_betas_reloads_bit_exact(cifar_root, tmp_path):
    path = tmp_path / "best.pt"
    cfg, model = _psoftplus_checkpoint(cifar_root, path)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    # the path `advtune eval` takes
    prep, report = model_from_checkpoint(str(path), cfg)
    assert prep.model.functional_act.log_beta.item() == 0.0
    assert not report.missing and not report.unexpected
    with torch.no_grad():
        assert torch.equal(prep.model.eval()(x), expected)
    # the path training takes when it starts from the checkpoint
    again = prepare(cfg.replace(pretrained=str(path))).model.eval()
    with torch.no_grad():
        assert torch.equal(again(x), expected)


def test_keys_the_model_lacks_are_reported(cifar_root, tmp_path):
    path = tmp_path / "best.pt"
    _psoftplus_checkpoint(cifar_root, path)
    relu_model = prepare(_densenet_cfg(cifar_root, activation="relu")).model
    report = load_starting_point(relu_model, path)
    betas = [k for k in torch.load(path, weights_only=True)["model"] if k.endswith("log_beta")]
    assert "functional_act.log_beta" in betas and "net.features.relu0.log_beta" in betas
    # every key that did not load is in the report (the printed summary abbreviates, the stored file does not)
    assert sorted(report.unexpected) == sorted(k.removeprefix("net.") for k in betas)
    assert f"(+{len(betas) - 6})" in report.summary()


# ---------------------------------------------------------------- defect 6: normalization of torchvision weights

DATA = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def test_torchvision_weights_bring_their_own_normalization():
    stats, name = torchvision_stats("resnet18", "DEFAULT")  # weight metadata only: no download
    assert [list(v) for v in stats] == [pytest.approx(v) for v in IMAGENET] and "ResNet18_Weights" in name
    chosen, label = choose_normalization("auto", "tv:resnet18", "torchvision:DEFAULT", DATA, False)
    assert [list(v) for v in chosen] == [pytest.approx(v) for v in IMAGENET] and "ResNet18_Weights.IMAGENET1K" in label
    assert choose_normalization("data", "tv:resnet18", "torchvision:DEFAULT", DATA, False)[0] == DATA
    explicit = choose_normalization("0.5,0.5,0.5/0.2,0.2,0.2", "tv:resnet18", "torchvision:DEFAULT", DATA, True)[0]
    assert explicit == ((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert choose_normalization("auto", "small_cnn", "some.pt", DATA, True)[0] is None  # the checkpoint's stays
    assert choose_normalization("auto", "small_cnn", None, DATA, False)[0] == DATA


@pytest.mark.parametrize("bad", ["imagenet2", "0.5,0.5/0.2", "0.5/0", "a,b/c,d"])
def test_bad_normalization_is_refused(bad):
    with pytest.raises(ConfigError, match="normalization"):
        TrialConfig(normalization=bad)


def test_plain_torchvision_state_dict_gets_imagenet_normalization(cifar_root, tmp_path):
    import torchvision

    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict(), path)  # as torchvision ships
    cfg = TrialConfig(dataset="cifar10", data_root=str(cifar_root), model="tv:mobilenet_v3_small", device="cpu",
                      val_size=6, pretrained=str(path))
    prep = prepare(cfg)
    assert prep.model.normalize.mean.flatten().tolist() == pytest.approx(IMAGENET[0])
    assert prep.model.normalize.std.flatten().tolist() == pytest.approx(IMAGENET[1])
    assert "ImageNet" in prep.load_report.normalization and "ImageNet" in prep.load_report.summary()
    assert prep.load_report.fraction == 1.0 and prep.load_report.reinitialized  # 1000 → 10 classes
    data = prepare(cfg.replace(normalization="data"))
    assert data.model.normalize.mean.flatten().tolist() == pytest.approx(data.splits.mean)
    assert "normalization=data" in data.load_report.normalization


def test_imagenet_normalization_on_one_channel_data_is_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(build_model("small_cnn", (1, 8, 8), 10, (0.5,), (0.5,)).net.state_dict(), path)
    with pytest.raises(ConfigError, match="3 channels but the data has 1"):
        prepare(TrialConfig(**{**TINY, "pretrained": str(path), "normalization": "imagenet"}))
