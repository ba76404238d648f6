"""`advtune status | export | report`: the commands that read a study (no Ray needed).

A study is read from its folder, or from a fresh local copy of a cloud study's records; status and
export also say whether the study is running, complete or interrupted (``study/liveness.py``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .errors import StudyError

__all__ = ["cmd_status", "cmd_export", "cmd_report"]


def _local(location: str):
    """A study's folder to read: the path, or a fresh local copy of a URI's records (and the Remote to push to)."""
    from .storage import is_uri, open_study

    if not is_uri(location):
        _check_exists(location)
    return open_study(location)


def _check_exists(location: str) -> None:
    """A study path that does not exist: say so, and list the studies in the default storage folder."""
    import os

    path = Path(location)
    if path.exists():
        return
    from .records import MARKER

    root = Path(os.environ.get("ADVTUNE_STORAGE", "advtune_runs"))
    found = sorted(d for d in root.glob("*") if (d / MARKER).exists()) if root.is_dir() else []
    near = ""
    if found:
        import difflib

        close = difflib.get_close_matches(str(path), [str(d) for d in found], n=1)
        near = f"; did you mean {close[0]}?" if close else ""
    listing = (f"studies under {root}/: {', '.join(str(d) for d in found)}{near}" if found else
               f"no study under {root}/ here either (pass the folder `advtune run` printed)")
    raise StudyError(f"{location} does not exist; {listing}")


def _study_state(study_dir: Path, records, spec: dict) -> tuple[str, str]:
    """(``running`` | ``complete`` | ``interrupted``, one line for the user)."""
    from .liveness import study_state

    state, driver = study_state(study_dir, records, spec.get("num_samples", len(records)))
    if state == "running":
        return state, f"running ({driver.describe()})"
    if state == "complete":
        return state, "complete"
    return state, f"interrupted (no driver running): continue it with advtune resume {study_dir}"


def _status_header(study_dir: Path, marker: dict, records, final: dict) -> dict:
    from .export import compute_summary

    spec = marker["spec"]
    summary = compute_summary(records, spec["max_epochs"])
    state, line = _study_state(study_dir, records, spec)
    if state == "complete" and not final.get("trials") and spec.get("final_attack", "auto") != "none":
        line += "; no final strong evaluation yet (advtune resume runs it)"
    return {"study": spec["name"], "directory": str(study_dir), "state": state, "state_line": line,
            "objective": spec.get("objective") or "robust", "trials_recorded": len(records),
            "num_samples": spec["num_samples"], "pruned": summary["pruned"]}


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch is not None and args.format != "table":
        raise StudyError(f"--watch redraws the table; drop --format {args.format} (JSON and CSV print once)")
    if args.watch is not None and args.watch <= 0:
        raise StudyError(f"--watch {args.watch:g}: give the seconds between redraws, e.g. --watch 10")
    study_dir, _ = _local(args.study)
    if args.watch is None:
        _print_status(study_dir, args.format)
        return 0
    import sys

    clear = sys.stdout.isatty()
    try:
        while True:
            if clear:
                print("\033[H\033[J", end="")
            state = _print_status(study_dir, "table")
            if state != "running":
                print(f"the study is no longer running ({state}); stopped watching")
                return 0
            print(f"(refreshing every {args.watch:g} s while it runs; Ctrl-C stops watching, not the study)",
                  flush=True)
            time.sleep(args.watch)
            study_dir, _ = _local(args.study)  # a URI: fresh records
    except KeyboardInterrupt:
        return 0


def _print_status(study_dir: Path, fmt: str) -> str:
    """Print the study's status in ``fmt``; returns its state (running | complete | interrupted)."""
    from .export import load_study
    from .final_eval import load_final
    from .objectives import objective_of
    from .status import status_csv, status_json, status_legend, status_rows, status_table

    marker, records = load_study(study_dir)
    final = load_final(study_dir)
    objective = objective_of(marker)
    header = _status_header(study_dir, marker, records, final)
    if fmt == "json":
        print(status_json(header, status_rows(records, final, objective)))
    elif fmt == "csv":
        print(status_csv(status_rows(records, final, objective)), end="")
    else:
        print(f"study {header['study']}: {header['trials_recorded']} of {header['num_samples']} trials recorded, "
              f"{header['pruned']} pruned by ASHA; {header['state_line']}")
        print(status_table(records, final, objective))
        print("\n".join(status_legend(final, objective)))
        _print_load_reports(records)
    return header["state"]


def _print_load_reports(records) -> None:
    """One line per distinct starting-point load (all trials of a study usually share one)."""
    from advtune.trainables.load_report import read_report

    seen: dict[str, list[str]] = {}
    for rec in records:
        report = read_report(rec.directory)
        if report is not None:
            seen.setdefault(report.short(), []).append(rec.trial_id)
    for text, trials in seen.items():
        who = "every trial" if len(trials) == len(records) else f"{len(trials)} trials"
        print(f"starting point ({who}): {text}")


def cmd_export(args: argparse.Namespace) -> int:
    import sys

    from .export import PARETO_FIGURES, export

    if args.top_k is not None and args.top_k < 1:
        raise StudyError(f"--top-k {args.top_k}: export at least 1 trial (--top-k 1 is the best; --pareto for the "
                         "clean-vs-robust set)")
    study_dir, remote = _local(args.study)
    from .export import load_study

    marker, records = load_study(study_dir)
    state, line = _study_state(study_dir, records, marker["spec"])
    if state != "complete":
        print(f"advtune export: warning: study {marker['spec']['name']} is still running" if state == "running"
              else f"advtune export: warning: study {marker['spec']['name']}'s search has not finished",
              file=sys.stderr)
        print(f"  ({line}); this export is of the {len(records)} trials recorded so far, before the final strong "
              "evaluation: export again when it has ended", file=sys.stderr)
    # --top-k asks for a ranking; with neither flag a two-objective study exports its Pareto front
    pareto_front = True if args.pareto else (False if args.top_k is not None else None)
    paths = export(study_dir, top_k=args.top_k if args.top_k is not None else 1, pareto_front=pareto_front,
                   fmt=args.format, out=args.out, as_stopped=args.as_stopped)
    if remote is not None and args.out is None:
        remote.push()
        print(f"uploaded to {remote.uri}/export/")
    index = json.loads(paths[0].read_text()) if args.format == "json" else _read_yaml(paths[0])
    print(f"wrote {paths[0]}  ({index['selection']})")
    if "figures" in index:
        print(f"  Pareto set over the figures {PARETO_FIGURES}")
    for p, entry in zip(paths[1:], index["entries"]):
        print(f"  {p}   rerun: advtune train --config {p}")
        if entry["rerun"].startswith("this trial was"):  # stopped early: say what the rerun is (export._rerun)
            ran, epochs = entry["metrics"]["epochs_run"], entry["config"]["epochs"]
            print(f"      stopped at epoch {ran:g}: " + (
                f"written with epochs {epochs} (--as-stopped), a compressed schedule, not the same run" if
                args.as_stopped else f"the rerun trains the full {epochs}-epoch schedule, not the stopped model "
                f"(that is {entry['checkpoint']}; --as-stopped writes the stopped length)"))
    return 0


def _read_yaml(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    study_dir, remote = _local(args.study)
    index = write_report(study_dir, out=args.out, top_k=args.top_k)
    if remote is not None and args.out is None:
        remote.push()
        print(f"uploaded to {remote.uri}/report/")
    print(f"wrote {index}  (and the PNG plots beside it; open it in a browser, no network needed)")
    return 0
