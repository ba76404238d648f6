"""The user's own model, data, weights and optimizer: import paths, timm, safetensors, AdamW.

One small real study (Ray Tune + Optuna + ASHA) fine-tunes a network built by ``tests.own_code:build``
on data from ``tests.own_code:splits``, starting from natural pretraining of that same network,
with the optimizer searched (SGD vs AdamW with its betas). The rest runs without Ray.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import optuna
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from advtune.study.cli import main
from advtune.study.records import StudyRecords
from advtune.trainables import finetune
from advtune.trainables.checkpoints import load_file, load_starting_point
from advtune.trainables.config import ConfigError, TrialConfig
from advtune.trainables.data import DataError, load_splits
from advtune.trainables.models import build_model, head
from advtune.trainables.optim import make_optimizer
from advtune.trainables.setup import param_groups, prepare

own_code = importlib.import_module("tests.own_code")  # as advtune imports it (and keeps it in sys.modules)

OWN = dict(model="tests.own_code:build", dataset="tests.own_code:splits")
SPACE = """\
name: own
params:
  optimizer: {categorical: [sgd, adamw]}
  peak_lr: {loguniform: [0.001, 0.05]}
  betas: {categorical: ["0.9,0.999", "0.9,0.95"], when: {optimizer: adamw}}
starting_points:
  - {optimizer: sgd, peak_lr: 0.02}
  - {optimizer: adamw, peak_lr: 0.002, betas: "0.9,0.95"}
