"""What the driver can learn about the Ray cluster before a study starts: whether ``--address`` answers, and
which node types the cluster's autoscaler can launch.

An autoscaling cluster (``ray up``, KubeRay, GPU worker types at ``min_workers: 0``) shows only its head when a
study starts: the nodes that would run the trials come when trials ask for them. So the resource check looks at
the node types too. Ray exposes them to a driver in two ways, tried in this order:

1. the cluster config the autoscaler reported to the GCS (``ray._private.state.state.get_cluster_config()``,
   what Ray Data's autoscaler reads; filled where the platform reports it);
2. the autoscaler's own config file, the ``--autoscaling-config`` its monitor process was started with (the
   monitor's pid is in the autoscaling status it writes to the GCS) — readable when the driver runs on the
   head, where docs/cluster.md runs it — else ``~/ray_bootstrap_config.yaml``, where ``ray up`` puts it.

Whether the cluster autoscales at all is read from the status the autoscaler's monitor writes to the GCS
(``__autoscaling_status``); a cluster whose node types stay invisible to this driver is not refused on the
live nodes alone (see ``study.spec.check_resources``).
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StudyError

__all__ = ["NodeType", "probe_address", "autoscaler_running", "node_types", "PROBE_TIMEOUT_S"]

PROBE_TIMEOUT_S = 5.0  # per connection attempt; two attempts, so a dead address is refused within ~10 s
_STATUS_KEY = "__autoscaling_status"  # ray_constants.DEBUG_AUTOSCALING_STATUS: the monitor's status, as JSON


@dataclass(frozen=True)
class NodeType:
    """One node type the autoscaler can launch: its Ray resources (``{}`` when the config leaves them to the
    cloud provider to fill in) and how many of it may run."""

    name: str
    resources: dict[str, float] = field(default_factory=dict)
    min_workers: int = 0
    max_workers: int = 0  # -1: unbounded

    @property
    def launchable(self) -> bool:
        return self.max_workers != 0

    def describe(self) -> str:
        res = ", ".join(f"{v:g} {k}" for k, v in sorted(self.resources.items()) if k in ("CPU", "GPU")) or "resources unknown"
        most = "unbounded" if self.max_workers < 0 else str(self.max_workers)
        return f"{self.name} ({res}; {self.min_workers}-{most} nodes)"


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of the address ``ray.init`` would connect to; None for a local Ray."""
    if address.startswith("ray://"):
        rest = address[len("ray://"):].split("/")[0]
        host, _, port = rest.rpartition(":")
        return (host or rest, int(port) if port.isdigit() else 10001)
    import ray._private.services as services

    try:
        resolved = services.canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise StudyError(f"--address {address}: no running Ray cluster was found from this machine (no RAY_ADDRESS "
                         "set and no `ray start --head` here); start one with `ray start --head`, or pass the head's "
                         "address: --address HEAD_IP:6379") from None
    except ValueError as exc:
        raise StudyError(f"--address {address}: not an address Ray understands ({exc}); write auto, HOST:6379 or "
                         "ray://HOST:10001") from None
    if resolved is None:
        return None
    host, _, port = resolved.rpartition(":")
    if not port.isdigit():
        raise StudyError(f"--address {address}: no port in {resolved!r}; write HOST:6379 or ray://HOST:10001")
    return host.strip("[]"), int(port)


def probe_address(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse an ``--address`` nothing answers at, before ``ray.init`` would retry it for minutes (behind Ray's
    C++ "Failed to connect to GCS" warnings). A TCP connect only: it says the head's port is open, not who
    answers there."""
    if not address or address == "local":
        return
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    error: OSError | None = None
    for _ in range(2):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            error = exc
    reason = "timed out" if isinstance(error, socket.timeout) else (error.strerror or str(error))
    raise StudyError(f"--address {address}: nothing answers at {host}:{port} ({reason}); check that the cluster's "
                     "head is up (`ray status` on it), the host and port (the GCS port, 6379 by default; 10001 for "
                     "ray://), and that a firewall or security group lets this machine reach it")


def _status() -> dict[str, Any] | None:
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    try:
        raw = _internal_kv_get(_STATUS_KEY)
        return json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 - an unreadable status is the same as none
        return None


def _monitor_args(status: dict[str, Any]) -> list[str] | None:
    """The command line of the autoscaler's monitor process; None when it runs on another machine."""
    pid = status.get("monitor_pid")
    try:
        return Path(f"/proc/{int(pid)}/cmdline").read_bytes().decode().split("\0") if pid else None
    except (OSError, ValueError):
        return None


def autoscaler_running() -> bool:
    """True when an autoscaler can add nodes to this cluster. Every Ray head runs the autoscaler's monitor; one
    started without a cluster config (a local ``ray.init``, a hand-made ``ray start`` cluster) only watches the
    nodes there are, each its own type named ``node_<id>``. Autoscaler v2 says so in the GCS."""
    from ray.experimental.internal_kv import _internal_kv_get

    if _gcs_types():
        return True
    try:
        if _internal_kv_get("__autoscaler_v2_enabled") == b"1":
            return True
    except Exception:  # noqa: BLE001 - not connected
        return False
    status = _status()
    if status is None:
        return False
    args = _monitor_args(status)
    if args is not None:
        return any(a.startswith("--autoscaling-config=") for a in args)
    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return any(kind != f"node_{node}" for node, kind in mapping.items())


def _gcs_types() -> list[NodeType]:
    try:
        import ray._private.state as state

        config = state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - older GCS, or not connected
        return []
    if config is None:
        return []
    return [NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.min_count), int(g.max_count))
            for g in config.node_group_configs]


def _config_paths() -> list[Path]:
    args = _monitor_args(_status() or {}) or []  # none when the monitor runs on another machine
    paths = [Path(a.split("=", 1)[1]).expanduser() for a in args if a.startswith("--autoscaling-config=")]
    paths.append(Path("~/ray_bootstrap_config.yaml").expanduser())
    return paths


def _file_types(path: Path) -> list[NodeType]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError):
        return []
    types = (config or {}).get("available_node_types") or {} if isinstance(config, dict) else {}
    head = config.get("head_node_type") if isinstance(config, dict) else None
    out = []
    for name, t in types.items():
        t = t or {}
        res = {k: float(v) for k, v in (t.get("resources") or {}).items() if isinstance(v, (int, float))}
        most = 0 if name == head else int(t.get("max_workers", config.get("max_workers", 0)))
        out.append(NodeType(name, res, int(t.get("min_workers", 0)), most))
    return out


def node_types() -> tuple[list[NodeType], str]:
    """The node types of the connected cluster and where they were read; ``([], "")`` when none is visible."""
    types = _gcs_types()
    if types:
        return types, "the cluster config in the GCS"
    for path in _config_paths():
        types = _file_types(path)
        if types:
            return types, f"the autoscaler's config {path}"
    return [], ""
