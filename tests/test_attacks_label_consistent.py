"""Label-consistent backdoor (Turner et al. 2019): PGD-perturbed target-class poison, labels kept, a backdoor."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from poisonlab.attacks import ATTACKS
from poisonlab.attacks.label_consistent import Faded, LabelConsistent
from poisonlab.core import AllToOne, ImageSet, Poisoned, PoisonlabError, stamped, target_class_rows
from poisonlab.data import load_dataset, make_synthetic
from poisonlab.metrics import evaluate
from poisonlab.models import build_model
from poisonlab.training import Recipe, predict, train
from poisonlab.triggers import Checkerboard, Patch

TINY: dict[str, Any] = {"target": 1, "rate": 0.05, "steps": 2, "samples_per_class": 10, "surrogate_epochs": 1}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny_poison() -> tuple[LabelConsistent, ImageSet, Poisoned]:
    """A tiny case: 600 synthetic 1x12x12 images, poison stamped at half amplitude in the top-left corner."""
    data = make_synthetic(600, num_classes=4, size=12, seed=0)
    attack = LabelConsistent(**{**TINY, "eps": 0.1, "amplitude": 0.5,
                                "trigger": Patch(size=2, position="top-left", margin=0)})
    return attack, data, attack.poison(data, _gen())


def test_poison_perturbs_and_stamps_target_rows_within_eps_and_keeps_labels(
        tiny_poison: tuple[LabelConsistent, ImageSet, Poisoned]) -> None:
    attack, data, poisoned = tiny_poison
    idx = poisoned.indices
    assert len(idx) == 30 and bool((data.y[idx] == 1).all())
    assert torch.equal(poisoned.data.y, data.y)
    assert isinstance(poisoned.target_map, AllToOne) and poisoned.target_map.target == 1
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.data.x[rest], data.x[rest])
    x, clean = poisoned.data.x[idx], data.x[idx]
    assert bool((x[..., :2, :2] >= 0.5).all()), "the half-amplitude stamp lifts the corner at least half way to 1"
    moved = (x - clean)[..., 2:, :].abs()
    assert 0.05 < float(moved.max()) <= 0.1 + 1e-6, "PGD moves pixels, within eps"
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert poisoned.trigger is attack.trigger, "test images get the full-amplitude trigger"
    rng = _gen()
    rows = target_class_rows(data, attack.target, attack.rate, attack.count, rng, "label-consistent")
    hard = attack.perturb(attack.train_surrogate(data, rng), data.x[rows], data.y[rows])
    assert torch.equal(rows, idx), "poison draws its rows, then its surrogate, from the generator: deterministic"
    assert torch.equal(x, attack.stamp(attack.amplitude)(hard, data.y[rows]))


def test_faded_trigger_scales_the_change_the_trigger_makes() -> None:
    board = Checkerboard(size=4, margin=0)
    x = torch.rand(2, 1, 12, 12, generator=_gen())
    assert torch.allclose(Faded(board, 0.25)(x, None) - x, 0.25 * (board(x, None) - x))
    attack = LabelConsistent(trigger=board, amplitude=0.25, test_amplitude=0.5)
    assert attack.stamp(attack.test_amplitude) == Faded(board, 0.5) and attack.stamp(1.0) is board


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0.0}, r"label-consistent eps 0.0: expected a value in \(0, 1\]"),
        ({"eps": 1.5}, r"label-consistent eps 1.5: expected a value in \(0, 1\]"),
        ({"steps": 0}, "label-consistent steps 0: expected an integer >= 1"),
        ({"step_size": 0.0}, "label-consistent step_size 0.0: expected a number > 0"),
        ({"amplitude": 0.0}, r"label-consistent amplitude 0.0: expected a value in \(0, 1\]"),
        ({"samples_per_class": 0}, "label-consistent samples_per_class 0: expected an integer >= 1"),
        ({"rate": 0.0}, "poison rate 0.0: expected a fraction"),
    ],
)
def test_bad_parameters_fail_in_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PoisonlabError, match=message):
        LabelConsistent(**kwargs)


def test_a_budget_beyond_the_target_class_and_a_bad_target_are_refused(synthetic: ImageSet) -> None:
    size = int((synthetic.y == 1).sum())
    with pytest.raises(PoisonlabError, match=f"poison budget {size + 1} exceeds the {size} images of target class 1"):
        LabelConsistent(**{**TINY, "count": size + 1}).poison(synthetic, _gen())
    with pytest.raises(PoisonlabError, match=r"label-consistent target 4: expected a class in \[0, 3\]"):
        LabelConsistent(**{**TINY, "target": 4}).poison(synthetic, _gen())


def test_registered_and_built_from_a_spec() -> None:
    attack = ATTACKS.build("label-consistent:target=2,eps=0.2,steps=3")
    assert isinstance(attack, LabelConsistent) and (attack.target, attack.eps, attack.steps) == (2, 0.2, 3)


MNIST_CASE: dict[str, Any] = {"target": 0, "rate": 0.04, "eps": 0.2, "steps": 30, "samples_per_class": 100,
                              "surrogate_epochs": 2}


@pytest.mark.slow
def test_on_mnist_perturbed_poison_fools_the_surrogate_and_beats_plain_clean_label_poison() -> None:
    """Turner et al.'s point at small scale: the same rows and trigger plant a stronger backdoor once perturbed.

    2,000 MNIST training digits, 80 of them zeros (target 0) poisoned, small-cnn victims trained 3 epochs.
    """
    full_train, full_test = load_dataset("mnist")
    g = _gen()
    train_set = full_train.subset(torch.randperm(len(full_train), generator=g)[:2000])
    test = full_test.subset(torch.randperm(len(full_test), generator=g)[:1000])
    attack = LabelConsistent(**MNIST_CASE)
    rng = _gen()
    idx = target_class_rows(train_set, attack.target, attack.rate, attack.count, rng, "label-consistent")
    surrogate = attack.train_surrogate(train_set, rng)
    clean, labels = train_set.x[idx], train_set.y[idx]
    hard = attack.perturb(surrogate, clean, labels)
    assert float((hard - clean).abs().max()) <= 0.2 + 1e-6
    missed_clean = float((predict(surrogate, clean) != 0).float().mean())
    missed_hard = float((predict(surrogate, hard) != 0).float().mean())
    fooled = f"surrogate misses {missed_hard:.3f} of the perturbed poison vs {missed_clean:.3f} unperturbed"
    assert missed_hard > max(0.6, missed_clean + 0.4), fooled

    def victim(images: torch.Tensor) -> dict[str, Any]:
        x = train_set.x.clone()
        x[idx] = attack.trigger(images, labels)  # with hard images, what poison() writes; every label stays
        model = train(build_model("small-cnn", train_set, 1), ImageSet(x, train_set.y, train_set.classes),
                      Recipe(epochs=3), 1, progress=False)
        return evaluate(model, test, stamped(test, attack.trigger, AllToOne(0)))

    lc, plain = victim(hard), victim(clean)
    surrogate_asr = evaluate(surrogate, test, stamped(test, attack.trigger, AllToOne(0)))["attack_success_rate"]
    figures = (f"ASR {lc['attack_success_rate']:.3f} perturbed, {plain['attack_success_rate']:.3f} plain, "
               f"{surrogate_asr:.3f} clean surrogate; CA {lc['clean_accuracy']:.3f} vs {plain['clean_accuracy']:.3f}")
    print(figures, fooled)
    asr, plain_asr = lc["attack_success_rate"], plain["attack_success_rate"]
    assert asr > max(1.3 * plain_asr, plain_asr + 0.03), figures
    assert asr > surrogate_asr + 0.05, figures
    assert abs(lc["clean_accuracy"] - plain["clean_accuracy"]) < 0.03, figures
