"""Networks advtune does not define: timm architectures and the user's own builder by import path.

``model: "package.module:function"`` calls, once per trial::

    function(num_classes=K, input_shape=(C, H, W))  ->  torch.nn.Module

with keyword arguments: ``K`` the dataset's class count, ``(C, H, W)`` one image's shape (channels,
height, width in pixels). The module must map a batch ``B×C×H×W`` to logits ``B×K``; it receives
images already normalized (advtune wraps it in :class:`~trainables.models.NormalizedModel`, whose
first layer is ``(x - mean) / std``), so it must not normalize again. Before training, advtune runs
it in eval mode on a dummy batch of two images and refuses one whose output is not ``2×K``.

``model: "timm:<name>"`` builds ``timm.create_model(name, pretrained=False, num_classes=K,
in_chans=C)`` (plus ``img_size=(H, W)`` for the models that take one, e.g. ViTs): random weights,
nothing is downloaded; weights come from a file given as ``pretrained`` (see
:func:`timm_stats` for the mean/std its weights expect; trainables/normalization.py chooses).

The classifier (for ``finetune_scope``, ``backbone_lr_mult`` and a new class count) is
``head_module`` when the config names one; otherwise timm's own ``pretrained_cfg["classifier"]``,
otherwise the last ``nn.Linear``. A network with neither must name it.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from .checkpoints import CheckpointError
from .config import ConfigError, TrialConfig
from .user_code import resolve

__all__ = ["build_external_net", "classifier_name", "check_output", "refuse_timm_download", "timm_stats"]

SIGNATURE = "function(num_classes: int, input_shape: tuple[int, int, int]) -> torch.nn.Module"


def build_external_net(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The bare network for ``timm:<name>`` or ``package.module:function``, checked on a dummy batch."""
    net = _build_timm(name[5:], input_shape, num_classes) if name.startswith("timm:") else \
        _build_user(name, input_shape, num_classes)
    check_output(net, input_shape, num_classes, name)
    return net


def _build_user(path: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    fn = resolve(path, "model")
    call = f"{path.partition(':')[2]}(num_classes={num_classes}, input_shape={input_shape})"
    try:
        net = fn(num_classes=num_classes, input_shape=input_shape)
    except Exception as exc:  # noqa: BLE001 - the user's code; say what was called and how it failed
        raise ConfigError(f"config field 'model' = {path!r}: advtune called {call}, which raised "
                          f"{type(exc).__name__}: {exc}; give it the signature {SIGNATURE}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"config field 'model' = {path!r}: {call} returned a {type(net).__name__}, not a "
                          "torch.nn.Module; return the network itself")
    return net


def _build_timm(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model 'timm:{arch}' needs timm: pip install 'advtune[timm]'") from None
    if not timm.is_model(arch.split(".")[0]):
        near = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f" (did you mean 'timm:{near[0]}'?)" if near else ""
        raise ConfigError(f"config field 'model' = 'timm:{arch}' is not a timm model{hint}; timm.list_models() "
                          "lists them, e.g. timm:resnet18, timm:vit_small_patch16_224, timm:convnext_tiny")
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
    try:
        return timm.create_model(arch, img_size=tuple(input_shape[1:]), **kwargs)
    except TypeError:  # a model without a fixed input size (CNNs) takes no img_size
        return timm.create_model(arch, **kwargs)


def check_output(net: nn.Module, input_shape: tuple[int, int, int], num_classes: int, name: str) -> None:
    """Refuse a network whose logits are not ``B×num_classes`` on a dummy batch (eval mode, no grad,
    no RNG drawn: the trial's seeded initialisation stream is left as it was)."""
    dummy = torch.full((2, *input_shape), 0.5)
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(dummy)
    except Exception as exc:  # noqa: BLE001 - the user's forward
        raise ConfigError(f"config field 'model' = {name!r}: its forward pass on a dummy batch of shape "
                          f"{tuple(dummy.shape)} raised {type(exc).__name__}: {str(exc).rstrip('.')}; it must accept B×C×H×W "
                          "images of the dataset's shape") from None
    finally:
        net.train(was)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise ConfigError(f"config field 'model' = {name!r}: on a dummy batch of shape {tuple(dummy.shape)} it "
                          f"returns {shape}, expected logits of shape (2, {num_classes}): {num_classes} columns, one "
                          "per class — build the classifier with the num_classes advtune passes")


def classifier_name(net: nn.Module, head_module: str | None) -> str | None:
    """The classifier's name in ``net`` (None: the last ``nn.Linear``, found when needed)."""
    names = dict(net.named_modules())
    if head_module is not None:
        if head_module not in names or not any(True for _ in names[head_module].parameters()):
            linear = [n for n, m in names.items() if isinstance(m, nn.Linear)]
            what = "has no submodule" if head_module not in names else "has no parameters in the submodule"
            raise ConfigError(f"config field 'head_module' = {head_module!r}: the network {what} {head_module!r}; "
                              f"name its classifier (its nn.Linear modules: {', '.join(linear[-4:]) or 'none'})")
        return head_module
    timm_head = (getattr(net, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(timm_head, str) and timm_head in names and any(True for _ in names[timm_head].parameters()):
        return timm_head
    if not any(isinstance(m, nn.Linear) for m in names.values()):
        raise ConfigError(f"{type(net).__name__} has no nn.Linear, so advtune cannot find its classifier: name it "
                          "with --set head_module=NAME (its name in model.named_modules(), e.g. fc or head.conv)")
    return None


def refuse_timm_download(cfg: TrialConfig, pretrained: str | None) -> None:
    """``pretrained: timm:...`` is refused: advtune never downloads weights; the message says where
    to get the file to pass instead."""
    if pretrained and pretrained.startswith("timm:"):
        arch = cfg.model[5:] if cfg.model.startswith("timm:") else "NAME"
        raise CheckpointError(
            f"pretrained={pretrained!r}: advtune does not fetch timm weights (it downloads nothing). Fetch them once "
            f"yourself, e.g. `huggingface-cli download timm/{arch} model.safetensors`, or take model.safetensors from "
            "your Hugging Face cache (~/.cache/huggingface/hub/models--timm--*/snapshots/*/), and pass "
            "--set pretrained=PATH/model.safetensors")


def timm_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean/std a timm network's weights were trained with (its ``pretrained_cfg``), when they have
    as many channels as the model's input; None for other networks (see trainables/normalization.py)."""
    pcfg = getattr(getattr(model, "net", model), "pretrained_cfg", None) or {}
    mean, std = pcfg.get("mean"), pcfg.get("std")
    n = model.normalize.mean.numel() if hasattr(model, "normalize") else None
    if mean is None or std is None or len(mean) != len(std) or (n is not None and len(mean) != n):
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
