"""Label consistency finds all-to-all dirty-label poison and flags nothing on clean data."""

from __future__ import annotations

import pytest
import torch

from poisonlab.attacks import BadNets
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import make_synthetic
from poisonlab.defenses.label_consistency import LabelConsistency
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.defenses.spectral import SpectralSignatures
from poisonlab.models import build_model
from poisonlab.training import Recipe, train
from poisonlab.triggers import Patch


@pytest.fixture(scope="module")
def train_set() -> ImageSet:
    return make_synthetic(1200, num_classes=4, size=12, seed=0)


def _fit(data: ImageSet) -> torch.nn.Module:
    return train(build_model("small-cnn", data, 0), data, Recipe(epochs=6), seed=0, progress=False)


def test_all_to_all_poison_is_ranked_first_and_flagged(train_set: ImageSet) -> None:
    poisoned = BadNets(mode="all-to-all", rate=0.1, trigger=Patch(size=3)).poison(train_set,
                                                                                 torch.Generator().manual_seed(0))
    model = _fit(poisoned.data)
    verdict = LabelConsistency().scan(model, poisoned.data)
    found = detection_metrics(verdict, poisoned.indices, len(poisoned.data))
    assert found["auroc"] > 0.99 and found["precision"] == 1.0 and found["recall"] > 0.5, found
    assert verdict.details["suspicious_classes"] and verdict.details["gate"]
    spectral = detection_metrics(SpectralSignatures().scan(model, poisoned.data), poisoned.indices,
                                 len(poisoned.data))
    # every class splits alike; input provenance puts the flags on the side nearest other classes
    assert spectral["auroc"] > 0.99 and spectral["precision"] == 1.0 and spectral["recall"] == 1.0, spectral


def test_clean_data_gets_no_flag(train_set: ImageSet) -> None:
    verdict = LabelConsistency().scan(_fit(train_set), train_set)
    assert len(verdict.flagged) == 0 and verdict.scores is not None and verdict.scores.shape == (len(train_set),)


def test_bad_settings_and_one_class_data_are_refused(train_set: ImageSet) -> None:
    with pytest.raises(PoisonlabError, match="clean_sds"):
        LabelConsistency(clean_sds=0)
    with pytest.raises(PoisonlabError, match="shrinkage"):
        LabelConsistency(shrinkage=2.0)
    one = train_set.subset(torch.nonzero(train_set.y == 0).flatten())
    with pytest.raises(PoisonlabError, match="one class"):
        LabelConsistency().scan(build_model("small-cnn", train_set, 0), one)


def test_fewer_rows_than_feature_dimensions_are_scanned(train_set: ImageSet) -> None:
    few = train_set.subset(slice(0, 100))  # small-cnn's 288 conv features, above max_dims, from 100 rows
    verdict = LabelConsistency().scan(build_model("small-cnn", train_set, 0), few)
    assert verdict.scores is not None and verdict.scores.shape == (100,)
