"""The trial: adversarial fine-tuning of one configuration, ``run(config, reporter)``.

Ray-agnostic: it talks only to a reporter. Per validation point (``evals_per_epoch`` per epoch) it
reports ``epoch, lr, train_loss, train_acc, clean_acc, robust_acc, best_robust_acc, train_eps,
grad_passes, epoch_seconds`` (+ ``status``, ``stop_reason`` and guard figures) with a checkpoint
folder holding ``last.pt`` (to resume) and ``best.pt`` (best robust validation accuracy). With
``ema_decay`` the averaged model (trainables/ema.py) is the one validated, guarded and saved as
``best.pt``; a model that collapses to a constant classifier ends as ``diverged``
(trainables/collapse.py).

Cost unit: ``grad_passes`` counts forward+backward passes of single images during training
(natural step: 1 per image; PGD-k: k+1; FGSM-RS: 2; free: 1 per replay; TRADES: k+2).
Validation is not counted: it is the same for every trial of a study.

Reproducibility: model init, data order and augmentation derive from ``seed``; the attack-noise
RNG state is saved in every checkpoint; evaluation uses its own fixed RNG. A run resumed from any
checkpoint therefore ends with the same metrics as an uninterrupted run (on CPU).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from . import attacks
from .collapse import collapse_reason, should_check, stop_for_collapse
from .checkpoints import FORMAT, CheckpointError, load_file, save_atomic, versions
from .config import TrialConfig
from .evaluate import evaluate_pgd, fixed_rng
from .loader import iterate, num_batches, to_device
from .ema import WeightEMA
from .optim import make_optimizer
from .reporting import Reporter
from .schedules import eps_at, schedule_from_config
from .setup import amp_dtype, frozen_modules, param_groups, prepare

__all__ = ["run", "TrialStopped"]


class TrialStopped(Exception):
    """Raised inside the loop to end a trial early with a status (diverged, catastrophic overfitting)."""


def _train_step(cfg: TrialConfig, model, opt, scaler, x, y, eps: float, dtype) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One minibatch of adversarial training. Returns (summed loss, correct count, grad passes)."""
    bs = y.shape[0]
    autocast = lambda: torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)  # noqa: E731
    common = dict(norm=cfg.norm, bn_mode=cfg.attack_bn_value, amp_dtype=dtype)
    passes = 1
    if cfg.loss == "trades":
        # the clean target is part of crafting the attack: same BatchNorm mode, no side effects
        with attacks.attack_mode(model, cfg.attack_bn_value), torch.no_grad(), autocast():
            clean_probs = F.softmax(model(x).float(), 1)
        x_adv = attacks.pgd(model, x, clean_probs, eps, steps=cfg.train_steps, step=cfg.train_step_size,
                            loss_fn=attacks.trades_kl, **common) if eps > 0 else x
        with autocast():
            logits_clean, logits_adv = model(x), model(x_adv)
        loss = F.cross_entropy(logits_clean.float(), y, label_smoothing=cfg.label_smoothing) + cfg.trades_beta * attacks.trades_kl(logits_adv, F.softmax(
            logits_clean.float(), 1)) / bs
        passes = cfg.train_steps + 2
        logits = logits_adv
    else:
        if cfg.attack == "none" or eps == 0:
            x_adv = x
        elif cfg.attack == "fgsm":
            x_adv, passes = attacks.fgsm(model, x, y, eps, step=cfg.train_step_size, **common), 2
        elif cfg.attack == "fgsm_rs":
            x_adv, passes = attacks.fgsm_rs(model, x, y, eps, step=cfg.train_step_size, **common), 2
        elif cfg.attack == "nfgsm":
            x_adv, passes = attacks.nfgsm(model, x, y, eps, noise=cfg.nfgsm_noise, step=cfg.nfgsm_step, **common), 2
        else:
            x_adv = attacks.pgd(model, x, y, eps, steps=cfg.train_steps, step=cfg.train_step_size, **common)
            passes = cfg.train_steps + 1
        with autocast():
            logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach() * bs, (logits.detach().argmax(1) == y).sum(), passes * bs


