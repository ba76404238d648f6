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
from .liveness import FILE as DRIVER_FILE

__all__ = ["is_uri", "study_uri", "Remote", "staging_dir", "check_uri", "check_scheme", "SCHEMES", "SYNC_PERIOD_S", "open_study",
           "StudyStorage", "LocalStorage", "CloudStorage", "storage_for", "resolve_storage_path"]

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
    from advtune.trainables.cache import cache_dir

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
            if rel == DRIVER_FILE:  # study.liveness's record: the driver's heartbeat writes the bucket's copy itself
                continue
            key = _stamp(path)
            if self._sent.get(rel) == key:
                continue
            with open(path, "rb") as src, self.fs.open_output_stream(self.remote_path(rel)) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            self._sent[rel] = key
            n += 1
        return n

    def mark_sent(self) -> None:
        """Take the staging folder as in the bucket already: a push then uploads only what changes after."""
        for path in self.local.rglob("*"):
            if path.is_file():
                self._sent[path.relative_to(self.local).as_posix()] = _stamp(path)

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


def _stamp(path: Path) -> tuple[int, int]:
    """What tells a pushed file from a changed one: its size and modification time."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def open_study(location: str) -> tuple[Path, Remote | None]:
    """The local folder to read a study from: the path itself, or for a URI a fresh staging copy of its
    records. Refuses a URI that holds no advtune study."""
    from .records import MARKER

    if not is_uri(location):
        return Path(location), None
    check_uri(location)
    from .liveness import driven_here

    remote = Remote(location)
    if not remote.exists(MARKER):
        raise StudyError(f"{location} holds no advtune study (no {MARKER} there); pass the URI `advtune run` "
                         "printed as the study's location (--storage-path URI + / + --name)")
    if driven_here(remote.local):
        # the staging folder of a driver running on this machine: its records are the newest there are, and a
        # pull (which replaces the folder) would take from under it the lines it has not pushed yet
        remote.mark_sent()
    else:
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


# --- one study's storage: the one place that tells a filesystem study from a cloud one -------------------------
class StudyStorage:
    """Where one study lives and how its files move: obtained once per study from its spec (``spec.storage``,
    made by :func:`storage_for`), so the commands, the Tune backend, the final evaluation and the export call
    its methods instead of asking which kind it is. ``study_dir`` arguments are the folder the driver writes
    the records into this time (a resumed local study may have been moved since the spec was written)."""

    def __init__(self, storage_path: str, name: str) -> None:
        self.storage_path = str(storage_path)
        self.name = name

    @property
    def location(self) -> str:
        """The study as a user names it: its directory, or ``<URI>/<name>``."""
        raise NotImplementedError

    @property
    def study_dir(self) -> Path:
        """Where the driver writes the study's records: the study directory, or a cloud study's staging copy."""
        raise NotImplementedError

    def trial_dir(self, study_dir: Path) -> str:
        """What each trial is told as its study directory (``trainables.tune_adapter.trial_fn``)."""
        return str(study_dir)

    def pretrained_target(self, study_dir: Path) -> str:
        """Where ``pretrained: auto`` trains the study's one starting point, which every trial loads."""
        return str(study_dir / "pretrained" / "best.pt")

    def has_pretrained(self, target: str) -> bool:
        return Path(target).exists()

    def staged_note(self) -> str:
        """What ``--dry-run``'s directory line adds: where a cloud study's records are staged."""
        return ""

    @property
    def needs_shared_filesystem(self) -> bool:
        """Whether trials on other nodes write into a directory (``spec.check_storage`` checks it is shared)."""
        return True

    def hold_driver_lease(self, study_dir: Path):
        """Mark this process as the study's driver (``study/liveness.py``); returns the function that ends it."""
        from .liveness import driver_ended, driver_started

        driver_started(study_dir)
        return lambda: driver_ended(study_dir)

    @property
    def restaged_by_driver(self) -> bool:
        """Whether each driver keeps the records in a folder of its own (a cloud study's staging copy), so a
        resumed Tuner's callbacks, unpickled pointing at the first driver's folder, are rebuilt."""
        return False

    def check_free(self) -> None:
        """Before `advtune run` writes anything: the location can hold a new study of this name."""

    def push(self, study_dir: Path) -> None:
        """Send the staged records to where the study lives (nothing to do on a filesystem)."""

    def optuna_storage(self, spec, study_dir: Path):
        """The Optuna storage the searcher keeps the study in."""
        import optuna

        return optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")

    def restore_path(self, study_dir: Path) -> str:
        """What ``tune.Tuner.restore`` is given: where Ray Tune's experiment state is."""
        return str(study_dir)

    def callback(self, spec, study_dir: Path, searcher):
        """The driver's Tune callback that writes the records."""
        from .tune_backend import StudyCallback

        return StudyCallback(str(study_dir), spec.num_samples)

    def after_search(self, study_dir: Path) -> None:
        """When the search has ended, before the final evaluation (a cloud study prunes its checkpoints)."""

    def best_checkpoint(self, trial_id: str, directory: Path | None, study_dir: Path) -> str:
        """The trial's best.pt as a path or URI (it may not exist: see :meth:`best_checkpoints`)."""
        return str((directory or study_dir) / "best.pt")

    def best_checkpoints(self, records) -> dict[str, str]:
        """Trial id -> best.pt of every trial in ``records`` (``study.records.TrialRecord``) that has one."""
        return {r.trial_id: str(r.directory / "best.pt") for r in records
                if r.directory and (r.directory / "best.pt").exists()}


