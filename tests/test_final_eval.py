"""The final strong evaluation, without Ray: the ranking by the strong figure (export, status), the gap
flag, the choice of trials, and the Ray-free core on a real trained checkpoint. The study-level
behaviour (parallel tasks, final_eval.json, TensorBoard, resume) is in tests/test_study.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from advtune.study.cli import main
from advtune.study.final_eval import GAP_WARNING, candidates, rank, strong_table
from advtune.study.records import TrialRecord

# selection figure (PGD-10 best robust), strong figure: the strong attack reverses the order of a and b
TRIALS = {"a": (0.50, 0.40), "b": (0.45, 0.44), "c": (0.42, None), "d": (0.48, 0.455)}


def _metrics(robust: float, epochs: int = 3) -> list[dict]:
    return [{"epoch": e, "robust_acc": robust * e / epochs, "clean_acc": 0.9, "grad_passes": 100 * e,
             "epoch_seconds": 1.0} for e in range(1, epochs + 1)]


def _final(trials: dict) -> dict:
    out = {}
    for tid, (sel, strong) in trials.items():
        if strong is not None:
            gap = sel - strong
            out[tid] = {"attack": "pgd-50-5", "n": 64, "clean_acc": 0.88, "robust_acc": strong,
                        "val_attack": "pgd-10-1", "val_attack_acc": sel, "selection_robust_acc": sel, "selection_epoch": 3, "gap": gap, "flag": gap > 0.03 + 1e-9}
    return {"settings": {"attack": "pgd", "images": 64, "top_k": None, "seed": 0}, "trials": out}


@pytest.fixture
def study(tmp_path) -> Path:
    """A finished study as advtune leaves it on disk, written by hand, with its final evaluation."""
    d = tmp_path / "s"
    spec = {"name": "s", "space": "sfd", "base_config": {}, "num_samples": 4, "max_epochs": 3, "grace_period": 1,
            "requested_grace": 1, "reduction_factor": 3, "concurrency": 1, "cpus_per_trial": 1, "gpus_per_trial": 0,
            "address": None, "storage_path": str(tmp_path), "seed": 0, "max_failures": 0}
    d.mkdir()
    (d / "advtune_study.json").write_text(json.dumps({"advtune_study": 1, "spec": spec, "space_base": {}}))
    for tid, (sel, _) in TRIALS.items():
        t = d / "trials" / tid
        t.mkdir(parents=True)
        (t / "params.json").write_text(json.dumps({"peak_lr": 0.01}))
        (t / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in _metrics(sel)))
        (t / "state.json").write_text(json.dumps({"state": "completed", "error": ""}))
        (t / "best.pt").write_bytes(b"weights")
    (d / "final_eval.json").write_text(json.dumps(_final(TRIALS)))
    return d


def _records() -> list[TrialRecord]:
    return [TrialRecord(tid, {}, _metrics(sel), "completed") for tid, (sel, _) in TRIALS.items()]


def test_rank_follows_the_strong_figure_and_puts_trials_without_one_last():
    order = [r.trial_id for r in rank(_records(), _final(TRIALS))]
    assert order == ["d", "b", "a", "c"]  # strong 45.5, 44, 40; c has none
    assert [r.trial_id for r in rank(_records(), {})] == ["a", "d", "b", "c"]  # no final evaluation: selection


def test_export_ranks_by_the_strong_figure_and_shows_both_figures(study, tmp_path):
    out = tmp_path / "exp"
    assert main(["export", str(study), "--top-k", "4", "--out", str(out)]) == 0
    index = yaml.safe_load((out / "best.yaml").read_text())
    entries = index["entries"]
    assert [e["trial_id"] for e in entries] == ["d", "b", "a", "c"]
    assert "strong_robust_acc" in index["selection"]
    by_id = {e["trial_id"]: e["metrics"] for e in entries}
    assert by_id["a"]["robust_acc"] == pytest.approx(0.50) and by_id["a"]["strong_robust_acc"] == pytest.approx(0.40)
    assert by_id["a"]["warning"] == GAP_WARNING  # 10 points
    assert "warning" not in by_id["b"] and "warning" not in by_id["d"]  # 1 and 2.5 points
    assert by_id["c"]["strong_robust_acc"] is None
    first = yaml.safe_load(sorted(out.glob("01-*.yaml"))[0].read_text())
    assert first["trial_id"] == "d" and first["metrics"]["strong_gap"] == pytest.approx(0.025)


def test_status_shows_both_figures_and_flags_gaps_over_3_points(study, capsys):
    assert main(["status", str(study)]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln[:1] in "abcd" and ln.split()[0] in TRIALS}
    assert list(rows) == ["d", "b", "a", "c"]
    assert "strong%" in out and "selection figure" in out
    assert GAP_WARNING in rows["a"] and "50.0" in rows["a"] and "40.0" in rows["a"]
    assert GAP_WARNING not in rows["b"] + rows["d"] + rows["c"]


def test_with_two_trials_the_gap_flag_is_for_more_than_3_points():
    """Too few trials to compare a gap with the others' (tests/test_strong_flags.py has the rule): 3 points."""
    final = _final({"x": (0.50, 0.47), "y": (0.50, 0.4699)})
    recs = [TrialRecord(t, {}, _metrics(0.50), "completed") for t in ("x", "y")]
    table = strong_table(recs, final).splitlines()
    assert "selection%" in table[0] and "strong%" in table[0] and "gap" in table[0]
    line = {ln.split()[0]: ln for ln in table[2:table.index("")]}
    assert GAP_WARNING not in line["x"] and GAP_WARNING in line["y"]