def _free_step(cfg: TrialConfig, model, opt, scaler, x, y, eps: float, dtype, state: dict, set_lr,
               ema: WeightEMA | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Free adversarial training (Shafahi et al. 2019): replay the minibatch ``m`` times; each
    replay's one backward pass updates both the weights and the perturbation, which is carried
    over to the next minibatch."""
    delta = state.get("free_delta")
    if delta is None or delta.shape[1:] != x.shape[1:]:
        delta = torch.zeros_like(x[:1]).expand_as(x).clone()
    delta = delta[: x.shape[0]] if delta.shape[0] >= x.shape[0] else torch.cat(
        [delta, torch.zeros_like(x[: x.shape[0] - delta.shape[0]])])
    step = eps if cfg.train_step_size is None else cfg.train_step_size
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device, dtype=torch.long)
    for _ in range(cfg.free_replays):
        set_lr()
        delta = attacks.project(delta, x, eps, cfg.norm).requires_grad_(True)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x + delta)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        grad = delta.grad.detach()
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            ema.update(model)
        delta = attacks.project(delta.detach() + step * attacks.step_direction(grad, cfg.norm), x, eps, cfg.norm)
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        state["step"] += 1
    state["free_delta"] = delta.detach()
    n = cfg.free_replays
    return loss_sum / n, torch.div(correct, n, rounding_mode="floor"), n * y.shape[0]


CO_PGD_STEPS = 10


def _co_check(cfg: TrialConfig, model, batch) -> tuple[float, float, int]:
    """FGSM and PGD-10 accuracy on a fixed training batch (Wong et al.'s overfitting signal), and the
    grad passes it cost. Always at the full training epsilon and in fp32: measured at a ramping
    epsilon, successive checks would compare PGD accuracies at different radii (it falls as eps
    grows, which is no overfitting), and under fp16 input gradients can underflow."""
    x, y = batch
    eps = cfg.train_eps_value
    with fixed_rng(12345, x.device):
        xf = attacks.fgsm(model, x, y, eps, cfg.norm)
        xp = attacks.pgd(model, x, y, eps, cfg.norm, steps=CO_PGD_STEPS)
        was = model.training
        model.eval()
        with torch.no_grad():
            fgsm_acc = (model(xf).argmax(1) == y).float().mean().item()
            pgd_acc = (model(xp).argmax(1) == y).float().mean().item()
        model.train(was)
    return fgsm_acc, pgd_acc, (1 + CO_PGD_STEPS) * y.shape[0]


def _segments(n_batches: int, per_epoch: int) -> list[int]:
    """Batch indices (exclusive ends) at which an epoch's validations happen."""
    return sorted({max(1, round(n_batches * (i + 1) / per_epoch)) for i in range(per_epoch)})


def _extra_ends(n_batches: int, epoch: int, validate_at: Sequence[float]) -> set[int]:
    """Batch indices (exclusive ends) in ``epoch`` (0-based) of the extra validations ``validate_at`` (in
    epochs trained, fractional): the first batch end at or after each, never before it."""
    return {min(n_batches, max(1, math.ceil((t - epoch) * n_batches - 1e-6)))
            for t in validate_at if epoch < t <= epoch + 1}


def run(config: TrialConfig, reporter: Reporter, resume_from: str | Path | None = None,
        progress: bool = False, validate_at: Sequence[float] = ()) -> dict[str, Any]:
    """Train ``config`` to the end (or until stopped), reporting to ``reporter``. Resumes from a
    checkpoint folder or ``last.pt`` given as ``resume_from``. Returns a summary dict.

    ``validate_at``: extra validations (with their checkpoint and report), in epochs trained (fractional), on
    top of ``evals_per_epoch``'s, each at the first batch end at or after its point; a result between epoch ends
    reports its fractional ``epoch``. Studies do not use it: ``bench/pruning_record.py --rung-figures`` measures
    with it what ASHA would see if each trial validated at its rung itself (docs/benchmarks.md, section 9)."""
    cfg = config
    prep = prepare(cfg, on_load=getattr(reporter, "on_load_report", None))  # print + store the load report
    device, model = prep.device, prep.model
    train_split = to_device(prep.splits.train, device)
    val_split = to_device(prep.splits.val, device)
    dtype = amp_dtype(cfg, device)
    if cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda"):
        model = model.to(device, memory_format=torch.channels_last)
    else:
        model = model.to(device)
    groups = param_groups(model, cfg)
    frozen = frozen_modules(model)
    # the averaged model starts at the starting point; validated, guarded and saved as best.pt when on
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    judged = ema.model if ema is not None else model
    opt = make_optimizer(groups, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    schedule = schedule_from_config(cfg)
    n_batches = num_batches(train_split, cfg.batch_size)
    steps_per_batch = cfg.free_replays if cfg.attack == "free" else 1
    total_steps = cfg.epochs * n_batches * steps_per_batch
    # lr_trace: the LR every `trace_every` optimizer steps, at most ~50 points an epoch, reported with each
    # validation (a warmup that peaks inside an epoch shows in TensorBoard and the report; `lr` is one point)
    steps_per_epoch = n_batches * steps_per_batch
    trace_every = max(1, math.ceil(steps_per_epoch / 50))
    lr_trace: list[list[float]] = []
    seg_ends = _segments(n_batches, cfg.evals_per_epoch)
    select_key = "clean_acc" if cfg.attack == "none" else "robust_acc"
    fgsm_based = cfg.attack in ("fgsm", "fgsm_rs", "nfgsm") and cfg.co_guard
    co_batch = None
    if fgsm_based:
        x_all, y_all = next(iterate(train_split, 512, device))
        co_batch = (x_all, y_all)

    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "grad_passes": 0, "guard_passes": 0, "best": -1.0,
                             "best_metrics": None, "history": [], "co_best_pgd": -1.0, "free_delta": None,
                             "lr": schedule(0.0), "collapse_streak": 0}
    work = Path(tempfile.mkdtemp(prefix="advtune-trial-"))
    if resume_from is not None:
        _restore(resume_from, cfg, model, opt, scaler, state, work, ema)

    def set_lr() -> float:
        t = state["step"] / total_steps
        lr = schedule(t)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        state["lr"] = lr  # reported: the LR of the last step taken
        if state["step"] % steps_per_epoch % trace_every == 0:  # [epoch where the step starts, its LR]
            lr_trace.append([round(state["step"] / steps_per_epoch, 4), float(f"{lr:.6g}")])
        return lr

    status, stop_reason = "running", ""
    if state["history"] and (state["epoch"] >= cfg.epochs or state["history"][-1]["status"] != "running"):
        # Resumed after it had ended (e.g. the driver died before hearing of it): say it again.
        final = state["history"][-1]
        reporter.report(final, None)
        shutil.rmtree(work, ignore_errors=True)
        return {"status": final["status"], "stop_reason": final["stop_reason"], "best": state["best_metrics"],
                "grad_passes": state["grad_passes"], "epochs_run": state["epoch"]}
    try:
        while state["epoch"] < cfg.epochs and status == "running":
            epoch = state["epoch"]
            seg_start = state["batch"]
            seg_end = min(e for e in {*seg_ends, *_extra_ends(n_batches, epoch, validate_at)} if e > seg_start)
            t0 = time.perf_counter()
            model.train()
            for m in frozen:
                m.eval()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            batches = iterate(train_split, cfg.batch_size, device, seed=cfg.seed, epoch=epoch, start=seg_start,
                              augment=prep.augment, num_workers=0)
            if progress:
                from tqdm import tqdm

                batches = tqdm(batches, total=seg_end - seg_start, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                               unit="batch", leave=False)
            eps = 0.0
            for b, (x, y) in zip(range(seg_start, seg_end), batches):
                t = state["step"] / total_steps
                eps = eps_at(t, cfg.train_eps_value, cfg.eps_ramp, cfg.eps_ramp_start) if cfg.attack != "none" else 0.0
                if cfg.attack == "free":
                    lsum, corr, passes = _free_step(cfg, model, opt, scaler, x, y, eps, dtype, state, set_lr, ema)
                else:
                    set_lr()
                    lsum, corr, passes = _train_step(cfg, model, opt, scaler, x, y, eps, dtype)
                    state["step"] += 1
                    if ema is not None:
                        ema.update(model)
                loss_sum += lsum
                correct += corr
                seen += y.shape[0]
                state["grad_passes"] += passes
                # On CPU a finiteness check costs nothing; on GPU it is a sync, so every 25 batches.
                if (device.type == "cpu" or b % 25 == 0) and not torch.isfinite(lsum):
                    status, stop_reason = "diverged", f"training loss became {lsum.item()} at epoch {epoch + 1}, batch {b}"
                    break
            if hasattr(batches, "close"):
                batches.close()
            state["batch"] = seg_end if status == "running" else b + 1
            # a validation of validate_at between epoch ends reports its fractional epoch
            fractional = cfg.evals_per_epoch > 1 or (seg_end not in seg_ends and state["batch"] == seg_end)
            if status == "running" and not math.isfinite(loss_sum.item()):
                status, stop_reason = "diverged", f"training loss became {loss_sum.item()} in epoch {epoch + 1}"
            final = state["epoch"] + 1 >= cfg.epochs and state["batch"] >= n_batches
            at = epoch + state["batch"] / n_batches  # training progress of this validation, in epochs
            metrics, top_share = _validate(cfg, judged, val_split, device, final=final) if status == "running" else \
                ({"clean_acc": 0.0, "robust_acc": 0.0}, float("nan"))
            if status == "running" and should_check(at, cfg.epochs, final):
                reason = collapse_reason(metrics["clean_acc"], top_share, prep.splits.num_classes, len(val_split))
                state["collapse_streak"], stop = stop_for_collapse(state["collapse_streak"], reason is not None, final)
                if stop:  # a constant classifier is a failed run, not a completed one (issue 20)
                    status, stop_reason = "diverged", f"{reason} at epoch {at:.3g}"
            if fgsm_based and status == "running" and eps > 0:
                fgsm_acc, pgd_acc, passes = _co_check(cfg, judged, co_batch)
                state["guard_passes"] += passes
                metrics.update(co_fgsm_acc=fgsm_acc, co_pgd_acc=pgd_acc)
                # Both signals must agree with validation: a run whose robust validation accuracy still
                # rises is not overfitting, whatever a single training batch says.
                # (The first check has no trend to go by: there the batch signals decide alone.)
                rising = state["best"] >= 0 and metrics["robust_acc"] > state["best"]
                if not rising and (fgsm_acc - pgd_acc > cfg.co_gap or pgd_acc < state["co_best_pgd"] - cfg.co_drop):
                    status = "catastrophic_overfitting"
                    stop_reason = (f"catastrophic overfitting at epoch {at:.3g}: on a training batch at train eps "
                                   f"{cfg.train_eps_value:.4g} FGSM accuracy {fgsm_acc:.2f} vs PGD-10 {pgd_acc:.2f} "
                                   f"(best PGD {max(state['co_best_pgd'], 0):.2f}); robust val acc "
                                   f"{metrics['robust_acc']:.3f} not above its best {max(state['best'], 0):.3f}")
                state["co_best_pgd"] = max(state["co_best_pgd"], pgd_acc)
            if state["batch"] >= n_batches:
                state["epoch"], state["batch"] = epoch + 1, 0
            metrics.update(
                epoch=at if fractional else int(round(at)),
                lr=state["lr"], train_loss=(loss_sum / max(seen, 1)).item(), train_acc=correct.item() / max(seen, 1),
                train_eps=eps, grad_passes=state["grad_passes"], guard_passes=state["guard_passes"],
                epoch_seconds=time.perf_counter() - t0, lr_trace=list(lr_trace))
            lr_trace.clear()
            if status == "running" and state["epoch"] >= cfg.epochs:
                status = "completed"
            ckpt_dir = None
            if status != "diverged":  # a diverged model is never checkpointed: the last good one stays
                improved = metrics[select_key] > state["best"]
                if improved:
                    state["best"] = metrics[select_key]
                    state["best_metrics"] = {k: metrics[k] for k in ("epoch", "clean_acc", "robust_acc")}
                    save_atomic(_best_payload(cfg, judged, metrics), work / "best.pt")
                ckpt_dir = _checkpoint_dir(work)
            metrics.update(best_robust_acc=max(state["best"], 0.0) if select_key == "robust_acc" else
                           (state["best_metrics"] or {}).get("robust_acc", 0.0),
                           best_clean_acc=(state["best_metrics"] or {}).get("clean_acc", 0.0),
                           best_epoch=(state["best_metrics"] or {}).get("epoch", 0),
                           status=status, stop_reason=stop_reason)
            if ckpt_dir is not None:
                state["history"].append(metrics)
                _write_last(cfg, model, opt, scaler, state, ckpt_dir, ema)
            reporter.report(metrics, ckpt_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"status": status, "stop_reason": stop_reason, "best": state["best_metrics"],
            "grad_passes": state["grad_passes"], "epochs_run": state["epoch"]}


def _validate(cfg: TrialConfig, model, val_split, device, final: bool) -> tuple[dict[str, float], float]:
    """Clean and robust validation accuracy (and the most predicted class's share, for the collapse check), always in fp32 whatever the trial trains in: the figure
    ASHA and the searcher select on must not depend on a trial's ``amp`` (fp16 input gradients
    underflow and inflate robust accuracy)."""
    if cfg.attack == "none" and not final:  # natural (pre)training: robust accuracy only at the end
        res = evaluate_pgd(model, val_split, cfg.norm, cfg.eval_eps, steps=1, restarts=1, batch_size=cfg.eval_batch_size,
                           device=device)
        return {"clean_acc": res.clean_acc, "robust_acc": float("nan")}, res.top_class_share
    res = evaluate_pgd(model, val_split, cfg.norm, cfg.eval_eps, steps=cfg.val_steps, restarts=cfg.val_restarts,
                       step=cfg.val_step_value, batch_size=cfg.eval_batch_size, device=device)
    return {"clean_acc": res.clean_acc, "robust_acc": res.robust_acc}, res.top_class_share


def _best_payload(cfg: TrialConfig, model, metrics: dict) -> dict:
    return {"format": FORMAT, "kind": "best", "config": cfg.to_dict(), "versions": versions(),
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}


def _checkpoint_dir(work: Path) -> str:
    d = Path(tempfile.mkdtemp(prefix="advtune-ckpt-"))
    if (work / "best.pt").exists():
        shutil.copyfile(work / "best.pt", d / "best.pt")
    return str(d)


def _write_last(cfg, model, opt, scaler, state, ckpt_dir: str, ema: WeightEMA | None = None) -> None:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    progress = {k: state[k] for k in ("epoch", "batch", "step", "grad_passes", "guard_passes", "best", "co_best_pgd",
                                      "lr", "collapse_streak")}
    payload = {"format": FORMAT, "kind": "last", "config": cfg.to_dict(), "versions": versions(),
               "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
               "progress": progress, "best_metrics": state["best_metrics"], "history": state["history"],
               "rng": rng, "free_delta": state["free_delta"].cpu() if state["free_delta"] is not None else None,
               "ema": ema.state_dict() if ema is not None else None}  # the averaged model: best.pt's weights
    save_atomic(payload, Path(ckpt_dir) / "last.pt")


def _restore(source: str | Path, cfg: TrialConfig, model, opt, scaler, state: dict, work: Path,
             ema: WeightEMA | None = None) -> None:
    source = Path(source)
    last_path = source / "last.pt" if source.is_dir() else source
    payload = load_file(last_path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("kind") != "last":
        raise CheckpointError(f"{last_path} is not an advtune last.pt checkpoint; resume needs the last.pt a trial wrote")
    saved = TrialConfig.from_dict(payload["config"])
    if saved.replace(device=cfg.device) != cfg:
        diff = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items() if cfg.to_dict()[k] != v and k != "device"}
        raise CheckpointError(f"{last_path} was written by a different config (differs in {diff}); resume with the "
                              "config the checkpoint holds")
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    state.update(payload["progress"])
    state["best_metrics"] = payload["best_metrics"]
    state["history"] = list(payload["history"])
    if ema is not None:
        if payload.get("ema") is None:
            raise CheckpointError(f"{last_path} holds no averaged model although ema_decay={cfg.ema_decay}; resume "
                                  "with the config the checkpoint holds")
        ema.load_state_dict(payload["ema"])
    if payload.get("free_delta") is not None:
        state["free_delta"] = payload["free_delta"].to(next(model.parameters()).device)
    torch.set_rng_state(payload["rng"]["cpu"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    best = last_path.parent / "best.pt"
    if best.exists():
        shutil.copyfile(best, work / "best.pt")
