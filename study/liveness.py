"""Is a study's driver running? ``<study>/driver.json`` says which process drives it.

``advtune run`` / ``advtune resume`` write it when they start and remove it when they end (also on an
error or Ctrl-C). A driver killed outright (SIGKILL, a lost machine) leaves it behind, so a reader on
the driver's own machine checks that the process still exists; a reader on another machine cannot,
and takes the study as running as long as the file is there (it says so). Without the file the
study is not running: finished, or interrupted (``advtune resume`` continues it).

A study in cloud storage is read from other machines as a rule, so its driver's record carries a
heartbeat: the driver rewrites it every ``period`` seconds (``beat``: when, by the driver's clock) in its
staging folder and in the bucket (``study.cloud_study.DriverHeartbeat``). A reader on another machine
takes such a driver as gone once ``STALE_BEATS`` beats are missing.

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

__all__ = ["FILE", "Driver", "driver_started", "driver_ended", "driver_of", "study_state", "HEARTBEAT_ENV",
           "heartbeat_period", "STALE_BEATS", "driven_here"]

FILE = "driver.json"
HEARTBEAT_ENV = "ADVTUNE_DRIVER_HEARTBEAT_S"  # seconds between a cloud driver's beats (default 30)
STALE_BEATS = 4  # a record whose last beat is older than this many periods is a driver gone (clock skew: beats)


def heartbeat_period() -> float:
    return float(os.environ.get(HEARTBEAT_ENV, "30"))


@dataclass(frozen=True)
class Driver:
    pid: int
    host: str
    started: float  # seconds since the epoch
    local: bool  # on this machine: ``pid`` was checked to be alive
    beat: float | None = None  # a cloud driver's last heartbeat (its clock)
    staging: str | None = None  # a cloud driver's staging folder (on its machine)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        if self.local:
            where = "on this machine"
        elif self.beat is not None:
            where = f"on {self.host}, last heartbeat {max(0.0, time.time() - self.beat):.0f} s ago"
        else:
            where = f"on {self.host} (not checked from here)"
        return f"driver pid {self.pid} {where}, since {since}"


def driver_started(study_dir: str | Path, period: float | None = None, started: float | None = None) -> dict:
    """Record this process as the study's driver (with a heartbeat every ``period`` seconds: a beat now, and the
    folder it is written in, which tells the driver's own staging folder from a reader's copy of the record);
    returns the record written."""
    path = Path(study_dir) / FILE
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started or time.time()}
    if period is not None:
        record.update(beat=time.time(), period=period, staging=str(Path(study_dir).resolve()))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return record


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
        beat = float(data["beat"]) if "beat" in data else None
        period, staging = float(data.get("period", 0)), data.get("staging")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    local = host == socket.gethostname()
    if local and not _alive(pid):
        return None
    if not local and beat is not None and time.time() - beat > STALE_BEATS * period:
        return None  # its heartbeat stopped: killed, or its machine lost
    return Driver(pid, host, started, local, beat, staging)


def driven_here(folder: str | Path) -> bool:
    """Whether ``folder`` is the staging folder of a cloud study's driver running on this machine (not a reader's
    copy of its record, pulled into a folder of its own: the record names the folder it was written in)."""
    driver = driver_of(folder)
    return driver is not None and driver.local and driver.staging == str(Path(folder).resolve())


def study_state(study_dir: str | Path, records: list, num_samples: int) -> tuple[str, Driver | None]:
    """``running`` (a driver holds it), ``complete`` (every trial asked for has ended) or
    ``interrupted`` (neither: ``advtune resume`` continues it); and the driver when running."""
    from .records import FINAL_STATES

    driver = driver_of(study_dir)
    if driver is not None:
        return "running", driver
    done = len(records) >= num_samples and all(r.state in FINAL_STATES for r in records)
    return ("complete" if done else "interrupted"), None
