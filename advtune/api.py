"""advtune from Python: run a study, read one into pandas, train and evaluate one trial.

The command line is a thin layer over the same functions: ``run_study`` calls
``advtune.study.commands.run`` (what ``advtune run`` calls), ``train`` calls ``advtune.study.cli.train_config``
(``advtune train``), ``evaluate`` calls ``advtune.study.cli.evaluate_checkpoint`` (``advtune eval``), and
``Study`` reads the files a study writes with the readers ``advtune status``/``export``/``report`` use. Errors
the user can fix raise the typed exceptions the CLI prints as one ``error:`` line (``ConfigError``,
``DataError``, ``CheckpointError``, ``SpaceError``, ``StudyError``).

Accuracies are fractions in [0, 1]; ``grad_passes`` counts forward+backward passes over single images.
"""
from __future__ import annotations

import argparse
import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["run_study", "load_study", "train", "evaluate", "Study", "Trial", "TrainResult", "EvalResult",
           "run_options", "eval_options"]


# --- options, taken from the CLI's own argparse definitions so the two cannot drift ---------------------
def _subparser(command: str) -> argparse.ArgumentParser:
    from advtune.study.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _options(command: str, skip: tuple[str, ...] = ()) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _subparser(command)._actions
            if a.dest not in ("help", *skip) and a.option_strings}


def run_options() -> dict[str, Any]:
    """``advtune run``'s options as keyword arguments of :func:`run_study`: name -> default."""
    return {name: a.default for name, a in _options("run").items()}


def eval_options() -> dict[str, Any]:
    """``advtune eval``'s options as keyword arguments of :func:`evaluate` (but ``checkpoint``): name -> default."""
    return {name: a.default for name, a in _options("eval", skip=("checkpoint",)).items()}


def _namespace(command: str, given: dict[str, Any], skip: tuple[str, ...] = ()) -> argparse.Namespace:
    """The argparse Namespace the CLI would build, from keyword arguments: unknown names are refused, string
    values go through the option's own converter (``cpus_per_trial="auto"``), choices are checked."""
    from advtune.study.errors import StudyError

    actions = _options(command, skip)
    unknown = sorted(set(given) - set(actions))
    if unknown:
        raise StudyError(f"{', '.join(unknown)}: not an option of advtune {command}; the options are "
                         f"{', '.join(sorted(actions))}")
    values = {}
    for name, action in actions.items():
        value = given.get(name, action.default)
        if name in given and isinstance(value, str) and callable(action.type):
            try:
                value = action.type(value)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise StudyError(f"{name}={given[name]!r}: {exc}") from None
        if action.choices is not None and value is not None and value not in action.choices:
            raise StudyError(f"{name}={value!r} is not one of {', '.join(map(str, action.choices))}")
        if (action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)) and not isinstance(value, dict):
            value = [value] if isinstance(value, (str, Path)) else list(value or [])
        values[name] = value
    return argparse.Namespace(command=command, debug=False, **values)


def _config(config=None, overrides=None):
    """A TrialConfig from a TrialConfig, a dict of keys, a YAML path or None, with overrides (``TrialConfig.load``)."""
    from advtune.trainables.config import TrialConfig

    return TrialConfig.load(config, overrides)


# --- running ---------------------------------------------------------------------------------------------
def run_study(base=None, **options: Any) -> "Study | None":
    """Run a study, as ``advtune run`` with the same options (``--num-samples 4`` is ``num_samples=4``; the
    defaults are the CLI's, see :func:`run_options`), and return its :class:`Study`; ``None`` for
    ``dry_run=True``. ``base``: the base trial config (a TrialConfig, a dict of keys or a YAML path; default:
    ``config``, else the embedded default), with ``set`` (``["key=value", ...]`` or a dict) applied on top."""
    from advtune.study.commands import run

    args = _namespace("run", options)
    cfg = _config(base if base is not None else args.config, args.set)
    spec = run(args, base=cfg)
    return None if spec is None else Study(spec.location)


def _signature(options: dict[str, Any], first: list[inspect.Parameter]) -> inspect.Signature:
    return inspect.Signature(first + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
                                      for k, v in options.items()])


@dataclass
class TrainResult:
    """What ``advtune train`` produced: ``status`` (completed, diverged, catastrophic_overfitting, ...), the
    best epoch's metrics (``best``: robust_acc, clean_acc, epoch, ...), ``grad_passes``, and the run folder
    with ``best.pt`` / ``last.pt``."""
    status: str
    stop_reason: str
    best: dict[str, Any]
    grad_passes: int
    epochs_run: float
    out: Path

    @property
    def checkpoint(self) -> Path:
        return self.out / "best.pt"

    @property
    def history(self):
        """Per-epoch metrics (``metrics.jsonl``) as a pandas DataFrame."""
        from advtune.study.records import read_jsonl

        return _frame(read_jsonl(self.out / "metrics.jsonl"))


