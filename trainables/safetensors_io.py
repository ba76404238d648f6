"""safetensors files: starting points read safely by construction, and advtune's export format.

A ``.safetensors`` file is a JSON header and raw tensor bytes: reading it runs no code, so it needs
no ``--trust-checkpoint``. :func:`read` returns its tensors as a state dict (tagged so the load
report names the format); :func:`write` stores a state dict atomically, with string metadata.
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["SafetensorsState", "read", "write", "SUFFIX"]

SUFFIX = ".safetensors"


class SafetensorsState(dict):
    """A state dict read from a safetensors file (plus its string metadata)."""

    source_format = "safetensors"

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        super().__init__(tensors)
        self.metadata = metadata or {}


def read(path: str | Path) -> SafetensorsState:
    """The tensors of ``path`` on the CPU; a damaged file is a CheckpointError naming it."""
    from safetensors import safe_open

    from .atomic_files import CheckpointError

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - the library raises SafetensorError, OSError, ValueError...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a safetensors file ({detail}); use "
                              "another copy of the file") from None
    return SafetensorsState(tensors, metadata)


def write(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save ``state`` (contiguous CPU copies: safetensors stores neither views nor shared storage)."""
    from safetensors.torch import save_file

    from .atomic_files import write_atomic as _write_atomic

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    _write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