def test_candidates_are_every_trial_that_reached_the_last_rung_and_the_3_best_by_selection(tmp_path):
    recs = []
    for i, (robust, epochs) in enumerate([(0.5, 8), (0.4, 8), (0.45, 6), (0.3, 6), (0.2, 3), (0.1, 3), (0.35, 3)]):
        d = tmp_path / f"t{i}"
        d.mkdir()
        (d / "best.pt").write_bytes(b"w")
        recs.append(TrialRecord(f"t{i}", {}, _metrics(robust, epochs), "completed", directory=d))
    ids = lambda rs: [r.trial_id for r in rs]  # noqa: E731
    # rungs at 3 and 6: every trial that reached the last rung (6), stopped there or not, even one 4th by
    # selection figure (t3: the default study's 5dcee24a, stopped at the last rung, had the 2nd-best strong
    # figure and was never evaluated), and the 3 best by selection figure; t6 (stopped at 3) not
    assert ids(candidates(recs, last_rung=6, top_k=None, rungs=2)) == ["t0", "t2", "t1", "t3"]
    # a single rung is reached by every trial: there only the trials past it count
    assert ids(candidates(recs, last_rung=3, top_k=None, rungs=1)) == ["t0", "t2", "t1", "t3"]
    assert ids(candidates(recs, last_rung=None, top_k=None)) == ["t0", "t2", "t1", "t6", "t3", "t4", "t5"]  # no rungs
    assert ids(candidates(recs, last_rung=3, top_k=2)) == ["t0", "t2"]
    # the pruning rule's time: a trial whose ramp ends late is judged in epochs at full strength
    late = {"t3": 2.0}  # t3 reached epoch 6, but only 6 - 2.4 = 3.6 epochs at full strength: short of the rung at 4
    time_of = lambda r: r.epochs_run - (2.4 if r.trial_id in late else 0)  # noqa: E731
    assert ids(candidates(recs, last_rung=4, top_k=None, rungs=2, time_of=time_of)) == ["t0", "t2", "t1"]
    (tmp_path / "t2" / "best.pt").unlink()
    assert ids(candidates(recs, last_rung=6, top_k=None, rungs=2)) == ["t0", "t1", "t6", "t3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--quiet", "--out", str(out), "--set", "pretrained=none", "--set", "epochs=2",
                 "--set", "train_steps=2", "--set", "val_steps=3", "--set", "val_size=96"]) == 0
    return out


def test_core_attacks_the_first_validation_images_and_reproduces_the_selection_figure(trained):
    from advtune.study.records import read_jsonl
    from advtune.trainables.strong_eval import strong_eval

    best = max(read_jsonl(trained / "metrics.jsonl"), key=lambda m: (m["robust_acc"], -m["epoch"]))
    full = strong_eval(trained / "best.pt", "pgd", images=10 ** 6)
    # the whole validation split with the trial's own attack gives back exactly the figure that selected it
    assert full["n"] == 96 and full["val_attack"] == "pgd-3-1"
    assert full["val_attack_acc"] == pytest.approx(best["robust_acc"])
    assert full["clean_acc"] == pytest.approx(best["clean_acc"])
    assert full["attack"] == "pgd-50-5" and 0 <= full["robust_acc"] <= full["clean_acc"]
    few = strong_eval(trained / "best.pt", "pgd", images=32)
    assert few["n"] == 32


def test_core_apgd_is_no_weaker_than_the_validation_attack(trained):
    pytest.importorskip("pyautoattack")
    from advtune.trainables.strong_eval import strong_eval

    state = torch.get_rng_state()
    res = strong_eval(trained / "best.pt", "apgd", images=48)
    assert torch.equal(state, torch.get_rng_state())
    assert res["attack"] == "apgd-ce+apgd-t" and res["n"] == 48
    assert res["robust_acc"] <= res["val_attack_acc"] + 1e-9 and res["robust_acc"] <= res["clean_acc"]


def test_report_draws_the_strong_panel_and_ranks_its_table_by_the_strong_figure(study, tmp_path):
    from PIL import Image

    out = tmp_path / "rep"
    assert main(["report", str(study), "--out", str(out), "--top-k", "4"]) == 0
    with Image.open(out / "strong.png") as im:
        assert im.size[0] >= 600 and im.convert("L").getextrema()[0] < 100
    page = (out / "index.html").read_text(encoding="utf-8")
    assert 'data-file="strong.png"' in page and "3-point band" in page
    table = page[page.index("<table>"):page.index("</table>")]
    rows = table.split("<tr>")[2:]
    assert [next(t for t in TRIALS if f"<code>{t}</code>" in row) for row in rows] == ["d", "b", "a", "c"]
    assert "+10.0 !" in rows[2] and "!" not in rows[0] + rows[1]  # a: 10 points below its selection figure


