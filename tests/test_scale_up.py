"""SCALE-UP: SPC of constructed models, per-class standardisation, a tiny backdoor caught, errors on bad settings."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from poisonlab.attacks.badnets import BadNets
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import make_synthetic
from poisonlab.defenses.scale_up import Consistency, ScaleUp, class_stats, spc
from poisonlab.models import build_model
from poisonlab.training import Recipe, train
from poisonlab.triggers.patch import Checkerboard


class _Brightness(nn.Module):
    """Class 0 when an image's mean pixel exceeds 0.5, else class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean((1, 2, 3)), torch.full((len(x),), 0.5)], 1)


class _Constant(nn.Module):
    """Ignores its input: the same logits for every image."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.1, 2.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), 3)


def test_a_model_that_ignores_its_input_is_consistent_on_everything():
    found = spc(_Constant(), torch.rand(37, 3, 6, 6), (3.0, 5.0, 7.0), batch_size=8)
    assert torch.equal(found.spc, torch.ones(37)) and torch.equal(found.label, torch.ones(37, dtype=torch.long))


def test_spc_is_the_share_of_amplified_copies_that_keep_the_prediction():
    x = torch.stack([torch.full((1, 4, 4), v) for v in (0.05, 0.2, 0.9)])
    found = spc(_Brightness(), x, (3.0, 5.0, 7.0, 9.0, 11.0), batch_size=2)
    # 0.05: 0.15, 0.25, 0.35, 0.45 stay dark, 0.55 turns bright; 0.2 turns bright at once; 0.9 stays bright (clipped)
    torch.testing.assert_close(found.spc, torch.tensor([0.8, 0.0, 1.0]))
    assert found.label.tolist() == [1, 1, 0]


def test_class_statistics_standardise_by_the_predicted_class():
    benign = Consistency(torch.tensor([0.0, 0.6, 1.0, 1.0, 0.6]), torch.tensor([0, 0, 1, 1, 2]))
    stats = class_stats(benign, num_classes=4, floor=0.2)
    torch.testing.assert_close(stats.mean[:2], torch.tensor([0.3, 1.0]))
    assert stats.std[0] == pytest.approx(0.6 / 2**0.5) and stats.std[1] == 0.2  # class 1 agrees: the floor, not 0
    assert stats.mean[2] == stats.mean[3] == pytest.approx(0.64)  # seen once or never: all benign images' statistics
    assert stats.std[2] == stats.std[3] == pytest.approx(0.168**0.5)
    z = stats.standardize(Consistency(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 1, 3])))
    torch.testing.assert_close(z, torch.tensor([0.7 / (0.6 / 2**0.5), 0.0, -0.64 / 0.168**0.5]))


@pytest.fixture(scope="module")
def backdoored() -> tuple[nn.Module, ImageSet, ImageSet, ImageSet]:
    """small-cnn with a checkerboard BadNets backdoor (target 1) on 3-channel synthetic images; clean fit and test
    images; the test images triggered (those not of the target class)."""
    data = make_synthetic(3000, num_classes=4, size=12, channels=3, seed=0)
    train_set, clean, test = data.subset(slice(0, 2000)), data.subset(slice(2000, 2500)), data.subset(slice(2500, None))
    attack = BadNets(trigger=Checkerboard(size=4), target=1, rate=0.1)
    poisoned = attack.poison(train_set, torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 12 px net trains faster on one thread (tests/test_attacks_hard.py)
    try:
        model = train(build_model("small-cnn", poisoned.data, seed=0), poisoned.data, Recipe(epochs=6), seed=0,
                      progress=False)
    finally:
        torch.set_num_threads(before)
    triggered = poisoned.triggered(test)
    return model, clean, test, triggered.subset(torch.nonzero(test.y != 1).flatten())


def _auroc(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    return float(roc_auc_score([0] * len(clean) + [1] * len(triggered), torch.cat([clean, triggered]).numpy()))


def test_triggered_inputs_are_rejected_at_the_fitted_threshold(backdoored):
    model, clean, test, triggered = backdoored
    up = ScaleUp(frr=0.01).fit(model, clean)
    on_clean, on_triggered = up.detect(model, test.x), up.detect(model, triggered.x)
    # measured over model seeds 0-4: AUROC 0.995-1.0, detection 1.0, false rejections 0-1.4%
    assert _auroc(on_clean.scores, on_triggered.scores) > 0.95
    assert len(on_triggered.flagged) >= 0.9 * len(triggered)
    assert len(on_clean.flagged) <= 0.03 * len(test)
    again = up.detect(model, triggered.x)
    assert torch.equal(again.scores, on_triggered.scores) and torch.equal(again.flagged, on_triggered.flagged)


def test_raw_spc_ranks_less_well_and_ties_block_its_threshold(backdoored):
    """Benign target-class images keep their label under amplification as triggered ones do: unstandardised, they
    tie at SPC 1 with the triggered inputs, so the ``1 - frr`` quantile sits at 1 and nothing can exceed it."""
    model, clean, test, triggered = backdoored
    raw = ScaleUp(standardize=False, frr=0.05).fit(model, clean)
    standardised = ScaleUp(frr=0.05).fit(model, clean)
    assert raw.threshold_ == 1.0
    assert len(raw.detect(model, triggered.x).flagged) == 0
    # measured: 0.86 raw against 1.0 standardised
    raw_auroc = _auroc(raw.detect(model, test.x).scores, raw.detect(model, triggered.x).scores)
    assert 0.7 < raw_auroc < _auroc(standardised.detect(model, test.x).scores,
                                    standardised.detect(model, triggered.x).scores)


def test_bad_settings_and_unfitted_filter_are_refused():
    with pytest.raises(PoisonlabError, match="step"):
        ScaleUp(step=0)
    with pytest.raises(PoisonlabError, match="max_scale"):
        ScaleUp(max_scale=2)
    with pytest.raises(PoisonlabError, match="false-rejection"):
        ScaleUp(frr=1.0)
    with pytest.raises(PoisonlabError, match="batch_size"):
        ScaleUp(batch_size=0)
    with pytest.raises(PoisonlabError, match="fit"):
        ScaleUp().detect(_Constant(), torch.rand(2, 3, 4, 4))
    with pytest.raises(PoisonlabError, match="at least 2"):
        ScaleUp().fit(_Constant(), ImageSet(torch.rand(1, 3, 4, 4), torch.zeros(1, dtype=torch.long), ("a", "b", "c")))
    with pytest.raises(PoisonlabError, match="scaling factor"):
        spc(_Constant(), torch.rand(2, 3, 4, 4), ())
    assert ScaleUp().scales == (3.0, 5.0, 7.0, 9.0, 11.0) and ScaleUp(step=1, max_scale=4).scales == (2.0, 3.0, 4.0)
