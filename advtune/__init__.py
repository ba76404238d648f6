"""advtune: adversarial fine-tuning of pretrained image classifiers, with LR-schedule and epsilon
search on Ray Tune + Optuna + ASHA.

Everything advtune installs lives under this one namespace: ``advtune.trainables`` (one trial,
Ray-agnostic), ``advtune.search_spaces`` (presets and their Optuna space) and ``advtune.study``
(the CLI and everything a study does). In the repository these are the top-level folders
``trainables/``, ``search_spaces/`` and ``study/``; pyproject.toml maps them under ``advtune``.
"""
__version__ = "0.1.0"

# The Python API (advtune/api.py), imported on first use: every `advtune.study...` import runs this file,
# and the CLI should not pay for pandas and the API's parser introspection.
__all__ = ["run_study", "load_study", "train", "evaluate", "Study", "Trial", "TrainResult", "EvalResult",
           "run_options", "eval_options"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'advtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