def test_the_strong_figure_carries_its_sampling_interval():
    """288 images at 40%: +-5.7 points (95%); the table prints it beside strong%."""
    from advtune.study.final_eval import half_width

    assert half_width(0.40, 288) == pytest.approx(1.96 * (0.4 * 0.6 / 288) ** 0.5)
    assert round(100 * half_width(0.40, 288), 1) == 5.7
    assert half_width(1.0, 50) == pytest.approx(1 / 50)  # never 0: one image is the resolution
    final = _final({"x": (0.50, 0.47)})
    table = strong_table([TrialRecord("x", {}, _metrics(0.50), "completed")], final).splitlines()
    assert "±95%" in table[0]
    n = final["trials"]["x"]["n"]
    assert f"{100 * half_width(0.47, n):.1f}" in table[2].split()


def test_candidates_rank_feasible_trials_first_under_a_clean_floor(tmp_path):
    from advtune.study.objectives import parse_objective

    recs = []
    for i, (robust, clean) in enumerate([(0.6, 0.5), (0.5, 0.9), (0.45, 0.95), (0.4, 0.92), (0.3, 0.91)]):
        d = tmp_path / f"t{i}"
        d.mkdir()
        (d / "best.pt").write_bytes(b"w")
        m = _metrics(robust, 3)
        for e in m:
            e["clean_acc"] = clean
        recs.append(TrialRecord(f"t{i}", {}, m, "pruned", directory=d))
    ids = lambda rs: [r.trial_id for r in rs]  # noqa: E731
    # t0 reads best but misses the 85% clean floor: the 3 best by selection are the 3 best feasible ones
    chosen = candidates(recs, last_rung=6, top_k=None, rungs=2, objective=parse_objective("robust:clean>=0.85"))
    assert ids(chosen) == ["t1", "t2", "t3"]
    assert ids(candidates(recs, last_rung=6, top_k=None, rungs=2)) == ["t0", "t1", "t2"]


def test_study_candidates_ask_each_trial_about_its_own_last_rung(tmp_path):
    """Under the full_strength rule with ASHA's geometric rungs (--reduction-factor 4: rungs 1.75 and 7 epochs at full
    strength, 8 epochs) a trial with a 30% eps
    ramp meets the first rung at epoch 4.15 and never the second (9.4): ran to the end, it went past its last
    rung and is a candidate, though it never reached the study's last rung time (7)."""
    from types import SimpleNamespace

    from advtune.study.final_eval import study_candidates
    from advtune.study.spec import build_spec
    from advtune.trainables.config import TrialConfig

    args = SimpleNamespace(space="sfd", num_samples=7, max_epochs=8, grace_period=None, reduction_factor=4,
                           concurrency=2, cpus_per_trial=None, gpus_per_trial=0.0, address=None,
                           storage_path=str(tmp_path / "s"), name="s", seed=0, max_failures=0, verbose=False,
                           assume_shared_storage=False)
    spec = build_spec(args, TrialConfig())[0]
    assert spec.pruning == "full_strength" and spec.pruning_rule().rungs() == [1.75, 7.0]
    ramp, flat = {"eps_ramp": 0.3, "warmup": 0.1}, {"eps_ramp": 0.0, "warmup": 0.05}  # full strength at 2.4 / 0.4
    recs = []
    for i, (robust, epochs, params) in enumerate([(0.5, 8, flat), (0.45, 8, flat), (0.4, 8, flat),  # the top 3
                                                  (0.2, 8, ramp),   # past its only rung (compared at epoch 5)
                                                  (0.3, 5, ramp),   # stopped at its only rung
                                                  (0.1, 8, flat),   # reached its last rung (7.4: at epoch 8)
                                                  (0.35, 3, flat),  # stopped at its first rung (epoch 3)
                                                  (0.05, 2, flat)]):  # stopped before it (epoch 2)
        d = tmp_path / f"t{i}"
        d.mkdir()
        (d / "best.pt").write_bytes(b"w")
        recs.append(TrialRecord(f"t{i}", params, _metrics(robust, epochs), "completed", directory=d))
    assert [r.trial_id for r in study_candidates(spec, recs)] == ["t0", "t1", "t2", "t3", "t5"]
    # the default two cuts (0.75 and 1.75 epochs at full strength, at epochs 4 and 5 for the ramp, 2 and 3 without):
    # every trial judged at its second is a candidate, stopped there or not (t4 at epoch 5, t6 at epoch 3); t7 was
    # stopped at its first cut (epoch 2)
    default = build_spec(SimpleNamespace(**{**vars(args), "reduction_factor": None}), TrialConfig())[0]
    assert default.pruning_rule().rungs() == [0.75, 1.75]
    assert [r.trial_id for r in study_candidates(default, recs)] == ["t0", "t1", "t2", "t6", "t4", "t3", "t5"]
