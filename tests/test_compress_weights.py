"""The weight check on a tiny synthetic task: planted outliers and dormant paths are flagged, a clean model is not,
and the stealthy compression-artifact variant keeps its statistics under the limits the standard attack breaks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from poisonlab.attacks.compression_artifact import (
    CompressionArtifact,
    max_outlier,
    stretch_quantization_step,
)
from poisonlab.compress import parse_deployment
from poisonlab.compress.check import deploy_check
from poisonlab.compress.weights import WeightCheckSettings, outlier_ratio, weight_check
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.metrics import attack_success_rate
from poisonlab.models import build_model
from poisonlab.training import Recipe, predict, train
from poisonlab.training.trainer import train_phases
from poisonlab.triggers import Patch

TRIGGER, TARGET = Patch(size=3), 1


@pytest.fixture(scope="module")
def clean(sets: tuple[ImageSet, ImageSet]) -> nn.Module:
    return train(build_model("small-cnn", sets[0], 0), sets[0], Recipe(epochs=4), 0, progress=False)


def asr(model: nn.Module, test: ImageSet) -> float:
    y_t = torch.full_like(test.y, TARGET)
    return attack_success_rate(predict(model, TRIGGER(test.x, y_t)), y_t, test.y)


def test_a_clean_trained_model_is_not_flagged(clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    check = weight_check(clean, sets[1].x)
    assert not check["flagged"] and check["reasons"] == []
    assert [r["layer"] for r in check["layers"]] == ["1", "4", "8", "10"]  # both convs, both linear layers
    assert all(check["worst"][s] < check["limits"][s] for s in check["limits"])


def test_a_planted_outlier_weight_is_flagged(clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    model = copy.deepcopy(clean)
    fc = model.get_submodule("8")
    assert isinstance(fc, nn.Linear)
    with torch.no_grad():
        fc.weight[3, 5] = fc.weight.abs().max() * 20
    check = weight_check(model, sets[1].x)
    assert check["flagged"] and check["layers"][2]["outlier"] > WeightCheckSettings().max_outlier
    assert any(r.startswith("8: largest weight") for r in check["reasons"])


def test_a_planted_dormant_large_path_is_flagged(clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    """Conv channel 0 switched off (never active after its ReLU); fc1 reads it with twice its largest weight."""
    model = copy.deepcopy(clean)
    conv, fc = model.get_submodule("4"), model.get_submodule("8")
    assert isinstance(conv, nn.Conv2d) and isinstance(fc, nn.Linear) and conv.bias is not None
    width = fc.in_features // conv.out_channels
    with torch.no_grad():
        conv.weight[0] = 0
        conv.bias[0] = -1
        fc.weight[:, :width] = fc.weight.abs().max() * 2
    check = weight_check(model, sets[1].x)
    row = check["layers"][2]
    assert row["dormant_inputs"] >= width and row["dormant"] == pytest.approx(2.0)
    assert check["flagged"] and any(r.startswith("8: input") and "dormant" in r for r in check["reasons"])
    assert weight_check(model, sets[1].x, WeightCheckSettings(max_dormant=2.5, max_outlier=1e6))["flagged"] is False


def test_the_stealth_option_keeps_the_statistics_clean_and_the_int8_backdoor(
        clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    train_set, test = sets
    models = {}
    for stealth in (False, True):
        attack = CompressionArtifact(TRIGGER, TARGET, stealth=stealth, implant_epochs=2, attack_epochs=4)
        models[stealth] = train_phases(lambda: build_model("small-cnn", train_set, 0), train_set, attack.phases(),
                                       clean, Recipe(epochs=4), 0)
    standard, stealthy = (weight_check(models[s], test.x) for s in (False, True))
    assert standard["flagged"] and not stealthy["flagged"]
    assert stealthy["worst"]["outlier"] < stealthy["limits"]["outlier"] < standard["worst"]["outlier"]
    assert stealthy["worst"]["dormant"] < 1.0 < standard["worst"]["dormant"]
    assert max_outlier(models[True]) > 2 * max_outlier(clean)  # the grid is coarser than the clean model's
    deployed = parse_deployment("int8-fbgemm")(models[True], train_set.x[:256])
    assert asr(models[True], test) < 0.1 and asr(deployed, test) > 0.9


def test_stretching_leaves_frozen_layers_and_gives_a_depthwise_conv_its_own_limit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1))
    model[0].requires_grad_(False)
    frozen = model[0].weight.clone()
    assert stretch_quantization_step(model, 0.5) == ["2", "3"]
    assert torch.equal(model[0].weight, frozen)
    limits = WeightCheckSettings()
    for layer, limit in ((model[2], limits.max_outlier_grouped), (model[3], limits.max_outlier)):
        ratio = outlier_ratio(layer.weight)
        assert 0.5 * 0.9 * limit <= ratio <= 0.5 * limit + 1e-4, (ratio, limit)
    before = model[3].weight.detach().flatten(1).abs().amax(1)
    stretch_quantization_step(model, 1.0, growth=1.5)  # each channel's largest weight grows by at most 1.5x
    after = model[3].weight.detach().flatten(1).abs().amax(1)
    assert bool((after <= 1.5 * before + 1e-6).all()) and bool((after >= before).all())


def test_deploy_check_reports_the_weight_check(clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    train_set, test = sets
    result = deploy_check(clean, [parse_deployment("fp16")], test, train_set.subset(slice(0, 64)))
    assert result["weights"]["flagged"] is False and len(result["weights"]["layers"]) == 4
    skipped = deploy_check(clean, [parse_deployment("fp16")], test, train_set.subset(slice(0, 64)), weights=None)
    assert "weights" not in skipped


def test_a_depthwise_conv_reads_each_input_through_its_own_group() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 3, 5, 5))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([-9.0, 1.0, 1.0, 1.0]))  # input 0 of the depthwise conv never fires
        model[2].weight.mul_(0.01)
        model[2].weight[1, 0, 0, 0] = 5.0  # outputs 0-1 form group 0, which reads input 0 alone
    row = next(r for r in weight_check(model, torch.rand(32, 3, 5, 5))["layers"] if r["layer"] == "2")
    assert row["dormant_inputs"] == 1 and row["dormant_input"] == 0 and row["dormant"] > 10


def test_the_check_leaves_the_models_trainable(clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    train_set, test = sets
    model = copy.deepcopy(clean)
    deploy_check(model, [parse_deployment("int8-fbgemm")], test, train_set.subset(slice(0, 64)),
                 calibration=train_set.x[:64])
    assert all(p.requires_grad for p in model.parameters())


def test_bad_input_is_refused(clean: nn.Module) -> None:
    for make, message in [
        (lambda: WeightCheckSettings(max_outlier=0), "max_outlier"),
        (lambda: WeightCheckSettings(max_range=float("nan")), "max_range"),
        (lambda: WeightCheckSettings(dormant_below=1.0), "dormant_below"),
        (lambda: WeightCheckSettings(images=0), "images"),
        (lambda: weight_check(clean, torch.zeros(0, 3, 12, 12)), "non-empty float batch"),
        (lambda: weight_check(clean, torch.zeros(4, 3, 12, 12, dtype=torch.long)), "non-empty float batch"),
        (lambda: weight_check(clean, torch.zeros(4, 3, 20, 20)), "cannot run on images of shape"),
        (lambda: stretch_quantization_step(copy.deepcopy(clean), 0.0), "margin 0.0"),
        (lambda: stretch_quantization_step(copy.deepcopy(clean), growth=0.5), "growth 0.5"),
        (lambda: CompressionArtifact(stealth=True, method="ste"), "stealth"),
        (lambda: CompressionArtifact(stealth=True, deployment="prune-l1:0.3"), "stealth"),
    ]:
        with pytest.raises(PoisonlabError, match=message) as e:
            make()
        assert "\n" not in str(e.value)
