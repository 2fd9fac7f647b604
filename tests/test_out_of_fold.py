"""Out-of-fold label scores: find adaptive-patch poison in real MNIST, leave clean digits alone, gate per class."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import load_dataset
from poisonlab.defenses.out_of_fold import OutOfFold
from poisonlab.models import build_model
from poisonlab.registry import ATTACKS, DEFENSES

ROWS = 6000


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    torch.set_num_threads(2)
    return load_dataset("mnist")[0].subset(slice(0, ROWS))


def test_finds_adaptive_patch_poison_that_latent_scanners_are_built_to_miss(digits: ImageSet) -> None:
    poisoned = ATTACKS.build("adaptive-patch:target=0,rate=0.1").poison(digits, torch.Generator().manual_seed(0))
    verdict = DEFENSES.build("out-of-fold").scan(build_model("badnets-cnn", poisoned.data, 0), poisoned.data)
    truth = torch.zeros(ROWS)
    truth[poisoned.indices] = 1
    assert verdict.scores is not None
    assert roc_auc_score(truth, verdict.scores) > 0.95  # measured 0.981
    caught = int(truth[verdict.flagged].sum())
    assert caught >= 0.9 * len(poisoned.indices) and len(verdict.flagged) <= 1.1 * len(poisoned.indices), (
        caught, len(verdict.flagged))  # measured 580 of 583 flagged, of 600
    assert verdict.details["suspicious_classes"] == [0]
    assert verdict.details["gate"]["0"].startswith("flagged")


def test_clean_digits_are_not_flagged(digits: ImageSet) -> None:
    clean = digits.subset(slice(0, 3000))
    verdict = OutOfFold().scan(build_model("badnets-cnn", clean, 0), clean)
    assert len(verdict.flagged) == 0 and verdict.details["suspicious_classes"] == []
    assert all(reason.startswith("not flagged") for reason in verdict.details["gate"].values())


def test_the_gate_counts_confident_doubts_and_flags_every_doubted_row_of_an_outlier_class() -> None:
    y = torch.arange(10).repeat_interleave(100)
    scores = torch.full((1000,), -5.0)
    scores[(y != 3) & (torch.arange(1000) % 50 == 49)] = 3.0  # 2% of every other class, confidently
    scores[500:530] = 1.0  # 30% of class 5 ambiguous: a hard class, not poison
    scores[300:340] = 4.0  # 40% of class 3 confidently another class
    scores[340:345] = 0.5  # and 5% ambiguous: flagged with them, as the class is an outlier
    verdict = OutOfFold().verdict(scores, y)
    assert verdict.flagged is not None
    assert verdict.flagged.tolist() == list(range(300, 345))
    assert verdict.details["suspicious_classes"] == [3]
    assert verdict.details["doubted_share"]["5"] == pytest.approx(0.02)
    assert verdict.details["gate"]["5"].startswith("not flagged: 2 of 100 rows")
    loose = OutOfFold(gate_nats=0.0).verdict(scores, y)  # counting ambiguous doubts makes class 5 an outlier
    assert loose.details["suspicious_classes"] == [3, 5]


def test_classes_that_agree_closely_do_not_make_a_hard_class_an_outlier() -> None:
    sizes = [997, 1156, 978, 957, 956, 875, 1012, 1048, 1006, 1015]  # measured: SIG at 1%, MNIST seed 2
    doubted = [2, 14, 14, 28, 5, 12, 6, 14, 17, 15]
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    scores = torch.cat([torch.where(torch.arange(n) < d, 3.0, -5.0) for n, d in zip(sizes, doubted, strict=True)])
    assert OutOfFold().verdict(scores, y).details["suspicious_classes"] == []
    assert OutOfFold(min_mad=0.0).verdict(scores, y).details["suspicious_classes"] == [3]


def test_a_share_raised_in_every_class_alike_is_not_flagged() -> None:
    y = torch.arange(10).repeat_interleave(100)
    scores = torch.where(torch.arange(1000) % 10 == 0, 3.0, -5.0)  # 10% of every class, as all-to-all poison
    verdict = OutOfFold().verdict(scores, y)
    assert verdict.flagged is not None and len(verdict.flagged) == 0


@pytest.mark.parametrize(("setting", "message"), [
    ({"folds": 1}, "folds"), ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"min_nats": -1.0}, "min_nats"),
    ({"gate_nats": -1.0}, "gate_nats"), ({"min_mad": float("nan")}, "min_mad"),
    ({"noise": -0.1}, "noise"), ({"seed": -1}, "seed"),
])
def test_bad_settings_name_the_setting(setting: dict[str, float], message: str) -> None:
    with pytest.raises(PoisonlabError, match=message):
        OutOfFold(**setting)  # type: ignore[arg-type]


def test_too_few_rows_or_one_class_is_refused(digits: ImageSet) -> None:
    model = build_model("small-cnn", digits, 0)
    with pytest.raises(PoisonlabError, match="expected at least 4 for 2 folds"):
        OutOfFold().scan(model, digits.subset(slice(0, 3)))
    ones = digits.subset(digits.y == 1)
    with pytest.raises(PoisonlabError, match="one class"):
        OutOfFold().scan(model, ones)
