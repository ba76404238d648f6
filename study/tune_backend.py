"""The one module that talks to ``ray.tune``: Tuner, OptunaSearch, ASHA, restore, callbacks.

Ray's API moves between releases (``session.report`` → ``train.report`` → ``tune.report``,
``air.RunConfig`` → ``tune.RunConfig``); everything that depends on it is here.

Two pitfalls of Tune + Optuna + ASHA are handled here, not inherited:

1. Tune tells the searcher that a trial stopped by ASHA is COMPLETE, with its early value: TPE
   then learns from truncated runs as if they had finished. :class:`PruningAwareOptunaSearch`
   tells Optuna such trials are PRUNED (their intermediate values are already recorded).
2. ASHA judges a slow start or an epsilon ramp before it has had its chance when its time is the raw
   epoch: :class:`ScheduleAwareASHA` runs Ray's ASHA on the study's pruning rule's time
   (``study.pruning``: by default each trial's epochs at full strength, after its own warmup and ramp).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.search.optuna import OptunaSearch

from .records import StudyRecords

__all__ = ["PruningAwareOptunaSearch", "ScheduleAwareASHA", "StudyCallback", "make_sampler", "make_scheduler",
           "make_tuner", "restore_tuner", "fit"]


class ScheduleAwareASHA(ASHAScheduler):
    """Ray Tune's ASHA, with the time of each result given by a pruning rule (``study.pruning``).

    Under ``full_strength`` a result at ``epoch`` counts as ``epoch − point·epochs``, where ``point`` is the
    trial's own full-strength point (its warmup / cyclic peak and epsilon ramp, from its config), so every
    trial meets each rung the same number of epochs after it first trained at full LR and full epsilon.
    Under ``epoch`` it is ASHA on epochs, as before. A rule with explicit cuts (``PruningRule.cuts``, the
    ``full_strength`` default) runs Ray's bracket on those rungs, each keeping its own share (:class:`_CutBracket`);
    otherwise the rungs are Ray's ``grace·rf^k``. Cutoffs and asynchronous promotion are Ray's.
    """

    TIME = "rung_time"

    def __init__(self, rule, base: dict[str, Any], metric: str = "robust_acc") -> None:
        super().__init__(time_attr=self.TIME, metric=metric, mode="max", max_t=rule.max_t,
                         grace_period=rule.grace, reduction_factor=rule.reduction_factor)
        self.rule, self._base, self._points = rule, dict(base), {}
        if rule.cuts:
            self._brackets = [_CutBracket(list(zip(rule.rungs(), rule.keeps())))]

    def _timed(self, trial, result: dict | None) -> dict | None:
        if not result or "epoch" not in result:
            return result
        from .pruning import full_strength_point

        point = self._points.get(trial.trial_id)
        if point is None:
            point = self._points[trial.trial_id] = full_strength_point({**self._base, **(trial.config or {})})
        return {**result, self.TIME: self.rule.time(result["epoch"], point)}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return super().on_trial_result(tune_controller, trial, self._timed(trial, result))

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, self._timed(trial, result))


class _CutBracket(_Bracket):
    """Ray's ASHA bracket on explicit rungs, each keeping its own share of the trials recorded there: a trial
    arriving at a rung continues if its figure is at least the (1 − keep) quantile of those recorded before it
    (Ray's asynchronous cutoff, with a share per rung instead of 1/rf at every rung)."""

    def __init__(self, cuts: list[tuple[float, float]]) -> None:
        self.rf = None  # no geometric factor: each rung has its share
        self._keep = [keep for _, keep in reversed(cuts)]
        self._rungs = [(time, {}) for time, _ in reversed(cuts)]  # Ray's order: the last rung first
        self._stop_last_trials = True

    def cutoff(self, recorded):
        if not recorded:
            return None
        keep = next(k for k, (_, rec) in zip(self._keep, self._rungs) if rec is recorded)
        return np.nanpercentile(list(recorded.values()), (1 - keep) * 100)


def make_scheduler(rule, base: dict[str, Any]) -> ScheduleAwareASHA:
    """The study's ASHA for pruning rule ``rule`` (a ``study.pruning.PruningRule``) over ``base`` (the
    study's fixed config as a dict: each trial's searched values are laid over it)."""
    return ScheduleAwareASHA(rule, base)


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records trials stopped early (by ASHA) as PRUNED, not COMPLETE.

    The trainable marks its own ends in ``status`` (completed, diverged, catastrophic_overfitting);
    a trial whose last result still says ``running`` was stopped from outside, i.e. pruned.
    Diverged trials are COMPLETE with robust accuracy 0: a bad result, not a crash.

    Multi-objective studies (``metric`` a list): Optuna keeps no intermediate values for them (its
    ``Trial.report`` refuses, and TPE ranks pruned trials without them), so a pruned trial is told
    PRUNED with no value. ``min_clean``: the constraint ``clean >= min_clean`` is set on every trial
    that reports (pruned ones too) before it is told. Every Optuna trial carries its Tune trial id as
    the user attribute ``advtune_trial_id``, so export and report map Optuna's results to trial folders.
    """

    def __init__(self, *args: Any, min_clean: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._min_clean = min_clean

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            from .objectives import TRIAL_ID_ATTR

            self._ot_trials[trial_id].set_user_attr(TRIAL_ID_ATTR, trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        live = trial_id in self._ot_trials and trial_id not in self._completed_trials
        if live and not error and result and self._min_clean is not None and "best_clean_acc" in result:
            from .objectives import CONSTRAINT_KEY

            self._ot_trials[trial_id].set_constraint(CONSTRAINT_KEY, self._min_clean - float(result["best_clean_acc"]))
        if live and not error and result and result.get("status") == "running":
            from optuna.trial import TrialState

            ot_trial = self._ot_trials[trial_id]
            if not isinstance(self.metric, list):  # multi-objective studies hold no intermediate values
                value, step = result.get(self.metric), result.get("training_iteration")
                if value is not None and step is not None:  # Tune skips on_trial_result for the stopping result
                    try:
                        ot_trial.report(value, step)
                    except Exception:  # noqa: BLE001 - already reported for this step
                        pass
            try:
                self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
            finally:
                self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


class StudyCallback(tune.Callback):
    """Driver-side: writes every trial's records and TensorBoard events (ASHA-stopped trials too)
    and keeps the live progress table."""

    def __init__(self, study_dir: str, total: int) -> None:
        self.records = StudyRecords(study_dir)
        self.total = total
        self._last: dict[str, dict] = {}
        self._table = None

    def __getstate__(self) -> dict:  # pickled into Tune's experiment state: no open streams
        return {**self.__dict__, "_table": None}

    @property
    def table(self):
        from .progress import LiveTable

        if self._table is None:
            self._table = LiveTable(self.total)
        return self._table

    def on_trial_start(self, iteration, trials, trial, **info):
        self.records.on_start(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._last[trial.trial_id] = result
        self.records.on_result(trial.trial_id, result)
        self.table.result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = self._last.get(trial.trial_id) or trial.last_result or {}
        status = last.get("status", "running")
        state = "pruned" if status == "running" else status
        self.records.on_end(trial.trial_id, state)
        reason = f"stopped by ASHA at epoch {last.get('epoch', 0):g}" if state == "pruned" else last.get("stop_reason", "")
        self.table.end(trial.trial_id, state, reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        message = ""
        if trial.error_file and os.path.exists(trial.error_file):
            lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
            message = lines[-1] if lines else ""
        self.records.on_end(trial.trial_id, "error", message)
        self.table.end(trial.trial_id, "error", message)

    def on_experiment_end(self, trials, **info):
        self.records.close()


def _trainable(spec, study_dir: Path):
    from advtune.trainables.tune_adapter import trial_fn

    # a study in cloud storage: trials get its URI (they hand checkpoints to Ray), never the driver's staging folder
    fn = tune.with_parameters(trial_fn, base=spec.base_config.to_dict(), study_dir=spec.storage.trial_dir(study_dir))
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    return tune.with_resources(fn, resources)


def make_sampler(kind: str, seed: int, n_startup: int):
    """The Optuna sampler of a study: ``tpe`` (default; single- and multi-objective, honours constraints)
    or ``random`` (the baseline the search benchmark compares against)."""
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # multivariate: one joint density over the space, not one per parameter (peak LR and warmup interact);
    # constant_liar: trials still running count as bad guesses, so trials started at once do not all
    # land on the same region (a study runs `concurrency` trials at once).
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True, constant_liar=True)


def make_tuner(spec, space, study_dir: Path) -> tune.Tuner:
    from advtune.search_spaces import define_by_run

    from .trackers import callbacks as tracker_callbacks  # --tracker: Ray Tune's MLflow / W&B logger callbacks

    objective = spec.parsed_objective
    # A warm-started study already holds earlier trials (study.warm_start seeded optuna.db): they replace the
    # space's starting points, which exist to give a cold sampler a sensible first look.
    points = [] if spec.warm_start else [dict(p) for p in space.starting_points]
    storage = spec.storage.optuna_storage(spec, study_dir)  # sqlite in the study, or (cloud) see study.cloud_study
    multi = objective.multi
    searcher = PruningAwareOptunaSearch(
        space=define_by_run(space, spec.base_config), metric=objective.metrics if multi else objective.metrics[0],
        mode=["max"] * len(objective.metrics) if multi else "max", points_to_evaluate=points or None,
        sampler=make_sampler(spec.sampler, spec.seed, max(3, len(points) + 1)),
        study_name=spec.name, storage=storage, min_clean=objective.min_clean)  # the seed is the sampler's
    scheduler = make_scheduler(spec.pruning_rule(), spec.base_config.to_dict())
    return tune.Tuner(
        _trainable(spec, study_dir),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.concurrency, reuse_actors=True),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=str(spec.storage_path), verbose=1 if spec.verbose else 0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_callback(spec, study_dir, searcher), *tracker_callbacks(spec)],
            progress_reporter=None if spec.verbose else _Silent()))


def restore_tuner(spec, study_dir: Path) -> tune.Tuner:
    tuner = tune.Tuner.restore(spec.storage.restore_path(study_dir), trainable=_trainable(spec, study_dir),
                               resume_unfinished=True, resume_errored=True)
    if not spec.storage.restaged_by_driver:
        return tuner
    # The callback unpickled from the bucket points at the staging folder of the machine that started the
    # study; this driver writes its records into its own.
    internal = tuner._local_tuner
    from .trackers import callbacks as tracker_callbacks

    internal._run_config.callbacks = [_callback(spec, study_dir, internal._tune_config.search_alg),
                                      *tracker_callbacks(spec)]  # --tracker: rebuilt with the rest
    return tuner


def _callback(spec, study_dir: Path, searcher) -> "StudyCallback":
    return spec.storage.callback(spec, study_dir, searcher)


def fit(tuner: tune.Tuner) -> Any:
    return tuner.fit()


class _Silent(tune.ProgressReporter):
    """Ray Tune's own progress table is replaced by advtune's lines."""

    def should_report(self, trials, done: bool = False) -> bool:
        return False

    def report(self, trials, done: bool, *sys_info) -> None:
        pass


def init_ray(address: str | None, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """Connect to ``address`` or start Ray on this machine (dashboard off). Returns True if we
    started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Tune's result table reader looks for Ray's own per-trial logs, which advtune replaces by its records.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if not verbose:  # Ray's per-checkpoint INFO lines; the live table says what matters
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        logging.getLogger("ray").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # num_to_keep=1 makes Tune snapshot its state after every trial checkpoint (what keeps a resumed study's view
    # of the checkpoints current); that is wanted, not a bottleneck to warn about
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from .progress import quiet_ray_startup

    quiet = quiet_ray_startup(verbose)
    if address:
        ray.init(address=address, log_to_driver=False, **quiet)
        return True
    # A study on this machine: no dashboard UI; what remains of Ray's dashboard process (its job API) is bound
    # to loopback. Ray's own gRPC ports are protected by its token authentication (on by default).
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, dashboard_host="127.0.0.1",
             log_to_driver=False, **quiet)
    return True


def run_task(fn, *args: Any, num_cpus: float, num_gpus: float) -> Any:
    """Run ``fn(*args)`` once on the cluster with these resources and return its result."""
    return ray.get(ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1)(fn).remote(*args))


def run_tasks(fn, arg_lists: list[tuple], num_cpus: float, num_gpus: float):
    """Submit ``fn(*args)`` for every ``args`` at once, each with these resources (they run side by
    side on the cluster's free slots); yield ``(index, result)`` as each finishes, where a failed task's
    result is its exception, so one failure loses none of the others."""
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1)(fn)
    index = {remote.remote(*args): i for i, args in enumerate(arg_lists)}
    pending = list(index)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            yield index[done[0]], ray.get(done[0])
        except ray.exceptions.RayError as exc:
            yield index[done[0]], exc


def cluster_nodes() -> list[dict[str, Any]]:
    """Alive nodes with their total resources."""
    return [{"id": n["NodeID"], "resources": n.get("Resources", {})} for n in ray.nodes() if n.get("Alive")]
