"""Search-space presets (YAML) and the code that turns them into an Optuna space."""
from .optuna_space import define_by_run, suggest, trial_config
from .schema import PRESETS, Param, SearchSpace, SpaceError, load_space

__all__ = ["PRESETS", "Param", "SearchSpace", "SpaceError", "load_space", "define_by_run", "suggest", "trial_config"]
