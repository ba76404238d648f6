"""The ``advtune`` command line.

Errors the user can fix (bad config key or value, missing dataset, unusable checkpoint) print one
message naming the problem and the fix, and exit 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Callable

__all__ = ["main", "build_parser"]


def _user_errors() -> tuple[type[BaseException], ...]:
    from advtune.trainables.checkpoints import CheckpointError
    from advtune.trainables.config import ConfigError
    from advtune.trainables.data import DataError

    from advtune.search_spaces import SpaceError
    from advtune.study.errors import StudyError

    return (ConfigError, DataError, CheckpointError, SpaceError, StudyError)


def _load_config(args: argparse.Namespace):
    from advtune.trainables.config import TrialConfig

    return TrialConfig.load(getattr(args, "config", None), getattr(args, "set", None))


def _default_out(kind: str, cfg) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{cfg.dataset}-{cfg.model.replace(':', '_')}-{stamp}"


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    out = Path(args.out) if args.out else _default_out("train", cfg)
    summary = train_config(cfg, out, resume=args.resume, progress=not args.quiet)
    best = summary["best"] or {}
    print(f"\n{summary['status']}: best robust val acc {100 * best.get('robust_acc', 0):.1f}% (clean "
          f"{100 * best.get('clean_acc', 0):.1f}%) at epoch {best.get('epoch', '-')}; grad passes "
          f"{summary['grad_passes']:,}" + (f"\n{summary['stop_reason']}" if summary["stop_reason"] else ""))
    print(f"checkpoints: {out / 'best.pt'} (best robust), {out / 'last.pt'} (last)")
    print(f"next: advtune eval --checkpoint {out / 'best.pt'}")
    return 0 if summary["status"] in ("completed", "catastrophic_overfitting") else 1


def train_config(cfg, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """One trial of ``cfg`` into ``out`` (``advtune train`` and ``advtune.train``); returns finetune.run's summary."""
    from advtune.trainables import finetune
    from advtune.trainables.reporting import LocalReporter

    out = Path(out)
    if (out / "last.pt").exists() and not resume:
        raise _usage_error(f"{out} already holds a run (last.pt); pass --resume to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    print(f"advtune train: {cfg.dataset} / {cfg.model} / attack {cfg.attack} (train eps {cfg.train_eps_value:.4g}, "
          f"{cfg.norm}) / schedule {cfg.schedule} / {cfg.epochs} epochs → {out}", flush=True)
    reporter = LocalReporter(out)
    try:
        return finetune.run(cfg, reporter, resume_from=out if resume else None, progress=progress)
    finally:
        reporter.close()


def cmd_pretrain(args: argparse.Namespace) -> int:
    from advtune.trainables import finetune
    from advtune.trainables.pretrain import pretrain_config
    from advtune.trainables.reporting import LocalReporter

    cfg = pretrain_config(_load_config(args))
    out = Path(args.out) if args.out else _default_out("pretrain", cfg)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    print(f"advtune pretrain (natural training): {cfg.dataset} / {cfg.model} / {cfg.epochs} epochs → {out}", flush=True)
    reporter = LocalReporter(out)
    try:
        summary = finetune.run(cfg, reporter, progress=not args.quiet)
    finally:
        reporter.close()
    best = summary["best"] or {}
    print(f"\nbest clean val acc {100 * best.get('clean_acc', 0):.1f}% at epoch {best.get('epoch')}; "
          f"use it with: advtune train --set pretrained={out / 'best.pt'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args)
    failed = [c["name"] for c in result["sanity"] if not c["passed"]]
    if failed and args.strict:
        print(f"advtune eval: sanity check(s) failed: {', '.join(failed)} (--strict)", file=sys.stderr)
        return 1
    return 0


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    """``advtune eval`` (and ``advtune.evaluate``): evaluates, prints, and returns what ``--json`` writes."""
    from torch.utils.data import Subset, TensorDataset

    from advtune.trainables.checkpoints import FORMAT, CheckpointError, load_file
    from advtune.trainables.config import TrialConfig, parse_eps
    from advtune.trainables.evaluate import AutoAttackUnavailable, evaluate_autoattack, evaluate_pgd
    from advtune.trainables.setup import model_from_checkpoint

    payload = load_file(args.checkpoint, trust=args.trust_checkpoint)
    if isinstance(payload, dict) and payload.get("format") == FORMAT and not args.config:
        cfg = TrialConfig.from_dict(payload["config"])
    elif args.config:
        cfg = TrialConfig.from_yaml(args.config)
    else:
        raise CheckpointError(f"{args.checkpoint} is not an advtune checkpoint, so it does not say which data and "
                              "model it belongs to; pass --config FILE describing them")
    cfg = cfg.replace(pretrained="none")
    if args.set:
        cfg = cfg.with_overrides(args.set)
    for flag, value in (("--limit", args.limit), ("--sanity-images", args.sanity_images)):
        if value is not None and value < 1:
            raise _usage_error(f"{flag} {value}: give a number of images of at least 1")
    prep, report = model_from_checkpoint(args.checkpoint, cfg, trust=args.trust_checkpoint)
    if report.unexpected:
        print(f"note: {args.checkpoint}: {len(report.unexpected)} keys not loaded (not in this model): "
              f"{', '.join(report.unexpected[:6])}")
    model = prep.model.to(prep.device).eval()
    split = {"test": prep.splits.test, "val": prep.splits.val, "train": prep.splits.train}[args.split]
    if args.limit is not None and args.limit < len(split):
        # the same first N images for every figure
        split = TensorDataset(*(t[: args.limit] for t in split.tensors)) if isinstance(split, TensorDataset) \
            else Subset(split, range(args.limit))
    eps = parse_eps(args.eps, "--eps") if args.eps is not None else cfg.eval_eps
    step = 2.5 * eps / args.steps
    results = []
    attacks = ["pgd", "autoattack"] if args.attack == "all" else [args.attack]
    if "pgd" in attacks:
        res = evaluate_pgd(model, split, cfg.norm, eps, steps=args.steps, restarts=args.restarts, step=step,
                           batch_size=cfg.eval_batch_size, device=prep.device, seed=args.seed, progress=not args.quiet)
        results.append(res)
    if "autoattack" in attacks:
        try:
            results.append(evaluate_autoattack(model, split, cfg.norm, eps, device=prep.device, seed=args.seed,
                                               progress=None if args.quiet else _progress_line))
        except AutoAttackUnavailable as exc:
            if args.attack == "autoattack":
                raise CheckpointError(str(exc)) from None
            print(f"note: {exc}")
    print(f"\nadvtune eval — {args.checkpoint}")
    print(f"  split {args.split}, {len(split)} images{' (--limit)' if args.limit else ''}, threat model {cfg.norm} "
          f"eps {eps:.5g}, PGD step {step:.4g}, seed {args.seed}, fp32, device {prep.device}")
    print(f"  {'clean accuracy':<20} {100 * results[0].clean_acc:6.2f}%  ({results[0].n} images)")
    for res in results:
        print(f"  {res.attack:<20} {100 * res.robust_acc:6.2f}%  (clean {100 * res.clean_acc:.2f}% on the same "
              f"{res.n} images)")
    checks = [] if args.no_sanity else _sanity(args, model, split, cfg, eps, prep.device)
    result = {"checkpoint": str(args.checkpoint), "split": args.split, "norm": cfg.norm, "eps": eps,
              "images": len(split), "results": [r.as_dict() for r in results], "sanity": [c.as_dict() for c in checks],
              "load_report": report.to_dict()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def _progress_line(line: str) -> None:
    print(f"  {line}", flush=True)


def _sanity(args: argparse.Namespace, model, split, cfg, eps: float, device) -> list:
    """Carlini et al. (2019)'s sanity checks on the evaluated images (see trainables/sanity.py)."""
    import torch

    from advtune.trainables.loader import iterate
    from advtune.trainables.sanity import run_checks

    xs, ys, have = [], [], 0
    for xb, yb in iterate(split, cfg.eval_batch_size, device):  # only the images the checks use
        xs.append(xb)
        ys.append(yb)
        have += yb.shape[0]
        if have >= args.sanity_images:
            break
    x, y = torch.cat(xs)[: args.sanity_images], torch.cat(ys)[: args.sanity_images]
    checks = run_checks(model, x, y, cfg.norm, eps, args.steps, args.restarts, seed=args.seed,
                        batch_size=cfg.eval_batch_size)
    print("  sanity checks (Carlini et al. 2019):")
    for c in checks:
        print(f"  {'PASS' if c.passed else 'FAIL'} {c.name:<10} {c.line}")
    if not all(c.passed for c in checks):
        print("  a FAIL means the robust figure above may overstate robustness (weak attack or gradient masking)")
    return checks


class _UsageError(Exception):
    pass


def _usage_error(msg: str) -> _UsageError:
    return _UsageError(msg)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="trial config YAML (keys: see --help-config); default: embedded default")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override one config key, e.g. --set peak_lr=0.1 --set eval_eps=8/255 (repeatable)")


class _HelpConfig(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from advtune.trainables.config import TrialConfig

        print("Trial config keys (YAML key, default, meaning):\n" + TrialConfig.field_docs())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advtune", description="Adversarial fine-tuning of pretrained image "
                                     "classifiers, with LR-schedule and epsilon search on Ray Tune.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--help-config", action=_HelpConfig, help="list every trial config key and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="run one adversarial fine-tuning trial (no search)",
                       description="Run one trial with the same loop a study runs under Ray. Writes best.pt, last.pt, "
                       "metrics.jsonl, config.yaml and TensorBoard events to --out.")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/train-<data>-<model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="natural training, to make a starting point",
                       description="Natural (non-adversarial) training with a cosine schedule for pretrain_epochs "
                       "epochs; the result is a starting point for `advtune train --set pretrained=FILE`.")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="clean and robust accuracy of a checkpoint (strong attack, test split)",
                       description="Evaluate with PGD-k with restarts (default PGD-50, 10 restarts) and, with the "
                       "`autoattack` extra installed, AutoAttack standard. fp32; default split: test. Then runs the "
                       "sanity checks of Carlini et al. (2019): accuracy monotone in eps, at chance for a large eps, "
                       "and unchanged (<1 point) by twice the PGD steps and restarts.")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--config", metavar="FILE", help="data/model config for checkpoints that are not advtune's")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[])
    p.add_argument("--attack", choices=["pgd", "autoattack", "all"], default="all",
                   help="all (default): PGD, then AutoAttack if installed")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--eps", default=None, help="epsilon (default: the checkpoint's eval_eps); 8/255 accepted")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N images of the split only "
                   "(every attack, the same images)")
    p.add_argument("--no-sanity", action="store_true", help="skip the sanity checks of Carlini et al. (2019)")
    p.add_argument("--sanity-images", type=int, default=500, metavar="N",
                   help="sanity checks on the first N evaluated images (default 500; they cost ~5x the PGD on them)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a sanity check fails")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of the checkpoint (runs code in it: trusted files only)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    from advtune.study.convert import register as register_convert

    register_convert(sub)
    try:
        from advtune.study.commands import register

        register(sub)
    except ImportError:
        pass
    return parser


def _split_set(argv: list[str]) -> str | None:
    """``--set KEY VALUE`` (a space): argparse would only say 'unrecognized arguments: VALUE'. The hint, or None."""
    for i, a in enumerate(argv[:-2]):
        key, value = argv[i + 1], argv[i + 2]
        if a == "--set" and "=" not in key and not key.startswith("-") and not value.startswith("--"):
            return f"--set {key} {value}: write --set {key}={value} (one KEY=VALUE token per --set)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    hint = _split_set(argv)
    if hint:
        command = next((a for a in argv if not a.startswith("-")), "")
        print(f"advtune {command}: error: {hint}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    if args.debug:
        return func(args)
    try:
        return func(args)
    except (_UsageError, *_user_errors()) as exc:
        print(f"advtune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"advtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
