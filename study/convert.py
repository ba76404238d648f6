"""`advtune convert CHECKPOINT --to safetensors`: advtune's own checkpoint as weights + config YAML.

``best.pt`` / ``last.pt`` become ``<out>.safetensors`` (the whole model's state dict — the
normalization layer's mean/std included — under the same keys as in the checkpoint) and
``<out>.yaml`` (the trial config, loadable by ``--config``). Both reload:

    advtune train --set pretrained=best.safetensors ...          # a starting point
    advtune eval --checkpoint best.safetensors --config best.yaml  # evaluation

The safetensors metadata also records the config (JSON) and the package versions.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register", "cmd_convert", "convert"]


def convert(checkpoint: str | Path, out: str | Path | None = None, force: bool = False) -> tuple[Path, Path]:
    """Write ``checkpoint``'s model as safetensors and its config as YAML; returns both paths."""
    from advtune.trainables.checkpoints import FORMAT, CheckpointError, load_file, versions
    from advtune.trainables.config import TrialConfig
    from advtune.trainables.safetensors_io import SUFFIX, write

    payload = load_file(checkpoint)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{checkpoint} is not an advtune checkpoint (best.pt or last.pt), so it holds no config to "
                              "write beside the weights; convert the best.pt or last.pt an advtune run wrote")
    cfg = TrialConfig.from_dict(payload["config"])
    src = Path(checkpoint)
    src = src / ("best.pt" if (src / "best.pt").exists() else "last.pt") if src.is_dir() else src
    base = Path(out) if out is not None else src
    base = base.with_suffix("") if base.suffix in (SUFFIX, ".yaml", ".pt") else base
    weights, config = Path(f"{base}{SUFFIX}"), Path(f"{base}.yaml")
    taken = [str(p) for p in (weights, config) if p.exists()]
    if taken and not force:
        raise CheckpointError(f"{', '.join(taken)} already exist(s); pass --force to replace, or choose --out PATH")
    meta = {"format": "advtune-safetensors-v1", "config": json.dumps(cfg.to_dict()),
            "versions": json.dumps(versions()), "kind": str(payload.get("kind", ""))}
    write(payload["model"], weights, metadata=meta)
    cfg.to_yaml(config)
    return weights, config


def cmd_convert(args: argparse.Namespace) -> int:
    weights, config = convert(args.checkpoint, args.out, force=args.force)
    print(f"wrote {weights}\n      {config}")
    print(f"start from it: advtune train --set pretrained={weights}")
    print(f"evaluate it:   advtune eval --checkpoint {weights} --config {config}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="write an advtune checkpoint as safetensors plus its config YAML",
                       description="Convert advtune's best.pt/last.pt into OUT.safetensors (the model's weights, "
                       "normalization included) and OUT.yaml (its trial config). Default OUT: the checkpoint's path "
                       "without .pt (runs/x/best.pt -> runs/x/best.safetensors, runs/x/best.yaml).")
    p.add_argument("checkpoint", help="an advtune best.pt or last.pt (or the folder holding them)")
    p.add_argument("--to", choices=["safetensors"], default="safetensors", help="output format (safetensors)")
    p.add_argument("--out", default=None, metavar="PATH", help="output path without suffix (default: beside the input)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_convert)
