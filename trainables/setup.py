"""Everything a trial builds before its first step: device, data splits, model, starting point."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .activations import swap_activations
from .checkpoints import CheckpointError, LoadReport, load_starting_point
from .config import ConfigError, TrialConfig
from .data import Splits, load_splits
from .external_models import refuse_timm_download, timm_stats
from .load_report import loaded_fraction
from .models import NormalizedModel, build_model, head, last_block
from .normalization import choose_normalization

__all__ = ["Prepared", "prepare", "model_from_checkpoint", "apply_normalization", "resolve_device", "amp_dtype", "param_groups"]


@dataclass
class Prepared:
    device: torch.device
    splits: Splits
    model: NormalizedModel
    load_report: LoadReport | None
    augment: str
    normalization: str = ""  # which mean/std the normalize layer holds, and why (also in load_report)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use --set device=cpu (or auto)")
    return device


def amp_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for training: bf16 on CUDA where supported, never on CPU unless asked."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def prepare(cfg: TrialConfig, with_starting_point: bool = True,
            on_load: Callable[[LoadReport], None] | None = None) -> Prepared:
    """Build data and model for ``cfg``. Model initialisation is seeded with ``cfg.seed``.

    Activations are swapped *before* the starting point loads, so a checkpoint trained with a
    learned activation (``psoftplus``) gets its betas back. ``on_load`` receives the load report
    (the trial prints and stores it)."""
    device = resolve_device(cfg.device)
    splits = load_splits(cfg.dataset, cfg.data_root, cfg.val_size, cfg.split_seed, download=cfg.download,
                         image_size=cfg.image_size, train_size=cfg.train_size)
    torch.manual_seed(cfg.seed)
    tv_weights = None
    pretrained = cfg.pretrained if with_starting_point else None
    if pretrained and pretrained.startswith("torchvision:"):
        if not cfg.model.startswith("tv:"):
            raise CheckpointError(f"pretrained={pretrained!r} needs a torchvision model (--set model=tv:resnet18)")
        tv_weights = pretrained.split(":", 1)[1]
    refuse_timm_download(cfg, pretrained)
    model = build_model(cfg.model, splits.input_shape, splits.num_classes, splits.mean, splits.std, tv_weights,
                        head_module=cfg.head_module)
    fresh_head = tv_weights is not None and _head_reinitialised(cfg.model, tv_weights, model)
    if cfg.activation != "relu":
        example = splits.train[0][0].unsqueeze(0)
        swap_activations(model, cfg.activation, example)
    report = None
    if pretrained and pretrained not in ("none", "auto") and not pretrained.startswith("torchvision:"):
        if "://" in pretrained:  # a study's starting point in cloud storage: every node reads it from there
            from .cloud_adapter import fetch

            pretrained = fetch(pretrained)
        report = load_starting_point(model, pretrained, trust=cfg.trust_checkpoint, min_fraction=cfg.min_loaded_fraction)
    elif pretrained == "auto":
        from .pretrain import ensure_pretrained

        report = load_starting_point(model, ensure_pretrained(cfg), trust=False, min_fraction=cfg.min_loaded_fraction)
    elif tv_weights is not None:
        report = _torchvision_report(model, pretrained, fresh_head)
    # The choice applies with or without a starting point: a model trained from scratch with
    # `normalization: 0/1` trains behind an identity normalizer (issue 25: it used to keep the data's
    # statistics while its saved config said 0/1).
    label = apply_normalization(model, cfg, splits, report, pretrained if report is not None else None)
    if report is not None and on_load is not None:
        on_load(report)
    augment = cfg.augment if cfg.augment != "auto" else splits.augment
    return Prepared(device, splits, model, report, augment, label)


def apply_normalization(model: NormalizedModel, cfg: TrialConfig, splits: Splits, report: LoadReport | None,
                        pretrained: str | None) -> str:
    """Set the normalize layer per ``cfg.normalization`` (see trainables/normalization.py), record
    the choice in ``report`` (None: no starting point was loaded) and return its label. A choice
    that cannot apply (another channel count) is a ConfigError, with or without a starting point."""
    stats, label = choose_normalization(cfg.normalization, cfg.model, pretrained, (splits.mean, splits.std),
                                        report is not None and report.normalizer, timm_stats(model))
    if stats is not None:
        mean, std = stats
        if len(mean) != model.normalize.mean.numel():
            raise ConfigError(f"normalization {label} has {len(mean)} channels but the data has "
                              f"{model.normalize.mean.numel()}; set normalization=data or give one value per channel")
        with torch.no_grad():
            model.normalize.mean.copy_(torch.tensor(mean).view_as(model.normalize.mean))
            model.normalize.std.copy_(torch.tensor(std).view_as(model.normalize.std))
    if report is not None:
        report.normalization = label
    return label


def _head_reinitialised(name: str, weights: str, model: NormalizedModel) -> bool:
    """Whether build_net replaced the head of torchvision's ``weights`` (another class count)."""
    import torchvision

    enum = torchvision.models.get_model_weights(name[3:])
    chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    return head(model).out_features != len(chosen.meta["categories"])


