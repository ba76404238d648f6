"""The report's section per top trial: its curves together (clean and robust accuracy, training loss, the
learning rate with its schedule between validations, the training epsilon), its searched values and full
config, and the commands that rerun it.

The LR panel draws the schedule the trial ran (``trainables.schedules``, a function of training progress,
evaluated at 50 points an epoch) under the LR the trial recorded (its ``lr_trace``, ~50 points an epoch, where
its metrics have one) and the per-epoch ``lr`` it reported: a warmup that peaks inside an epoch shows, which one
point per epoch hides. The epsilon panel starts the ramp at ``eps_ramp_start``.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import yaml

from .records import TrialRecord

__all__ = ["trial_sections", "image_name", "trial_figure"]


def image_name(rank: int, trial_id: str) -> str:
    return f"trial-{rank:02d}-{trial_id}.png"


def _plot(out_dir: Path, rank: int, rec: TrialRecord, cfg) -> str:
    from .report import _save

    name = image_name(rank, rec.trial_id)
    _save(trial_figure(rank, rec, cfg), out_dir, name)
    return name


def trial_figure(rank: int, rec: TrialRecord, cfg):
    """The trial's four panels: accuracy, training loss, LR, training epsilon, against epochs."""
    import numpy as np

    from advtune.trainables.schedules import eps_at, schedule_from_config

    from .report import _figure

    ms = rec.metrics
    ep = [m["epoch"] for m in ms]
    fig = _figure(13, 3.2)
    ax_acc, ax_loss, ax_lr, ax_eps = fig.subplots(1, 4)
    for key, label, color in (("clean_acc", "clean", "#009E73"), ("robust_acc", "robust", "#0072B2")):
        ax_acc.plot(ep, [100 * m.get(key, float("nan")) for m in ms], marker="o", ms=3, color=color, label=label)
    if rec.best:
        ax_acc.axvline(rec.best["epoch"], color="grey", ls=":", lw=1, label="best epoch (best.pt)")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_acc.legend(fontsize=7, frameon=False)
    ax_loss.plot(ep, [m.get("train_loss", float("nan")) for m in ms], marker="o", ms=3, color="#CC79A7")
    ax_loss.set_ylabel("training loss")
    t = np.linspace(0.0, min(1.0, rec.epochs_run / cfg.epochs) if cfg.epochs else 1.0, 50 * max(1, cfg.epochs) + 1)
    lr = schedule_from_config(cfg)
    ax_lr.plot(t * cfg.epochs, [lr(x) for x in t], color="#E69F00", lw=1.5, label="schedule")
    trace = [p for m in ms for p in m.get("lr_trace") or ()]
    if trace:
        ax_lr.plot(*zip(*trace), ls="", marker=".", ms=2.5, color="#0072B2", label="set by the trial")
    ax_lr.plot(ep, [m.get("lr", float("nan")) for m in ms], ls="", marker="o", ms=3, color="black",
               label="reported (last step of the epoch)")
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend(fontsize=7, frameon=False, loc="best")
    ax_eps.plot(t * cfg.epochs, [eps_at(x, cfg.train_eps_value, cfg.eps_ramp, cfg.eps_ramp_start) for x in t],
                color="#56B4E9",
                label="training ε")
    ax_eps.axhline(cfg.eval_eps, color="black", ls="--", lw=0.8, label="eval ε")
    ax_eps.set_ylabel(f"ε ({cfg.norm}, pixel units)")
    ax_eps.set_ylim(bottom=0)
    ax_eps.legend(fontsize=7, frameon=False)
    for ax in (ax_acc, ax_loss, ax_lr, ax_eps):
        ax.set_xlabel("epoch")
        ax.set_xlim(0, max(ep[-1] if ep else 1, 1))
        ax.grid(alpha=0.3)
    fig.suptitle(f"#{rank} {rec.trial_id} ({rec.state}, {rec.epochs_run:g} of {cfg.epochs} epochs)", fontsize=11)
    return fig


def trial_sections(out_dir: Path, marker: dict[str, Any], top: list[TrialRecord], final: dict[str, Any],
                   study_dir: Path, data_uri) -> str:
    """HTML: one section per top trial (plots written into ``out_dir`` and embedded with ``data_uri``)."""
    from .export import entry_name, trial_config
    from .final_eval import strong_of

    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    out = ["<h2>The top trials one by one</h2>"]
    for rank, rec in enumerate(top, 1):
        cfg = trial_config(marker, rec)
        png = _plot(out_dir, rank, rec, cfg)
        strong = strong_of(final, rec.trial_id)
        figures = (f"selection {100 * rec.best['robust_acc']:.1f}% robust, {100 * rec.best['clean_acc']:.1f}% clean "
                   f"at epoch {rec.best['epoch']:g}" + (f"; strong {100 * strong['robust_acc']:.1f}%" if strong else ""))
        searched = ", ".join(f"<code>{e(k)}={e(f'{v:.4g}' if isinstance(v, float) else v)}</code>"
                             for k, v in rec.params.items()) or "none"
        rerun = (f"advtune export {study_dir} --top-k {len(top)}\nadvtune train --config "
                 f"{study_dir / 'export' / entry_name(rank, rec.trial_id)}")
        out.append(
            f'<section class="trial" id="trial-{e(rec.trial_id)}">\n<h3>#{rank} <code>{e(rec.trial_id)}</code> — '
            f"{e(rec.state.replace('_', ' '))}</h3>\n<p>{e(figures)}. Searched values: {searched}.</p>\n"
            f'<figure><img src="{data_uri(out_dir / png)}" alt="curves of trial {e(rec.trial_id)}: accuracy, loss, '
            f'learning rate, epsilon" data-file="{e(png)}"></figure>\n'
            f"<p>Rerun it (the export writes its config):</p>\n<pre><code>{e(rerun)}</code></pre>\n"
            f"<details><summary>full config</summary><pre><code>"
            f"{e(yaml.safe_dump(cfg.to_dict(), sort_keys=False))}</code></pre></details>\n</section>")
    return "\n".join(out)
