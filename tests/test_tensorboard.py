"""TensorBoard as a researcher opens it: one HParams experiment declaring every searched parameter and metric
(the strong figure, epochs_run, a conditional parameter like warmup), scalars without bookkeeping tags. Written
by the driver's StudyRecords (no Ray needed) and read back with TensorBoard's own EventAccumulator."""
from __future__ import annotations

import json

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from advtune.study.records import EXPERIMENT_RUN, MARKER, StudyRecords, run_name


def _epoch(e: int) -> dict:
    return {"epoch": e, "lr": 0.01, "train_loss": 1.0, "train_acc": 0.5, "clean_acc": 0.8, "robust_acc": 0.3 + e / 100,
            "best_robust_acc": 0.3 + e / 100, "best_clean_acc": 0.8, "best_epoch": e, "grad_passes": 100 * e,
            "epoch_seconds": 1.5, "status": "running", "torch_threads": 1, "time_total_s": 3.0 * e,
            "timestamp": 1_700_000_000 + e}




def _session_and_scalars(run):
    import pytest

    ea = EventAccumulator(str(run))
    ea.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    return start, {t: [pytest.approx(e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_one_experiment_declares_every_parameter_and_metric_and_scalars_skip_bookkeeping(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"advtune_study": 1, "spec": {},
                                               "space_params": ["peak_lr", "schedule", "warmup"]}))
    rec = StudyRecords(tmp_path)
    # the first trial to start did not draw warmup (conditional on its schedule)
    for tid, params in (("a", {"peak_lr": 0.02, "schedule": "cosine"}),
                        ("b", {"peak_lr": 0.05, "schedule": "sfd", "warmup": 0.1})):
        rec.on_start(tid, params)
        for e in (1, 2):
            rec.on_result(tid, _epoch(e))
        if tid == "b":  # while it runs, its HParams row is there, with its metrics so far
            live = _session_and_scalars(rec.tensorboard_run("b"))
            assert live[0].session_start_info.hparams["state"].string_value == "running"
            assert live[1]["best/robust_acc"] == [0.31, 0.32] and live[1]["epochs_run"] == [1.0, 2.0]
        rec.on_end(tid, "completed" if tid == "a" else "pruned")
    rec.close()
    ended = _session_and_scalars(rec.tensorboard_run("b"))
    assert ended[0].session_start_info.hparams["state"].string_value == "pruned"  # a TensorBoard started now
    assert len([f for f in rec.tensorboard_run("b").iterdir() if "session" in f.name]) == 1
    tb = tmp_path / "tensorboard"
    exp_runs = []
    for run in sorted(p for p in tb.iterdir() if p.is_dir()):
        ea = EventAccumulator(str(run))
        ea.Reload()
        content = ea.PluginTagToContent("hparams")
        if "_hparams_/experiment" in content:
            exp_runs.append(run.name)
            exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        if run.name != EXPERIMENT_RUN:
            scalars = ea.Tags()["scalars"]
            assert {"robust_acc", "clean_acc", "lr", "grad_passes", "best/robust_acc", "epochs_run"} <= set(scalars)
            for tag in ("timestamp", "time_total_s", "torch_threads", "best_robust_acc", "best_clean_acc", "best_epoch"):
                assert tag not in scalars, (run.name, tag)
            start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
            assert start.session_start_info.hparams["state"].string_value in ("completed", "pruned")
    assert exp_runs == [EXPERIMENT_RUN]  # one experiment, in a run of its own
    assert [h.name for h in exp.hparam_infos] == ["peak_lr", "schedule", "warmup", "state"]
    metrics = [m.name.tag for m in exp.metric_infos]
    for tag in ("best/robust_acc", "best/clean_acc", "epochs_run", "final/grad_passes", "final/strong_robust_acc",
                "final/strong_gap"):
        assert tag in metrics


def _steps(run, tag):
    ea = EventAccumulator(str(run))
    ea.Reload()
    return [(e.step, pytest.approx(e.value)) for e in ea.Scalars(tag)]


def test_every_step_is_in_milli_epochs_with_several_validations_per_epoch(tmp_path):
    """evals_per_epoch 2 reports epochs 0.5, 1.0, 1.5, 2.0 (whole ones as floats): one unit for all, not
    1.5 -> 1500 but 2.0 -> 2 (the x-axis jumped back); an integer epoch (evals_per_epoch 1) is on the same scale."""
    rec = StudyRecords(tmp_path)
    rec.on_start("a", {"peak_lr": 0.02})
    for e in (0.5, 1.0, 1.5, 2.0):
        rec.on_result("a", {**_epoch(1), "epoch": e, "robust_acc": e / 10})
    rec.on_start("b", {"peak_lr": 0.05})
    rec.on_result("b", {**_epoch(1), "epoch": 1})
    rec.on_end("a", "completed")
    rec.on_end("b", "completed")
    rec.on_strong_eval("a", 0.1, 0.05)
    rec.close()
    run_a, run_b = rec.tensorboard_run("a"), rec.tensorboard_run("b")
    assert [s for s, _ in _steps(run_a, "robust_acc")] == [500, 1000, 1500, 2000]
    assert _steps(run_a, "robust_acc")[1][1] == 0.1
    assert [s for s, _ in _steps(run_b, "robust_acc")] == [1000]
    # the HParams metrics at the end and the strong figure: at the last epoch, in the same unit
    assert [s for s, _ in _steps(run_a, "final/robust_acc")] == [2000]
    assert [s for s, _ in _steps(run_a, "final/strong_robust_acc")] == [2000]


def test_a_run_is_named_by_the_trial_id_and_its_searched_values_and_keeps_its_name(tmp_path):
    rec = StudyRecords(tmp_path)
    params = {"peak_lr": 0.0234567, "warmup": 0.1, "schedule": "sfd", "model": "tv:resnet18", "train_steps": 7}
    rec.on_start("ab12c_00003", params)
    rec.on_result("ab12c_00003", _epoch(1))
    runs = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    name = "ab12c_00003 peak_lr=0.0235 warmup=0.1 schedule=sfd model=tv_resnet18 train_steps=7"
    assert runs == [EXPERIMENT_RUN, name]  # the run name TensorBoard shows is the folder's
    # a new driver (advtune resume) finds the same run from params.json, whatever the trial's rank is by then
    again = StudyRecords(tmp_path)
    again.on_result("ab12c_00003", _epoch(2))
    again.on_end("ab12c_00003", "completed")
    again.close()
    rec.close()
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == [EXPERIMENT_RUN, name]
    assert [s for s, _ in _steps(tmp_path / "tensorboard" / name, "robust_acc")] == [1000, 2000]
    many = run_name("t_00001", {f"param_{i}": 0.5 for i in range(30)})
    assert len(many) <= 100 and many.startswith("t_00001 param_0=0.5") and many.endswith("=0.5")
    assert run_name("t", {"data_root": "/data/x y"}) == "t data_root=_data_x_y"  # one folder, no separators
    # a study written before runs carried values keeps writing into its tensorboard/<id>
    (tmp_path / "old" / "tensorboard" / "t_00002").mkdir(parents=True)
    assert StudyRecords(tmp_path / "old").tensorboard_run("t_00002", {"peak_lr": 0.1}).name == "t_00002"


def test_custom_scalars_layout_puts_robust_and_clean_accuracy_first(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata as cs_metadata

    rec = StudyRecords(tmp_path)
    rec.on_start("a", {"peak_lr": 0.02})
    rec.close()
    ea = EventAccumulator(str(tmp_path / "tensorboard" / EXPERIMENT_RUN))
    ea.Reload()
    raw = ea.PluginTagToContent(cs_metadata.PLUGIN_NAME)
    assert len(raw) == 1  # one layout, in the study's experiment run
    layout = layout_pb2.Layout()
    ea2 = EventAccumulator(str(tmp_path / "tensorboard" / EXPERIMENT_RUN), size_guidance={"tensors": 0})
    ea2.Reload()
    layout.ParseFromString(ea2.Tensors(cs_metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    first = layout.category[0]
    assert first.title.startswith("1. validation")
    assert [list(c.multiline.tag) for c in first.chart[:2]] == [["^robust_acc$"], ["^clean_acc$"]]
    import re

    tags = [t for cat in layout.category for c in cat.chart for t in c.multiline.tag]
    assert not [t for t in tags if re.search(t, "best/robust_acc") and t != "^best/robust_acc$"]  # anchored
    assert any(re.search(t, "lr") for t in tags) and any(re.search(t, "grad_passes") for t in tags)


def test_the_lr_trace_is_written_at_fine_steps_before_the_validation(tmp_path):
    """A warmup that peaks inside the first epoch: the trial's lr_trace ([epoch, lr] pairs) shows the peak at
    its milli-epoch step. It is the lr series: the per-validation lr (the last step's, a step that started
    before the validation) is not written at the validation's step, where the next trace point starts."""
    rec = StudyRecords(tmp_path)
    rec.on_start("a", {"warmup": 0.1})
    trace = [[i / 10, 0.1 * min(1.0, (i + 1) / 4) * (1 - i / 10)] for i in range(10)]  # peak at 0.3 epochs
    rec.on_result("a", {**_epoch(1), "lr": 0.005, "lr_trace": trace})
    rec.on_result("a", {**_epoch(2), "lr": 0.001, "lr_trace": [[1.0, 0.004], [1.5, 0.002]]})
    rec.close()
    lr = _steps(rec.tensorboard_run("a"), "lr")
    assert [s for s, _ in lr] == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1500]  # one point a step
    assert max(v.expected for _, v in lr) == lr[3][1].expected and lr[3][1] == 0.07
    assert lr[10][1] == 0.004
    assert "lr_trace" not in EventAccumulator(str(rec.tensorboard_run("a"))).Reload().Tags()["scalars"]
    assert rec.load_trial("a").metrics[0]["lr_trace"] == trace  # kept in metrics.jsonl for the report
