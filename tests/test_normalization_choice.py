"""The `normalization` key is honoured with and without a starting point (issue 25's parity defect:
`pretrained: none` silently trained behind the train split's statistics whatever the key said)."""

from __future__ import annotations

import pytest
import torch

from advtune.trainables.config import ConfigError, TrialConfig
from advtune.trainables.setup import prepare

from conftest import TINY

NO_START = dict(TINY)  # pretrained: none


def _stats(model) -> tuple[list[float], list[float]]:
    return model.normalize.mean.flatten().tolist(), model.normalize.std.flatten().tolist()


@pytest.fixture(scope="module")
def starting_point(tmp_path_factory):
    """An advtune-format checkpoint whose normalizer holds (0.25, 0.75): a checkpoint's own statistics."""
    cfg = TrialConfig(**NO_START)
    model = prepare(cfg).model
    with torch.no_grad():
        model.normalize.mean.fill_(0.25)
        model.normalize.std.fill_(0.75)
    path = tmp_path_factory.mktemp("start") / "start.pt"
    torch.save({k: v for k, v in model.state_dict().items()}, path)
    return str(path)


def test_identity_normalization_without_a_starting_point():
    prep = prepare(TrialConfig(**{**NO_START, "normalization": "0/1"}))
    assert _stats(prep.model) == ([0.0], [1.0])
    x = prep.splits.train[0][0].unsqueeze(0)
    assert torch.equal(prep.model.normalize(x), x)  # the network sees raw [0,1] pixels
    assert prep.normalization.startswith("explicit")


@pytest.mark.parametrize("with_start", [False, True])
@pytest.mark.parametrize("setting, want", [("0/1", ([0.0], [1.0])), ("0.5/0.25", ([0.5], [0.25])), ("data", "data")])
def test_every_explicit_choice_is_honoured(setting, want, with_start, starting_point):
    cfg = TrialConfig(**{**NO_START, "normalization": setting, "pretrained": starting_point if with_start else "none"})
    prep = prepare(cfg)
    if want == "data":
        want = ([pytest.approx(prep.splits.mean[0])], [pytest.approx(prep.splits.std[0])])
    assert _stats(prep.model) == want


def test_auto_is_the_checkpoints_own_or_the_data_statistics(starting_point):
    with_start = prepare(TrialConfig(**{**NO_START, "pretrained": starting_point}))
    assert _stats(with_start.model) == ([0.25], [0.75])
    fresh = prepare(TrialConfig(**NO_START))
    assert _stats(fresh.model)[0] == [pytest.approx(fresh.splits.mean[0])]
    assert fresh.normalization == "train-split statistics"


@pytest.mark.parametrize("with_start", [False, True])
def test_a_choice_that_cannot_apply_is_refused(with_start, starting_point):
    """ImageNet's 3-channel statistics for 1-channel digits: refused, never dropped silently."""
    cfg = TrialConfig(**{**NO_START, "normalization": "imagenet", "pretrained": starting_point if with_start else "none"})
    with pytest.raises(ConfigError, match="3 channels.*data has 1.*normalization=data"):
        prepare(cfg)
