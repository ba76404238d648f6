"""The user guide's runnable shell blocks run, in order, in a fresh folder (`make docs-check`; each line through
the console script's function, in this process), after the guide's ```python file=NAME blocks are written
there; then its ```python runnable blocks ("From Python") run there as one script in a fresh interpreter, in
order, as a notebook would run them (they read the study the shell blocks made)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "user-guide.md"


def runnable_blocks(text: str) -> list[str]:
    return re.findall(r"```bash runnable\n(.*?)```", text, flags=re.S)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python runnable\n(.*?)```", text, flags=re.S)


def file_blocks(text: str) -> list[tuple[str, str]]:
    """```python file=NAME blocks: files the guide asks the reader to write, written before the runnable lines."""
    return re.findall(r"```python file=(\S+)\n(.*?)```", text, flags=re.S)


def test_guide_has_runnable_blocks():
    blocks = runnable_blocks(GUIDE.read_text())
    assert len(blocks) >= 3
    assert all(line.startswith("advtune ") for b in blocks for line in b.splitlines() if line.strip())


def test_python_blocks_come_after_every_shell_block_and_use_the_api():
    text = GUIDE.read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 2 and all("advtune." in b for b in blocks)
    assert text.index("```python runnable") > text.rindex("```bash runnable")  # they run after the shell blocks
    assert "load_study" in text and "advtune.train(" in text  # a finished study into pandas, its best config rerun


def test_every_runnable_block_of_the_user_guide_runs(tmp_path, monkeypatch, capsys):
    """Each shell line runs through the function the `advtune` console script calls (``advtune.study.cli.main``),
    with the line's arguments, in this process, in the fresh folder: a new interpreter per line spent most of this
    test importing torch and scikit-learn again (13 lines; the console script itself: tests/test_namespace.py)."""
    from advtune.study.cli import main

    cache = str(tmp_path / "cache")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "ADVTUNE_CACHE": cache, "RAY_AUTH_MODE": "disabled"}
    for name, body in file_blocks(GUIDE.read_text()):
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVTUNE_CACHE", cache)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    path_before, modules_before = list(sys.path), set(sys.modules)
    try:
        for block in runnable_blocks(GUIDE.read_text()):
            for line in filter(str.strip, block.splitlines()):
                argv = shlex.split(line)
                assert argv[0] == "advtune", line
                rc = main(argv[1:])
                out = capsys.readouterr()
                assert rc == 0, f"{line}\n{out.out[-2000:]}\n{out.err[-2000:]}"
    finally:  # the guide's own modules (mynets, mydata: imported from the folder) must not reach other tests
        sys.path[:] = path_before
        for name in set(sys.modules) - modules_before:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]
    script = "\n".join(python_blocks(GUIDE.read_text()))
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"{script}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert "strong_robust_acc" in res.stdout  # the study's DataFrame was printed
    assert (tmp_path / "runs" / "from-python" / "best.pt").exists()  # its best config, rerun from Python
    assert (tmp_path / "advtune_runs" / "guide" / "export" / "best.yaml").exists()
    assert (tmp_path / "runs" / "guide" / "best.pt").exists()
    assert (tmp_path / "runs" / "mine" / "best.safetensors").exists()  # "Your own model and data"
    assert (tmp_path / "runs" / "mine-again" / "best.pt").exists()
