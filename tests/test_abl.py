"""Anti-Backdoor Learning: isolates BadNets poison on real MNIST and trains a model without its backdoor."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from poisonlab.attacks.badnets import BadNets
from poisonlab.core import Evidence, ImageSet, Poisoned, PoisonlabError, Verdict
from poisonlab.data import load_dataset
from poisonlab.defenses.abl import AntiBackdoorLearning, log_odds_against, reinitialised
from poisonlab.metrics import evaluate
from poisonlab.models import Normalize, build_model
from poisonlab.registry import DEFENSES
from poisonlab.training import Recipe, train

ROWS = 1200


@pytest.fixture(scope="module")
def mnist_case() -> tuple[ImageSet, Poisoned, nn.Module, Verdict]:
    """1,200 MNIST training digits, 10% BadNets all-to-one poison, the backdoored small-cnn and ABL's verdict."""
    torch.set_num_threads(2)
    train_set, test = load_dataset("mnist")
    poisoned = BadNets(target=8, rate=0.1).poison(train_set.subset(slice(0, ROWS)), torch.Generator().manual_seed(0))
    victim = train(build_model("small-cnn", poisoned.data, 0), poisoned.data, Recipe(epochs=2), 0, progress=False)
    verdict = AntiBackdoorLearning().repair(victim, Evidence(test.subset(slice(0, 10)), train=poisoned.data))
    return test.subset(slice(0, 1000)), poisoned, victim, verdict


def test_isolated_rows_are_the_planted_poison(mnist_case: tuple[ImageSet, Poisoned, nn.Module, Verdict]) -> None:
    _, poisoned, _, verdict = mnist_case
    isolated = torch.tensor(verdict.details["isolated"])
    assert len(isolated) == verdict.details["isolated_count"] == round(0.01 * ROWS)
    assert torch.equal(isolated, isolated.unique())
    precision = float(torch.isin(isolated, poisoned.indices).float().mean())
    assert precision >= 0.8, precision  # measured 1.00 (12 of 12)


def test_repaired_model_loses_the_backdoor_and_keeps_clean_accuracy(
    mnist_case: tuple[ImageSet, Poisoned, nn.Module, Verdict],
) -> None:
    test, poisoned, victim, verdict = mnist_case
    assert verdict.model is not None
    before = evaluate(victim, test, poisoned.triggered(test))
    after = evaluate(verdict.model, test, poisoned.triggered(test))
    assert before["attack_success_rate"] > 0.9  # measured 0.999
    assert after["attack_success_rate"] < 0.15, after["attack_success_rate"]  # measured 0.000
    assert after["clean_accuracy"] > before["clean_accuracy"] - 0.03, (before, after)  # measured 0.810 -> 0.842


def test_fresh_model_keeps_normaliser_and_frozen_layers_and_follows_the_seed() -> None:
    norm, conv, hidden, frozen = Normalize(1), nn.Conv2d(1, 2, 3), nn.Linear(2, 3), nn.Linear(3, 2)
    norm.mean.fill_(0.3)
    frozen.requires_grad_(False)
    model = nn.Sequential(norm, conv, nn.Flatten(), hidden, frozen)
    fresh, kept = reinitialised(model, 0)
    again, other = reinitialised(model, 0)[0].state_dict(), reinitialised(model, 1)[0].state_dict()
    state = fresh.state_dict()
    assert kept == [] and float(state["0.mean"].flatten()[0]) == pytest.approx(0.3)
    assert not torch.equal(state["1.weight"], conv.weight) and not torch.equal(state["3.weight"], hidden.weight)
    assert torch.equal(state["4.weight"], frozen.weight), "a frozen layer keeps its weights"
    assert all(torch.equal(state[k], again[k]) for k in state) and not torch.equal(state["1.weight"], other["1.weight"])
    scale = nn.Module()
    scale.register_parameter("gain", nn.Parameter(torch.ones(1)))
    assert reinitialised(nn.Sequential(conv, scale), 0)[1] == ["1.gain"], "what no module resets is reported"


def test_losses_ascended_below_gamma_and_log_odds_exact_when_saturated() -> None:
    abl = AntiBackdoorLearning(gamma=0.5)
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 10.0]]))
        linear.bias.zero_()
    fitted = nn.Sequential(nn.Flatten(), linear)
    x, y = torch.eye(2).view(2, 1, 1, 2), torch.tensor([0, 1])
    with torch.no_grad():
        assert float(abl.local_ascent(fitted, x, y)) < 0 < float(abl.local_ascent(fitted, x, 1 - y))
    logits = torch.tensor([[2.0, 0.0, -1.0], [60.0, 0.0, 0.0]])
    p = torch.softmax(logits[0], 0)[0]
    odds = log_odds_against(logits, torch.tensor([0, 0]))
    assert float(odds[0]) == pytest.approx(math.log((1 - p) / p), rel=1e-5)
    assert float(odds[1]) == pytest.approx(-60 + math.log(2), rel=1e-5)  # p rounds to 1, the log-odds do not


def test_bad_settings_and_a_missing_training_set_are_refused() -> None:
    for spec, key in [("abl:isolate=0", "isolate"), ("abl:isolate=1.5", "isolate"), ("abl:gamma=-0.1", "gamma"),
                      ("abl:isolate=0.1,hold_out=0.05", "hold_out"), ("abl:forget_to=1", "forget_to")]:
        with pytest.raises(PoisonlabError, match=key):
            DEFENSES.build(spec)
    assert AntiBackdoorLearning().requires() is None
    clean = ImageSet(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), ("a", "b"))
    with pytest.raises(PoisonlabError, match="training set") as error:
        AntiBackdoorLearning().repair(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), Evidence(clean))
    assert "\n" not in str(error.value)
