"""What a local study exposes: no dashboard UI; the dashboard process Ray keeps listens on loopback only."""
from __future__ import annotations

import ipaddress

import psutil
import ray

from advtune.study.tune_backend import init_ray


def test_local_study_dashboard_is_off_or_on_loopback_only():
    assert not ray.is_initialized()
    started = init_ray(None, num_cpus=1)
    try:
        assert started
        ours = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
        assert ours, "Ray started no process"
        dashboards = [p for p in ours if any("dashboard/dashboard.py" in part for part in p.cmdline())]
        for p in dashboards:
            assert "--host=127.0.0.1" in p.cmdline()
        dash_pids = {p.pid for p in dashboards}
        for c in psutil.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.pid in dash_pids:
                assert ipaddress.ip_address(c.laddr.ip).is_loopback, c
        assert not any(c.status == psutil.CONN_LISTEN and c.laddr.port == 8265 and
                       not ipaddress.ip_address(c.laddr.ip).is_loopback for c in psutil.net_connections(kind="inet"))
    finally:
        ray.shutdown()