"""


# ---------------------------------------------------------------- a real study

@pytest.fixture(scope="module")
def own_study(local_ray, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    (tmp / "space.yaml").write_text(SPACE)
    rc = main(["run", "--name", "own", "--storage-path", str(tmp), "--space", str(tmp / "space.yaml"),
               "--num-samples", "2", "--max-epochs", "1", "--concurrency", "2", "--set", f"model={OWN['model']}",
               "--set", f"dataset={OWN['dataset']}", "--set", "pretrain_epochs=3", "--set", "train_steps=2",
               "--set", "val_steps=3", "--set", "eval_eps=0.1", "--final-attack", "none"])
    assert rc == 0
    return tmp / "own"


def test_a_study_fine_tunes_the_users_model_on_the_users_data_with_sgd_and_adamw(own_study):
    records = StudyRecords(own_study, tensorboard=False).load()
    assert len(records) == 2 and all(r.state == "completed" for r in records)
    by_opt = {r.params["optimizer"]: r for r in records}
    assert set(by_opt) == {"sgd", "adamw"}
    assert by_opt["adamw"].params["betas"] == "0.9,0.95"
    start = load_file(own_study / "pretrained" / "best.pt")  # natural pretraining of the user's network
    assert "net.classifier.weight" in start["model"] and start["config"]["model"] == OWN["model"]
    for opt_name, rec in by_opt.items():
        last = load_file(rec.directory / "last.pt")
        assert last["config"]["optimizer"] == opt_name
        state = next(iter(last["optimizer"]["state"].values()))
        assert ("exp_avg_sq" in state) == (opt_name == "adamw") and ("momentum_buffer" in state) == (opt_name == "sgd")
        if opt_name == "adamw":
            assert tuple(last["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.95)
        assert "net.classifier.weight" in load_file(rec.directory / "best.pt")["model"]
        assert rec.best["clean_acc"] > 0.6, "fine-tuning from the pretrained user model should stay accurate"


def test_a_study_refuses_a_model_path_that_does_not_import_before_ray_runs_anything(tmp_path, capsys):
    rc = main(["run", "--name", "x", "--storage-path", str(tmp_path), "--set", "model=no_such_pkg.nets:build"])
    assert rc == 2 and "no_such_pkg" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_space_searches_the_optimizer_and_betas_only_for_adamw(tmp_path):
    from advtune.search_spaces import define_by_run, load_space

    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(tmp_path / "space.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        define_by_run(space)(trial)
        seen.add(trial.params["optimizer"])
        assert ("betas" in trial.params) == (trial.params["optimizer"] == "adamw")
        cfg = TrialConfig().replace(**trial.params)
        assert len(cfg.betas) == 2
        study.tell(trial, 0.0)
    assert seen == {"sgd", "adamw"}


# ---------------------------------------------------------------- models by import path

def test_the_builder_gets_num_classes_and_input_shape_and_is_wrapped_with_normalization():
    model = build_model(OWN["model"], (1, 8, 8), 7, (0.3,), (0.2,))
    assert isinstance(model.net, own_code.TinyNet) and model.net.classifier.out_features == 7
    assert head(model) is model.net.classifier
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model(x), model.net((x - 0.3) / 0.2))


def test_head_module_names_a_classifier_that_is_not_a_linear_layer():
    with pytest.raises(ConfigError, match="head_module"):
        build_model("tests.own_code:build_conv_head", (1, 8, 8), 10, (0.5,), (0.5,))
    model = build_model("tests.own_code:build_conv_head", (1, 8, 8), 10, (0.5,), (0.5,), head_module="logits")
    assert head(model) is model.net.logits
    groups = param_groups(model, TrialConfig(finetune_scope="head", head_module="logits"))
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in model.net.logits.parameters()}


# ---------------------------------------------------------------- timm and safetensors

def test_timm_model_with_random_weights_reloads_from_safetensors_and_takes_timms_normalization(tmp_path):
    from safetensors.torch import save_file

    cfg = TrialConfig(model="timm:test_resnet", pretrained="none", device="cpu")
    first = prepare(cfg)  # random init: the data's statistics
    assert first.model.normalize.mean.flatten().tolist() == pytest.approx(list(first.splits.mean))
    assert first.model.head_module == "fc"  # timm's own pretrained_cfg["classifier"]
    weights = tmp_path / "model.safetensors"  # laid out as timm's own model.safetensors files are
    save_file({k: v.contiguous() for k, v in first.model.net.state_dict().items()}, str(weights))
    second = prepare(cfg.replace(pretrained=str(weights), seed=1))
    report = second.load_report
    assert report.format == "safetensors" and not report.missing and not report.unexpected
    assert len(report.loaded) == len(first.model.net.state_dict())
    x = torch.rand(4, 1, 8, 8)
    first.model.eval(), second.model.eval()
    assert torch.equal(first.model.net(x), second.model.net(x))
    # timm's pretrained_cfg statistics are per RGB channel: 1-channel data keeps its own
    assert second.model.normalize.mean.flatten().tolist() == pytest.approx(list(first.splits.mean))


def test_timm_weights_for_rgb_data_bring_timms_mean_and_std():
    from advtune.trainables.external_models import timm_stats
    from advtune.trainables.normalization import choose_normalization

    model = build_model("timm:test_resnet", (3, 16, 16), 10, (0.1, 0.2, 0.3), (0.4, 0.4, 0.4))
    stats = timm_stats(model)
    expected = model.net.pretrained_cfg
    assert stats == (tuple(expected["mean"]), tuple(expected["std"]))
    data = ((0.1, 0.2, 0.3), (0.4, 0.4, 0.4))
    # random init or natural pretraining on this data: the data's statistics
    assert choose_normalization("auto", "timm:test_resnet", "none", data, False, stats)[0] == data
    # a weights file for the timm model: the statistics those weights were trained with
    chosen, label = choose_normalization("auto", "timm:test_resnet", "rgb.safetensors", data, False, stats)
    assert chosen == stats and "timm pretrained_cfg" in label
    # unless the user says otherwise, or the file carries its own normalizer
    assert choose_normalization("data", "timm:test_resnet", "rgb.safetensors", data, False, stats)[0] == data
    assert choose_normalization("auto", "timm:test_resnet", "rgb.safetensors", data, True, stats)[0] is None


def test_convert_writes_safetensors_and_yaml_that_reload_as_a_starting_point_and_for_eval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--set", f"model={OWN['model']}", "--set", f"dataset={OWN['dataset']}", "--set", "pretrained=none",
              "--set", "epochs=1", "--set", "train_steps=1", "--set", "val_steps=1", "--set", "device=cpu"]
    assert main(["train", "--out", "run", "--quiet", *common]) == 0
    assert main(["convert", "run/best.pt"]) == 0
    weights, config = tmp_path / "run" / "best.safetensors", tmp_path / "run" / "best.yaml"
    assert weights.exists() and config.exists()
    best = load_file(tmp_path / "run" / "best.pt")
    assert TrialConfig.from_yaml(config) == TrialConfig.from_dict(best["config"])
    # as a starting point: every tensor, the normalizer too
    model = build_model(OWN["model"], (1, 8, 8), 10, (0.0,), (1.0,))
    report = load_starting_point(model, weights)
    assert report.format == "safetensors" and report.normalizer and not report.missing
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in best["model"].items())
    # and for evaluation: the same numbers as the original checkpoint
    args = ["--attack", "pgd", "--steps", "2", "--restarts", "1", "--quiet"]
    assert main(["eval", "--checkpoint", str(weights), "--config", str(config), *args, "--json", "a.json"]) == 0
    assert main(["eval", "--checkpoint", "run/best.pt", *args, "--json", "b.json"]) == 0
    assert json.loads(Path("a.json").read_text())["results"] == json.loads(Path("b.json").read_text())["results"]


# ---------------------------------------------------------------- datasets by import path

def test_dataset_factory_val_is_carved_from_train_with_split_seed_and_test_is_the_factorys():
    a = load_splits(OWN["dataset"], None, 0.2, split_seed=0)
    b = load_splits(OWN["dataset"], None, 0.2, split_seed=0)
    c = load_splits(OWN["dataset"], None, 0.2, split_seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (1200, 300, 297)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.val.tensors[0], b.val.tensors[0]) and not torch.equal(a.val.tensors[0], c.val.tensors[0])
    _, test, _ = own_code.splits()
    assert torch.equal(a.test.tensors[0], test.tensors[0]), "the test split is the factory's, untouched"
    mean = a.train.tensors[0].mean().item()
    assert a.mean[0] == pytest.approx(mean, abs=1e-5), "statistics come from the train part only"


def test_a_lazy_dataset_gets_the_same_carve_through_subsets():
    eager = load_splits(OWN["dataset"], None, 0.2, split_seed=3)
    lazy = load_splits("tests.own_code:lazy_splits", None, 0.2, split_seed=3)
    assert isinstance(lazy.train, Subset) and isinstance(eager.train, TensorDataset)
    assert len(lazy.train) == len(eager.train) and len(lazy.val) == len(eager.val)
    for i in (0, 17, len(lazy.val) - 1):
        x, y = lazy.val[i]
        assert torch.equal(x, eager.val.tensors[0][i]) and y.dtype == torch.int64 and int(y) == int(eager.val.tensors[1][i])
    with pytest.raises(DataError, match="targets"):
        load_splits("tests.own_code:lazy_splits", None, 0.2, split_seed=3, train_size=100)


@pytest.mark.parametrize("factory,needles", [
    ("pixels_0_to_16", ["train[0]", "[0, 15]", "[0, 1]"]),
    ("too_few_classes", ["labels must be integers in [0, 5)"]),
    ("only_train", ["(train, test, num_classes)"]),
])
def test_a_bad_factory_is_refused_with_a_data_error(factory, needles):
    with pytest.raises(DataError) as err:
        load_splits(f"tests.own_code:{factory}", None, 0.2, split_seed=0)
    for needle in needles:
        assert needle in str(err.value)


# ---------------------------------------------------------------- AdamW

def test_adamw_decays_weights_decoupled_and_never_biases_or_norms():
    cfg = TrialConfig(optimizer="adamw", weight_decay=0.5, peak_lr=0.1, **OWN)
    model = build_model(cfg.model, (1, 8, 8), 10, (0.5,), (0.5,))
    opt = make_optimizer(param_groups(model, cfg), cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves weights
    opt.step()
    for n, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if p.ndim > 1 else 1.0
        assert torch.allclose(p, before[n] * factor), n


def test_adamw_trial_resumes_exactly(recorder, tiny_config):
    cfg = tiny_config.replace(optimizer="adamw", peak_lr=0.003, betas=[0.8, 0.99])
    full = recorder()
    finetune.run(cfg, full)
    part = recorder(stop_after=1)
    with pytest.raises(recorder.Interrupted):
        finetune.run(cfg, part)
    resumed = recorder()
    finetune.run(cfg, resumed, resume_from=part.checkpoints[0])
    assert len(resumed.metrics) == len(full.metrics) - 1
    for got, want in zip(resumed.metrics, full.metrics[1:]):
        assert got["robust_acc"] == want["robust_acc"] and got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
