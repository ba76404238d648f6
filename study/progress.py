"""Live progress of a study: one compact table, refreshed in place on a terminal.

On a terminal the table is redrawn over itself after every result; when the output is a file or a
pipe (CI logs, ``nohup``), it prints one line per finished trial instead, so logs stay readable.
"""
from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["LiveTable", "quiet_ray_startup"]

# What Ray prints on every start, before the study's first line: that token authentication is on (with how to
# switch it off, which advtune does not want its users to do), that a token was written, that a local instance
# started. Authentication stays on; these lines only stop reaching the first screen (--verbose keeps them).
_RAY_STARTUP_LINES = ("Token authentication is enabled", "Generated new authentication token",
                      "Started a local Ray instance")
_RAY_STARTUP_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray._private.worker")


class _DropRayStartupLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in _RAY_STARTUP_LINES)


def quiet_ray_startup(verbose: bool) -> dict[str, Any]:
    """Keep Ray's start-up lines off the first screen unless ``verbose``: filters them at the loggers that emit
    them, and returns the ``ray.init`` keywords that keep its logger at WARNING (``ray.init`` sets it to INFO)."""
    if verbose:
        return {}
    for name in _RAY_STARTUP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRayStartupLines) for f in logger.filters):
            logger.addFilter(_DropRayStartupLines())
    return {"logging_level": logging.WARNING}


@dataclass
class _Row:
    trial_id: str
    state: str = "running"
    epoch: float = 0
    lr: float | None = None
    clean: float | None = None
    robust: float | None = None
    best: float | None = None
    reason: str = ""


def _pct(v: float | None) -> str:
    return "    -" if v is None else f"{100 * v:5.1f}"


class LiveTable:
    def __init__(self, total: int, stream: IO[str] | None = None, live: bool | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.rows: dict[str, _Row] = {}
        self._drawn = 0

    def result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        row = self.rows.setdefault(trial_id, _Row(trial_id))
        row.epoch, row.lr = metrics.get("epoch", row.epoch), metrics.get("lr")
        row.clean, row.robust, row.best = metrics.get("clean_acc"), metrics.get("robust_acc"), metrics.get("best_robust_acc")
        if self.live:
            self.draw()

    def end(self, trial_id: str, state: str, reason: str = "") -> None:
        row = self.rows.setdefault(trial_id, _Row(trial_id))
        row.state, row.reason = state, reason
        if self.live:
            self.draw()
        else:
            extra = f" best robust {100 * row.best:.1f}%" if row.best is not None else ""
            print(f"  trial {trial_id}: {state} after epoch {row.epoch:g}{extra}" + (f" — {reason}" if reason else ""),
                  file=self.stream, flush=True)

    def render(self) -> list[str]:
        done = [r for r in self.rows.values() if r.state != "running"]
        pruned = sum(r.state == "pruned" for r in done)
        best = max((r for r in self.rows.values() if r.best is not None), key=lambda r: r.best, default=None)
        head = (f"trials {len(self.rows) - len(done)} running, {len(done)} done ({pruned} pruned) of {self.total}"
                + (f"; best robust {100 * best.best:.1f}% (trial {best.trial_id})" if best else ""))
        width = shutil.get_terminal_size((120, 20)).columns
        lines = [head, f"{'trial':<10} {'state':<12} {'epoch':>5} {'lr':>8} {'clean%':>6} {'robust%':>7} {'best%':>6}  reason"]
        order = sorted(self.rows.values(), key=lambda r: (r.state != "running", -(r.best or 0)))
        for r in order:
            lr = "-" if r.lr is None else f"{r.lr:.4f}"
            line = (f"{r.trial_id[:10]:<10} {r.state[:12]:<12} {r.epoch:>5g} {lr:>8} {_pct(r.clean):>6} "
                    f"{_pct(r.robust):>7} {_pct(r.best):>6}  {r.reason}")
            lines.append(line[:width - 1])
        return lines

    def draw(self) -> None:
        lines = self.render()
        out = ""
        if self._drawn:
            out += f"\x1b[{self._drawn}F"  # back to the first line of the previous drawing
        out += "".join(f"\x1b[2K{line}\n" for line in lines)
        self.stream.write(out)
        self.stream.flush()
        self._drawn = len(lines)
