"""Where advtune keeps what it can remake: ``$ADVTUNE_CACHE`` (default ``~/.cache/advtune``) holds the
pretrained starting points (``pretrained/``), a node's copies of a cloud study's starting point
(``remote/``) and the staging folders of cloud studies (``studies/``). A leaf module, so that the three
that use it (pretrain, cloud_adapter, study.storage) need not import one another for it."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache folder: ``$ADVTUNE_CACHE``, else ``~/.cache/advtune`` (read at each call: tests move it)."""
    return Path(os.environ.get("ADVTUNE_CACHE", Path.home() / ".cache" / "advtune"))
