"""Experiment trackers a lab already runs (MLflow, Weights & Biases), fed by Ray Tune's own logger callbacks.

``advtune run --tracker mlflow[:URI]`` and ``--tracker wandb[:PROJECT]`` add
``ray.air.integrations.mlflow.MLflowLoggerCallback`` / ``ray.air.integrations.wandb.WandbLoggerCallback``
to the study's Tuner: one tracker run per trial, with the trial's searched values as parameters and every
reported metric per epoch (step = Tune's training iteration, i.e. the validation count; ``epoch`` is
logged beside it). advtune writes no tracker client of its own; the one thing Tune's callbacks cannot
log — the final strong evaluation, which runs after the search — goes to each trial's MLflow run through
MLflow's own ``MlflowClient``, found by the tag ``advtune_trial_id`` this module adds. W&B runs are
closed by Tune when their trial ends (and an offline run cannot be reopened), so W&B gets the strong figures
in one more run of the study's group, ``<study>-final-evaluation`` (job type ``final_evaluation``): a table
``final_evaluation`` with one row per evaluated trial, and each figure in the run's summary as
``<trial id>/strong_robust_acc`` etc.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import StudyError

__all__ = ["KINDS", "TRIAL_TAG", "parse_trackers", "callbacks", "log_final", "mlflow_uri"]

KINDS = ("mlflow", "wandb")
TRIAL_TAG = "advtune_trial_id"  # the Tune trial id: the trial's folder under STUDY/trials/
_EXTRA = {"mlflow": "mlflow", "wandb": "wandb"}  # the module each needs, installed by the extra of the same name


def parse_trackers(texts: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Check ``--tracker`` values (``mlflow``, ``mlflow:URI``, ``wandb``, ``wandb:PROJECT``) before anything
    starts: a kind advtune does not know, or one whose extra is not installed, is refused naming the fix."""
    out = []
    for text in texts or ():
        kind, _, arg = str(text).partition(":")
        if kind not in KINDS:
            raise StudyError(f"--tracker {text}: unknown tracker {kind!r}; write mlflow, mlflow:URI (e.g. "
                             "mlflow:file:///path/mlruns or mlflow:http://host:5000), wandb or wandb:PROJECT")
        if kind == "wandb" and arg and "/" in arg:
            raise StudyError(f"--tracker {text}: a W&B project name has no '/'; write wandb:PROJECT")
        try:
            __import__(_EXTRA[kind])
        except ImportError:
            raise StudyError(f"--tracker {kind} needs the {kind} package, which is not installed: "
                             f"pip install 'advtune[{kind}]'") from None
        out.append(str(text))
    return tuple(out)


def mlflow_uri(text: str) -> str | None:
    """The tracking URI of ``mlflow[:URI]``: the URI given; a bare path made absolute, so the driver and a
    later reader agree (``PATH.db``: an SQLite store, ``sqlite:///PATH.db``; a folder: MLflow's file store,
    which MLflow 3 keeps in maintenance mode and opens only with ``MLFLOW_ALLOW_FILE_STORE=true``); with
    none, MLflow's own default (``MLFLOW_TRACKING_URI``, else its default store in the working folder)."""
    _, _, uri = text.partition(":")
    if not uri:
        return None
    if "://" in uri:
        return uri
    path = Path(uri).expanduser().resolve()
    return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()


def callbacks(spec) -> list[Any]:
    """The logger callbacks of ``spec.trackers`` for the study's Tuner (``study.tune_backend.make_tuner``)."""
    out = []
    for text in getattr(spec, "trackers", ()) or ():
        kind, _, arg = text.partition(":")
        if kind == "mlflow":
            out.append(_mlflow_callback(mlflow_uri(text), spec.name))
        elif kind == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            # one W&B run per trial, its id the Tune trial id; the study is the group
            out.append(WandbLoggerCallback(project=arg or "advtune", group=spec.name, excludes=["node_id"]))
    return out


def _mlflow_callback(uri: str | None, experiment: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class _TaggedMLflowLoggerCallback(MLflowLoggerCallback):
        """Tune's callback, with the trial id as a tag of its run (Tune tags only the trial's display name)."""

        def log_trial_start(self, trial):
            self.tags = {**(self.tags or {}), TRIAL_TAG: trial.trial_id}
            super().log_trial_start(trial)

    return _TaggedMLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, tags={"advtune_study": experiment})


STRONG_KEYS = ("robust_acc", "clean_acc", "gap")  # logged as strong_<key>, fractions


def log_final(spec, study_dir: Path) -> int:
    """Log the final strong evaluation (``STUDY/final_eval.json``) to the trackers: to each evaluated trial's
    MLflow run ``strong_robust_acc``, ``strong_clean_acc``, ``strong_gap`` (fractions) and the attack as a tag;
    to W&B one run of the study's group holding them all (see the module docstring). Returns how many tracker
    runs got them; 0 without a tracker or a final evaluation."""
    trackers = [t for t in getattr(spec, "trackers", ()) or ()]
    if not trackers:
        return 0
    from .final_eval import load_final

    final = load_final(study_dir).get("trials") or {}
    if not final:
        return 0
    logged = sum(_wandb_final(spec, text, final) for text in trackers if text.partition(":")[0] == "wandb")
    targets = [t for t in trackers if t.partition(":")[0] == "mlflow"]
    if not targets:
        return logged
    from mlflow.tracking import MlflowClient

    for text in targets:
        client = MlflowClient(tracking_uri=mlflow_uri(text))
        experiment = client.get_experiment_by_name(spec.name)
        if experiment is None:
            continue
        for trial_id, strong in final.items():
            runs = client.search_runs([experiment.experiment_id], f"tags.{TRIAL_TAG} = '{trial_id}'")
            for run in runs:
                for key in STRONG_KEYS:
                    if isinstance(strong.get(key), (int, float)):
                        client.log_metric(run.info.run_id, f"strong_{key}", float(strong[key]))
                client.set_tag(run.info.run_id, "strong_attack", str(strong.get("attack", "")))
                logged += 1
    return logged


def _wandb_final(spec, text: str, final: dict[str, dict]) -> int:
    """One W&B run ``<study>-final-evaluation`` in the study's group (the trials' runs are closed): the table
    ``final_evaluation`` (one row per evaluated trial) and each figure in its summary. Returns 1."""
    import wandb

    project = text.partition(":")[2] or "advtune"
    columns = ["trial_id", *(f"strong_{k}" for k in STRONG_KEYS), "selection_robust_acc", "attack", "images", "flag"]
    rows = [[trial_id, *(s.get(k) for k in STRONG_KEYS), s.get("selection_robust_acc"), str(s.get("attack", "")),
             s.get("n"), bool(s.get("flag"))] for trial_id, s in sorted(final.items())]
    run = wandb.init(project=project, group=spec.name, name=f"{spec.name}-final-evaluation",
                     id=f"{spec.name}-final-evaluation", job_type="final_evaluation", resume="allow",
                     config={"advtune_study": spec.name})
    try:
        run.log({"final_evaluation": wandb.Table(columns=columns, data=rows)})
        for trial_id, s in final.items():
            for key in STRONG_KEYS:
                if isinstance(s.get(key), (int, float)):
                    run.summary[f"{trial_id}/strong_{key}"] = float(s[key])
    finally:
        run.finish()
    return 1
