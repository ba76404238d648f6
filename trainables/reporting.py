"""Reporters: where the training loop sends each validation's metrics and checkpoint.

The loop calls ``reporter.report(metrics, checkpoint_dir)``; the reporter owns ``checkpoint_dir``
afterwards. Under Ray Tune the reporter forwards both to ``tune.report`` (see
``trainables/tune_adapter.py``); under ``advtune train`` :class:`LocalReporter` writes the same
files a trial writes under Tune: ``best.pt``, ``last.pt``, ``metrics.jsonl`` and TensorBoard events.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Reporter", "LocalReporter", "format_metrics"]


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...


def format_metrics(m: dict[str, Any]) -> str:
    def pct(key: str) -> str:
        v = m.get(key)
        return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"

    return (f"epoch {m['epoch']:>5g}  lr {m['lr']:.4f}  loss {m['train_loss']:.3f}  train {pct('train_acc')}%  "
            f"clean {pct('clean_acc')}%  robust {pct('robust_acc')}%  best {pct('best_robust_acc')}%  "
            f"eps {m['train_eps']:.4f}  {m['epoch_seconds']:.1f}s" + (f"  [{m['status']}]" if m.get("status") not in
                                                                     (None, "running") else ""))


class LocalReporter:
    """Writes checkpoints and metrics into ``out_dir``; prints one line per report if ``echo``."""

    def __init__(self, out_dir: str | Path, echo: bool = True, keep_last: bool = True, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.echo, self.keep_last = echo, keep_last
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tb"))

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None and self._reported(metrics["epoch"]):
            return  # a resumed, already finished run repeating its final report
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if checkpoint_dir is not None:
            for name in os.listdir(checkpoint_dir):
                if name == "last.pt" and not self.keep_last:
                    continue
                os.replace(os.path.join(checkpoint_dir, name), self.out_dir / name)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if self._writer is not None:
            step = int(round(metrics["epoch"] * 1000))  # TensorBoard steps are integers: milli-epochs
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self.echo:
            print(format_metrics(metrics), flush=True)

    def on_load_report(self, report) -> None:
        """The starting point's load report: printed (if ``echo``) and kept as ``load_report.json``."""
        from .load_report import write_report

        write_report(report, self.out_dir)
        if self.echo:
            print(f"starting point: {report.summary()}", flush=True)

    def _reported(self, epoch: float) -> bool:
        path = self.out_dir / "metrics.jsonl"
        if not path.exists():
            return False
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        return bool(lines) and json.loads(lines[-1]).get("epoch", -1) >= epoch

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
