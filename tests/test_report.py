"""`advtune report` on a small real study: the plots are real PNGs of a readable size, the HTML page
embeds every plot and lists the top-k configurations, fetches nothing from the network, and
loads in a headless browser without a console error. No Ray is needed to write the report."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from PIL import Image

from advtune.study.cli import build_parser, main
from advtune.study.records import MARKER, StudyRecords

PLOTS = ("schedules.png", "pareto.png", "curves.png", "importance.png", "interaction.png", "params.png", "compute.png",
         "strong.png", "history.png")
TOP_K = 3
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def study(small_study) -> Path:
    """conftest's small study (shared with tests/test_study.py): 6 trials, ASHA, final evaluation of the top 4."""
    return small_study


@pytest.fixture(scope="module")
def report(study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    assert not ray.is_initialized()  # the report must not need a running cluster
    assert main(["report", str(study), "--out", str(out), "--top-k", str(TOP_K)]) == 0
    return out


def ranked(study: Path):
    """By the final strong evaluation's figure, then (trials without one) by the selection figure."""
    final = json.loads((study / "final_eval.json").read_text())["trials"]
    recs = [r for r in StudyRecords(study, tensorboard=False).load() if r.best]
    return sorted(recs, key=lambda r: (r.trial_id not in final, -final.get(r.trial_id, {}).get("robust_acc", 0.0),
                                       -r.best["robust_acc"], r.trial_id))


def test_defaults_of_the_command():
    args = build_parser().parse_args(["report", "somewhere"])
    assert args.top_k == 5 and args.out is None


def test_every_plot_is_a_readable_png(report):
    for name in PLOTS:
        path = report / name
        assert path.is_file(), name
        assert path.stat().st_size > 10_000, f"{name} is suspiciously small"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            w, h = im.size
            assert w >= 600 and h >= 300, (name, im.size)
            # not a blank canvas: a real plot has ink on it
            lo, hi = im.convert("L").getextrema()
            assert lo < 100 and hi > 200, name


def test_html_embeds_every_plot_once(report):
    page = (report / "index.html").read_text(encoding="utf-8")
    imgs = re.findall(r"<img\b[^>]*>", page)
    trial_imgs = [t for t in imgs if 'data-file="trial-' in t]
    assert len(imgs) == len(PLOTS) + len(trial_imgs) and len(trial_imgs) == TOP_K  # one per top trial
    for name in PLOTS:
        mine = [tag for tag in imgs if f'data-file="{name}"' in tag]
        assert len(mine) == 1, name
        tag = mine[0]
        assert re.search(r'alt="[^"]{10,}"', tag), f"{name}: no useful alt text"
        src = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert src, f"{name} is not embedded"
        assert base64.b64decode(src.group(1)) == (report / name).read_bytes()


def test_html_lists_the_top_k_configs_and_the_summary(report, study):
    page = (report / "index.html").read_text(encoding="utf-8")
    marker = json.loads((study / MARKER).read_text())
    assert f"<title>advtune report: {marker['spec']['name']}</title>" in page
    table = page[page.index("<table>"):page.index("</table>")]
    rows = table.split("<tr>")[2:]  # after the header row
    best = ranked(study)
    assert len(rows) == min(TOP_K, len(best))
    final = json.loads((study / "final_eval.json").read_text())["trials"]
    assert "strong robust %" in table.split("<tr>")[1]
    for row, rec in zip(rows, best):
        assert rec.trial_id in row and f"{100 * rec.best['robust_acc']:.1f}" in row
        if rec.trial_id in final:
            assert f"{100 * final[rec.trial_id]['robust_acc']:.1f}" in row
        assert f"{100 * rec.best['clean_acc']:.1f}" in row and rec.state in row
    for rec in best[TOP_K:]:
        assert rec.trial_id not in table
    header = table.split("<tr>")[1]
    for name in marker["space_params"]:
        assert f"<th>{name}</th>" in header
    summary = page[page.index('<ul class="summary">'):page.index("</ul>")]
    pruned = sum(r.state == "pruned" for r in StudyRecords(study, tensorboard=False).load())
    assert f"<b>{pruned}</b> stopped early by ASHA" in summary
    assert "grad passes spent" in summary and "without pruning" in summary


def test_html_fetches_nothing_from_the_network(report):
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts == ["<script>"]  # one inline script (the all-trials table's sorting), nothing loaded
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert ref.startswith("data:image/png;base64,"), ref[:60]


def test_report_refuses_a_study_without_a_finished_trial(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "trials" / "abc123").mkdir(parents=True)
    (empty / "trials" / "abc123" / "params.json").write_text('{"peak_lr": 0.01}')
    (empty / MARKER).write_text(json.dumps({"advtune_study": 1, "spec": {"name": "empty", "max_epochs": 3,
                                            "grace_period": 1, "reduction_factor": 3}}))
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no trial with a finished validation" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (empty / "report").exists()
    assert main(["report", str(tmp_path)]) == 2  # not a study directory at all
    assert "not an advtune study directory" in capsys.readouterr().err


def test_report_refuses_a_bad_top_k(report, study, capsys):
    assert main(["report", str(study), "--out", str(report.parent / "k0"), "--top-k", "0"]) == 2
    assert "--top-k 0" in capsys.readouterr().err


# --- the page in a real browser -----------------------------------------------------------------------------
# puts the pipe ends on the fds 3 and 4 that --remote-debugging-pipe uses, then becomes chromium
_TRAMPOLINE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
               "os.execv(sys.argv[3], sys.argv[3:])")


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class _Cdp:
    """Chrome DevTools protocol over --remote-debugging-pipe (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, user_dir: Path) -> None:
        # the child's ends are moved above fd 10 so that putting them on 3 and 4 never clobbers one of them
        self.to_r, self.to_w = os.pipe()
        self.from_r, self.from_w = os.pipe()
        self.to_r, self.from_w = (_high_fd(fd) for fd in (self.to_r, self.from_w))
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={user_dir}",
                "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, str(self.to_r), str(self.from_w), CHROMIUM,
                                      *args], pass_fds=(self.to_r, self.from_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(self.to_r)
        os.close(self.from_w)
        self.buf, self.events, self.next_id = b"", [], 0

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.from_r], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self.from_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events[i]
        while True:
            ev = self._read(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - closing is best effort; the process is killed below
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_w)
        os.close(self.from_r)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_page_loads_in_headless_chromium_without_console_errors(report, study, tmp_path):
    # Open it from a copy with no PNG files beside it: the page must stand alone.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(report / "index.html", alone / "index.html")
    cdp = _Cdp(tmp_path / "profile")
    try:
        # the first answer waits for chromium to start: over 30 s once beside the other xdist worker's Ray studies
        page = next(t for t in cdp.send("Target.getTargets", timeout=180)["targetInfos"] if t["type"] == "page")
        sid = cdp.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable", session=sid)
        cdp.send("Emulation.setDeviceMetricsOverride", session=sid, width=WIDTH, height=900, deviceScaleFactor=1,
                 mobile=False)
        cdp.send("Page.navigate", session=sid, url=(alone / "index.html").as_uri())
        cdp.wait_for("Page.loadEventFired")
        probe = ("JSON.stringify({title: document.title, h1: document.querySelector('h1').textContent, "
                 "imgs: [...document.images].map(i => [i.dataset.file, i.complete, i.naturalWidth, i.alt]), "
                 "height: document.documentElement.scrollHeight})")
        seen = json.loads(cdp.send("Runtime.evaluate", session=sid, expression=probe, returnByValue=True)
                          ["result"]["value"])
        # at 1400 px: no table cell wraps onto a second line, no two cells of a row overlap
        layout = json.loads(cdp.send("Runtime.evaluate", session=sid, expression=_LAYOUT_PROBE, returnByValue=True)
                            ["result"]["value"])
        # and sorting works: a click on "selection %" orders the all-trials table by it
        sort = json.loads(cdp.send("Runtime.evaluate", session=sid, expression=_SORT_PROBE, returnByValue=True)
                          ["result"]["value"])
        cdp.send("Emulation.setDeviceMetricsOverride", session=sid, width=WIDTH, height=min(seen["height"], 8000),
                 deviceScaleFactor=1, mobile=False)
        shot = cdp.send("Page.captureScreenshot", session=sid, format="png")["data"]
        (tmp_path / "page.png").write_bytes(base64.b64decode(shot))
        if os.environ.get("ADVTUNE_REPORT_SCREENSHOT"):  # to look at the page: set it to a file path
            shutil.copy(tmp_path / "page.png", os.environ["ADVTUNE_REPORT_SCREENSHOT"])
    finally:
        cdp.close()
    errors = [ev for ev in cdp.events if ev.get("method") == "Runtime.exceptionThrown"
              or (ev.get("method") == "Runtime.consoleAPICalled" and ev["params"]["type"] in ("error", "assert"))
              or (ev.get("method") == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    urls = [ev["params"]["request"]["url"] for ev in cdp.events if ev.get("method") == "Network.requestWillBeSent"]
    assert all(u.split(":", 1)[0] in ("file", "data") for u in urls), [u[:80] for u in urls]
    assert seen["title"] == "advtune report: small" and seen["h1"] == "advtune report: small"
    assert sorted(str(i[0]) for i in seen["imgs"] if not str(i[0]).startswith("trial-")) == sorted(PLOTS)
    for name, complete, width, alt in seen["imgs"]:
        assert complete and width >= 600 and alt, (name, complete, width, alt)
    assert seen["height"] > 2000  # the whole report laid out, not an error page
    assert layout["cells"] > 20 and not layout["wrapped"] and not layout["overlaps"], layout
    vals = [v for v in sort if v is not None]
    assert sort[:len(vals)] == vals and (vals == sorted(vals) or vals == sorted(vals, reverse=True)), sort
    assert len(sort) == len(StudyRecords(study, tensorboard=False).load())


WIDTH = 1400
# every table cell: taller than one line of its own text = wrapped; two cells of a row whose boxes intersect
_LAYOUT_PROBE = """JSON.stringify((function () {
  var wrapped = [], overlaps = [], cells = 0;
  document.querySelectorAll('table tr').forEach(function (tr) {
    var boxes = Array.prototype.map.call(tr.cells, function (c) { return c.getBoundingClientRect(); });
    Array.prototype.forEach.call(tr.cells, function (c, i) {
      cells++;
      // the line boxes of the cell's text (its text nodes only: the state dot is an inline block)
      var tops = [], walk = document.createTreeWalker(c, NodeFilter.SHOW_TEXT), node;
      while ((node = walk.nextNode())) {
        var range = document.createRange(); range.selectNodeContents(node);
        Array.prototype.forEach.call(range.getClientRects(), function (r) { if (r.width > 0) tops.push(r.top); });
      }
      if (tops.length && Math.max.apply(null, tops) - Math.min.apply(null, tops) > 4) wrapped.push(c.textContent.slice(0, 40));
      for (var j = i + 1; j < boxes.length; j++)
        if (boxes[i].right > boxes[j].left + 0.5 && boxes[j].right > boxes[i].left + 0.5) overlaps.push([i, j]);
    });
  });
  return {cells: cells, wrapped: wrapped, overlaps: overlaps};
})())"""
_SORT_PROBE = """JSON.stringify((function () {
  var table = document.getElementById('all-trials'), col = -1;
  table.querySelectorAll('th').forEach(function (th, i) { if (th.textContent === 'selection %') col = i; });
  table.querySelectorAll('th')[col].click();
  return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
    var t = r.cells[col].textContent; return t === '-' ? null : parseFloat(t); });
})())"""


def test_report_writes_every_trial_as_csv(report, study):
    import csv

    rows = list(csv.DictReader((report / "trials.csv").open(encoding="utf-8")))
    records = StudyRecords(study, tensorboard=False).load()
    assert sorted(r["trial_id"] for r in rows) == sorted(r.trial_id for r in records)  # all, not the top k
    for col in ("state", "stop_reason", "robust_acc", "strong_robust_acc", "clean_acc", "grad_passes"):
        assert col in rows[0]
    marker = json.loads((study / MARKER).read_text())
    assert all(f"param.{n}" in rows[0] for n in marker["space_params"])
    assert [r["trial_id"] for r in rows][:TOP_K] == [r.trial_id for r in ranked(study)][:TOP_K]


def test_each_top_trial_has_a_section_with_its_curves_config_and_rerun_command(report, study):
    page = (report / "index.html").read_text(encoding="utf-8")
    best = ranked(study)[:TOP_K]
    for rank, rec in enumerate(best, 1):
        start = page.index(f'<section class="trial" id="trial-{rec.trial_id}">')
        section = page[start:page.index("</section>", start)]
        assert f"#{rank} <code>{rec.trial_id}</code>" in section
        assert f'data-file="trial-{rank:02d}-{rec.trial_id}.png"' in section
        assert (report / f"trial-{rank:02d}-{rec.trial_id}.png").stat().st_size > 10_000
        assert f"advtune train --config {study / 'export' / f'{rank:02d}-{rec.trial_id}.yaml'}" in section
        assert "full config" in section and "peak_lr:" in section
        for k in rec.params:
            assert f"<code>{k}=" in section
