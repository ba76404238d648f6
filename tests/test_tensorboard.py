"""TensorBoard as a researcher opens it: one HParams experiment declaring every searched parameter and metric
(the strong figure, epochs_run, a conditional parameter like warmup), scalars without bookkeeping tags. Written
by the driver's StudyRecords (no Ray needed) and read back with TensorBoard's own EventAccumulator."""
from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from advtune.study.records import EXPERIMENT_RUN, MARKER, StudyRecords


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
            live = _session_and_scalars(tmp_path / "tensorboard" / "b")
            assert live[0].session_start_info.hparams["state"].string_value == "running"
            assert live[1]["best/robust_acc"] == [0.31, 0.32] and live[1]["epochs_run"] == [1.0, 2.0]
        rec.on_end(tid, "completed" if tid == "a" else "pruned")
    rec.close()
    ended = _session_and_scalars(tmp_path / "tensorboard" / "b")
    assert ended[0].session_start_info.hparams["state"].string_value == "pruned"  # a TensorBoard started now
    assert len([f for f in (tmp_path / "tensorboard" / "b").iterdir() if "session" in f.name]) == 1
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
