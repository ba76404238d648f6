"""The user's own code by import path: ``package.module:function`` for a model builder or a dataset factory.

The module is imported as Python would import it: from ``sys.path`` (an installed package, or a
folder on ``PYTHONPATH``), and then, like ``python -m`` and most tools that take such paths, from the
current folder. Under Ray the same must hold on every worker: a local study's workers run in the
driver's folder with its environment, so this is automatic there; on a cluster, install the package
on every node or ship it with the job's runtime environment (``ray job submit --working-dir .`` or
``py_modules``; docs/cluster.md says how).

Every failure is a :class:`~trainables.config.ConfigError` that names the config key, the path and
what to do.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Any, Callable

from .config import ConfigError, TrialConfig, is_import_path

__all__ = ["resolve", "check_importable"]

_PATH_FIX = ("make it importable: pip install your package, or run advtune from the folder that holds it, or add "
             "that folder to PYTHONPATH (on a cluster, on every node: see docs/cluster.md)")


def _import(module: str, key: str, path: str):
    def own(exc: ModuleNotFoundError) -> bool:  # the named module itself (or a parent package) is missing
        return bool(exc.name) and (module == exc.name or module.startswith(exc.name + "."))

    for attempt in range(2):
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not own(exc):  # the module exists but imports something not installed
                raise ConfigError(f"config field '{key}' = {path!r}: importing {module} failed: it needs the module "
                                  f"{exc.name!r}, which is not installed here; install it") from None
            if attempt == 0 and os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())  # what `python -m` does: look in the current folder too
                continue
            raise ConfigError(f"config field '{key}' = {path!r}: no module named {module!r} on the Python path or "
                              f"in {os.getcwd()}; {_PATH_FIX}") from None
        except Exception as exc:  # noqa: BLE001 - the user's module raised while being imported
            raise ConfigError(f"config field '{key}' = {path!r}: importing {module} raised "
                              f"{type(exc).__name__}: {exc}; fix the module so that `import {module}` works") from None


def resolve(path: str, key: str) -> Callable[..., Any]:
    """The callable ``package.module:function`` names (``function`` may be dotted: ``Class.method``)."""
    if not is_import_path(path):
        raise ConfigError(f"config field '{key}' = {path!r} is not an import path: write package.module:function")
    module_name, _, attr = path.partition(":")
    obj: Any = _import(module_name, key, path)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            near = difflib.get_close_matches(part, names, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"its callables: {', '.join(names[:8]) or 'none'}"
            raise ConfigError(f"config field '{key}' = {path!r}: {module_name} has no attribute {part!r} ({hint}); "
                              "name the function after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"config field '{key}' = {path!r} names a {type(obj).__name__}, not a function; "
                          "point it at the function that builds it")
    return obj


def check_importable(cfg: TrialConfig) -> None:
    """Resolve ``cfg``'s import paths (model, dataset) without calling them: a study refuses a path
    that does not import before any trial starts."""
    if is_import_path(cfg.model):
        resolve(cfg.model, "model")
    if is_import_path(cfg.dataset):
        resolve(cfg.dataset, "dataset")
