"""Tests for study.cli: `advtune train` writes a complete run, `advtune eval` measures it on the
test split, and user errors exit 2 with one message and no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from advtune.study.cli import main
from advtune.trainables.checkpoints import load_file
from advtune.trainables.config import TrialConfig

from conftest import DIGITS_N_TEST, TINY

SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
CONTRACT_KEYS = {"epoch", "lr", "train_loss", "train_acc", "clean_acc", "robust_acc", "best_robust_acc", "train_eps",
                 "grad_passes", "epoch_seconds"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One `advtune train` run of the tiny config, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--quiet", "--out", str(out), *SETS]) == 0
    return out


def assert_user_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("advtune ") and "error:" in err
    assert len(err.strip().splitlines()) == 1, err  # one message, not a dump
    for fragment in fragments:
        assert fragment in err, err
    return err


# ---------------------------------------------------------------- train

def test_train_writes_checkpoints_metrics_config_and_tensorboard(trained):
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml"):
        assert (trained / name).is_file(), name
    assert list((trained / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file"
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert all(CONTRACT_KEYS <= m.keys() for m in lines)
    assert lines[-1]["status"] == "completed"
    cfg = TrialConfig.from_yaml(trained / "config.yaml")
    assert cfg == TrialConfig(**TINY)
    assert TrialConfig.from_dict(load_file(trained / "best.pt")["config"]) == cfg
    assert load_file(trained / "last.pt")["progress"]["epoch"] == 2
    # no checkpoint folder is left behind in the run directory
    assert sorted(p.name for p in trained.iterdir() if p.is_dir()) == ["tb"]


def test_tensorboard_events_hold_the_metrics(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"robust_acc", "clean_acc", "lr", "train_loss", "grad_passes"} <= tags
    robust = acc.Scalars("robust_acc")
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in robust] == [1000, 2000]
    assert [e.value for e in robust] == pytest.approx([m["robust_acc"] for m in lines])


def test_train_refuses_to_overwrite_a_run(trained, capsys):
    before = (trained / "metrics.jsonl").read_text()
    code = main(["train", "--quiet", "--out", str(trained), *SETS])
    assert_user_error(capsys, code, "--resume")
    assert (trained / "metrics.jsonl").read_text() == before


def test_train_resume_after_interruption(tmp_path, monkeypatch, capsys):
    from advtune.trainables.reporting import LocalReporter

    out = tmp_path / "run"
    real_report = LocalReporter.report

    def report_then_interrupt(self, metrics, checkpoint_dir):
        real_report(self, metrics, checkpoint_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalReporter, "report", report_then_interrupt)
    assert main(["train", "--quiet", "--out", str(out), *SETS]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert load_file(out / "last.pt")["progress"]["epoch"] == 1
    monkeypatch.setattr(LocalReporter, "report", real_report)
    assert main(["train", "--quiet", "--resume", "--out", str(out), *SETS]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[-1]["status"] == "completed"


def test_train_resume_of_a_finished_run_is_complete(trained, tmp_path, capsys):
    trained = Path(shutil.copytree(trained, tmp_path / "copy"))  # the shared run stays untouched
    before = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    last_bytes, best_bytes = (trained / "last.pt").read_bytes(), (trained / "best.pt").read_bytes()
    assert main(["train", "--quiet", "--resume", "--out", str(trained), *SETS]) == 0
    assert "completed: best robust" in capsys.readouterr().out
    after = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert after[: len(before)] == before
    assert all(m == before[-1] for m in after[len(before):])  # at most the final report, repeated
    # nothing was retrained: the checkpoints are byte for byte the same
    assert (trained / "last.pt").read_bytes() == last_bytes and (trained / "best.pt").read_bytes() == best_bytes


# ---------------------------------------------------------------- eval

def test_eval_reports_clean_and_robust_on_the_test_split(trained, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", "--quiet", "--no-sanity", "--checkpoint", str(trained / "best.pt"), "--attack", "pgd", "--steps", "5",
                 "--restarts", "2", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["split"] == "test" and result["norm"] == "linf"
    assert result["eps"] == pytest.approx(TrialConfig(**TINY).eval_eps)
    (pgd,) = result["results"]
    assert pgd["attack"] == "pgd-5-2" and pgd["n"] == DIGITS_N_TEST
    assert 0.0 <= pgd["robust_acc"] <= pgd["clean_acc"] <= 1.0
    assert pgd["clean_acc"] > 0.5  # the tiny run did learn something
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and "pgd-5-2" in printed


def test_eval_on_val_reproduces_training_validation(trained, tmp_path):
    """`advtune eval --split val` with the validation attack (PGD-3, 1 restart) gives exactly the
    accuracies the trial reported for its best epoch; more restarts can only lower robust accuracy."""
    def evaluate(restarts: int, name: str) -> dict:
        out = tmp_path / name
        assert main(["eval", "--quiet", "--no-sanity", "--checkpoint", str(trained / "best.pt"), "--attack", "pgd", "--steps",
                     str(TINY["val_steps"]), "--restarts", str(restarts), "--split", "val", "--json", str(out)]) == 0
        return json.loads(out.read_text())["results"][0]

    once = evaluate(1, "a.json")
    best = load_file(trained / "best.pt")["metrics"]
    assert once["clean_acc"] == best["clean_acc"] and once["robust_acc"] == best["robust_acc"]
    assert evaluate(1, "b.json") == once  # deterministic
    more = evaluate(3, "c.json")  # val (288 images) is one eval batch: restart 1 is the same draw
    assert more["clean_acc"] == once["clean_acc"] and more["robust_acc"] <= once["robust_acc"]


def test_eval_of_a_plain_state_dict_with_config(trained, tmp_path):
    state = load_file(trained / "best.pt")["model"]
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    cfg_file = tmp_path / "data.yaml"
    TrialConfig(**TINY).to_yaml(cfg_file)
    out = tmp_path / "eval.json"
    assert main(["eval", "--quiet", "--no-sanity", "--checkpoint", str(plain), "--config", str(cfg_file), "--attack", "pgd",
                 "--steps", "2", "--restarts", "1", "--json", str(out)]) == 0
    ref = tmp_path / "ref.json"
    assert main(["eval", "--quiet", "--no-sanity", "--checkpoint", str(trained / "best.pt"), "--attack", "pgd", "--steps", "2",
                 "--restarts", "1", "--json", str(ref)]) == 0
    assert json.loads(out.read_text())["results"] == json.loads(ref.read_text())["results"]


def test_eval_limit_applies_to_every_figure_and_each_names_its_images(trained, tmp_path, capsys):
    """--limit N: every attack on the same first N images; each figure says how many, and each robust
    figure stands beside the clean accuracy of those images (issue 11, defect 4)."""
    from advtune.trainables.data import load_splits
    from advtune.trainables.setup import model_from_checkpoint

    out = tmp_path / "eval.json"
    assert main(["eval", "--quiet", "--no-sanity", "--checkpoint", str(trained / "best.pt"), "--attack", "pgd",
                 "--steps", "2", "--restarts", "1", "--limit", "40", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    (pgd,) = result["results"]
    assert pgd["n"] == 40 and result["images"] == 40
    prep, _ = model_from_checkpoint(str(trained / "best.pt"), TrialConfig(**TINY))
    x, y = load_splits("digits", None, 0.2, 0).test.tensors
    with torch.no_grad():
        clean40 = (prep.model.eval()(x[:40]).argmax(1) == y[:40]).float().mean().item()
    assert pgd["clean_acc"] == pytest.approx(clean40)
    assert "(40 images)" in printed and f"(clean {100 * clean40:.2f}% on the same 40 images)" in printed


def test_eval_prints_a_sanity_verdict_per_check_and_strict_fails_on_one(trained, tmp_path, capsys):
    """One step of PGD is not a converged attack: twice the steps and restarts move its figure,
    so the convergence check fails, and --strict turns that into exit status 1."""
    argv = ["eval", "--quiet", "--checkpoint", str(trained / "best.pt"), "--attack", "pgd", "--steps", "1",
            "--restarts", "1", "--limit", "40"]
    out = tmp_path / "eval.json"
    assert main([*argv, "--json", str(out)]) == 0  # without --strict a failed check is reported, not fatal
    printed = capsys.readouterr().out
    verdicts = [ln.split()[:2] for ln in printed.splitlines() if ln.strip().startswith(("PASS", "FAIL"))]
    assert [name for _, name in verdicts] == ["monotone", "chance", "converged"]
    assert ["FAIL", "converged"] in verdicts and printed.count("(PGD-") == 2 and "40 images" in printed
    sanity = {c["name"]: c for c in json.loads(out.read_text())["sanity"]}
    assert not sanity["converged"]["passed"] and sanity["converged"]["images"] == 40
    assert main([*argv, "--strict"]) == 1
    assert "sanity check(s) failed: " in capsys.readouterr().err


# ---------------------------------------------------------------- user errors

def test_unknown_set_key(tmp_path, capsys):
    code = main(["train", "--quiet", "--out", str(tmp_path / "r"), "--set", "peak_rl=0.1"])
    assert_user_error(capsys, code, "peak_rl", "did you mean 'peak_lr'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["abc", "1.5", "8/0"])
def test_bad_eps_in_set(tmp_path, capsys, value):
    code = main(["train", "--quiet", "--out", str(tmp_path / "r"), "--set", f"eval_eps={value}"])
    assert_user_error(capsys, code, "eval_eps")


def test_bad_eps_in_eval(trained, capsys):
    code = main(["eval", "--quiet", "--checkpoint", str(trained / "best.pt"), "--eps", "eight"])
    assert_user_error(capsys, code, "--eps", "eight")


def test_bad_config_file(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("attack: pgdd\n")
    code = main(["train", "--quiet", "--config", str(cfg_file), "--out", str(tmp_path / "r")])
    assert_user_error(capsys, code, "attack", "pgd", str(cfg_file))


def test_missing_checkpoint(tmp_path, capsys):
    code = main(["eval", "--checkpoint", str(tmp_path / "nope.pt")])
    assert_user_error(capsys, code, "nope.pt", "does not exist")


def test_eval_of_foreign_checkpoint_needs_config(trained, tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save(load_file(trained / "best.pt")["model"], plain)
    code = main(["eval", "--checkpoint", str(plain)])
    assert_user_error(capsys, code, "plain.pt", "--config")


def test_eval_of_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    code = main(["eval", "--checkpoint", str(bad)])
    err = assert_user_error(capsys, code, "bad.pt", "corrupt")
    assert "--trust-checkpoint" not in err


# ---------------------------------------------------------------- help

@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["pretrain", "--help"], ["eval", "--help"],
                                  ["convert", "--help"], ["--help-config"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out or "eval_eps" in out
    if argv == ["--help-config"]:
        assert "peak_lr" in out and "8/255" in out
        for key, unit in (("optimizer", "adamw"), ("betas", "[0,1)"), ("head_module", "nn.Linear"),
                          ("model", "package.module:function"), ("dataset", "package.module:function")):
            line = next(ln for ln in out.splitlines() if ln.split()[:1] == [key])
            assert unit in line, line


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().out
