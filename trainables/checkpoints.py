"""Checkpoints: advtune's own format, and starting points in the formats of the field.

advtune writes two files per trial: ``last.pt`` (model, optimizer, progress, RNG state, history:
everything to resume) and ``best.pt`` (the model at the epoch of best robust validation
accuracy). Both hold the trial config and package versions, and load with
``torch.load(weights_only=True)``: nothing in them is code.

Starting points (:func:`load_starting_point`) may be an advtune checkpoint, a plain state dict, a
torchvision state dict, a ``.safetensors`` file, or a robustness-library ``.ckpt`` (``model``/``state_dict`` key,
``module.model.`` and ``module.attacker.model.`` prefixes, ``module.normalizer``); keys that fit
are loaded, a classifier head of another class count is left freshly initialised, and what was
missing or unexpected is reported.
"""
from __future__ import annotations

import pickle
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic_files import CheckpointError, write_atomic as _write_atomic
from .load_report import LoadReport, _short, loaded_fraction

__all__ = ["CheckpointError", "LoadReport", "load_file", "save_atomic", "versions", "load_starting_point",
           "extract_state_dict", "FORMAT"]

FORMAT = "advtune-checkpoint-v1"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("advtune", "torch", "torchvision", "ray", "optuna"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a torn file."""
    _write_atomic(path, lambda tmp: torch.save(obj, tmp))


def copy_atomic(src: str | Path, path: str | Path) -> None:
    """Copy ``src`` to ``path`` through a temporary file and a rename: readers see the old file or the new one."""
    _write_atomic(path, lambda tmp: shutil.copyfile(src, tmp))


def load_file(path: str | Path, trust: bool = False) -> Any:
    """Load a checkpoint file safely. ``weights_only=True`` unless ``trust``; every failure
    becomes a :class:`CheckpointError` that says what to do."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (advtune writes best.pt and last.pt)")
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                return load_file(path / name, trust)
        raise CheckpointError(f"{path} is a folder without best.pt or last.pt; pass the checkpoint file itself")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the file was truncated; use another copy")
    if path.suffix == ".safetensors":  # tensors and a JSON header: safe by construction, no unpickling
        from .safetensors_io import read

        return read(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler wraps every failure in the same "Weights only load failed"
        # text; only a refused global/reduce/build means "Python objects", anything else (an unknown
        # opcode, say) is a corrupt file, for which --trust-checkpoint would be the wrong advice.
        reason = _unpickler_reason(str(exc))
        if not trust and any(marker in reason for marker in _REFUSED_OBJECT_MARKERS):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects beyond tensors, which only a full unpickle can load — and "
                f"unpickling runs any code the file contains. It was refused. If you trust where this file comes from, "
                f"pass --trust-checkpoint (or --set trust_checkpoint=true). Detail: {reason}") from None
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a PyTorch checkpoint ({reason}); "
                              "use another copy of the file") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail anywhere (struct.error, KeyError, ...)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a PyTorch checkpoint ({detail}); "
                              "use another copy of the file") from None


_REFUSED_OBJECT_MARKERS = ("GLOBAL ", "add_safe_globals", "call reduce")


def _unpickler_reason(message: str) -> str:
    """The informative part of a weights-only unpickler error (the rest is boilerplate)."""
    _, found, after = message.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in (after if found else message).splitlines() if ln.strip()]
    for ln in lines:
        if not ln.startswith(("Weights only load failed", "Please file an issue", "Check the documentation")):
            return ln
    return lines[0] if lines else "unpickling failed"


def extract_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside a loaded checkpoint object and name its format."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["model"], "advtune"
    if getattr(obj, "source_format", None) == "safetensors":  # safetensors_io.SafetensorsState
        return dict(obj), "safetensors"
    if isinstance(obj, nn.Module):
        return obj.state_dict(), "pickled module"
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                fmt = "robustness library" if any(k.startswith("module.") for k in inner) else f"dict['{key}']"
                return inner, fmt
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, "state dict"
    raise CheckpointError(f"{source} is a PyTorch file but holds no model weights that advtune recognises "
                          "(expected an advtune checkpoint, a state dict, or a dict with a 'model'/'state_dict' key)")