class LocalStorage(StudyStorage):
    """A study in a directory every node mounts (or this machine only): trials write their files there."""

    @property
    def location(self) -> str:
        return str(self.study_dir)

    @property
    def study_dir(self) -> Path:
        return Path(self.storage_path) / self.name


class CloudStorage(StudyStorage):
    """A study under a URI: trials hand their checkpoints to Ray, which uploads them; the driver stages the
    records locally and pushes them (:class:`Remote`, ``study.cloud_study``)."""

    @property
    def location(self) -> str:
        return study_uri(self.storage_path, self.name)

    @property
    def study_dir(self) -> Path:
        return staging_dir(self.location)

    def trial_dir(self, study_dir: Path) -> str:  # never the driver's staging folder: no node but this one sees it
        return self.location

    def pretrained_target(self, study_dir: Path) -> str:  # in the bucket, where every node can read it
        return f"{self.location}/pretrained/best.pt"

    def has_pretrained(self, target: str) -> bool:
        return Remote(self.location).exists("pretrained/best.pt")

    def staged_note(self) -> str:
        return f" (records staged in {self.study_dir})"

    @property
    def needs_shared_filesystem(self) -> bool:
        return False

    def hold_driver_lease(self, study_dir: Path):  # with a heartbeat in the bucket, for readers elsewhere
        from .cloud_study import DriverHeartbeat

        return DriverHeartbeat(Remote(self.location, study_dir), study_dir).start().stop

    @property
    def restaged_by_driver(self) -> bool:
        return True

    def check_free(self) -> None:
        check_cloud_study_free(self)

    def push(self, study_dir: Path) -> None:
        Remote(self.location, study_dir).push()

    def optuna_storage(self, spec, study_dir: Path):
        # an absolute sqlite path would not exist on the machine that resumes: see study.cloud_study
        import optuna

        from .cloud_study import optuna_storage

        storage = optuna_storage(spec)
        seeded = study_dir / "optuna.db"
        if spec.warm_start and seeded.exists():  # study.warm_start seeded the local file: carry its trials over
            storage = storage or optuna.storages.InMemoryStorage()
            optuna.copy_study(from_study_name=spec.name, from_storage=f"sqlite:///{seeded}", to_storage=storage)
        return storage

    def restore_path(self, study_dir: Path) -> str:
        return self.location

    def callback(self, spec, study_dir: Path, searcher):
        from .cloud_study import CloudStudyCallback

        return CloudStudyCallback(str(study_dir), spec.num_samples, self.location, searcher)

    def after_search(self, study_dir: Path) -> None:
        from .cloud_study import keep_newest_checkpoints

        keep_newest_checkpoints(Remote(self.location, study_dir))

    def best_checkpoint(self, trial_id: str, directory: Path | None, study_dir: Path) -> str:
        from .cloud_study import best_checkpoint_uri

        return best_checkpoint_uri(self.location, trial_id)

    def best_checkpoints(self, records) -> dict[str, str]:  # the staging folder holds no checkpoint: the bucket
        uris = {r.trial_id: self.best_checkpoint(r.trial_id, None, self.study_dir) for r in records}
        return {t: u for t, u in uris.items() if u.endswith("/best.pt")}  # else: "(no checkpoint … in the bucket)"


def resolve_storage_path(path: str, assume_shared: bool = False, optuna_url: str | None = None) -> str:
    """``--storage-path`` as the spec stores it: a URI checked for its scheme (no network), or an absolute
    directory; refuses the options that do not fit the kind (``--assume-shared-storage`` with a URI,
    ``--optuna-storage`` with a directory)."""
    if is_uri(path):
        check_scheme(path)
        if assume_shared:
            raise StudyError(f"--storage-path {path} is a cloud URI: trials hand their checkpoints to Ray, which "
                             "uploads them, so there is no shared filesystem to assume; drop --assume-shared-storage")
        return path
    if optuna_url:
        raise StudyError("--optuna-storage is for studies in cloud storage; on a filesystem path the Optuna "
                         "study is STUDY/optuna.db, which optuna-dashboard opens (drop --optuna-storage)")
    return str(Path(path).expanduser().resolve())


def storage_for(storage_path: str, name: str) -> StudyStorage:
    """THE place that tells the two kinds apart: a URI is cloud storage, anything else a directory."""
    return CloudStorage(storage_path, name) if is_uri(storage_path) else LocalStorage(storage_path, name)