def train(config=None, out: str | Path | None = None, *, overrides=None, resume: bool = False,
          progress: bool = False) -> TrainResult:
    """One trial with the loop a study runs (``advtune train``), into ``out`` (default
    ``runs/train-<data>-<model>-<time>``). ``config``: a TrialConfig, a dict of keys, a YAML path (an exported
    entry too) or None; ``overrides``: ``["key=value", ...]`` or a dict."""
    from advtune.study.cli import _default_out, train_config
    from advtune.trainables.config import ConfigError

    cfg = _config(config, overrides)
    out = Path(out) if out is not None else _default_out("train", cfg)
    if (out / "last.pt").exists() and not resume:
        raise ConfigError(f"{out} already holds a run (last.pt); pass resume=True to continue it, or another out")
    s = train_config(cfg, out, resume=resume, progress=progress)
    return TrainResult(s["status"], s["stop_reason"] or "", s["best"] or {}, int(s["grad_passes"]),
                       s.get("epochs_run", 0), out)


@dataclass
class EvalResult:
    """``advtune eval``'s figures: per attack ``{attack, clean_acc, robust_acc, n}``, the sanity checks, the
    split, threat model and image count."""
    checkpoint: str
    split: str
    norm: str
    eps: float
    images: int
    results: list[dict[str, Any]]
    sanity: list[dict[str, Any]] = field(default_factory=list)
    load_report: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_acc(self) -> float:
        """The lowest robust accuracy over the attacks run (the figure to report)."""
        return min(r["robust_acc"] for r in self.results)

    @property
    def clean_acc(self) -> float:
        return self.results[0]["clean_acc"]

    @property
    def sanity_passed(self) -> bool:
        return all(c["passed"] for c in self.sanity)


def evaluate(checkpoint: str | Path, **options: Any) -> EvalResult:
    """Evaluate a checkpoint as ``advtune eval --checkpoint FILE`` with the same options and defaults (see
    :func:`eval_options`: ``attack``, ``steps``, ``restarts``, ``split``, ``limit``, ``no_sanity``, ...)."""
    from advtune.study.cli import evaluate_checkpoint

    args = _namespace("eval", {"quiet": True, **options}, skip=("checkpoint",))
    args.checkpoint = str(checkpoint)
    return EvalResult(**evaluate_checkpoint(args))


# --- reading a study -------------------------------------------------------------------------------------
@dataclass
class Trial:
    """One trial of a study: its searched values, state, best epoch's metrics (``best``), strong figure
    (``strong``: the final evaluation's entry, or None) and full config (``config``: a TrialConfig that
    :func:`train` reruns)."""
    trial_id: str
    state: str
    stop_reason: str
    params: dict[str, Any]
    best: dict[str, Any]
    strong: dict[str, Any] | None
    grad_passes: int
    epochs_run: float
    checkpoint: str
    config: Any

    @property
    def robust_acc(self) -> float | None:
        """The selection figure: best robust validation accuracy."""
        return self.best.get("robust_acc")

    @property
    def strong_robust_acc(self) -> float | None:
        return (self.strong or {}).get("robust_acc")


def load_study(location: str | Path) -> "Study":
    """A finished or running study, from its directory or its URI (``s3://BUCKET/PREFIX/NAME``)."""
    return Study(location)


