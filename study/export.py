"""Reading a finished (or interrupted) study without a cluster: status table, export, compute summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from advtune.trainables.config import TrialConfig

from .errors import StudyError
from .records import StudyRecords, TrialRecord, read_marker

__all__ = ["load_study", "status_table", "pareto", "export", "entry_name", "compute_summary", "trial_config"]


def load_study(study_dir: str | Path) -> tuple[dict[str, Any], list[TrialRecord]]:
    marker = read_marker(study_dir)
    return marker, StudyRecords(study_dir, tensorboard=False).load()


def _pct(v: Any) -> str:
    return f"{100 * v:5.1f}" if isinstance(v, (int, float)) else "  -  "


def status_table(records: list[TrialRecord], final: dict[str, Any] | None = None) -> str:
    """One row per trial, ranked by the strong figure (``final``: the study's final evaluation), then,
    for trials without one, by the selection figure (robust% = the validation attack's best)."""
    from .final_eval import GAP_WARNING, rank, strong_of

    final = final or {}
    head = (f"{'trial':<20} {'state':<25} {'epochs':>6} {'robust%':>8} {'strong%':>8} {'clean%':>7} "
            f"{'grad passes':>12}  why stopped")
    rows = [head, "-" * len(head)]
    for r in rank(records, final) + [r for r in records if not r.best]:
        best, strong = r.best or {}, strong_of(final, r.trial_id) or {}
        flag = f"  ! strong {100 * strong['gap']:.1f} points below: {GAP_WARNING}" if strong.get("flag") else ""
        rows.append(f"{r.trial_id:<20} {r.state:<25} {r.epochs_run:>6g} {_pct(best.get('robust_acc')):>8} "
                    f"{_pct(strong.get('robust_acc')):>8} {_pct(best.get('clean_acc')):>7} {r.grad_passes:>12,}  "
                    f"{r.stop_reason}{flag}")
    return "\n".join(rows)


def pareto(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials whose best epoch no other trial beats on both clean and robust accuracy."""
    pts = [(r, r.best) for r in records if r.best]
    front = []
    for r, b in pts:
        dominated = any(o["clean_acc"] >= b["clean_acc"] and o["robust_acc"] >= b["robust_acc"] and
                        (o["clean_acc"] > b["clean_acc"] or o["robust_acc"] > b["robust_acc"]) for _, o in pts)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: -r.best["robust_acc"])


def trial_config(marker: dict[str, Any], rec: TrialRecord) -> TrialConfig:
    """A trial's full config: the study's base config, the space's fixed values, its searched values."""
    return TrialConfig.from_dict(marker["spec"]["base_config"]).replace(**marker.get("space_base", {}), **rec.params)


def _entry(study_dir: Path, marker: dict[str, Any], rec: TrialRecord, path: Path,
           strong: dict[str, Any] | None = None) -> dict[str, Any]:
    from .final_eval import GAP_WARNING

    cfg = trial_config(marker, rec)
    best = rec.best or {}
    strong_metrics = {"strong_robust_acc": None} if strong is None else {
        "strong_robust_acc": strong["robust_acc"], "strong_clean_acc": strong["clean_acc"],
        "strong_attack": strong["attack"], "strong_images": strong["n"], "strong_gap": strong["gap"],
        **({"warning": GAP_WARNING} if strong["flag"] else {})}
    return {
        "trial_id": rec.trial_id,
        "state": rec.state,
        "stop_reason": rec.stop_reason,
        "params": rec.params,
        "metrics": {"epoch": best.get("epoch"), "clean_acc": best.get("clean_acc"), "robust_acc": best.get("robust_acc"),
                    "grad_passes_total": rec.grad_passes, "epochs_run": rec.epochs_run, **strong_metrics},
        "checkpoint": _checkpoint(study_dir, marker, rec),
        "command": f"advtune train --config {path} --out runs/rerun-{rec.trial_id}",
        "config": cfg.to_dict(),
        "load_report": _load_report(rec),
    }


def _load_report(rec: TrialRecord) -> dict[str, Any] | None:
    """What loading the trial's starting point did (``load_report.json``), or None when it loaded none."""
    from advtune.trainables.load_report import read_report

    report = read_report(rec.directory)
    return report.to_dict() if report is not None else None


def _checkpoint(study_dir: Path, marker: dict[str, Any], rec: TrialRecord) -> str:
    """The trial's best.pt: in its folder, or for a study in cloud storage its URI in the bucket."""
    if "://" in str(marker["spec"].get("storage_path", "")):
        from .cloud_study import best_checkpoint_uri

        return best_checkpoint_uri(marker["spec"], rec.trial_id)
    return str((rec.directory or study_dir) / "best.pt")


def export(study_dir: str | Path, top_k: int = 1, pareto_front: bool | None = None, fmt: str = "yaml",
           out: str | Path | None = None) -> list[Path]:
    """Write the best ``top_k`` trials (or the clean-vs-robust Pareto set) one file each, plus an
    index. Each file loads with ``advtune train --config FILE``. Returns the paths written.

    ``pareto_front`` None: the study's objective decides (``robust+clean``: the Pareto front its
    search found, see ``study.objectives.search_front``; otherwise top-k). Top-k puts trials that
    meet a ``robust:clean>=X`` floor first."""
    from .objectives import objective_of, search_front

    study_dir = Path(study_dir)
    marker, records = load_study(study_dir)
    ranked = [r for r in records if r.best]
    if not ranked:
        raise StudyError(f"{study_dir} has no trial with a finished validation yet; nothing to export")
    from .final_eval import load_final, rank, strong_of

    final = load_final(study_dir)
    objective = objective_of(marker)
    pareto_front = objective.multi if pareto_front is None else pareto_front
    front = search_front(study_dir, marker, ranked) if pareto_front else None
    by = ("strong_robust_acc (the final strong evaluation), then trials without one by robust_acc"
          if final.get("trials") else "best robust_acc (no final strong evaluation)")
    selection = (f"pareto front the search found ({objective.text})" if front else "pareto") if pareto_front \
        else f"top-{top_k} by {by}" + ("" if objective.min_clean is None else f", {objective.text} first")
    chosen = (front or pareto(ranked)) if pareto_front else rank(ranked, final, objective)[:top_k]
    out_dir = Path(out) if out else study_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "json" if fmt == "json" else "yaml"
    written, entries = [], []
    for i, rec in enumerate(chosen, 1):
        path = (out_dir / entry_name(i, rec.trial_id, ext)).resolve()
        entry = {"rank": i, **_entry(study_dir, marker, rec, path, strong_of(final, rec.trial_id))}
        _dump(entry, path, fmt)
        entries.append(entry)
        written.append(path)
    index = out_dir / f"{'pareto' if pareto_front else 'best'}.{ext}"
    _dump({"study": str(study_dir), "objective": objective.text, "selection": selection, "entries": entries},
          index, fmt)
    return [index, *written]


def entry_name(rank: int, trial_id: str, ext: str = "yaml") -> str:
    """File name of an exported trial (the report names the same files in its rerun commands)."""
    return f"{rank:02d}-{trial_id}.{ext}"


def _dump(data: Any, path: Path, fmt: str) -> None:
    path.write_text(json.dumps(data, indent=2) if fmt == "json" else yaml.safe_dump(data, sort_keys=False))


def compute_summary(records: list[TrialRecord], max_epochs: int) -> dict[str, float]:
    """Compute spent against what the same trials would have cost run to ``max_epochs``."""
    spent = sum(r.grad_passes for r in records)
    full = sum(r.grad_passes / r.epochs_run * max_epochs for r in records if r.epochs_run)
    secs = sum(sum(m.get("epoch_seconds", 0.0) for m in r.metrics) for r in records)
    full_secs = sum(sum(m.get("epoch_seconds", 0.0) for m in r.metrics) / r.epochs_run * max_epochs
                    for r in records if r.epochs_run)
    return {"grad_passes": spent, "grad_passes_no_pruning": full, "trial_seconds": secs,
            "trial_seconds_no_pruning": full_secs, "pruned": sum(r.state == "pruned" for r in records),
            "trials": len(records)}