def _canonical(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                   dict[str, torch.Tensor]]:
    """Strip wrapper prefixes: returns (network weights, normalizer tensors, other top-level tensors).

    The last holds what advtune's NormalizedModel keeps beside ``net`` and ``normalize`` (e.g.
    ``functional_act.log_beta``, the learned beta of a swapped functional ReLU)."""
    keys = list(state)
    if all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("model.") for k in state) and any(k.startswith(("attacker.", "normalizer.")) for k in state):
        normalizer = {k.split(".")[-1]: v for k, v in state.items() if k.startswith("normalizer.")}
        net = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        return net, normalizer, {}
    if any(k.startswith("net.") for k in state):  # advtune's own NormalizedModel layout
        normalizer = {k.split(".")[-1]: v for k, v in state.items() if k.startswith("normalize.")}
        net = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        rest = {k: v for k, v in state.items() if not k.startswith(("net.", "normalize."))}
        return net, normalizer, rest
    return state, {}, {}


def load_starting_point(model: nn.Module, path: str | Path, trust: bool = False, min_fraction: float = 0.75,
                        require_all: bool = False) -> LoadReport:
    """Load the weights in ``path`` into ``model`` (a NormalizedModel), as far as they fit.

    Raises :class:`CheckpointError` (and leaves ``model`` untouched) when less than
    ``min_fraction`` (0..1) of the model's tensors outside the classifier head could be loaded
    (see :func:`trainables.load_report.loaded_fraction`), or, with ``require_all`` (evaluating a
    checkpoint as it is), when any tensor that changes the model's output is not in the file.
    Top-level tensors beside the network (a swapped functional activation's parameters) load too.
    """
    obj = load_file(path, trust)
    state, fmt = extract_state_dict(obj, str(path))
    net_state, normalizer, top_state = _canonical(state)
    target = model.net.state_dict()
    top_target = {k: v for k, v in model.state_dict().items() if not k.startswith(("net.", "normalize."))}
    report = LoadReport(source=str(path), format=fmt)
    to_load, top_load = {}, {}
    for key, value in net_state.items():
        if key not in target:
            report.unexpected.append(key)
        elif target[key].shape != value.shape:
            report.reinitialized.append(key)
        else:
            to_load[key] = value
    for key, value in top_state.items():
        if key in top_target and top_target[key].shape == value.shape:
            top_load[key] = value
        else:
            report.unexpected.append(key)
    report.missing = [k for k in target if k not in net_state] + [k for k in top_target if k not in top_state]
    report.fraction, report.counted = loaded_fraction(model.net, list(to_load))
    n_params = len(target)
    if report.fraction < min_fraction and report.reinitialized and not report.unexpected \
            and len(to_load) + len(report.reinitialized) == n_params:
        shapes = "; ".join(f"{k} {tuple(net_state[k].shape)} vs {tuple(target[k].shape)}" for k in report.reinitialized[:2])
        raise CheckpointError(
            f"checkpoint {path} fits this model except for tensors of another shape ({shapes}): it was trained for "
            "other inputs or another class count than this data has. Evaluate it on its own data (--config), or "
            "fine-tune it here (advtune train --set pretrained=FILE)")
    if report.fraction < min_fraction:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: only {len(to_load)} of its {n_params} tensors match by name "
            f"and shape, {100 * report.fraction:.0f}% of the {report.counted} outside the classifier head, below "
            f"min_loaded_fraction={min_fraction:g} (first unmatched: "
            f"{_short(report.unexpected or report.reinitialized or report.missing, 3)}). Choose the architecture the "
            "checkpoint was trained with (--set model=...), or, to fine-tune from this partial load on purpose, lower "
            "the bar: --set min_loaded_fraction=F (0..1)")
    if require_all:
        if report.reinitialized:
            raise CheckpointError(f"checkpoint {path} does not match this data's class count or input shape "
                                  f"({report.summary()}); evaluate it with the config of the data it was trained on")
        absent = [k for k in report.missing + report.reinitialized if not k.endswith("num_batches_tracked")]
        if absent:
            raise CheckpointError(
                f"checkpoint {path} does not hold every tensor of this model, so it cannot be evaluated as it is: "
                f"{_short(absent, 4)} not loaded ({len(report.unexpected)} unexpected keys: "
                f"{_short(report.unexpected, 3) or 'none'}). Check the config's model and activation match the checkpoint")
    model.net.load_state_dict(to_load, strict=False)
    if top_load:
        model.load_state_dict(top_load, strict=False)
    mean, std = normalizer.get("new_mean", normalizer.get("mean")), normalizer.get("new_std", normalizer.get("std"))
    if mean is not None and std is not None and mean.numel() == model.normalize.mean.numel():
        with torch.no_grad():
            model.normalize.mean.copy_(mean.view_as(model.normalize.mean))
            model.normalize.std.copy_(std.view_as(model.normalize.std))
        report.normalizer = True
    report.loaded = list(to_load) + list(top_load)
    return report
