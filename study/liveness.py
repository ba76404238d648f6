"""Is a study's driver running? ``<study>/driver.json`` says which process drives it.

``advtune run`` / ``advtune resume`` write it when they start and remove it when they end (also on an
error or Ctrl-C). A driver killed outright (SIGKILL, a lost machine) leaves it behind, so a reader on
the driver's own machine checks that the process still exists; a reader on another machine cannot,
and takes the study as running as long as the file is there (it says so). Without the file the
study is not running: finished, or interrupted (``advtune resume`` continues it).

Readers: ``advtune status`` (no ``advtune resume`` advice while it runs; ``--watch`` redraws until
it ends) and ``advtune export`` (warns that the export is of the trials so far).
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FILE", "Driver", "driver_started", "driver_ended", "driver_of", "study_state"]

FILE = "driver.json"


@dataclass(frozen=True)
class Driver:
    pid: int
    host: str
    started: float  # seconds since the epoch
    local: bool  # on this machine: ``pid`` was checked to be alive

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        where = "on this machine" if self.local else f"on {self.host} (not checked from here)"
        return f"driver pid {self.pid} {where}, since {since}"


def driver_started(study_dir: str | Path) -> None:
    """Record this process as the study's driver."""
    path = Path(study_dir) / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
    os.replace(tmp, path)


def driver_ended(study_dir: str | Path) -> None:
    """Remove the record if it is this process's (a second driver's record is left alone)."""
    path = Path(study_dir) / FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if data.get("pid") == os.getpid() and data.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def driver_of(study_dir: str | Path) -> Driver | None:
    """The study's running driver, or None (no record, or its process on this machine is gone)."""
    try:
        data = json.loads((Path(study_dir) / FILE).read_text())
        pid, host, started = int(data["pid"]), str(data["host"]), float(data["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    local = host == socket.gethostname()
    if local and not _alive(pid):
        return None
    return Driver(pid, host, started, local)


def study_state(study_dir: str | Path, records: list, num_samples: int) -> tuple[str, Driver | None]:
    """``running`` (a driver holds it), ``complete`` (every trial asked for has ended) or
    ``interrupted`` (neither: ``advtune resume`` continues it); and the driver when running."""
    from .records import FINAL_STATES

    driver = driver_of(study_dir)
    if driver is not None:
        return "running", driver
    done = len(records) >= num_samples and all(r.state in FINAL_STATES for r in records)
    return ("complete" if done else "interrupted"), None
