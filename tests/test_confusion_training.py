"""Confusion Training: finds BadNets and blend poison in real MNIST, flags little of clean data, checks settings."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import load_dataset
from poisonlab.defenses.confusion_training import ConfusionTraining
from poisonlab.models import build_model
from poisonlab.registry import ATTACKS

ROWS = 1200


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    torch.set_num_threads(2)
    return load_dataset("mnist")[0].subset(slice(0, ROWS))


@pytest.mark.parametrize("spec", ["badnets:target=8,rate=0.1", "blend:target=8,rate=0.05"])
def test_confused_model_still_fits_the_poison(digits: ImageSet, spec: str) -> None:
    poisoned = ATTACKS.build(spec).poison(digits, torch.Generator().manual_seed(0))
    verdict = ConfusionTraining().scan(build_model("small-cnn", poisoned.data, 0), poisoned.data)
    truth = torch.zeros(ROWS)
    truth[poisoned.indices] = 1
    assert verdict.scores is not None
    assert roc_auc_score(truth, verdict.scores) > 0.98  # measured 1.000 on both
    caught = int(truth[verdict.flagged].sum())
    assert caught >= 0.9 * len(poisoned.indices) and len(verdict.flagged) <= 1.1 * len(poisoned.indices), (
        caught, len(verdict.flagged))  # measured 119/120 of 120 and 60/60 of 60
    assert 8 in verdict.details["suspicious_classes"]
    assert [r["inspected"] for r in verdict.details["rounds"]][0] == ROWS


def test_clean_digits_are_mostly_not_flagged(digits: ImageSet) -> None:
    verdict = ConfusionTraining().scan(build_model("small-cnn", digits, 0), digits)
    assert len(verdict.flagged) <= 0.02 * ROWS, len(verdict.flagged)  # measured 13 of 1,200


def test_a_clean_confusion_set_of_the_wrong_shape_is_refused(digits: ImageSet) -> None:
    other = ImageSet(torch.rand(10, 1, 14, 14), torch.arange(10), digits.classes)
    with pytest.raises(PoisonlabError, match="clean set: expected images shaped"):
        ConfusionTraining(rounds=1, steps=1).scan(build_model("small-cnn", digits, 0), digits, clean=other)


@pytest.mark.parametrize(("setting", "message"), [
    ({"rounds": 0}, "rounds"), ({"keep": 1.0}, "keep"), ({"factor": 0.5}, "factor"),
    ({"confusion_lr": 0.0}, "confusion_lr"), ({"epochs": 0}, "epochs"),
])
def test_bad_settings_name_the_setting(setting: dict[str, float], message: str) -> None:
    with pytest.raises(PoisonlabError, match=message):
        ConfusionTraining(**setting)  # type: ignore[arg-type]
