"""advtune: adversarial fine-tuning of pretrained image classifiers, with LR-schedule and epsilon
search on Ray Tune + Optuna + ASHA.

Everything advtune installs lives under this one namespace: ``advtune.trainables`` (one trial,
Ray-agnostic), ``advtune.search_spaces`` (presets and their Optuna space) and ``advtune.study``
(the CLI and everything a study does). In the repository these are the top-level folders
``trainables/``, ``search_spaces/`` and ``study/``; pyproject.toml maps them under ``advtune``.
"""
__version__ = "0.1.0"
