"""`advtune run | resume`: the commands that start or continue a study, and every command's arguments
(``register``). The commands that only read a study live in ``study/reading.py``."""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from .errors import StudyError
from .reading import cmd_export, cmd_report, cmd_status

__all__ = ["register", "run", "cmd_run", "cmd_resume", "cmd_status", "cmd_export", "cmd_report"]


def _pretrained_target(spec, study_dir: Path):
    """With ``pretrained: auto`` every trial loads ``<study>/pretrained/best.pt`` — one starting
    point for all, visible to every node through the shared study directory. Returns the spec that
    points there and the config to pretrain with (None when a starting point was given)."""
    cfg = spec.base_config
    if cfg.pretrained != "auto":
        return spec, None
    from dataclasses import replace

    target = spec.storage.pretrained_target(study_dir)  # a study in cloud storage: in the bucket
    return replace(spec, base_config=cfg.replace(pretrained=target)), cfg


def _ensure_pretrained(tb, spec, pretrain_cfg: dict | None) -> None:
    """Pretrain on the cluster, with one trial's resources (a GPU where trials have one), not on
    the driver's machine; nothing to do when the file is there (a resumed study)."""
    target = spec.base_config.pretrained or ""
    if pretrain_cfg is None:
        return
    if spec.storage.has_pretrained(target):
        return
    from advtune.trainables.pretrain import pretrain_into

    print("pretraining the starting point (natural training, cached)…", flush=True)
    tb.run_task(pretrain_into, pretrain_cfg, str(target), num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial)


def _connect(tb, spec) -> bool:
    """Start or join Ray; an ``--address`` that does not answer is refused in seconds with one line (no Ray
    retries behind its C++ warnings). Returns True when this process started Ray."""
    from .cluster import probe_address

    probe_address(spec.address)
    try:
        return tb.init_ray(spec.address, num_cpus=None, verbose=spec.verbose)
    except (ConnectionError, TimeoutError) as exc:
        raise StudyError(f"--address {spec.address}: Ray could not join the cluster ({str(exc).splitlines()[0]}); "
                         "check the address, that this machine runs the cluster's Ray version, and its "
                         "authentication token") from None


def _check_cluster(spec):
    """Every check that needs Ray: CPUs per trial, resources (the autoscaler's node types too), storage.
    Returns the spec with its CPUs resolved."""
    from . import tune_backend as tb
    from .cluster import autoscaler_running, node_types
    from .spec import check_resources, check_storage, resolve_cpus

    nodes = tb.cluster_nodes()
    autoscaling = autoscaler_running()
    types, _ = node_types() if autoscaling else ([], "")
    if spec.cpus_per_trial is None:
        spec = resolve_cpus(spec, nodes, types)
        print(f"cpus per trial: {spec.cpus_per_trial:g} (auto: {spec.slots} trial(s) at once on this cluster's "
              "CPUs; set --cpus-per-trial to choose)", flush=True)
    waiting = check_resources(spec, nodes, types, autoscaling)
    grows = autoscaling and (not types or any(t.launchable for t in types))
    check_storage(spec, len(nodes), grows=grows)
    if waiting:
        print(waiting, flush=True)
    return spec


def _dry_run_cluster(spec) -> None:
    """``--dry-run --address``: join the cluster, say which live nodes and node types can host a trial."""
    from . import tune_backend as tb
    from .cluster import autoscaler_running, node_types
    from .spec import describe_cluster, resolve_cpus

    started = _connect(tb, spec)
    try:
        types, source = node_types() if autoscaler_running() else ([], "")
        nodes = tb.cluster_nodes()
        print("\n".join(describe_cluster(resolve_cpus(spec, nodes, types), nodes, types, source)), flush=True)
    finally:
        if started:
            import ray

            ray.shutdown()