def _torchvision_report(model: NormalizedModel, pretrained: str, fresh_head: bool) -> LoadReport:
    keys = list(model.net.state_dict())
    head_keys = [k for k in keys if k.startswith(_head_prefix(model))] if fresh_head else []
    report = LoadReport(source=pretrained, format="torchvision weights",
                        loaded=[k for k in keys if k not in head_keys], reinitialized=head_keys)
    report.fraction, report.counted = loaded_fraction(model.net, report.loaded)
    return report


def _head_prefix(model: NormalizedModel) -> str:
    target = head(model)
    return next(name for name, m in model.net.named_modules() if m is target) + "."


def model_from_checkpoint(path: str, cfg: TrialConfig, trust: bool = False) -> tuple[Prepared, LoadReport]:
    """The model of ``cfg`` holding exactly the weights in ``path``, as ``advtune eval`` uses it:
    activations swapped first, every tensor loaded (else CheckpointError), normalization chosen
    as training chose it."""
    prep = prepare(cfg.replace(pretrained="none"), with_starting_point=False)
    report = load_starting_point(prep.model, path, trust=trust, min_fraction=cfg.min_loaded_fraction,
                                 require_all=True)
    apply_normalization(prep.model, cfg, prep.splits, report, path)
    return prep, report


def param_groups(model: NormalizedModel, cfg: TrialConfig) -> list[dict]:
    """SGD parameter groups by ``finetune_scope``: the head at ``peak_lr``, the trainable
    backbone at ``backbone_lr_mult·peak_lr``; no weight decay on biases and norm parameters.
    Frozen parameters get ``requires_grad=False``. Each group carries ``lr_mult``."""
    head_params = {id(p) for p in head(model).parameters()}
    if cfg.finetune_scope == "head":
        trainable = set(head_params)
    elif cfg.finetune_scope == "last_block":  # the last block and everything after it (e.g. a final norm)
        block, after = last_block(model), False
        trainable = set(head_params)
        for child in model.net.children():
            after = after or child is block
            if after:
                trainable |= {id(p) for p in child.parameters()}
    else:
        trainable = {id(p) for p in model.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if id(p) not in trainable:
            p.requires_grad_(False)
            continue
        groups.setdefault((id(p) in head_params, p.ndim > 1), []).append(p)
    out = []
    for (is_head, decay), params in sorted(groups.items()):
        out.append({"params": params, "lr_mult": 1.0 if is_head else cfg.backbone_lr_mult,
                    "weight_decay": cfg.weight_decay if decay else 0.0, "name": ("head" if is_head else "backbone")})
    return out


def frozen_modules(model: NormalizedModel) -> list[nn.Module]:
    """Modules none of whose parameters train: kept in eval mode (fixed features, Salman et al.)."""
    out = []
    for m in model.net.modules():
        params = list(m.parameters(recurse=True))
        if params and not any(p.requires_grad for p in params) and isinstance(m, nn.modules.batchnorm._NormBase):
            out.append(m)
    return out
