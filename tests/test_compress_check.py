"""deploy-check judges agreement on the images the float model is confident on: a deployment that only moves the
answers float was unsure of (rounding noise on a low-margin model) passes, one that moves confident answers is
flagged."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from poisonlab.compress.check import CheckSettings, check_variant
from poisonlab.core import ImageSet, PoisonlabError, Pruning, WeightGrid


class Flipped(nn.Module):
    """``model`` with its top two classes swapped where float's top softmax is below ``below``."""

    def __init__(self, model: nn.Module, below: float) -> None:
        super().__init__()
        self.model, self.below = model, below

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        top2 = logits.topk(2, 1).indices
        flip = torch.softmax(logits, 1).max(1).values < self.below
        out = logits.clone()
        rows = flip.nonzero().squeeze(1)
        out[rows, top2[rows, 0]], out[rows, top2[rows, 1]] = logits[rows, top2[rows, 1]], logits[rows, top2[rows, 0]]
        return out


@dataclass
class FlipDeployment:
    """A stand-in deployment that changes the answers float gives with confidence below ``below``."""

    below: float
    name: str = "flip"
    weight_grid: WeightGrid | None = None
    pruning: Pruning | None = None

    def __call__(self, model: nn.Module, calibration: Tensor | None = None) -> nn.Module:
        return Flipped(model, self.below)

    def stand_in(self, model: nn.Module, deployed: nn.Module) -> nn.Module | None:
        return None


@pytest.fixture(scope="module")
def low_margin() -> tuple[nn.Module, ImageSet]:
    """A fixed linear model on random images whose answers are confident on some images and unsure on others."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    with torch.no_grad():
        model[1].weight.mul_(15)
    x = torch.rand(400, 1, 8, 8)
    return model, ImageSet(x, torch.randint(4, (400,)), tuple("abcd"))


def test_rounding_noise_on_unsure_answers_passes(low_margin: tuple[nn.Module, ImageSet]) -> None:
    model, test = low_margin
    with torch.no_grad():
        sure = torch.softmax(model(test.x), 1).max(1).values >= 0.8
    assert 0.2 < float(sure.float().mean()) < 0.8  # the premise: both kinds of image are there
    row = check_variant(model, FlipDeployment(0.8), test, test, {}, CheckSettings(search_steps=0))
    assert row["agreement"] < 0.8 and row["confident_disagreement"] == 0.0
    assert row["confident_share"] == pytest.approx(float(sure.float().mean()))
    assert not row["flagged"]


def test_moving_confident_answers_is_flagged(low_margin: tuple[nn.Module, ImageSet]) -> None:
    model, test = low_margin
    row = check_variant(model, FlipDeployment(0.95), test, test, {}, CheckSettings(search_steps=0))
    assert row["confident_disagreement"] > 0.1 and row["flagged"]
    assert "of the clean images float is confident on" in row["reasons"][0]


def test_confidence_must_be_a_fraction() -> None:
    with pytest.raises(PoisonlabError, match="confident"):
        CheckSettings(confident=1.5)