class Study:
    """A study's records, read from its files (no Ray needed). ``trials`` is a pandas DataFrame, one row per
    trial, ranked as ``advtune status`` ranks (strong figure, then selection figure)."""

    def __init__(self, location: str | Path) -> None:
        from advtune.study.records import read_marker
        from advtune.study.storage import open_study

        self.location = str(location)
        self.directory, self._remote = open_study(self.location)
        self.marker = read_marker(self.directory)

    def __repr__(self) -> str:
        return f"Study({self.location!r})"

    @property
    def name(self) -> str:
        return self.marker["spec"]["name"]

    @property
    def spec(self) -> dict[str, Any]:
        """The resolved study settings (``advtune_study.json``)."""
        return self.marker["spec"]

    @functools.cached_property
    def objective(self):
        """What the study optimised (``advtune.study.objectives.Objective``), parsed once from its marker."""
        from advtune.study.objectives import objective_of

        return objective_of(self.marker)

    def _load(self):
        from advtune.study.export import load_study as _records
        from advtune.study.final_eval import load_final, rank

        _, records = _records(self.directory)
        final = load_final(self.directory)
        ranked = rank(records, final, self.objective)
        return ranked + [r for r in records if r not in ranked], final

    def _trial(self, rec, final) -> Trial:
        from advtune.study.export import _checkpoint, _portable, trial_config
        from advtune.study.final_eval import strong_of

        cfg = trial_config(self.marker, rec)
        if cfg.pretrained and Path(cfg.pretrained).is_absolute():
            # the marker names the study's files where it ran; a copied or moved study has them here now
            here = Path(self.directory).resolve()
            cfg = cfg.replace(pretrained=str((here / _portable(cfg.pretrained, self.marker, here, here)).resolve()))
        return Trial(rec.trial_id, rec.state, rec.stop_reason, dict(rec.params), dict(rec.best or {}),
                     strong_of(final, rec.trial_id), rec.grad_passes, rec.epochs_run,
                     _checkpoint(self.directory, self.marker, rec), cfg)

    def trial_list(self) -> list[Trial]:
        """Every trial, best first."""
        records, final = self._load()
        return [self._trial(r, final) for r in records]

    def trial(self, trial_id: str) -> Trial:
        from advtune.study.errors import StudyError

        for t in self.trial_list():
            if t.trial_id == trial_id:
                return t
        raise StudyError(f"study {self.name} has no trial {trial_id!r}; its trials: "
                         f"{', '.join(t.trial_id for t in self.trial_list())}")

    @property
    def trials(self):
        """One row per trial, best first: trial_id, state, stop_reason, epochs_run, best_epoch, robust_acc
        (selection figure), strong_robust_acc, strong_gap, clean_acc (at the best epoch), grad_passes,
        checkpoint, and the searched values as ``params_<name>`` (Optuna's ``trials_dataframe`` naming)."""
        rows = []
        for t in self.trial_list():
            strong = t.strong or {}
            rows.append({"trial_id": t.trial_id, "state": t.state, "stop_reason": t.stop_reason,
                         "epochs_run": t.epochs_run, "best_epoch": t.best.get("epoch"),
                         "robust_acc": t.best.get("robust_acc"), "strong_robust_acc": strong.get("robust_acc"),
                         "strong_gap": strong.get("gap"), "clean_acc": t.best.get("clean_acc"),
                         "grad_passes": t.grad_passes, "checkpoint": t.checkpoint,
                         **{f"params_{k}": v for k, v in t.params.items()}})
        columns = ["trial_id", "state", "stop_reason", "epochs_run", "best_epoch", "robust_acc", "strong_robust_acc",
                   "strong_gap", "clean_acc", "grad_passes", "checkpoint"]
        return _frame(rows, columns)

    @property
    def best(self) -> Trial | None:
        """The trial ``advtune export`` puts first (strong figure; feasible first under robust:clean>=X)."""
        trials = [t for t in self.trial_list() if t.best]
        return trials[0] if trials else None

    def pareto(self) -> list[Trial]:
        """The clean-vs-robust Pareto set: for robust+clean studies the front the search found (as
        ``advtune export`` writes), otherwise the non-dominated trials by best-epoch figures."""
        from advtune.study.export import pareto
        from advtune.study.objectives import search_front

        records, final = self._load()
        ranked = [r for r in records if r.best]
        front = search_front(self.directory, self.marker, ranked, self.objective) if self.objective.multi else None
        return [self._trial(r, final) for r in (front or pareto(ranked))]

    def history(self, trial_id: str):
        """A trial's per-epoch metrics (epoch, lr, train_loss, clean_acc, robust_acc, grad_passes, ...) as a
        DataFrame."""
        from advtune.study.records import StudyRecords

        self.trial(trial_id)  # refuses an unknown id by name
        return _frame(StudyRecords(self.directory, tensorboard=False).load_trial(trial_id).metrics)

    def export(self, top_k: int = 1, pareto: bool | None = None, format: str = "yaml",
               out: str | Path | None = None) -> list[Path]:
        """``advtune export``: the index file, then one config file per trial (each loads with :func:`train`)."""
        from advtune.study.export import export

        paths = export(self.directory, top_k=top_k, pareto_front=pareto, fmt=format, out=out)
        if self._remote is not None and out is None:
            self._remote.push()
        return paths

    def report(self, out: str | Path | None = None, top_k: int = 5) -> Path:
        """``advtune report``: PNG plots and a self-contained index.html; returns its path."""
        from advtune.study.report import write_report

        index = write_report(self.directory, out=out, top_k=top_k)
        if self._remote is not None and out is None:
            self._remote.push()
        return index


def _frame(rows: list[dict[str, Any]], columns: list[str] | None = None):
    import pandas as pd

    frame = pd.DataFrame(rows)
    if columns and frame.empty:
        return pd.DataFrame(columns=columns)
    return frame


def _install_signatures() -> None:
    """help(advtune.run_study) and IDEs show the CLI's options with their defaults."""
    pos = inspect.Parameter.POSITIONAL_OR_KEYWORD
    try:
        run_study.__signature__ = _signature(run_options(), [inspect.Parameter("base", pos, default=None)])
        evaluate.__signature__ = _signature({**eval_options(), "quiet": True}, [inspect.Parameter("checkpoint", pos)])
    except Exception:  # noqa: BLE001 - a signature is documentation; never let it break the import
        run_study.__signature__ = None


_install_signatures()
