"""Everything a trial builds before its first step: device, data splits, model, starting point."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .activations import swap_activations
from .checkpoints import CheckpointError, LoadReport, load_starting_point
from .config import TrialConfig
from .data import Splits, load_splits
from .external_models import starting_normalization
from .models import NormalizedModel, build_model, head, last_block

__all__ = ["Prepared", "prepare", "resolve_device", "amp_dtype", "param_groups"]


@dataclass
class Prepared:
    device: torch.device
    splits: Splits
    model: NormalizedModel
    load_report: LoadReport | None
    augment: str


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


def prepare(cfg: TrialConfig, with_starting_point: bool = True) -> Prepared:
    """Build data and model for ``cfg``. Model initialisation is seeded with ``cfg.seed``."""
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
    model = build_model(cfg.model, splits.input_shape, splits.num_classes, splits.mean, splits.std, tv_weights,
                        head_module=cfg.head_module)
    starting_normalization(model, cfg, pretrained)  # timm weights expect timm's mean/std
    report = None
    if pretrained and pretrained not in ("none", "auto") and not pretrained.startswith("torchvision:"):
        if "://" in pretrained:  # a study's starting point in cloud storage: every node reads it from there
            from .cloud_adapter import fetch

            pretrained = fetch(pretrained)
        report = load_starting_point(model, pretrained, trust=cfg.trust_checkpoint)
    elif pretrained == "auto":
        from .pretrain import ensure_pretrained

        report = load_starting_point(model, ensure_pretrained(cfg), trust=False)
    if cfg.activation != "relu":
        example = splits.train[0][0].unsqueeze(0)
        swap_activations(model, cfg.activation, example)
    augment = cfg.augment if cfg.augment != "auto" else splits.augment
    return Prepared(device, splits, model, report, augment)


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
