"""One object per study: the spec parses its objective once (and refuses a bad one on construction), and
owns one storage object, local or cloud, that every command asks instead of branching on the kind. Unit
level: no Ray, no network."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from advtune.study.errors import StudyError
from advtune.study.spec import StudySpec, build_spec, describe
from advtune.study.storage import CloudStorage, LocalStorage, resolve_storage_path, storage_for
from advtune.trainables.config import TrialConfig


def _build(storage_path: str, **kw):
    args = dict(space="sfd", num_samples=4, max_epochs=3, grace_period=1, reduction_factor=3, concurrency=2,
                cpus_per_trial=1.0, gpus_per_trial=0.0, address=None, storage_path=storage_path, name="s1",
                seed=1, max_failures=0, verbose=False, assume_shared_storage=False, objective="robust")
    return build_spec(SimpleNamespace(**{**args, **kw}), TrialConfig())


def test_objective_is_parsed_once_per_spec_and_stored_canonical(tmp_path, monkeypatch):
    import advtune.study.objectives as objectives

    calls = []
    real = objectives.parse_objective
    monkeypatch.setattr(objectives, "parse_objective", lambda text: calls.append(text) or real(text))
    spec, space = _build(str(tmp_path), objective="robust : clean >= 85%")
    text = describe(spec, space)
    for _ in range(3):
        assert spec.parsed_objective.min_clean == pytest.approx(0.85)
    assert calls == ["robust : clean >= 85%"]  # build_spec, describe and the readers share one parse
    assert spec.objective == "robust:clean>=0.85"  # the marker stores the canonical text
    assert "clean val accuracy >= 85%" in text
    again = StudySpec.from_dict(spec.to_dict())  # a marker read back: the same objective, parsed once more
    assert again.parsed_objective == spec.parsed_objective and len(calls) == 2


def test_a_hand_edited_marker_with_a_bad_objective_is_refused_on_load(tmp_path):
    spec, _ = _build(str(tmp_path))
    d = {**spec.to_dict(), "objective": "robust:clean>=2"}
    with pytest.raises(StudyError, match="clean-accuracy floor must be a fraction"):
        StudySpec.from_dict(d)


def test_a_directory_study_keeps_everything_in_its_folder(tmp_path):
    spec, _ = _build(str(tmp_path))
    st = spec.storage
    assert isinstance(st, LocalStorage)
    d = tmp_path / "s1"
    assert spec.study_dir == d and spec.location == str(d)
    moved = tmp_path / "moved"  # a resumed study may sit elsewhere now: the folder given wins
    assert st.trial_dir(moved) == str(moved) and st.restore_path(moved) == str(moved)
    assert st.pretrained_target(moved) == str(moved / "pretrained" / "best.pt")
    assert st.needs_shared_filesystem and not st.restaged_by_driver
    assert st.staged_note() == ""
    from advtune.study.liveness import driver_of

    moved.mkdir()
    release = st.hold_driver_lease(moved)  # the driver's record in the study folder, this process, no heartbeat
    assert driver_of(moved).local and driver_of(moved).pid == os.getpid() and driver_of(moved).beat is None
    release()
    assert driver_of(moved) is None and not (moved / "driver.json").exists()
    (d / "trials" / "a").mkdir(parents=True)
    (d / "trials" / "a" / "best.pt").write_bytes(b"x")
    (d / "trials" / "b").mkdir(parents=True)
    recs = [SimpleNamespace(trial_id="a", directory=d / "trials" / "a"),
            SimpleNamespace(trial_id="b", directory=d / "trials" / "b"),
            SimpleNamespace(trial_id="c", directory=None)]
    assert st.best_checkpoints(recs) == {"a": str(d / "trials" / "a" / "best.pt")}  # only those that exist
    d.mkdir(exist_ok=True)
    assert Path(st.optuna_storage(spec, d).engine.url.database) == d / "optuna.db"


def test_a_cloud_study_stages_records_and_gives_trials_its_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVTUNE_CACHE", str(tmp_path / "cache"))
    spec, _ = _build("s3://bucket/runs/")
    st = spec.storage
    assert isinstance(st, CloudStorage)
    assert spec.location == "s3://bucket/runs/s1"
    staging = tmp_path / "cache" / "studies" / "s3" / "bucket" / "runs" / "s1"
    assert spec.study_dir == staging
    assert st.trial_dir(staging) == "s3://bucket/runs/s1"  # never the driver's staging folder
    assert st.restore_path(staging) == "s3://bucket/runs/s1"
    assert st.pretrained_target(staging) == "s3://bucket/runs/s1/pretrained/best.pt"
    assert not st.needs_shared_filesystem and st.restaged_by_driver
    assert str(staging) in st.staged_note()
    assert isinstance(replace(spec, address="ray://x").storage, CloudStorage)  # a replaced spec keeps its kind


@pytest.mark.parametrize("path, shared, optuna_url, match", [
    ("s3://bucket/x", True, None, "drop --assume-shared-storage"),
    ("local/dir", False, "sqlite:///o.db", "drop --optuna-storage"),
    ("ftp://host/x", False, None, "unknown URI scheme"),
])
def test_storage_options_that_do_not_fit_the_kind_are_refused(path, shared, optuna_url, match):
    with pytest.raises(StudyError, match=match):
        resolve_storage_path(path, shared, optuna_url)


def test_the_factory_is_the_one_place_that_tells_the_kinds_apart(tmp_path):
    assert isinstance(storage_for("gs://b/p", "n"), CloudStorage)
    assert isinstance(storage_for(str(tmp_path), "n"), LocalStorage)
    assert resolve_storage_path("rel") == str(Path("rel").resolve())