def _launch(spec, space, study_dir: Path, resume: bool, pretrain_cfg: dict | None, before_start=None) -> int:
    """Join Ray, run every check, then ``before_start()`` (a new study writes itself there: nothing is written
    before every check has passed), then the search, the final evaluation and the export."""
    from .records import preload_tensorboard

    preload_tensorboard()  # while Ray starts
    from . import tune_backend as tb
    from .export import compute_summary, export, load_study

    started = _connect(tb, spec)
    t0, release_lease = time.time(), None
    try:
        spec = _check_cluster(spec)
        if before_start is not None:
            before_start()
        # `advtune status` / `export` / `resume` can tell a running study (study/liveness.py)
        release_lease = spec.storage.hold_driver_lease(study_dir)
        _ensure_pretrained(tb, spec, pretrain_cfg)
        tuner = tb.restore_tuner(spec, study_dir) if resume else tb.make_tuner(spec, space, study_dir)
        tb.fit(tuner)
        spec.storage.after_search(study_dir)
        from .final_eval import run_final_eval

        run_final_eval(tb, spec, study_dir)
        from .trackers import log_final

        log_final(spec, study_dir)  # the strong figures, to each trial's MLflow run (--tracker mlflow)
    finally:
        if release_lease is not None:
            release_lease()
        if started:
            import ray

            ray.shutdown()
    wall = time.time() - t0
    marker, records = load_study(study_dir)
    if not records:
        raise StudyError(f"the study in {study_dir} ran no trial; see the messages above")
    summary = compute_summary(records, spec.max_epochs)
    paths = export(study_dir, top_k=3)
    from .final_eval import describe as describe_final, load_final, rank, strong_of, strong_table
    from .objectives import search_front

    objective = spec.parsed_objective
    final = load_final(study_dir)
    best = next(iter(rank(records, final, objective)), None)
    print("\n" + "=" * 78)
    print(f"study {spec.name}: {summary['trials']} trials, {summary['pruned']} stopped early by ASHA, "
          f"{wall:.0f} s wall")
    if best is not None:
        strong = strong_of(final, best.trial_id)
        print(f"best trial {best.trial_id} ({best.state}): robust val acc {100 * best.best['robust_acc']:.1f}%"
              + (f" (strong attack {100 * strong['robust_acc']:.1f}%)" if strong else "")
              + f", clean val acc {100 * best.best['clean_acc']:.1f}% at epoch {best.best['epoch']:g}")
        print("best config (searched values): " + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
        if not objective.feasible(best):
            print(f"no trial kept clean val acc >= {100 * objective.min_clean:g}%: the one above is the most robust")
    front = search_front(study_dir, marker, records, objective) if objective.multi else None
    if front:
        print(f"Pareto front the search found ({len(front)} trials, robust / clean val acc): " + ", ".join(
            f"{r.trial_id} {100 * r.best['robust_acc']:.1f}/{100 * r.best['clean_acc']:.1f}%" for r in front))
    ratio = summary["grad_passes"] / max(summary["grad_passes_no_pruning"], 1)
    print(f"compute: {summary['grad_passes']:,.0f} grad passes, {summary['trial_seconds']:.0f} trial-seconds; "
          f"without pruning the same trials would cost {summary['grad_passes_no_pruning']:,.0f} grad passes, "
          f"{summary['trial_seconds_no_pruning']:.0f} trial-seconds ({100 * ratio:.0f}% spent)")
    spec.storage.push(study_dir)  # a cloud study: the export and the last records, to the bucket
    if spec.storage.staged_note():
        print(f"study in {spec.location}{spec.storage.staged_note()}")
    print(f"export: {paths[0]}  (rerun: advtune train --config {paths[1]})")
    print(f"compare: tensorboard --logdir {study_dir}/tensorboard")  # run names: trial id and searched values
    if final.get("trials"):
        print(f"\nstrong evaluation ({describe_final(final)}; ranked by strong%):\n{strong_table(records, final, objective)}")
    return 0


def _cpus(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of CPUs; write e.g. 2, 0.5 or auto") from None


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _write_marker(spec, space, study_dir: Path, pretrain: dict | None) -> None:
    from .records import MARKER

    data = {"advtune_study": 1, "spec": spec.to_dict(), "space_base": space.base,
            "space_params": [p.name for p in space.params], "pretrain_from": pretrain}
    study_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(space.source, study_dir / "space.yaml")
    (study_dir / MARKER).write_text(json.dumps(data, indent=2, default=str))


def cmd_run(args: argparse.Namespace) -> int:
    run(args)
    return 0


def run(args: argparse.Namespace, base=None):
    """`advtune run` and ``advtune.run_study``: resolve, check and run a study. ``base``: the base TrialConfig
    (default: ``--config`` and ``--set``). Returns the StudySpec, or None for ``--dry-run``."""
    from .spec import build_spec, describe

    if base is None:  # --config and --set, read as every command reads them
        from advtune.trainables.config import TrialConfig

        base = TrialConfig.load(args.config, args.set)
    spec, space = build_spec(args, base)
    from advtune.trainables.user_code import check_importable

    check_importable(spec.base_config)  # a model or dataset import path that fails is refused before Ray starts
    print(describe(spec, space), flush=True)
    if args.dry_run:
        _warm_start(spec, space)  # says what a warm start would take, or refuses it, before anything runs
        if spec.address:
            _dry_run_cluster(spec)
        return None
    study_dir = spec.study_dir
    spec.storage.check_free()  # a cloud study: bucket, credentials, name free; clears a stale staging folder
    if study_dir.exists() and any(study_dir.iterdir()) and not _reusable(study_dir):
        raise StudyError(f"study directory {study_dir} already exists; continue it with `advtune resume {study_dir}` "
                         "or choose another --name")
    spec, pretrain_cfg = _pretrained_target(spec, study_dir)
    pretrain = pretrain_cfg.to_dict() if pretrain_cfg is not None else None
    warm = _warm_start(spec, space)  # refuses an incomparable study before anything is written

    def write_study() -> None:  # called by _launch once every check has passed
        if study_dir.exists():  # a folder left by a study that never started (_reusable)
            shutil.rmtree(study_dir)
        _write_marker(spec, space, study_dir, pretrain)
        if warm is not None:
            from .warm_start import seed

            seed(study_dir, spec, warm)
        spec.storage.push(study_dir)

    _launch(spec, space, study_dir, resume=False, pretrain_cfg=pretrain, before_start=write_study)
    return spec


# What a study that never started can hold: its marker and space, a warm-start seed, a starting point pretrained
# before a failure. Anything else (Ray Tune's state, trials, a user's own files) makes the folder a study.
_NEVER_STARTED = {"advtune_study.json", "space.yaml", "optuna.db", "pretrained"}


def _reusable(study_dir: Path) -> bool:
    """A folder left by `advtune run` before any trial ran (no Ray Tune state): its name may be reused."""
    entries = {p.name for p in study_dir.iterdir()}
    if not entries <= _NEVER_STARTED or "advtune_study.json" not in entries:
        return False
    print(f"{study_dir} holds only the marker of a study that never started (no Ray Tune state): reusing its name",
          flush=True)
    return True


def _warm_start(spec, space):
    if not spec.warm_start:
        return None
    from .warm_start import collect

    warm = collect(spec, space)
    print("\n".join(warm.lines), flush=True)
    return warm


def cmd_resume(args: argparse.Namespace) -> int:
    from .records import read_marker
    from .spec import StudySpec

    from .storage import is_uri

    if is_uri(args.study):
        return _resume_cloud(args)
    study_dir = Path(args.study).resolve()
    marker = read_marker(study_dir)  # refuses folders advtune did not write: restore unpickles their state
    if not any(study_dir.glob("experiment_state-*.json")) and not (study_dir / "tuner.pkl").exists():
        raise StudyError(f"{study_dir} holds no Ray Tune state to resume: the study never started (only its marker was "
                         f"written). Start it again with `advtune run --name {study_dir.name} --storage-path "
                         f"{study_dir.parent} ...`: advtune run reuses the name of a study that never started")
    spec = StudySpec.from_dict(marker["spec"])
    from .final_eval import check_settings

    check_settings(spec.final_attack, spec.final_top_k, spec.final_images, spec.num_samples)  # before Ray starts
    _refuse_running(spec.name, study_dir, study_dir)
    done = _nothing_to_resume(spec, study_dir)
    if done:
        print(done)
        return 0
    if args.address is not None:
        from dataclasses import replace

        spec = replace(spec, address=args.address)
    from .records import StudyRecords

    StudyRecords(study_dir).drop_never_started()  # a trial folder a killed driver left before Tune saved the trial
    added = StudyRecords(study_dir).complete_from_histories()
    print(f"resuming study {spec.name} in {study_dir}"
          + (f" ({added} epoch(s) restored from the trials' histories)" if added else ""), flush=True)
    return _launch(spec, None, study_dir, resume=True, pretrain_cfg=marker.get("pretrain_from"))


def _refuse_running(name: str, location, study_dir: Path) -> None:
    """Refuse to resume a study whose driver still runs (``study/liveness.py``): its trials would run twice."""
    from .liveness import STALE_BEATS, driver_of

    driver = driver_of(study_dir)
    if driver is not None:
        gone = "" if driver.beat is None else (f" (a driver killed on another machine counts as gone once it has "
                                               f"missed {STALE_BEATS} heartbeats)")
        raise StudyError(f"study {name} is running ({driver.describe()}); a second driver would run its trials "
                         f"twice. Follow it with advtune status {location} --watch{gone}")


def _nothing_to_resume(spec, study_dir: Path) -> str | None:
    """A line saying the study is complete when resuming it would do nothing: every trial asked for has
    ended and the final strong evaluation (unless off) holds every trial it would attack, with the
    study's settings (as ``final_eval.run_final_eval`` decides them). None otherwise."""
    from .final_eval import load_final, resolve_attack, resolve_images, study_candidates
    from .records import FINAL_STATES, StudyRecords

    records = StudyRecords(study_dir, tensorboard=False).load()
    if len(records) < spec.num_samples or any(r.state not in FINAL_STATES for r in records):
        return None
    what = "final strong evaluation off"
    if spec.final_attack != "none":
        final = load_final(study_dir)
        settings = final.get("settings", {})
        if (settings.get("attack") != resolve_attack(spec.final_attack)
                or settings.get("images") != resolve_images(spec.final_images, spec.gpus_per_trial)):
            return None
        checkpoints = spec.storage.best_checkpoints(records)
        chosen = study_candidates(spec, records, has_best=lambda r: r.trial_id in checkpoints)
        if any(r.trial_id not in (final.get("trials") or {}) for r in chosen):
            return None
        what = f"final strong evaluation of {len(chosen)} trials done"
    return (f"study {spec.name} is complete ({len(records)} of {spec.num_samples} trials ended, {what}): nothing to "
            f"resume. Read it with advtune status / export / report {study_dir}; to search further, start a new "
            f"study with advtune run --warm-start {study_dir}")


def _resume_cloud(args: argparse.Namespace) -> int:
    """Resume a study from its URI alone: its records come down into a fresh staging folder, Ray restores
    its own state from the bucket, the epochs a killed driver did not push are put back from the trials'
    checkpoints."""
    from dataclasses import replace

    from .cloud_study import complete_records, drop_never_started, fill_placeholders
    from .records import StudyRecords, read_marker
    from .spec import StudySpec
    from .storage import open_study

    study_dir, remote = open_study(args.study)
    marker = read_marker(study_dir)
    _refuse_running(args.study, args.study, study_dir)  # the heartbeat the bucket holds (cloud_study.DriverHeartbeat)
    if not remote.exists("tuner.pkl"):
        raise StudyError(f"{args.study} holds no Ray Tune state to resume (the study never started); start it "
                         "again with advtune run")
    spec = StudySpec.from_dict(marker["spec"])
    if args.address is not None:
        spec = replace(spec, address=args.address)
    remote.local = spec.study_dir
    if remote.local != study_dir:  # the URI was written another way (a trailing slash): stage where the spec says
        remote.pull()
    drop_never_started(remote, StudyRecords(remote.local))
    added = complete_records(remote, StudyRecords(remote.local))
    fill_placeholders(remote)
    remote.push()
    print(f"resuming study {spec.name} from {spec.location} (records staged in {remote.local}"
          + (f"; {added} epoch(s) restored from the trials' checkpoints" if added else "") + ")", flush=True)
    return _launch(spec, None, remote.local, resume=True, pretrain_cfg=marker.get("pretrain_from"))


def _final_args(p) -> None:
    from .final_eval import CHOICES, CPU_IMAGES, DEFAULT_IMAGES, GPU_IMAGES

    p.add_argument("--final-attack", choices=CHOICES, default="auto",
                   help="strong attack the top trials must survive before export: auto (default: apgd where the "
                   "autoattack extra is installed, else pgd), autoattack (standard), apgd (APGD-CE + APGD-T), pgd "
                   "(PGD-50, 5 restarts), none")
    p.add_argument("--final-top-k", type=int, default=None, metavar="K",
                   help="evaluate the K best trials by selection figure (default: every trial that reached ASHA's last "
                   "rung, stopped there or not, and the 3 best by selection figure)")
    p.add_argument("--final-images", type=int, default=DEFAULT_IMAGES, metavar="N",
                   help=f"the first N validation images, the same for every trial (default {CPU_IMAGES}; "
                   f"{GPU_IMAGES} when trials have GPUs)")


def register(sub) -> None:
    p = sub.add_parser("run", help="launch an LR-schedule/epsilon search (Ray Tune + Optuna TPE + ASHA)",
                       description="Launch a study. With no arguments: local Ray, digits, a naturally pretrained "
                       "small CNN, the sfd space.")
    p.add_argument("--space", default="sfd", help="preset (sfd, cyclic, sat, scope, attack) or a YAML file")
    p.add_argument("--config", metavar="FILE", help="base trial config YAML (fixed values of every trial)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config key")
    p.add_argument("--num-samples", type=int, default=12, help="number of trials (default 12)")
    p.add_argument("--max-epochs", type=int, default=8, help="epochs of a trial that is never stopped")
    p.add_argument("--grace-period", type=float, default=None, metavar="EPOCHS",
                   help="ASHA's first rung, in the pruning rule's unit: epochs under epoch (default: the end of the "
                        "space's longest warmup/ramp, never earlier); epochs at full strength under full_strength, "
                        "where giving it (default 1.75) replaces the default two cuts (the top 1/2 kept at 0.75, the "
                        "top 1/3 at 1.75) with ASHA's rungs G*R^k; at or past --max-epochs nothing is pruned")
    p.add_argument("--reduction-factor", type=int, default=None, metavar="R",
                   help="ASHA keeps the top 1/R at each rung (default 2 under epoch; under full_strength giving it "
                        "replaces the default two cuts with ASHA's rungs, 4: the previous default). The defaults are "
                        "the pruning-fidelity replay's picks (docs/benchmarks.md, section 9)")
    p.add_argument("--pruning", choices=("auto", "epoch", "full_strength"), default="auto",
                   help="ASHA's time: 'full_strength' counts each trial's epochs after its own LR warmup/peak and eps "
                        "ramp (fair to slow starts; auto's choice when the space searches warmup, eps_ramp or peak_at), "
                        "'epoch' raw epochs (the old behaviour). See docs/benchmarks.md, section 9")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once")
    p.add_argument("--cpus-per-trial", type=_cpus, default=None, metavar="N|auto",
                   help="CPUs (and torch threads) per trial; default auto: the cluster's CPUs divided among the "
                   "trials that run at once, at most the smallest node's CPUs")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions (0.25) pack trials on one GPU")
    p.add_argument("--address", default=None, help="Ray cluster to join: auto, or ray://host:10001 (default: "
                   "start Ray on this machine)")
    p.add_argument("--storage-path", default=None, help="where the study directory goes: a shared filesystem "
                   "path or cloud URI on a multi-node cluster (default ./advtune_runs)")
    p.add_argument("--assume-shared-storage", action="store_true",
                   help="trust that --storage-path is visible to every node")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="with a cloud --storage-path: keep the Optuna study in this database (any URL Optuna "
                   "accepts, e.g. postgresql://host/db) so optuna-dashboard can watch it from another machine")
    p.add_argument("--name", default=None, help="study name (default <space>-<dataset>-<time>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--objective", default="robust", metavar="robust|robust+clean|robust:clean>=X",
                   help="what the search maximises: best robust val accuracy (default); robust+clean, the "
                   "clean-robust Pareto front (multi-objective TPE); or robust:clean>=0.85, the most robust trial "
                   "that keeps clean accuracy >= 85%%. ASHA prunes on robust accuracy in every case")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe",
                   help="Optuna sampler: tpe (default) or random (found better configurations in studies of ~8 trials "
                        "or fewer, where TPE has not yet proposed from its model: docs/benchmarks.md section 3)")
    p.add_argument("--warm-start", nargs="+", default=[], metavar="DIR",
                   help="earlier study directories (same space and threat model) whose finished trials seed the "
                   "sampler, without re-running them")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failing trial")
    p.add_argument("--dry-run", action="store_true", help="print the resolved study and exit")
    p.add_argument("--verbose", action="store_true", help="Ray Tune's own output too")
    p.add_argument("--tracker", action="append", default=[], metavar="mlflow[:URI]|wandb[:PROJECT]",
                   help="also log every trial to MLflow or Weights & Biases through Ray Tune's logger callbacks "
                   "(repeatable; needs pip install 'advtune[mlflow]' or 'advtune[wandb]')")
    _final_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted study (only directories advtune wrote)")
    p.add_argument("study", help="the study directory, or its URI (s3://BUCKET/PREFIX/NAME)")
    p.add_argument("--address", default=None)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="table of a study's trials",
                       description="A study's trials, ranked as export ranks them, and whether it is running.")
    p.add_argument("study")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table (default), json (the study and every trial, accuracies as fractions) or csv (one "
                   "row per trial, searched values as param.NAME columns)")
    p.add_argument("--watch", type=float, nargs="?", const=10.0, default=None, metavar="SECONDS",
                   help="redraw the table every SECONDS (default 10) while the study runs; stops when it ends")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="write the best configs (loadable by advtune train --config)")
    p.add_argument("study")
    p.add_argument("--top-k", type=int, default=None, help="the k most robust trials (default 1; feasible "
                   "ones first under robust:clean>=X)")
    p.add_argument("--pareto", action="store_true", default=None, help="the clean-vs-robust Pareto set instead of "
                   "top-k (the default of a robust+clean study: the front its search found)")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.add_argument("--out", default=None, help="folder (default STUDY/export; STUDY/export/pareto for --pareto)")
    p.add_argument("--as-stopped", action="store_true",
                   help="write a trial stopped early (by ASHA or a guard) with the epochs it ran instead of its full "
                   "epochs: a compressed schedule, not the same run either (its best.pt is the evaluated model)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="plots and one HTML page of a study (schedules, Pareto, curves, compute)",
                       description="Write PNG plots and a self-contained index.html about a study, read from its "
                       "files (no Ray needed).")
    p.add_argument("study")
    p.add_argument("--out", default=None, help="folder (default STUDY/report)")
    p.add_argument("--top-k", type=int, default=5, help="trials whose schedules and configs are shown (default 5)")
    p.set_defaults(func=cmd_report)


