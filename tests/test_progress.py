"""The live progress table of `advtune run`."""
from __future__ import annotations

import io

from advtune.study.progress import LiveTable


def test_table_is_redrawn_in_place_on_a_terminal(monkeypatch):
    # the table cuts its lines at the terminal's width: a wide one here, whatever runs the test (an xdist worker
    # reported 80 columns, and the reason column fell off)
    monkeypatch.setenv("COLUMNS", "160")
    out = io.StringIO()
    table = LiveTable(total=3, stream=out, live=True)
    table.result("aaaa", {"epoch": 1, "lr": 0.02, "clean_acc": 0.9, "robust_acc": 0.3, "best_robust_acc": 0.3})
    first = out.getvalue()
    assert first.startswith("\x1b[2K") and "F" not in first.split("\x1b[2K")[0]  # first drawing: no cursor-up
    table.result("bbbb", {"epoch": 1, "lr": 0.01, "clean_acc": 0.8, "robust_acc": 0.4, "best_robust_acc": 0.4})
    table.end("aaaa", "pruned", "stopped by ASHA at epoch 1")
    text = out.getvalue()
    n_lines = len(table.render())
    assert f"\x1b[{n_lines}F" in text  # the cursor goes back over the previous drawing
    last = table.render()
    assert last[0].startswith("trials 1 running, 1 done (1 pruned) of 3; best robust 40.0% (trial bbbb)")
    assert any("pruned" in ln and "stopped by ASHA at epoch 1" in ln for ln in last)
    assert any(ln.startswith("bbbb") and "40.0" in ln and "0.0100" in ln for ln in last)


def test_without_a_terminal_one_line_per_finished_trial():
    out = io.StringIO()
    table = LiveTable(total=2, stream=out, live=False)
    table.result("aaaa", {"epoch": 2, "lr": 0.02, "clean_acc": 0.9, "robust_acc": 0.3, "best_robust_acc": 0.35})
    assert out.getvalue() == ""
    table.end("aaaa", "completed")
    assert out.getvalue() == "  trial aaaa: completed after epoch 2 best robust 35.0%\n"
    assert "\x1b" not in out.getvalue()
