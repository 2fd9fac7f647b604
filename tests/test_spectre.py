"""SPECTRE: planted BadNets poison ranked first and flagged, a clean model left alone, QUE's limits, robust moments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poisonlab.attacks import BadNets
from poisonlab.core import ImageSet, Poisoned, PoisonlabError
from poisonlab.data import make_synthetic
from poisonlab.defenses import DEFENSES
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.defenses.spectre import Spectre, que_scores, robust_moments
from poisonlab.models import build_model
from poisonlab.training import Recipe, train
from poisonlab.triggers import Patch


@pytest.fixture(scope="module")
def clean_set() -> ImageSet:
    return make_synthetic(800, num_classes=4, size=12, seed=0)


@pytest.fixture(scope="module")
def poisoned(clean_set: ImageSet) -> Poisoned:
    """BadNets all-to-one at 5%: 40 images of classes 0, 2, 3 stamped and relabelled 1 (a sixth of class 1)."""
    return BadNets(target=1, rate=0.05, trigger=Patch(size=3)).poison(clean_set, torch.Generator().manual_seed(0))


def _fit(data: ImageSet) -> nn.Module:
    return train(build_model("small-cnn", data, 0), data, Recipe(epochs=4), seed=0, progress=False)


@pytest.fixture(scope="module")
def backdoored(poisoned: Poisoned) -> nn.Module:
    return _fit(poisoned.data)


def test_planted_badnets_poison_is_ranked_first_and_flagged(poisoned: Poisoned, backdoored: nn.Module) -> None:
    verdict = Spectre().scan(backdoored, poisoned.data)
    found = detection_metrics(verdict, poisoned.indices, len(poisoned.data))
    # measured (seed 0): AUROC 1.000, precision 1.0, recall 1.0
    assert found["auroc"] > 0.99 and found["precision"] >= 0.95 and found["recall"] >= 0.95, found
    assert verdict.details["suspicious_classes"] == [1]
    assert verdict.details["gate"]["1"].startswith("flagged")
    assert verdict.scores is not None and verdict.scores.shape == (len(poisoned.data),)


def test_the_papers_removal_rule_trims_every_class(poisoned: Poisoned, backdoored: nn.Module) -> None:
    verdict = Spectre(removal=0.2).scan(backdoored, poisoned.data)
    per_class = torch.bincount(poisoned.data.y[verdict.flagged], minlength=4)
    sizes = torch.bincount(poisoned.data.y, minlength=4)
    assert torch.equal(per_class, (0.2 * sizes).long())
    assert detection_metrics(verdict, poisoned.indices, len(poisoned.data))["recall"] == 1.0


def test_a_clean_model_on_clean_data_flags_nothing(clean_set: ImageSet) -> None:
    verdict = Spectre().scan(_fit(clean_set), clean_set)
    assert verdict.details["suspicious_classes"] == [] and verdict.flagged is not None and len(verdict.flagged) == 0


def test_features_are_read_batch_by_batch_within_any_memory_budget(poisoned: Poisoned, backdoored: nn.Module) -> None:
    largest = 0

    def see(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        nonlocal largest
        largest = max(largest, len(args[0]))

    hook = backdoored.register_forward_pre_hook(see)
    try:
        recomputed = Spectre(batch_size=50, keep_mb=0).scan(backdoored, poisoned.data)
    finally:
        hook.remove()
    assert 0 < largest <= 50
    kept = Spectre(batch_size=50).scan(backdoored, poisoned.data)
    assert recomputed.flagged is not None and kept.flagged is not None
    assert recomputed.scores is not None and kept.scores is not None
    assert torch.equal(recomputed.flagged, kept.flagged) and torch.equal(recomputed.scores, kept.scores)


def test_que_goes_from_the_norm_to_the_top_direction() -> None:
    g = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
    z = (torch.randn(2000, 5, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5])) @ rotation.T
    norm = (z**2).sum(1) / 5
    assert torch.allclose(que_scores(z, 0.0).double(), norm, rtol=1e-5)
    assert torch.allclose(que_scores(z, 1e-6).double(), norm, rtol=1e-4)
    top = torch.linalg.eigh(z.T @ z / len(z))[1][:, -1]
    assert torch.allclose(que_scores(z, 1e4).double(), (z @ top) ** 2, rtol=1e-4, atol=1e-6)
    middle = que_scores(z, 4.0).double()  # the paper's alpha: between the two, nearer the top direction

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert corr(middle, (z @ top) ** 2) > corr(middle, norm)


def test_robust_moments_ignore_a_dense_far_cluster() -> None:
    """A quarter of the rows in a tight cluster 8 sd out on one axis: the sample covariance swells, the robust not."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(1500, 8, generator=g, dtype=torch.float64)
    cluster = 0.1 * torch.randn(500, 8, generator=g, dtype=torch.float64) + torch.tensor([8.0] + [0.0] * 7)
    p = torch.cat([clean, cluster])
    mean, cov = robust_moments(p)
    assert float(torch.cov(p.T)[0, 0]) > 10.0
    # measured: mean within 0.07 of 0, covariance within 0.08 of the identity
    assert mean.abs().max() < 0.15 and (cov - torch.eye(8, dtype=torch.float64)).abs().max() < 0.2


@pytest.mark.parametrize(("spec", "match"), [
    ("spectre:dims=0", "dims"), ("spectre:alpha=-1", "alpha"), ("spectre:cutoff=1.5", "cutoff"),
    ("spectre:min_separation=0", "min_separation"), ("spectre:min_foreign=2", "min_foreign"),
    ("spectre:removal=1.5", "removal"), ("spectre:keep_mb=-1", "keep_mb"),
])
def test_bad_parameters_are_refused_in_one_line(spec: str, match: str) -> None:
    with pytest.raises(PoisonlabError, match=match) as e:
        DEFENSES.build(spec)
    assert "\n" not in str(e.value)


def test_the_low_group_is_the_poison_where_the_poison_outnumbers_its_class() -> None:
    """10% BadNets in 10,000 MNIST rows: 1,000 poison beside 953 real zeros. The input names the poison's side,
    whichever QUE group it falls in; a small high group is the poison without asking."""
    from poisonlab.data import load_dataset
    from poisonlab.defenses.provenance import InputSides

    digits = load_dataset("mnist")[0]
    data = digits.subset(torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))[:10000])
    poisoned = BadNets(target=0, rate=0.1).poison(data, torch.Generator().manual_seed(0))
    idx = torch.nonzero(poisoned.data.y == 0).flatten()
    is_poison = torch.isin(idx, poisoned.indices)
    inputs = InputSides(poisoned.data)
    assert Spectre.low_is_poison(inputs, idx, 0, high=~is_poison)  # the real zeros scored high: flip
    assert not Spectre.low_is_poison(inputs, idx, 0, high=is_poison)
    few = is_poison & (torch.cumsum(is_poison.long(), 0) <= 100)  # 100 poison scored high, the rest low
    assert not Spectre.low_is_poison(inputs, idx, 0, high=few)
