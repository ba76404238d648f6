"""Which per-channel mean/std the model's normalize layer holds (config key ``normalization``).

Pretrained weights expect the inputs they were trained on: torchvision's weights were trained on
ImageNet images normalized with ImageNet's statistics, whatever data they are fine-tuned on next.
Feeding them the target data's statistics shifts every first-layer activation. So:

- ``auto`` (default): the checkpoint's own normalizer when it holds one (advtune checkpoints,
  robustness-library ``.ckpt``); the weights' own statistics for ``torchvision:<weights>``
  (torchvision's weight metadata: ``weights.transforms().mean/std``); ImageNet's statistics for a
  plain state dict loaded into a ``tv:`` model (torchvision's convention for all its classifiers);
  the model's ``pretrained_cfg`` statistics for a weights file loaded into a ``timm:`` model (where
  they have the data's channel count); otherwise the train split's statistics.
- ``data``: the train split's statistics, always.
- ``imagenet``: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
- ``"m1,m2,m3/s1,s2,s3"``: explicit values, pixel units of images in [0, 1], one per channel.

An explicit choice (anything but ``auto``) wins over a checkpoint's normalizer.
"""
from __future__ import annotations

__all__ = ["IMAGENET", "parse_normalization", "torchvision_stats", "choose_normalization"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def parse_normalization(text: str) -> Stats | str:
    """``"auto" | "data" | "imagenet"`` unchanged; ``"m1,m2/s1,s2"`` as (mean, std) tuples.
    Raises ValueError naming the fix."""
    if text in ("auto", "data", "imagenet"):
        return text
    mean_txt, sep, std_txt = text.partition("/")
    try:
        mean = tuple(float(v) for v in mean_txt.split(","))
        std = tuple(float(v) for v in std_txt.split(","))
    except ValueError:
        mean, std = (), ()
    if not sep or not mean or len(mean) != len(std) or any(s <= 0 for s in std) or any(not 0 <= m <= 1 for m in mean):
        raise ValueError(f"config field 'normalization' = {text!r} is not allowed: choose auto, data, imagenet, or "
                         "per-channel values 'm1,m2,m3/s1,s2,s3' (means in [0,1], stds > 0, as many of each)")
    return mean, std


def torchvision_stats(arch: str, weights: str) -> tuple[Stats, str]:
    """Mean/std that torchvision's ``weights`` of ``arch`` expect, from their metadata (no download).
    Returns ((mean, std), the weights' full name)."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    transform = chosen.transforms()
    return (tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)), str(chosen)


def choose_normalization(setting: str, model: str, pretrained: str | None, data: Stats,
                         checkpoint_has_normalizer: bool, timm: Stats | None = None) -> tuple[Stats | None, str]:
    """The normalization to use and a line saying why.

    ``setting`` is the config value, ``model`` the model name, ``pretrained`` what was loaded
    (a path, ``torchvision:<weights>``, or None), ``data`` the train split's (mean, std).
    ``timm`` is a timm model's ``pretrained_cfg`` (mean, std) where it fits the data's channels.
    Returns (None, label) when the checkpoint's own normalizer, already in the model, stays."""
    parsed = parse_normalization(setting)
    if isinstance(parsed, tuple):
        return parsed, f"explicit (normalization={setting})"
    if parsed == "data":
        return data, "train-split statistics (normalization=data)"
    if parsed == "imagenet":
        return IMAGENET, "ImageNet statistics (normalization=imagenet)"
    if pretrained and pretrained.startswith("torchvision:") and model.startswith("tv:"):
        stats, name = torchvision_stats(model[3:], pretrained.split(":", 1)[1])
        return stats, f"torchvision weights' own ({name}.transforms(): mean {_fmt(stats[0])}, std {_fmt(stats[1])})"
    if checkpoint_has_normalizer:
        return None, "the checkpoint's own"
    if pretrained and timm is not None and pretrained not in ("none", "auto"):
        return timm, f"timm pretrained_cfg (mean {_fmt(timm[0])}, std {_fmt(timm[1])}; normalization=data to change)"
    if pretrained and model.startswith("tv:"):
        return IMAGENET, "ImageNet statistics (torchvision weights in a plain state dict; normalization=data to change)"
    return data, "train-split statistics"


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
