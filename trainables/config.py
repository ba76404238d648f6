"""One trial's whole configuration: a frozen, validated dataclass.

Every field maps one to one onto a YAML key and onto a `--set key=value` override, and every
searched hyperparameter of a study is one of these fields. Units are given in each field's doc.
Epsilons are in pixel units of images scaled to [0, 1]; ``"8/255"`` is accepted and parsed as a
fraction (never evaluated as code).

Example::

    >>> cfg = TrialConfig(eval_eps="8/255", peak_lr=0.1)
    >>> round(cfg.eval_eps, 5)
    0.03137
    >>> cfg.train_eps_value == cfg.eval_eps
    True
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["ConfigError", "TrialConfig", "parse_eps", "parse_overrides"]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field and the fix."""


ATTACKS = ("none", "fgsm", "fgsm_rs", "nfgsm", "pgd", "free")
SCHEDULES = ("sfd", "cyclic", "piecewise", "cosine", "constant")
ACTIVATIONS = ("relu", "silu", "gelu", "softplus", "elu", "psoftplus")
SCOPES = ("full", "head", "last_block")
NORMS = ("linf", "l2")


def parse_eps(value: Any, name: str = "eps") -> float:
    """Parse an epsilon given as a number or a fraction string like ``"8/255"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not a number; write e.g. 0.03 or \"8/255\"")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{name}={value!r} is not a number or fraction; write e.g. 0.03 or \"8/255\"")


def _f(default: Any, doc: str, **kw: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass(frozen=True)
class TrialConfig:
    """Configuration of one adversarial fine-tuning trial. Defaults are the embedded default:
    scikit-learn's digits, the small CNN pretrained naturally (``auto``), PGD training at
    linf 0.2 (epsilon ramped over the first 30%), the ``sfd`` schedule peaking at 0.02, 8 epochs."""

    # --- data -----------------------------------------------------------------------------
    dataset: str = _f("digits", "digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder | your factory by import path, package.module:function")
    data_root: str | None = _f(None, "folder holding the dataset files (not needed for digits)")
    download: bool = _f(False, "allow torchvision to download CIFAR (never done unless true)")
    image_size: int | None = _f(None, "imagefolder only: side of the centre crop, pixels")
    val_size: float = _f(0.2, "validation split carved from train: fraction in (0,1) or a count of images")
    split_seed: int = _f(0, "seed of the train/val split; fixed per study so all trials share one val set")
    train_size: int | None = _f(None, "train on a fixed class-stratified subset of this many images (drawn with split_seed after the val carve); none = all")
    batch_size: int = _f(128, "training batch size, images")
    eval_batch_size: int = _f(512, "batch size for validation and evaluation, images")
    augment: str = _f("auto", "auto | none | crop_flip (auto: crop_flip for CIFAR, none otherwise)")

    # --- model and starting point -----------------------------------------------------------
    model: str = _f("small_cnn", "small_cnn | small_cnn-W (width W, default 32) | mnist_cnn (Wong et al.'s 2-conv MNIST net) | preact_resnet18 | wrn-D-W | tv:<torchvision name> | timm:<timm name> | your builder by import path, package.module:function")
    activation: str = _f("relu", "relu | silu | gelu | softplus | elu | psoftplus (every ReLU is swapped)")
    pretrained: str | None = _f("auto", "checkpoint path (.pt, .ckpt, .safetensors) | torchvision:DEFAULT | auto (natural pretraining, cached) | none")
    trust_checkpoint: bool = _f(False, "allow full unpickling of `pretrained` (runs code in the file: trusted files only)")
    # starting-point loading (load report, normalization): trainables/load_report.py, normalization.py
    min_loaded_fraction: float = _f(0.75, "refuse a starting point that fills less than this share (0..1) of the model's tensors outside the classifier head (BN counters, psoftplus betas not counted); lower it for a deliberate partial load")
    normalization: str = _f("auto", "auto | data | imagenet | 'm1,m2,m3/s1,s2,s3' (per-channel mean/std, [0,1] pixel units); auto: the checkpoint's own, torchvision weights' own (ImageNet), else the train split's")
    pretrain_epochs: int = _f(15, "epochs of natural training when pretrained=auto")
    pretrain_lr: float = _f(0.05, "peak LR of natural pretraining (cosine schedule)")

    # --- threat model (fixed per study) ------------------------------------------------------
    norm: str = _f("linf", "linf | l2")
    eval_eps: float = _f(0.2, "evaluation epsilon, pixel units in [0,1] (\"8/255\" accepted)")
    val_steps: int = _f(10, "PGD steps of the validation attack")
    val_restarts: int = _f(1, "random restarts of the validation attack")
    val_step_size: float | None = _f(None, "validation PGD step, pixel units; default 2.5*eval_eps/val_steps")

    # --- training attack ----------------------------------------------------------------------
    attack: str = _f("pgd", "none | fgsm | fgsm_rs | nfgsm | pgd | free")
    train_eps: float | None = _f(None, "training epsilon, pixel units; default eval_eps")
    train_steps: int = _f(7, "PGD steps of the training attack")
    train_step_size: float | None = _f(None, "training step, pixel units; default pgd 2.5*eps/k, fgsm_rs 1.25*eps, fgsm/free eps (nfgsm: nfgsm_step)")
    nfgsm_noise: float = _f(2.0, "nfgsm: noise magnitude k in units of the training eps: noise uniform in [-k*eps, k*eps] (linf; l2: a ball of radius k*eps); 2 = de Jorge et al. 2022")
    nfgsm_step: float = _f(1.0, "nfgsm: step size in units of the training eps (1 = eps, the paper's); no projection back to the eps-ball")
    free_replays: int = _f(4, "free AT: replays m of each minibatch")
    eps_ramp: float = _f(0.3, "fraction of training progress at which the epsilon ramp ENDS (T2): train_eps rises linearly from 0 at eps_ramp_start to train_eps here; 0 = no ramp")
    eps_ramp_start: float = _f(0.0, "fraction of training progress (T1) before which train_eps is 0 (natural training); the ramp runs from T1 to eps_ramp (T2); T1 <= T2")
    attack_bn_mode: str = _f("auto", "BatchNorm mode while crafting training attacks: auto | eval | train (auto: eval; train for free AT, whose perturbation comes from the training pass itself)")
    loss: str = _f("ce", "ce (Madry) | trades (Zhang et al.)")
    trades_beta: float = _f(6.0, "TRADES robustness weight")
    label_smoothing: float = _f(0.0, "label smoothing of the training loss's cross-entropy, in [0,1) (training loss only: attacks craft on, and validation measures, plain labels)")

    # --- schedule -------------------------------------------------------------------------------
    schedule: str = _f("sfd", "sfd | cyclic | piecewise | cosine | constant")
    peak_lr: float = _f(0.02, "peak learning rate (for batch_size images)")
    warmup: float = _f(0.1, "sfd/cosine: fraction of training spent ramping up to peak_lr")
    warmup_shape: str = _f("linear", "sfd: linear | cosine ramp")
    start_factor: float = _f(0.1, "sfd: LR at t=0 as a fraction of peak_lr")
    decay_rate: float = _f(3.0, "sfd: exponential decay rate over the post-warmup part (LR falls by e^-rate)")
    min_lr: float = _f(0.0, "sfd/cosine: floor of the LR")
    peak_at: float = _f(0.4, "cyclic: fraction of training at which the triangle peaks")
    milestones: tuple[float, ...] = _f((0.5, 0.75), "piecewise: fractions of training where the LR drops")
    gamma: float = _f(0.1, "piecewise: factor of each drop")

    # --- optimizer ------------------------------------------------------------------------------
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "weight decay coefficient (sgd: L2 term in the gradient; adamw: decoupled, w -= lr*wd*w); never on biases and norm parameters")
    finetune_scope: str = _f("full", "full | head | last_block: which parameters train")
    backbone_lr_mult: float = _f(1.0, "LR multiplier of the backbone (everything but the head)")

    # --- optimizer choice and your own network (see docs/user-guide.md, "Your own model and data") -----
    optimizer: str = _f("sgd", "sgd | adamw (AdamW: decoupled weight decay; momentum/nesterov unused)")
    betas: tuple[float, float] = _f((0.9, 0.999), "adamw: (beta1, beta2) decay rates of the moment estimates, each in [0,1); [0.9, 0.95] or \"0.9,0.95\"")
    head_module: str | None = _f(None, "name of the classifier submodule (e.g. fc, head.fc); none = found automatically (timm's classifier, else the last nn.Linear)")

    # --- run --------------------------------------------------------------------------------------
    epochs: int = _f(8, "training epochs (full passes over the train split)")
    evals_per_epoch: int = _f(1, "validations (and checkpoints, reports) per epoch")
    seed: int = _f(0, "seed of initialisation, data order and attack noise")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    amp: str = _f("auto", "auto | off | bf16 | fp16 (auto: bf16 on CUDA where supported, off on CPU)")
    channels_last: str = _f("auto", "auto | on | off (auto: on for CUDA)")
    ema_decay: float = _f(0.0, "EMA of the weights (and BatchNorm statistics) per optimizer step, decay in [0,1); 0 = off. When on, validation, the overfitting guard and best.pt use the averaged model")
    co_guard: bool = _f(True, "FGSM training: stop on catastrophic overfitting")
    co_gap: float = _f(0.3, "catastrophic overfitting: FGSM minus PGD accuracy on a train batch that trips the guard")
    co_drop: float = _f(0.2, "catastrophic overfitting: drop of PGD train-batch accuracy below its best that trips the guard")

    # ------------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass coercion
        for name in ("eval_eps", "train_eps", "val_step_size", "train_step_size"):
            value = getattr(self, name)
            if value is not None:
                set_(name, parse_eps(value, name))
        if isinstance(self.val_size, str):
            set_("val_size", parse_eps(self.val_size, "val_size"))
        set_("milestones", _milestones(self.milestones))
        set_("betas", _betas(self.betas))
        for f in fields(self):
            set_(f.name, _coerce(f, getattr(self, f.name)))
        if self.val_size >= 1 and float(self.val_size).is_integer():
            set_("val_size", int(self.val_size))  # a count of images, not a fraction
        _validate(self)

    # derived values (not stored: they follow from the fields) --------------------------------------
    @property
    def train_eps_value(self) -> float:
        """Training epsilon, pixel units (defaults to eval_eps)."""
        return self.eval_eps if self.train_eps is None else self.train_eps

    @property
    def attack_bn_value(self) -> str:
        """The BatchNorm mode training attacks craft in ("eval" or "train"), ``auto`` resolved."""
        if self.attack_bn_mode != "auto":
            return self.attack_bn_mode
        return "train" if self.attack == "free" else "eval"

    @property
    def val_step_value(self) -> float:
        return self.val_step_size if self.val_step_size is not None else 2.5 * self.eval_eps / self.val_steps

    # (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrialConfig":
        names = {f.name for f in fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            key = unknown[0]
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else "; see `advtune train --help-config`"
            raise ConfigError(f"unknown config key '{key}' in {source}{hint}")
        return cls(**dict(data))

    @classmethod
    def load(cls, config: "TrialConfig | Mapping[str, Any] | str | Path | None" = None,
             overrides: "Mapping[str, Any] | list[str] | None" = None) -> "TrialConfig":
        """The base config every command and the Python API start from: ``config`` as a TrialConfig, a dict of
        keys, a YAML path or None (the embedded default), then ``overrides``: ``KEY=VALUE`` strings (``--set``)
        or a dict of values."""
        if config is None:
            cfg = cls()
        elif isinstance(config, cls):
            cfg = config
        elif isinstance(config, Mapping):
            cfg = cls.from_dict(config)
        else:
            cfg = cls.from_yaml(config)
        if isinstance(overrides, Mapping):
            return cfg.replace(**overrides)
        return cfg.with_overrides(list(overrides)) if overrides else cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrialConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
            data = dict(data["config"])  # an `advtune export` entry: its config is under `config`
            pre = data.get("pretrained")  # a file of the study, written relative to the entry (study/export.py)
            if isinstance(pre, str) and pre.startswith(("./", "../")):
                data["pretrained"] = str((path.parent / pre).resolve())
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(data).__name__}")
        try:
            return cls.from_dict(data, source=str(path))
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if str(path) in msg else f"{path}: {msg}") from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **changes: Any) -> "TrialConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, overrides: list[str]) -> "TrialConfig":
        """Apply ``key=value`` strings (values parsed as YAML scalars)."""
        return self.from_dict({**self.to_dict(), **parse_overrides(overrides)}, source="--set")

    @classmethod
    def field_docs(cls) -> str:
        lines = []
        for f in fields(cls):
            lines.append(f"  {f.name:<18} {f.default!r:<14} {f.metadata.get('doc', '')}")
        return "\n".join(lines)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["peak_lr=0.1", "eval_eps=8/255"]`` → ``{"peak_lr": 0.1, "eval_eps": "8/255"}``."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}' (e.g. --set peak_lr=0.1)")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


# --- validation -------------------------------------------------------------------------------------

_FIELD_TYPES = {f.name: f.type for f in fields(TrialConfig)}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Coerce YAML/CLI scalars to the field's type; reject what cannot be coerced."""
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"config field '{f.name}' must not be empty (expected {kind}); default is {f.default!r}")
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"config field '{f.name}' = {value!r} is not a boolean; write true or false")
    if kind.startswith("int"):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"config field '{f.name}' = {value!r} is not an integer")
        return int(value)
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return parse_eps(value, f.name)
            except ConfigError:
                raise ConfigError(f"config field '{f.name}' = {value!r} is not a number") from None
        return float(value)
    if kind.startswith("str"):
        if not isinstance(value, str):
            if f.name == "pretrained" and value is False:
                return None
            raise ConfigError(f"config field '{f.name}' = {value!r} is not a string")
        return value
    return value


