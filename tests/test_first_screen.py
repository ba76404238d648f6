"""What a `make run` user sees first: no Ray start-up chatter (token-authentication notices, "Started a local
Ray instance") with authentication left on, and an install without setuptools warnings."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_LINES = ("Token authentication is enabled", "Generated new authentication token", "Started a local Ray instance")


def test_starting_ray_for_a_study_prints_none_of_rays_start_up_lines_and_keeps_authentication_on(tmp_path):
    # as a first-time user: no token yet (a fresh HOME), RAY_AUTH_MODE not set, Ray started the way `advtune run` does
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["HOME"] = str(tmp_path)
    code = ("from advtune.study import tune_backend as tb; import ray; tb.init_ray(None, num_cpus=1); "
            "print('ray up', ray.is_initialized()); ray.shutdown()")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "ray up True" in out, out[-3000:]
    for line in RAY_LINES:
        assert line not in out, out[-3000:]
    assert (tmp_path / ".ray" / "auth_token").is_file()  # authentication is on: Ray generated the token


def test_building_the_package_prints_no_setuptools_warning(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files + ["pyproject.toml"]:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / f, src / f)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                          "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "absent from the `packages` configuration" not in out, [ln for ln in out.splitlines() if "absent" in ln][:3]
    import zipfile

    names = zipfile.ZipFile(next((tmp_path / "wheel").glob("advtune-*.whl"))).namelist()
    assert "advtune/search_spaces/presets/sfd.yaml" in names  # the presets still install
