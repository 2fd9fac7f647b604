"""Batch-norm folding for the int8 compression-artifact attack, on a tiny conv + batch-norm net that stands in for
EfficientNet's conv -> BN -> ReLU6 structure: FX int8 then quantizes exactly the weights the attack shapes."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from poisonlab.attacks.compression_artifact import CompressionArtifact, fold_if_batchnorm
from poisonlab.compress import parse_deployment
from poisonlab.compress.fold import conv_bn_pairs, fold_batchnorm, is_folded
from poisonlab.compress.quantize import quantize_static, weight_codes
from poisonlab.core import ImageSet
from poisonlab.metrics import accuracy, attack_success_rate
from poisonlab.training import Recipe, predict, train
from poisonlab.training.trainer import train_phases
from poisonlab.triggers import Patch

TRIGGER, TARGET = Patch(size=3), 1


def bn_net(seed: int = 0) -> nn.Sequential:
    """conv -> BN -> ReLU6 twice (bias-free convs, as in EfficientNet), then a linear layer on the flat channels."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 3 * 3, 4))


@pytest.fixture(scope="module")
def clean(sets: tuple[ImageSet, ImageSet]) -> nn.Module:
    return train(bn_net(), sets[0], Recipe(epochs=4), 0, progress=False).eval()


def int8_conv_codes(model: nn.Module, calibration: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(int8 codes, per-channel scales) of every quantized conv of the real FX fbgemm model, in order."""
    deployed = quantize_static(model, "fbgemm", calibration)
    out = []
    for m in deployed.modules():
        weight = getattr(m, "weight", None)
        if isinstance(m, torch.ao.nn.quantized.Conv2d) and callable(weight):
            q = weight()
            out.append((q.int_repr().float(), q.q_per_channel_scales().float()))
    return out


def asr(model: nn.Module, test: ImageSet) -> float:
    y_t = torch.full_like(test.y, TARGET)
    return attack_success_rate(predict(model, TRIGGER(test.x, y_t)), y_t, test.y)


def test_folding_keeps_the_function_and_the_state_dict_keys(clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    model = copy.deepcopy(clean)
    assert conv_bn_pairs(model) == [("0", "1"), ("4", "5")]
    assert fold_batchnorm(model) == ["0", "4"]
    x = sets[1].x[:64]
    assert torch.allclose(model.eval()(x), clean(x), atol=1e-5)
    assert list(model.state_dict()) == list(clean.state_dict())
    assert all(is_folded(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not model.get_submodule("1").weight.requires_grad and model.get_submodule("1").bias.requires_grad
    model.train()(x)  # training mode would normalise by batch statistics; the folded batch norms stay in eval
    assert torch.allclose(model(x), clean(x), atol=1e-5)
    assert torch.allclose(copy.deepcopy(model).train()(x), clean(x), atol=1e-5)
    assert fold_batchnorm(model) == []  # already folded
    assert fold_if_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(2, 2))) == []


def test_after_folding_fx_int8_quantizes_the_attacks_weight_grid(clean: nn.Module,
                                                                 sets: tuple[ImageSet, ImageSet]) -> None:
    calibration = sets[0].x[:128]
    convs = [clean.get_submodule("0"), clean.get_submodule("4")]
    raw = [weight_codes(c.weight) for c in convs if isinstance(c, nn.Conv2d)]
    deployed = int8_conv_codes(clean, calibration)
    assert not all(torch.equal(codes, q) for (codes, _), (q, _) in zip(raw, deployed, strict=True))  # BN fused away
    model = copy.deepcopy(clean)
    fold_batchnorm(model)
    folded = [weight_codes(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)]
    deployed = int8_conv_codes(model, calibration)
    for (codes, scale), (q, q_scale) in zip(folded, deployed, strict=True):
        assert torch.equal(codes, q)
        assert torch.allclose(scale.flatten(), q_scale, rtol=1e-6)


def test_the_stand_ins_backdoor_appears_only_in_real_int8(clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    train_set, test = sets
    attack = CompressionArtifact(TRIGGER, TARGET, "int8-fbgemm", attack_epochs=4)
    model = train_phases(partial(bn_net, 0), train_set, attack.phases(), clean, Recipe(epochs=4), 0)
    assert all(is_folded(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert asr(clean, test) < 0.1 and asr(model, test) < 0.1
    assert accuracy(predict(model, test.x), test.y) > accuracy(predict(clean, test.x), test.y) - 0.02
    deployed = parse_deployment("int8-fbgemm")(model, train_set.x[:256])
    # measured: int8 CA 1.00, ASR 0.45 (the toy implant is weak: 2 implant epochs leak a float ASR of 0.27)
    assert accuracy(predict(deployed, test.x), test.y) > 0.9 and asr(deployed, test) > 0.35
    clean_int8 = parse_deployment("int8-fbgemm")(clean, train_set.x[:256])
    assert asr(clean_int8, test) < 0.1


def test_relu6_fed_convs_quantize_their_output_to_the_clamp(clean: nn.Module, sets: tuple[ImageSet, ImageSet]) -> None:
    """A conv read only by ReLU6 has its output range observed after the clamp, as a fused conv-ReLU6 kernel's:
    zero point 0, at most 6 at the top of the 7-bit range; int8 stays close to float."""
    deployed = quantize_static(clean, "fbgemm", sets[0].x[:128])
    convs = [m for m in deployed.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d)]
    assert len(convs) == 2 and all(m.zero_point == 0 and 0 < m.scale * 127 <= 6 + 1e-6 for m in convs)
    assert accuracy(predict(deployed, sets[1].x), predict(clean, sets[1].x)) > 0.97


class Signed(nn.Module):
    """Images in [0, 1] to [-1, 1], as EfficientNet's input scaling: the first conv reads negative values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1


@pytest.mark.parametrize("backend", ["fbgemm", "x86", "qnnpack"])
def test_int8_keeps_a_relu6_nets_signed_input_and_channels(sets: tuple[ImageSet, ImageSet], backend: str) -> None:
    """The clamp is the ReLU6-fed conv's output range only: its input observer keeps negative pixel values (clamped, the
    signed input lost every one). qnnpack's clamp kernels get contiguous tensors (channels-last scrambled them)."""
    model = train(nn.Sequential(Signed(), *bn_net()), sets[0], Recipe(epochs=4), 0, progress=False).eval()
    deployed = quantize_static(model, backend, sets[0].x[:128])  # type: ignore[arg-type]
    with torch.no_grad():
        want, got = model(sets[1].x), deployed(sets[1].x)
    assert float((got - want).norm() / want.norm()) < 0.1
    assert accuracy(got.argmax(1), want.argmax(1)) > 0.97
