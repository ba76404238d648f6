"""Experiment trackers a lab already runs (MLflow, Weights & Biases), fed by Ray Tune's own logger callbacks.

``advtune run --tracker mlflow[:URI]`` and ``--tracker wandb[:PROJECT]`` add
``ray.air.integrations.mlflow.MLflowLoggerCallback`` / ``ray.air.integrations.wandb.WandbLoggerCallback``
to the study's Tuner: one tracker run per trial, with the trial's searched values as parameters and every
reported metric per epoch (step = Tune's training iteration, i.e. the validation count; ``epoch`` is
logged beside it). advtune writes no tracker client of its own; the one thing Tune's callbacks cannot
log — the final strong evaluation, which runs after the search — goes to each trial's MLflow run through
MLflow's own ``MlflowClient``, found by the tag ``advtune_trial_id`` this module adds. W&B runs are
closed by Tune when their trial ends (and an offline run cannot be reopened), so W&B gets no strong figures.
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


def log_final(spec, study_dir: Path) -> int:
    """Log the final strong evaluation (``STUDY/final_eval.json``) to each evaluated trial's MLflow run:
    ``strong_robust_acc``, ``strong_clean_acc``, ``strong_gap`` (fractions) and the attack as a tag. Returns
    how many runs got them; 0 without an MLflow tracker or a final evaluation."""
    targets = [t for t in getattr(spec, "trackers", ()) or () if t.partition(":")[0] == "mlflow"]
    if not targets:
        return 0
    from .final_eval import load_final

    final = load_final(study_dir).get("trials") or {}
    if not final:
        return 0
    from mlflow.tracking import MlflowClient

    logged = 0
    for text in targets:
        client = MlflowClient(tracking_uri=mlflow_uri(text))
        experiment = client.get_experiment_by_name(spec.name)
        if experiment is None:
            continue
        for trial_id, strong in final.items():
            runs = client.search_runs([experiment.experiment_id], f"tags.{TRIAL_TAG} = '{trial_id}'")
            for run in runs:
                for key in ("robust_acc", "clean_acc", "gap"):
                    if isinstance(strong.get(key), (int, float)):
                        client.log_metric(run.info.run_id, f"strong_{key}", float(strong[key]))
                client.set_tag(run.info.run_id, "strong_attack", str(strong.get("attack", "")))
                logged += 1
    return logged
