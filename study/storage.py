"""Studies in cloud storage (``--storage-path s3://…``): the URI checks, the driver's local staging copy, and
its sync with the bucket.

With a URI there is no directory every node sees. Trials hand their checkpoints to Ray Tune, which uploads
them (``trainables/cloud_adapter.py``); the study's own records (marker, metrics, TensorBoard events, the
Optuna database, export, report) are written on the driver into a *staging* folder on its local disk and
uploaded to ``<URI>/<name>/`` at every trial's end, every ``SYNC_PERIOD_S`` seconds and at the study's end.
Any command given the URI (``status | export | report | resume``) first downloads the records into a fresh
staging folder, so a machine holding nothing but the URI can continue or read the study.

The staging folder is ``$ADVTUNE_CACHE/studies/<scheme>/<bucket>/<prefix>/<name>`` — a cache: the bucket
is the truth, and a command that starts from the URI replaces it with what the bucket holds.

Credentials and endpoints come from the node's environment or role (``AWS_*``, ``GOOGLE_APPLICATION_
CREDENTIALS``, ``AZURE_*``, ``AWS_ENDPOINT_URL`` for S3-compatible servers), never from the command line:
pyarrow's filesystems read them, on the driver and on every node alike.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import StudyError

__all__ = ["is_uri", "study_uri", "Remote", "staging_dir", "check_uri", "check_scheme", "SCHEMES", "SYNC_PERIOD_S", "open_study"]

# URI schemes pyarrow.fs (and so Ray Tune) accepts for a storage path.
SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")
SYNC_PERIOD_S = 30.0
# Ray Tune's own files in the study prefix: the staging copy never needs them (Ray downloads its state itself).
_RAY_FILES = ("experiment_state-", "tuner.pkl", "basic-variant-state", "search_gen_state", "searcher-state",
              "callback-states", ".validate_storage_marker", "trainable.pkl")


def is_uri(path: str | os.PathLike | None) -> bool:
    return path is not None and "://" in str(path)


def study_uri(storage_path: str, name: str) -> str:
    return storage_path.rstrip("/") + "/" + name


def staging_dir(uri: str) -> Path:
    from advtune.trainables.pretrain import cache_dir

    scheme, _, rest = uri.partition("://")
    parts = [p for p in rest.split("?")[0].split("/") if p and p not in (".", "..")]
    return cache_dir() / "studies" / scheme / Path(*parts)


def check_scheme(uri: str) -> None:
    """Refuse a URI scheme pyarrow (and so Ray Tune) has no filesystem for; no network."""
    scheme = uri.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise StudyError(f"--storage-path {uri}: unknown URI scheme '{scheme}://'; use s3://BUCKET/PREFIX, "
                         "gs://BUCKET/PREFIX or abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX (or a "
                         "filesystem path every node mounts)")
    if not uri.partition("://")[2].strip("/"):
        raise StudyError(f"--storage-path {uri} names no bucket; write e.g. s3://BUCKET/advtune")


def _filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of ``uri``; a StudyError naming the fix when the scheme is unknown."""
    import pyarrow.fs as pafs

    check_scheme(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ImportError by backend
        raise StudyError(f"--storage-path {uri}: pyarrow cannot open it ({_first_line(exc)}); check the URI and "
                         "that pyarrow has this filesystem") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def check_uri(uri: str) -> None:
    """Refuse a URI whose bucket is missing or whose credentials the server refuses, before anything starts.
    Reads only (nothing is written)."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    bucket = path.split("/")[0]
    try:
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            raise StudyError(f"--storage-path {uri}: bucket '{bucket}' does not exist; create it first (e.g. "
                             f"`aws s3 mb s3://{bucket}`) or name an existing one")
        fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except StudyError:
        raise
    except OSError as exc:
        text = str(exc)
        if any(k in text for k in ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY", "403", "SIGNATURE",
                                   "Forbidden", "credentials")):
            raise StudyError(f"--storage-path {uri}: the storage server refused these credentials (403: "
                             f"{_first_line(exc)}); give this machine and every node access to the bucket through "
                             "their role or environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an "
                             "instance role), never on the command line") from None
        if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
            raise StudyError(f"--storage-path {uri}: bucket '{bucket}' does not exist; create it first or name an "
                             "existing one") from None
        raise StudyError(f"--storage-path {uri}: cannot reach the storage ({_first_line(exc)}); check the endpoint "
                         "(AWS_ENDPOINT_URL for S3-compatible servers) and the network") from None


class Remote:
    """The study's prefix in the bucket (``<URI>/<name>``) and the driver's staging copy of its records."""

    def __init__(self, uri: str, local: Path | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.path = _filesystem(self.uri)
        self.path = self.path.rstrip("/")
        self.local = Path(local) if local is not None else staging_dir(self.uri)
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) last uploaded
        self._last_sync = 0.0

    def __getstate__(self) -> dict[str, Any]:  # pickled with Tune's callbacks: the filesystem is rebuilt
        return {"uri": self.uri, "local": self.local}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["local"])

    def remote_path(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.remote_path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.remote_path(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self.remote_path(rel)) as f:
            f.write(data)

    # --- sync -----------------------------------------------------------------------------------------
    def push(self, force: bool = True) -> int:
        """Upload the staging files that changed since the last push; returns how many. ``force=False``
        pushes at most every ``SYNC_PERIOD_S`` seconds."""
        now = time.monotonic()
        if not force and now - self._last_sync < SYNC_PERIOD_S:
            return 0
        self._last_sync = now
        n = 0
        for path in sorted(self.local.rglob("*")):
            if not path.is_file() or path.name.endswith((".tmp", ".lock")) or path.name.startswith("."):
                continue
            rel = path.relative_to(self.local).as_posix()
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
            if self._sent.get(rel) == key:
                continue
            with open(path, "rb") as src, self.fs.open_output_stream(self.remote_path(rel)) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            self._sent[rel] = key
            n += 1
        return n

    def pull(self) -> None:
        """Replace the staging folder by the study's records in the bucket (not Ray's state, not checkpoints)."""
        import pyarrow.fs as pafs

        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True, exist_ok=True)
        base = self.path.strip("/")
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path.strip("/")[len(base):].lstrip("/")
            top = rel.split("/")[0]
            if top.startswith(_RAY_FILES) or (top not in _RECORD_DIRS and "/" in rel) or "/epochs_trained/" in rel:
                continue  # Ray's trial folders (checkpoints) and Ray's own state stay in the bucket
            dest = self.local / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(info.path) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            st = dest.stat()
            self._sent[rel] = (st.st_size, st.st_mtime_ns)


_RECORD_DIRS = ("trials", "tensorboard", "export", "report")


def open_study(location: str) -> tuple[Path, Remote | None]:
    """The local folder to read a study from: the path itself, or for a URI a fresh staging copy of its
    records. Refuses a URI that holds no advtune study."""
    from .records import MARKER

    if not is_uri(location):
        return Path(location), None
    check_uri(location)
    remote = Remote(location)
    if not remote.exists(MARKER):
        raise StudyError(f"{location} holds no advtune study (no {MARKER} there); pass the URI `advtune run` "
                         "printed as the study's location (--storage-path URI + / + --name)")
    remote.pull()
    return remote.local, remote


def check_cloud_study_free(spec) -> None:
    """Before `advtune run` writes anything: the bucket is there, the credentials work, the name is free. A
    staging folder left from an earlier study of that name whose bucket copy is gone is cleared."""
    from .records import MARKER

    check_uri(spec.storage_path)
    if Remote(spec.location).exists(MARKER):
        raise StudyError(f"study {spec.location} already exists; continue it with `advtune resume {spec.location}` "
                         "or choose another --name")
    shutil.rmtree(spec.study_dir, ignore_errors=True)