def _milestones(value: Any) -> tuple[float, ...]:
    """A list of fractions (a single number is a one-element list); anything else is a ConfigError."""
    items = [value] if isinstance(value, (int, float, str)) else value
    if isinstance(items, (list, tuple)):
        try:
            return tuple(parse_eps(m, "milestones") for m in items)
        except ConfigError:
            pass
    raise ConfigError(f"config field 'milestones' = {value!r} must be a list of increasing fractions in (0,1), "
                      "e.g. [0.5, 0.75]")


def _betas(value: Any) -> tuple[float, float]:
    """AdamW's (beta1, beta2): a pair of numbers, or a string "b1,b2" (so a search space can offer
    pairs as categorical choices, which Optuna needs to be scalars)."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (list, tuple)) and len(items) == 2:
        try:
            pair = tuple(float(parse_eps(b, "betas")) for b in items)
        except ConfigError:
            pair = None
        if pair is not None and all(0 <= b < 1 for b in pair):
            return pair  # type: ignore[return-value]
    raise ConfigError(f"config field 'betas' = {value!r} must be two numbers in [0,1), e.g. [0.9, 0.999] "
                      "(or \"0.9,0.999\" as a search-space choice)")


_IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def is_import_path(value: str) -> bool:
    """``package.module:function`` (the user's own model builder or dataset factory)."""
    return bool(_IMPORT_PATH.fullmatch(value)) and not value.startswith(("tv:", "timm:"))


def _validate_user_code(cfg: TrialConfig) -> None:
    """Syntax of import paths and timm names; importability is checked where they are built."""
    if ":" not in cfg.dataset:
        _choice(cfg, "dataset", DATASETS, extra="or your factory as package.module:function")
    elif not is_import_path(cfg.dataset):
        raise ConfigError(f"config field 'dataset' = {cfg.dataset!r} is not an import path: write "
                          "package.module:function (e.g. mypkg.data:splits) or one of " + ", ".join(DATASETS))
    if cfg.model.startswith("timm:") and not cfg.model[5:].strip():
        raise ConfigError("config field 'model' = 'timm:' names no timm model: write e.g. timm:resnet18 "
                          "(timm.list_models() lists them)")
    if ":" in cfg.model and not cfg.model.startswith(("tv:", "timm:")) and not is_import_path(cfg.model):
        raise ConfigError(f"config field 'model' = {cfg.model!r} is not an import path: write package.module:function "
                          "(e.g. mypkg.nets:build), timm:<name> or tv:<name>")
    _choice(cfg, "optimizer", ("sgd", "adamw"))
    if cfg.head_module is not None and not re.fullmatch(r"[\w]+(\.[\w]+)*", cfg.head_module):
        raise ConfigError(f"config field 'head_module' = {cfg.head_module!r} is not a submodule name: write e.g. fc "
                          "or head.fc (the name in model.named_modules()), or leave it unset")


def _choice(cfg: TrialConfig, name: str, allowed: tuple[str, ...], extra: str = "") -> None:
    value = getattr(cfg, name)
    if value not in allowed:
        near = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"config field '{name}' = {value!r} is not allowed: choose one of {', '.join(allowed)}"
                          f"{' ' + extra if extra else ''}{hint}")


