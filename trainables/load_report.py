"""What loading a starting point did, in a form a person reads and a study stores.

:class:`LoadReport` lists the tensors loaded, missing from the file, unexpected in it and
re-initialised (shape differs), and which input normalization the model ended up with. The trial
prints it when it starts and writes it beside its other records (``load_report.json``), so a
partial load is never silent.

:func:`loaded_fraction` is the figure ``min_loaded_fraction`` bounds. It counts the tensors that
decide what a pretrained network computes: every tensor of the network except

- the classifier head (the last ``nn.Linear``): a backbone-only checkpoint (self-supervised
  pretraining, Chen et al.) or one for another class count (Salman et al.) is the normal case of
  fine-tuning, not a partial load;
- BatchNorm's ``num_batches_tracked`` counters, which do not change the function computed;
- the parameters of a smooth activation advtune adds (``psoftplus``'s ``log_beta``), which a ReLU
  checkpoint cannot hold.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["LoadReport", "counted_keys", "loaded_fraction", "write_report", "read_report", "FILENAME"]

FILENAME = "load_report.json"


@dataclass
class LoadReport:
    """What a load did: keys loaded, missing from the file, unexpected, shape-mismatched.

    ``fraction`` is the share (0..1) of counted tensors loaded (see :func:`loaded_fraction`),
    ``counted`` how many tensors it counts; ``normalization`` says which per-channel mean/std the
    model's normalize layer holds and where they come from."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    normalizer: bool = False
    fraction: float = 1.0
    counted: int = 0
    normalization: str = ""

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.format}); "
                 f"{100 * self.fraction:.0f}% of the {self.counted} tensors outside the classifier head"]
        if self.normalizer and not self.normalization:
            parts.append("normalization taken from the checkpoint")
        if self.normalization:
            parts.append(f"normalization: {self.normalization}")
        if self.reinitialized:
            parts.append(f"re-initialised (shape differs, e.g. a new class count): {', '.join(self.reinitialized)}")
        if self.missing:
            parts.append(f"missing from the file (left as initialised): {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"in the file but not in the model (ignored): {_short(self.unexpected)}")
        return "; ".join(parts)

    def short(self) -> str:
        """One line for a status table: counts and the normalization's source."""
        text = f"{len(self.loaded)} loaded ({100 * self.fraction:.0f}% of backbone)"
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("re-initialised", self.reinitialized)):
            if keys:
                text += f", {len(keys)} {name}"
        if self.normalization:
            text += f"; normalization: {self.normalization.split(' (')[0]}"
        return f"{self.source}: {text}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoadReport":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n})" if len(keys) > n else "")


def counted_keys(net: nn.Module) -> list[str]:
    """The state-dict keys of ``net`` that :func:`loaded_fraction` counts (see the module doc)."""
    from .activations import ParametricSoftplus

    last_linear = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = name
    skip_prefixes = [f"{last_linear}."] if last_linear else []
    skip_prefixes += [f"{name}." for name, m in net.named_modules() if isinstance(m, ParametricSoftplus)]
    return [k for k in net.state_dict() if not k.endswith("num_batches_tracked")
            and not any(k.startswith(p) for p in skip_prefixes)]


def loaded_fraction(net: nn.Module, loaded: list[str]) -> tuple[float, int]:
    """(share of counted tensors among ``loaded``, number counted); 1.0 when nothing is counted."""
    counted = counted_keys(net)
    done = set(loaded)
    return (sum(k in done for k in counted) / len(counted) if counted else 1.0), len(counted)


def write_report(report: LoadReport, folder: str | Path) -> Path:
    """Write ``load_report.json`` into ``folder`` (a run's or a trial's directory)."""
    path = Path(folder) / FILENAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2))
    tmp.replace(path)
    return path


def read_report(folder: str | Path | None) -> LoadReport | None:
    """The report a run or trial stored in ``folder``; None when it loaded no starting point."""
    if folder is None or not (Path(folder) / FILENAME).exists():
        return None
    try:
        return LoadReport.from_dict(json.loads((Path(folder) / FILENAME).read_text()))
    except (json.JSONDecodeError, TypeError):
        return None
