"""What a study keeps about its trials, in files of its own (no Ray needed to read them).

Layout of a study directory::

    advtune_study.json        marker + the study's spec (written by advtune; `resume` checks it)
    optuna.db                 the Optuna study (SQLite; optuna-dashboard can open it)
    pretrained/best.pt        the starting point every trial loads (when pretrained=auto)
    trials/<id>/params.json   the trial's searched values
    trials/<id>/metrics.jsonl one line per validation (epoch continuous: a re-run replaces)
    trials/<id>/state.json    final state: completed | pruned | diverged | catastrophic_overfitting | error
    trials/<id>/history.jsonl the metrics of every checkpointed epoch, written by the trial itself before
                              its checkpoint (what a killed driver had not recorded comes back from it)
    trials/<id>/best.pt, last.pt
    tensorboard/<id> k=v ../  scalars of the metrics + the trial's HParams session (its own event file); the run
                              is named by the trial id and its searched values (:func:`run_name`)
    tensorboard/_hparams/     the study's HParams experiment (the columns: searched values, state, metrics) and
                              the Custom Scalars layout (robust and clean accuracy first)
    export/                   `advtune export` output
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "StudyRecords", "TrialRecord", "read_marker", "FINAL_STATES", "read_jsonl", "run_name",
           "tb_step", "LAYOUT"]

MARKER = "advtune_study.json"
FINAL_STATES = ("completed", "pruned", "diverged", "catastrophic_overfitting", "error")
_TB_METRICS = ("best/robust_acc", "best/clean_acc", "final/robust_acc", "final/clean_acc", "final/grad_passes",
               "epochs_run")  # the HParams metrics (columns) of every trial's row
# Written later, by the study's final strong evaluation (study/final_eval.py), for the trials it evaluates.
# Declared in every trial's HParams session from the start: TensorBoard takes the metric columns from one
# trial's session and keeps the first HParams summary of a run, so they cannot be added afterwards.
STRONG_METRICS = ("final/strong_robust_acc", "final/strong_gap")
# The study's one HParams experiment (which columns the HParams tab offers) lives in a run of its own:
# TensorBoard takes the experiment from whichever run it finds first, so one per trial made the columns depend
# on that trial (a conditional parameter it did not draw, e.g. warmup, was missing for all).
EXPERIMENT_RUN = "_hparams"
# Per-epoch values that are bookkeeping (wall clock, threads) or repeat the HParams metrics best/*: kept in
# metrics.jsonl, not drawn as scalars.
_NOT_SCALARS = ("timestamp", "time_total_s", "torch_threads", "best_epoch", "lr_trace")
_RENAMED = {"best_robust_acc": "best/robust_acc", "best_clean_acc": "best/clean_acc"}  # the HParams metrics' names
# A trial's HParams session lives in an event file of its own: "<...>.running-session" while it runs, then this
# name, which sorts before every event file TensorBoard or torch writes ("events.out.tfevents.<10-digit time>...")
_RUNNING_SUFFIX = ".running-session"
_FINAL_SESSION = "events.out.tfevents.0000000000.advtune-session"
# TensorBoard's Scalars tab sorts a run's tags alphabetically (clean_acc, epochs_run, grad_passes, ..., robust_acc):
# the tag names stay as they are (renaming them would break comparisons with earlier studies and every reader of
# them), and the Custom Scalars tab gets this layout instead: validation accuracy first. Tags are regular
# expressions there, hence the anchors (``robust_acc`` alone would also match best/robust_acc).
LAYOUT = {
    "1. validation (what ASHA and the search select on)": {
        "robust_acc": ["Multiline", ["^robust_acc$"]], "clean_acc": ["Multiline", ["^clean_acc$"]],
        "best/robust_acc": ["Multiline", ["^best/robust_acc$"]], "best/clean_acc": ["Multiline", ["^best/clean_acc$"]]},
    "2. training": {
        "lr (per ~1/50 epoch)": ["Multiline", ["^lr$"]], "train_eps": ["Multiline", ["^train_eps$"]],
        "train_loss": ["Multiline", ["^train_loss$"]], "train_acc": ["Multiline", ["^train_acc$"]],
        "overfitting guard: FGSM vs PGD-10 on a training batch": ["Multiline", ["^co_fgsm_acc$", "^co_pgd_acc$"]]},
    "3. cost": {
        "grad_passes": ["Multiline", ["^grad_passes$", "^guard_passes$"]],
        "epoch_seconds": ["Multiline", ["^epoch_seconds$"]]},
}
_RUN_NAME_CHARS = 100  # at most, trial id included: a folder name (255 bytes) and a readable legend entry


def tb_step(epoch: float) -> int:
    """A TensorBoard step (an integer) for an epoch (possibly fractional with ``evals_per_epoch`` > 1):
    milli-epochs, always, as ``advtune train`` writes them (trainables/reporting.py), so 1.5 and 2.0 are
    1500 and 2000 on one axis."""
    return int(round(float(epoch) * 1000))


def run_name(trial_id: str, params: dict[str, Any]) -> str:
    """The trial's TensorBoard run: its id and its searched values in the space's order, floats to 3 significant
    digits (``ab12c_00003 peak_lr=0.02 warmup=0.1``), cut at a whole value past :data:`_RUN_NAME_CHARS`.
    Fixed when the trial starts, unlike its rank, which changes while a study runs (renaming the folder would
    split its curves in a TensorBoard left open)."""
    name = trial_id
    for k, v in params.items():
        value = f"{v:.3g}" if isinstance(v, float) else str(v)
        part = re.sub(r"[^\w.=+,-]", "_", f"{k}={value}")  # one path component, portable
        if len(name) + 1 + len(part) > _RUN_NAME_CHARS:
            break
        name += " " + part
    return name


def _hp(params: dict[str, Any], state: str) -> dict[str, Any]:
    hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
    hp["state"] = state
    return hp


def read_marker(study_dir: str | Path) -> dict[str, Any]:
    from .errors import StudyError

    path = Path(study_dir) / MARKER
    if not path.exists():
        raise StudyError(f"{study_dir} is not an advtune study directory (no {MARKER}); pass the folder that "
                         "`advtune run` printed as the study directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StudyError(f"{path} is damaged ({exc}); the study cannot be read") from None


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    state: str = "running"
    error: str = ""
    directory: Path | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        """The validation with the best robust accuracy (the epoch best.pt holds)."""
        good = [m for m in self.metrics if isinstance(m.get("robust_acc"), (int, float))
                and not math.isnan(m["robust_acc"]) and m.get("status") != "diverged"]
        return max(good, key=lambda m: (m["robust_acc"], -m["epoch"])) if good else None

    @property
    def epochs_run(self) -> float:
        return self.metrics[-1]["epoch"] if self.metrics else 0

    @property
    def grad_passes(self) -> int:
        return int(self.metrics[-1]["grad_passes"]) if self.metrics else 0

    @property
    def stop_reason(self) -> str:
        if self.state == "error":
            return self.error
        if self.state == "pruned":
            return f"stopped by ASHA at epoch {self.epochs_run:g}"
        return self.metrics[-1].get("stop_reason", "") if self.metrics else ""


class StudyRecords:
    """Writes and reads the per-trial files. The driver's Tune callback calls the ``on_*`` methods."""

    def __init__(self, study_dir: str | Path, tensorboard: bool = True) -> None:
        self.study_dir = Path(study_dir)
        self.tensorboard = tensorboard
        self._writers: dict[str, Any] = {}
        self._runs: dict[str, Path] = {}

    def __getstate__(self) -> dict:  # picklable with Tune's experiment state: no open writers
        return {"study_dir": self.study_dir, "tensorboard": self.tensorboard, "_writers": {}, "_runs": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_runs": {}, **state})

    def tensorboard_run(self, trial_id: str, params: dict[str, Any] | None = None) -> Path:
        """The trial's TensorBoard run folder, ``tensorboard/<run_name>`` (its searched values from
        ``params.json`` unless given); ``tensorboard/<id>`` for a study written before runs were named so."""
        if trial_id not in self._runs:
            root = self.study_dir / "tensorboard"
            if (root / trial_id).is_dir():
                self._runs[trial_id] = root / trial_id
            else:
                if params is None:
                    path = self.study_dir / "trials" / trial_id / "params.json"
                    params = json.loads(path.read_text()) if path.exists() else {}
                self._runs[trial_id] = root / run_name(trial_id, params)
        return self._runs[trial_id]

    def trial_dir(self, trial_id: str) -> Path:
        d = self.study_dir / "trials" / trial_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --- writing ---------------------------------------------------------------------------------------
    def on_start(self, trial_id: str, params: dict[str, Any]) -> None:
        _write_json(self.trial_dir(trial_id) / "params.json", params)
        if self.tensorboard:  # the HParams row appears now, with state "running", and fills in epoch by epoch
            hp = _hp(params, "running")
            self.tensorboard_run(trial_id, params)
            self._experiment(hp, [*_TB_METRICS, *STRONG_METRICS])
            self._session(trial_id, hp, final=False)

    def on_result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        keep = {k: v for k, v in metrics.items() if k in _METRIC_KEYS}
        path = self.trial_dir(trial_id) / "metrics.jsonl"
        old = read_jsonl(path)
        kept = [m for m in old if m["epoch"] < keep["epoch"]]
        if len(kept) == len(old):
            with open(path, "a") as f:
                f.write(json.dumps(keep) + "\n")
        else:  # the trial re-reports an epoch (resumed after it ended): the new line replaces the old ones
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(m) + "\n" for m in kept + [keep]))
            os.replace(tmp, path)
        if len(kept) == len(old):
            self._scalars(trial_id, keep)

    def complete(self, trial_id: str, history: list[dict[str, Any]]) -> int:
        """Record the epochs of ``history`` (the metrics a trial keeps with its checkpoints) that come after
        the trial's last recorded one: a driver killed between a trial's checkpoint and its result being
        recorded would otherwise lose that epoch, since the trial resumes after it. Returns how many."""
        last, added = self.load_trial(trial_id).epochs_run, 0
        for m in history:
            if m["epoch"] > last:
                self.on_result(trial_id, m)
                last, added = m["epoch"], added + 1
        return added

    def drop_never_started(self, stored=lambda trial_id: False) -> list[str]:
        """Before a resume: remove the folders of trials that never reported an epoch (nothing in them but
        ``params.json``, which the driver writes when Tune starts a trial, and ``load_report.json``, which the
        trial writes when it loads its starting point). A driver killed then can leave a trial Tune's saved
        state does not know, which the resumed search replaces by a new trial, and the orphan folder would
        count as a trial of its own. (A trial stores no checkpoint before that state names it:
        ``trainables.tune_adapter.wait_until_saved``.) A trial Tune does know and restarts writes both files
        again. Its TensorBoard run (a "running" HParams row) goes with it. ``stored(trial_id)``: whether the
        trial has a checkpoint kept elsewhere (a cloud study's records lag its checkpoints in the bucket): such
        a trial stays. Returns the paths removed, relative to the study directory."""
        import shutil

        root, start_files = self.study_dir / "trials", {"params.json", "load_report.json"}
        gone = [d for d in root.iterdir() if d.is_dir() and (d / "params.json").exists()
                and {p.name for p in d.iterdir()} <= start_files and not stored(d.name)] if root.exists() else []
        removed = []
        for d in gone:
            run = self.tensorboard_run(d.name)
            for path in (run, d):
                if path.exists():
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.relative_to(self.study_dir).as_posix())
        return removed

    def complete_from_histories(self) -> int:
        """:meth:`complete` every unfinished trial from its ``history.jsonl`` (a study on a shared path)."""
        added = sum(self.complete(rec.trial_id, read_jsonl(rec.directory / "history.jsonl"))
                    for rec in self.load() if rec.state not in FINAL_STATES and rec.directory is not None)
        self.close()
        return added

    def on_end(self, trial_id: str, state: str, error: str = "") -> None:
        _write_json(self.trial_dir(trial_id) / "state.json", {"state": state, "error": error})
        if self.tensorboard:
            self._hparams(self.load_trial(trial_id))
            writer = self._writers.pop(trial_id, None)
            if writer is not None:
                writer.close()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    def _writer(self, trial_id: str):
        if trial_id not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[trial_id] = SummaryWriter(str(self.tensorboard_run(trial_id)))
        return self._writers[trial_id]

    def _scalars(self, trial_id: str, metrics: dict[str, Any]) -> None:
        if not self.tensorboard:
            return
        w = self._writer(trial_id)
        step = tb_step(metrics["epoch"])
        # the LR the trial set between validations (~50 points an epoch, [epoch where the step starts, lr]): a
        # warmup that peaks inside an epoch shows. It replaces the validation's own lr (its last step's, which
        # started before the validation's step: written there too, it drew a zigzag against the next trace point)
        trace = metrics.get("lr_trace") or ()
        for ep, lr in trace:
            if tb_step(ep) < step and math.isfinite(lr):
                w.add_scalar("lr", lr, tb_step(ep))
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch" and k not in _NOT_SCALARS \
                    and math.isfinite(v) and not (k == "lr" and trace):
                w.add_scalar(_RENAMED.get(k, k), v, step)
        w.add_scalar("epochs_run", float(metrics["epoch"]), step)  # the HParams row's column, while it runs
        w.flush()

    def _hparams(self, rec: TrialRecord) -> None:
        best, last = rec.best or {}, (rec.metrics[-1] if rec.metrics else {})
        values = {"best/robust_acc": best.get("robust_acc", 0.0), "best/clean_acc": best.get("clean_acc", 0.0),
                  "final/robust_acc": last.get("robust_acc", 0.0), "final/clean_acc": last.get("clean_acc", 0.0),
                  "final/grad_passes": float(rec.grad_passes), "epochs_run": float(rec.epochs_run)}
        hp = _hp(rec.params, rec.state)
        self._experiment(hp, [*values, *STRONG_METRICS])
        self._session(rec.trial_id, hp, final=True)
        w = self._writer(rec.trial_id)
        step = tb_step(rec.epochs_run)
        for k, v in values.items():
            w.add_scalar(k, v if math.isfinite(v) else 0.0, step)
        w.flush()

    def _session(self, trial_id: str, hp: dict[str, Any], final: bool) -> None:
        """The trial's HParams session (its row): written at its start with state "running", replaced at its
        end. TensorBoard keeps the first session summary of a run, reading its event files in name order: the
        final one is renamed to sort first (:data:`_FINAL_SESSION`) and the running one removed, so a
        TensorBoard (re)started after the trial ended shows its final state (one left open keeps "running"
        until it restarts)."""
        from torch.utils.tensorboard.summary import hparams
        from torch.utils.tensorboard.writer import FileWriter

        run = self.tensorboard_run(trial_id)
        if (run / _FINAL_SESSION).exists() or (not final and list(run.glob("*" + _RUNNING_SUFFIX))):
            return  # a resumed driver restarting the trial: its row is already there
        suffix = ".final-session" if final else _RUNNING_SUFFIX
        writer = FileWriter(str(run), filename_suffix=suffix)
        _, start, end = hparams(hp, dict.fromkeys([*_TB_METRICS, *STRONG_METRICS], 0.0))  # metric names only
        writer.add_summary(start)
        if final:
            writer.add_summary(end)
        writer.close()
        if final:
            os.replace(next(run.glob("*" + suffix)), run / _FINAL_SESSION)
            for old in run.glob("*" + _RUNNING_SUFFIX):
                old.unlink()

    def _experiment(self, hp: dict[str, Any], metrics: list[str]) -> None:
        """Declare, once per study, every searched parameter (the study marker's ``space_params``, so a
        conditional one like ``warmup`` is a column even when the first trial to end did not draw it), the
        trial state and every metric, the strong figure included, in the run :data:`EXPERIMENT_RUN`."""
        run = self.study_dir / "tensorboard" / EXPERIMENT_RUN
        if run.exists():
            return
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from torch.utils.tensorboard import SummaryWriter

        try:
            names = list(read_marker(self.study_dir).get("space_params") or [])
        except Exception:  # noqa: BLE001 - no marker (a bare records folder): the trial's own names
            names = []
        names += [k for k in hp if k not in names]
        kind = {str: api_pb2.DATA_TYPE_STRING, bool: api_pb2.DATA_TYPE_BOOL}
        infos = [api_pb2.HParamInfo(name=n, type=kind.get(type(hp[n]), api_pb2.DATA_TYPE_FLOAT64) if n in hp
                                    else api_pb2.DATA_TYPE_UNSET) for n in names]
        metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m), display_name=m) for m in metrics]
        content = plugin_data_pb2.HParamsPluginData(
            experiment=api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos), version=0)
        smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                     content=content.SerializeToString()))
        with SummaryWriter(str(run)) as w:  # as torch's hparams() writes it, without TensorFlow
            w.file_writer.add_summary(Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=smd)]))
            w.add_custom_scalars(LAYOUT)  # the Custom Scalars tab: one layout for every run of the study

    def on_strong_eval(self, trial_id: str, robust_acc: float, gap: float) -> None:
        """The trial's strong robust accuracy and its gap to the selection figure (fractions), as the
        HParams metrics its session declared; at the step of its last epoch."""
        if not self.tensorboard:
            return
        w = self._writer(trial_id)
        step = tb_step(self.load_trial(trial_id).epochs_run)
        for name, value in zip(STRONG_METRICS, (robust_acc, gap)):
            w.add_scalar(name, value, step)
        w.flush()

    # --- reading ---------------------------------------------------------------------------------------
    def load_trial(self, trial_id: str) -> TrialRecord:
        d = self.study_dir / "trials" / trial_id
        params = json.loads((d / "params.json").read_text()) if (d / "params.json").exists() else {}
        state = json.loads((d / "state.json").read_text()) if (d / "state.json").exists() else {}
        return TrialRecord(trial_id, params, read_jsonl(d / "metrics.jsonl"), state.get("state", "running"),
                           state.get("error", ""), d)

    def load(self) -> list[TrialRecord]:
        root = self.study_dir / "trials"
        if not root.exists():
            return []
        return [self.load_trial(d.name) for d in sorted(root.iterdir()) if d.is_dir()]


def preload_tensorboard() -> None:
    """Import TensorBoard's writer (it pulls in torch: ~2 s) on a background thread while Ray starts.
    The driver's first ``on_trial_result`` needs it, and a function trainable waits while the driver
    handles its result: imported there, it would stall the first trial for those seconds."""
    import threading

    def _import() -> None:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except Exception:  # the writer's own import reports it where it is needed
            pass

    threading.Thread(target=_import, name="advtune-preload", daemon=True).start()


_METRIC_KEYS = ("epoch", "lr", "train_loss", "train_acc", "clean_acc", "robust_acc", "best_robust_acc",
                "best_clean_acc", "best_epoch", "train_eps", "grad_passes", "guard_passes", "epoch_seconds", "status", "stop_reason",
                "co_fgsm_acc", "co_pgd_acc", "node_id", "torch_threads", "time_total_s", "timestamp", "lr_trace")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a trial's or ``advtune train``'s); [] when there is none."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a crash mid-write: the epoch is re-reported on resume
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