def _range(cfg: TrialConfig, name: str, lo: float, hi: float, lo_open: bool = False,
           hi_open: bool = False, unit: str = "") -> None:
    value = getattr(cfg, name)
    if value is None:
        return
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left = "<" if lo_open else "<="
        right = "<" if hi_open else "<="
        hi_txt = "inf" if math.isinf(hi) else f"{hi:g}"
        raise ConfigError(f"config field '{name}' = {value!r} is out of range: expected {lo:g} {left} {name} {right} {hi_txt}{unit}")


DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")


def _validate(cfg: TrialConfig) -> None:
    _validate_user_code(cfg)
    _choice(cfg, "activation", ACTIVATIONS)
    _choice(cfg, "norm", NORMS)
    _choice(cfg, "attack", ATTACKS)
    _choice(cfg, "schedule", SCHEDULES)
    _choice(cfg, "finetune_scope", SCOPES)
    _choice(cfg, "attack_bn_mode", ("auto", "eval", "train"))
    _choice(cfg, "loss", ("ce", "trades"))
    _choice(cfg, "warmup_shape", ("linear", "cosine"))
    _choice(cfg, "amp", ("auto", "off", "bf16", "fp16"))
    _choice(cfg, "channels_last", ("auto", "on", "off"))
    _choice(cfg, "augment", ("auto", "none", "crop_flip"))
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"config field 'device' = {cfg.device!r} is not allowed: choose auto, cpu, cuda or cuda:N")
    eps_hint = " (pixel units of images in [0,1]; write 8/255 for 8 gray levels)"
    eps_hi = 1.0 if cfg.norm == "linf" else 1e3
    _range(cfg, "eval_eps", 0, eps_hi, lo_open=True, unit=eps_hint)
    _range(cfg, "train_eps", 0, eps_hi, unit=eps_hint)
    _range(cfg, "val_step_size", 0, eps_hi, lo_open=True)
    _range(cfg, "train_step_size", 0, eps_hi, lo_open=True)
    if cfg.val_size <= 0 or (cfg.val_size >= 1 and not float(cfg.val_size).is_integer()):
        raise ConfigError(f"config field 'val_size' = {cfg.val_size!r} is out of range: a fraction in (0,1) or a whole number of images")
    for name, lo in (("batch_size", 1), ("eval_batch_size", 1), ("val_steps", 1), ("val_restarts", 1),
                     ("train_steps", 1), ("free_replays", 1), ("epochs", 1), ("evals_per_epoch", 1),
                     ("pretrain_epochs", 0)):
        _range(cfg, name, lo, math.inf)
    if cfg.image_size is not None:
        _range(cfg, "image_size", 8, 1024)
    if cfg.train_size is not None:
        _range(cfg, "train_size", 1, math.inf, unit=" images (none = the whole train split)")
    _range(cfg, "peak_lr", 0, math.inf, lo_open=True)
    _range(cfg, "pretrain_lr", 0, math.inf, lo_open=True)
    _range(cfg, "warmup", 0, 1, hi_open=True)
    _range(cfg, "start_factor", 0, 1)
    _range(cfg, "decay_rate", 0, 100)
    _range(cfg, "min_lr", 0, cfg.peak_lr)
    _range(cfg, "peak_at", 0, 1, lo_open=True, hi_open=True)
    _range(cfg, "gamma", 0, 1, lo_open=True)
    _range(cfg, "eps_ramp", 0, 1, hi_open=True)
    _range(cfg, "eps_ramp_start", 0, 1, hi_open=True)
    if cfg.eps_ramp_start > cfg.eps_ramp:
        raise ConfigError(f"config field 'eps_ramp_start' = {cfg.eps_ramp_start!r} is after the ramp's end eps_ramp = "
                          f"{cfg.eps_ramp!r}: expected eps_ramp_start <= eps_ramp (epsilon is 0 until eps_ramp_start, "
                          "then rises linearly to train_eps at eps_ramp); raise eps_ramp or lower eps_ramp_start")
    _range(cfg, "label_smoothing", 0, 1, hi_open=True)
    _range(cfg, "ema_decay", 0, 1, hi_open=True)
    _range(cfg, "nfgsm_noise", 0, 16, unit=" (units of the training eps)")
    _range(cfg, "nfgsm_step", 0, 16, lo_open=True, unit=" (units of the training eps)")
    _range(cfg, "trades_beta", 0, 100)
    _range(cfg, "momentum", 0, 1, hi_open=True)
    _range(cfg, "weight_decay", 0, 1)
    _range(cfg, "backbone_lr_mult", 0, 100)
    _range(cfg, "co_gap", 0, 1)
    _range(cfg, "co_drop", 0, 1)
    _range(cfg, "min_loaded_fraction", 0, 1)
    from .normalization import parse_normalization

    try:
        parse_normalization(cfg.normalization)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if any(not 0 < m < 1 for m in cfg.milestones) or list(cfg.milestones) != sorted(cfg.milestones):
        raise ConfigError(f"config field 'milestones' = {list(cfg.milestones)} must be increasing fractions in (0,1), e.g. [0.5, 0.75]")
    if cfg.dataset == "imagefolder" and not cfg.data_root:
        raise ConfigError("dataset 'imagefolder' needs data_root: --set data_root=PATH (a folder with train/<class>/*.jpg)")
    if cfg.loss == "trades" and cfg.attack != "pgd":
        raise ConfigError(f"loss 'trades' crafts its own KL attack with PGD; set attack=pgd (got attack={cfg.attack!r})")
    if cfg.attack == "nfgsm" and cfg.train_step_size is not None:
        raise ConfigError(f"attack 'nfgsm' takes its step from nfgsm_step (units of the training eps, default 1), "
                          f"not train_step_size (got {cfg.train_step_size!r}); unset train_step_size and set nfgsm_step")
    if cfg.attack == "free" and cfg.attack_bn_mode == "eval":
        raise ConfigError("attack 'free' takes its perturbation's gradient from the training pass itself, which runs "
                          "BatchNorm in train mode, so attack_bn_mode=eval cannot hold; use attack_bn_mode=auto (or train)")
