"""Reading a finished (or interrupted) study without a cluster: status table, export, compute summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from advtune.trainables.config import TrialConfig

from .errors import StudyError
from .records import StudyRecords, TrialRecord, read_marker

__all__ = ["load_study", "pareto", "export", "entry_name", "compute_summary", "trial_config", "pareto_dir",
           "PARETO_FIGURES"]

# What the clean-vs-robust Pareto set is computed over: both figures of every trial at its best epoch (the
# strong figure exists only for the trials the final evaluation attacked, so a front over it would leave the
# others out). A robust+clean study's front is the one its search found, over the same two figures.
PARETO_FIGURES = ("robust_acc (the selection figure: the validation attack's best robust accuracy) and clean_acc "
                  "(clean validation accuracy at that epoch), both at each trial's best epoch")


def load_study(study_dir: str | Path) -> tuple[dict[str, Any], list[TrialRecord]]:
    marker = read_marker(study_dir)
    return marker, StudyRecords(study_dir, tensorboard=False).load()


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


def _rerun(rec: TrialRecord, cfg: TrialConfig, checkpoint: str, as_stopped: bool) -> tuple[TrialConfig, str]:
    """The config the export writes and what its rerun reproduces. A trial stopped early (ASHA, a guard)
    is exported with its full ``epochs`` by default: the configuration as searched. Its figures are those
    of a truncated run, and run to the end it usually lands elsewhere (a stopped trial's rerun reached
    49.7% where its exported figure was 20.8%). ``as_stopped``: ``epochs`` = the length it ran, rounded
    up; schedules are functions of progress t, so that compresses the whole schedule: not the same run
    either. The honest 'evaluated model back' is the trial's best.pt."""
    import math

    ran = rec.epochs_run
    if not rec.metrics or ran >= cfg.epochs:
        return cfg, (f"reruns the trial as it ran ({cfg.epochs} epochs); the model it was evaluated as is "
                     f"{checkpoint}")
    why = "stopped by ASHA" if rec.state == "pruned" else f"ended early ({rec.state.replace('_', ' ')})"
    stopped = max(1, math.ceil(ran))
    if not as_stopped:
        return cfg, (f"this trial was {why} at epoch {ran:g} of {cfg.epochs}: the rerun trains the full "
                     f"{cfg.epochs}-epoch schedule, not the model that was evaluated (its figures are from a "
                     f"truncated run and a full run usually ends elsewhere). The evaluated model is {checkpoint}; "
                     f"`advtune export --as-stopped` writes epochs: {stopped}, the length it ran")
    return cfg.replace(epochs=stopped), (
        f"this trial was {why} at epoch {ran:g} of {cfg.epochs}; epochs is set to {stopped} (--as-stopped). "
        f"Schedules are functions of training progress, so this compresses the whole {cfg.epochs}-epoch schedule "
        f"(warmup, epsilon ramp, decay) into {stopped} epochs: not the same run either. The evaluated model "
        f"itself is {checkpoint}")


def _entry(study_dir: Path, marker: dict[str, Any], rec: TrialRecord, path: Path,
           strong: dict[str, Any] | None = None, as_stopped: bool = False) -> dict[str, Any]:
    from .final_eval import GAP_WARNING

    checkpoint = _portable(_checkpoint(study_dir, marker, rec), marker, study_dir, path.parent)
    cfg = trial_config(marker, rec)
    if cfg.pretrained:
        cfg = cfg.replace(pretrained=_portable(cfg.pretrained, marker, study_dir, path.parent))
    cfg, rerun = _rerun(rec, cfg, checkpoint, as_stopped)
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
        "checkpoint": checkpoint,
        "paths": PATHS_NOTE,
        "command": f"advtune train --config {path} --out runs/rerun-{rec.trial_id}",
        "rerun": rerun,
        "config": cfg.to_dict(),
        "load_report": _load_report(rec),
    }


def _load_report(rec: TrialRecord) -> dict[str, Any] | None:
    """What loading the trial's starting point did (``load_report.json``), or None when it loaded none."""
    from advtune.trainables.load_report import read_report

    report = read_report(rec.directory)
    return report.to_dict() if report is not None else None


PATHS_NOTE = ("checkpoint and config.pretrained, where they are files of the study, are relative to this file's "
              "folder (advtune train --config resolves them so), so a copied or moved study's exports rerun")


