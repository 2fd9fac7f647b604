"""Deployments: each changes the model as documented, keeps a clean model's accuracy, and rejects bad input."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from poisonlab.compress import DEFAULT_DEPLOYMENTS, DEPLOYMENTS, parse_deployment
from poisonlab.compress.prune import prune_model, pruning_masks, sparsity
from poisonlab.compress.quantize import fake_quantize_weight
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import make_synthetic
from poisonlab.metrics import accuracy
from poisonlab.models import build_model
from poisonlab.training import Recipe, predict, train


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, ImageSet, ImageSet]:
    data = make_synthetic(900, num_classes=4, size=12, seed=3)
    train_set, test = data.subset(slice(0, 700)), data.subset(slice(700, 900))
    model = train(build_model("small-cnn", train_set, 0), train_set, Recipe(epochs=3), 0, progress=False)
    return model, train_set, test


def _int8_convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d)]


def test_every_default_deployment_keeps_clean_accuracy(toy: tuple[nn.Module, ImageSet, ImageSet]) -> None:
    model, train_set, test = toy
    base = accuracy(predict(model, test.x), test.y)
    assert base > 0.95
    for spec in DEFAULT_DEPLOYMENTS:
        deployed = parse_deployment(spec)(model, train_set.x[:128])
        bound = 0.05 if spec.startswith("prune") else 0.02  # documented bound on this toy task
        assert accuracy(predict(deployed, test.x), test.y) >= base - bound, spec
    assert sparsity(model) < 0.01  # the float model is untouched


def test_static_int8_is_really_quantized_per_backend(toy: tuple[nn.Module, ImageSet, ImageSet]) -> None:
    model, train_set, _ = toy
    fbgemm = parse_deployment("int8-fbgemm")(model, train_set.x[:64])
    qnnpack = parse_deployment("int8-qnnpack")(model, train_set.x[:64])
    assert len(_int8_convs(fbgemm)) == 2 and len(_int8_convs(qnnpack)) == 2
    for conv in _int8_convs(fbgemm):  # symmetric per channel, stored as affine with zero points 0
        assert conv.weight().qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        assert conv.weight().dtype == torch.qint8 and not conv.weight().q_per_channel_zero_points().any()
    for conv in _int8_convs(qnnpack):
        assert conv.weight().qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
        assert conv.weight().q_zero_point() == 0


def test_dynamic_fp16_and_weight_only(toy: tuple[nn.Module, ImageSet, ImageSet]) -> None:
    model, _, test = toy
    dynamic = parse_deployment("dynamic-int8")(model)
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in dynamic.modules()) == 2
    half = parse_deployment("fp16")(model)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert half(test.x[:4]).dtype == torch.float32
    four = parse_deployment("weight-only:4")(model)
    for m in four.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            per_channel = [len(torch.unique(row)) for row in m.weight.detach().flatten(1)]
            assert max(per_channel) <= 16


@pytest.mark.parametrize("per_channel, backend", [(True, "int8-fbgemm"), (False, "int8-qnnpack")])
def test_fake_quant_weights_equal_real_int8_weights(toy: tuple[nn.Module, ImageSet, ImageSet], per_channel: bool,
                                                    backend: str) -> None:
    model, train_set, _ = toy
    quantized = parse_deployment(backend)(model, train_set.x[:64]).modules()
    real = [m for m in quantized if isinstance(m, (torch.ao.nn.quantized.Conv2d, torch.ao.nn.quantized.Linear))]
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for f, q in zip(layers, real, strict=True):
        fake = fake_quantize_weight(f.weight.detach(), 8, per_channel)
        torch.testing.assert_close(fake, q.weight().dequantize(), rtol=0, atol=1e-6)


def test_fake_quant_model_agrees_with_real_int8(toy: tuple[nn.Module, ImageSet, ImageSet]) -> None:
    model, train_set, test = toy
    real = predict(parse_deployment("int8-fbgemm")(model, train_set.x[:256]), test.x)
    fake = build_model("small-cnn", train_set, 0)
    fake.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in fake.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(fake_quantize_weight(m.weight, 8, per_channel=True))
    assert accuracy(predict(fake, test.x), real) >= 0.98


@pytest.mark.parametrize("spec, method, ratio", [("prune-l1:0.3", "global", 0.3), ("prune-layer:0.5", "layer", 0.5),
                                                  ("prune-filters:0.5", "filters", 0.5)])
def test_pruning_masks_are_what_the_pruner_removes(toy: tuple[nn.Module, ImageSet, ImageSet], spec: str, method: str,
                                                   ratio: float) -> None:
    model, _, _ = toy
    pruned = parse_deployment(spec)(model)
    masks = pruning_masks(model, method, ratio)  # type: ignore[arg-type]
    state = pruned.state_dict()
    for name, mask in masks.items():
        assert torch.equal(state[name] != 0, mask.bool()), name
    if method == "filters":
        for mask in masks.values():
            kept = mask.flatten(1).any(1)
            assert int((~kept).sum()) == round(ratio * len(kept))
    else:
        assert sparsity(pruned) == pytest.approx(ratio, abs=0.01 if method == "global" else 0.02)
    assert sparsity(model) < 0.01


def test_prune_model_leaves_a_plain_module(toy: tuple[nn.Module, ImageSet, ImageSet]) -> None:
    pruned = prune_model(toy[0], "global", 0.3)
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())


class _Branchy(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) if x.sum() > 0 else -x.flatten(1)


def test_bad_input_gets_one_line_errors(toy: tuple[nn.Module, ImageSet, ImageSet]) -> None:
    model, train_set, _ = toy
    cases = [
        (lambda: parse_deployment("int9-fbgemm"), "unknown deployment 'int9-fbgemm'"),
        (lambda: parse_deployment("prune-l1:1.5"), "expected a fraction in [0, 1)"),
        (lambda: parse_deployment("prune-l1:half"), "expected a pruning ratio"),
        (lambda: parse_deployment("int8-fbgemm")(nn.Sequential(nn.Flatten(), nn.Linear(144, 4))),
         "needs calibration images"),
        (lambda: parse_deployment("fp16:3"), "takes no ':' argument"),
        (lambda: parse_deployment("weight-only:12"), "expected weight bits"),
        (lambda: parse_deployment("int8-qnnpack")(nn.Sequential(_Branchy(), nn.Linear(144, 4)), train_set.x[:8]),
         "cannot be quantized"),
        (lambda: parse_deployment("prune-filters:0.5")(nn.Sequential(nn.Flatten(), nn.Linear(144, 4))),
         "no conv layer"),
    ]
    for call, message in cases:
        with pytest.raises(PoisonlabError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)
    expected = {"int8-fbgemm", "int8-qnnpack", "dynamic-int8", "fp16", "prune-l1", "prune-filters"}
    assert set(DEPLOYMENTS.names()) >= expected
