"""The leaf under checkpoint I/O: the checkpoint error and the atomic file write that both
``checkpoints.py`` (advtune's .pt files) and ``safetensors_io.py`` (.safetensors files) use. Kept apart so
that neither of the two imports the other for them (checkpoints.py calls safetensors_io to read a
.safetensors starting point; safetensors_io no longer reaches back)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["CheckpointError", "write_atomic"]


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file, the problem and the fix."""


def write_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``: a reader sees
    the old file or the whole new one, never a partial write (a crash leaves no temporary file behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