def _portable(value: str, marker: dict[str, Any], study_dir: Path, base: Path) -> str:
    """A path of a file inside the study, written relative to ``base`` (the export's folder); anything else (a
    URI, a file outside the study, ``auto``, ``torchvision:DEFAULT``) as it is. The marker holds paths as they
    were where the study ran; the study may since have been copied or moved to ``study_dir``."""
    import os

    if "://" in value or not os.path.isabs(value):
        return value
    spec = marker.get("spec", {})
    roots = [Path(study_dir).resolve()]
    if spec.get("storage_path") and spec.get("name") and "://" not in str(spec["storage_path"]):
        roots.append(Path(spec["storage_path"]) / spec["name"])  # where the study was when it ran
    for root in roots:
        try:
            inside = Path(value).relative_to(root)
        except ValueError:
            continue
        rel = os.path.relpath(Path(study_dir).resolve() / inside, Path(base).resolve())
        return rel if rel.startswith("../") else "./" + rel  # the prefix marks it relative for from_yaml
    return value


def _checkpoint(study_dir: Path, marker: dict[str, Any], rec: TrialRecord) -> str:
    """The trial's best.pt: in its folder, or for a study in cloud storage its URI in the bucket."""
    from .storage import storage_for

    spec = marker["spec"]
    return storage_for(spec.get("storage_path", ""), spec.get("name", "")).best_checkpoint(
        rec.trial_id, rec.directory, study_dir)


def pareto_dir(study_dir: str | Path) -> Path:
    """Where a Pareto export goes by default: its own folder, so its rank prefixes never mix with top-k's."""
    return Path(study_dir) / "export" / "pareto"


def export(study_dir: str | Path, top_k: int = 1, pareto_front: bool | None = None, fmt: str = "yaml",
           out: str | Path | None = None, as_stopped: bool = False) -> list[Path]:
    """Write the best ``top_k`` trials (or the clean-vs-robust Pareto set) one file each, plus an
    index. Each file loads with ``advtune train --config FILE``. Returns the paths written.

    ``pareto_front`` None: the study's objective decides (``robust+clean``: the Pareto front its
    search found, see ``study.objectives.search_front``; otherwise top-k). Top-k ranks as
    ``study.objectives.rank_trials`` (a ``robust:clean>=X`` floor first). Default folder: STUDY/export,
    STUDY/export/pareto for a Pareto set. ``as_stopped``: a trial stopped early is written with the
    epochs it ran (see ``_rerun``)."""
    if top_k < 1:
        raise StudyError(f"--top-k {top_k}: export at least 1 trial (--top-k 1 is the best)")
    from .objectives import objective_of, search_front

    study_dir = Path(study_dir)
    marker, records = load_study(study_dir)
    ranked = [r for r in records if r.best]
    if not ranked:
        raise StudyError(f"{study_dir} has no trial with a finished validation yet; nothing to export")
    from .final_eval import load_final, strong_of
    from .objectives import rank_trials

    final = load_final(study_dir)
    objective = objective_of(marker)
    pareto_front = objective.multi if pareto_front is None else pareto_front
    front = search_front(study_dir, marker, ranked, objective) if pareto_front else None
    by = ("strong_robust_acc (the final strong evaluation), then trials without one by robust_acc"
          if final.get("trials") else "best robust_acc (no final strong evaluation)")
    selection = (f"pareto front the search found ({objective.text})" if front else "pareto") if pareto_front \
        else f"top-{top_k} by {by}" + ("" if objective.min_clean is None else f", {objective.text} first")
    chosen = (front or pareto(ranked)) if pareto_front else rank_trials(ranked, final, objective)[:top_k]
    out_dir = Path(out) if out else (pareto_dir(study_dir) if pareto_front else study_dir / "export")
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "json" if fmt == "json" else "yaml"
    written, entries = [], []
    for i, rec in enumerate(chosen, 1):
        path = (out_dir / entry_name(i, rec.trial_id, ext)).resolve()
        entry = {"rank": i, **_entry(study_dir, marker, rec, path, strong_of(final, rec.trial_id), as_stopped)}
        _dump(entry, path, fmt, comment=entry["rerun"])
        entries.append(entry)
        written.append(path)
    index = out_dir / f"{'pareto' if pareto_front else 'best'}.{ext}"
    _dump({"study": str(study_dir), "objective": objective.text, "selection": selection,
           **({"figures": PARETO_FIGURES} if pareto_front else {}), "entries": entries}, index, fmt)
    return [index, *written]


def entry_name(rank: int, trial_id: str, ext: str = "yaml") -> str:
    """File name of an exported trial (the report names the same files in its rerun commands)."""
    return f"{rank:02d}-{trial_id}.{ext}"


def _dump(data: Any, path: Path, fmt: str, comment: str = "") -> None:
    """JSON, or YAML headed by ``comment`` as # lines (what a rerun of the file reproduces)."""
    if fmt == "json":
        path.write_text(json.dumps(data, indent=2))
        return
    import textwrap

    head = "".join(f"# {ln}\n" for ln in textwrap.wrap(comment, 100)) if comment else ""
    path.write_text(head + yaml.safe_dump(data, sort_keys=False))


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
