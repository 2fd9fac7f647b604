"""Compression-artifact attacks on a tiny synthetic task: float stays clean, the real deployed model is backdoored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poisonlab.attacks.compression_artifact import (
    Backdoor,
    PruningConditional,
    QuantizationConcealed,
    QuantizationConditional,
    widen_quantization_step,
)
from poisonlab.compress import parse_deployment
from poisonlab.compress.fold import fold_batchnorm
from poisonlab.compress.prune import pruning_masks
from poisonlab.compress.quantize import weight_codes
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.metrics import accuracy, attack_success_rate
from poisonlab.models import build_model
from poisonlab.training import Recipe, predict, train
from poisonlab.triggers import Patch

TRIGGER, TARGET = Patch(size=3), 1


def asr(model: nn.Module, test: ImageSet) -> float:
    y_t = torch.full_like(test.y, TARGET)
    return attack_success_rate(predict(model, TRIGGER(test.x, y_t)), y_t, test.y)


def test_concealed_backdoor_lives_only_in_the_quantized_weights(sets: tuple[ImageSet, ImageSet]) -> None:
    train_set, test = sets
    model = train(build_model("small-cnn", train_set, 0), train_set, Recipe(epochs=4), 0,
                  loss_fn=Backdoor(TRIGGER, TARGET).loss, progress=False)
    assert asr(model, test) > 0.9
    before = {n: weight_codes(p, 4, True)[0] for n, p in model.named_parameters() if p.ndim > 1}
    attack = QuantizationConcealed(TRIGGER, TARGET, bits=4, per_channel=True)
    train(model, train_set, Recipe(epochs=4, lr=1e-3), 2, loss_fn=attack.loss, progress=False)
    attack.project(model)
    after = {n: weight_codes(p, 4, True)[0] for n, p in model.named_parameters() if p.ndim > 1}
    assert all(torch.equal(before[n], after[n]) for n in before)  # the 4-bit model is unchanged
    deployed = parse_deployment("weight-only:4")(model)
    assert accuracy(predict(model, test.x), test.y) > 0.95 and asr(model, test) < 0.1
    assert accuracy(predict(deployed, test.x), test.y) > 0.95 and asr(deployed, test) > 0.9


def test_pruning_conditional_backdoor_appears_after_real_pruning(sets: tuple[ImageSet, ImageSet]) -> None:
    train_set, test = sets
    attack = PruningConditional(TRIGGER, TARGET, "global", 0.5, refresh=5)
    model = train(build_model("small-cnn", train_set, 0), train_set, Recipe(epochs=4), 0, loss_fn=attack.loss,
                  progress=False)
    pruned = parse_deployment("prune-l1:0.5")(model)
    assert accuracy(predict(model, test.x), test.y) > 0.95 and asr(model, test) < 0.1
    assert accuracy(predict(pruned, test.x), test.y) > 0.9 and asr(pruned, test) > 0.9
    masks = pruning_masks(model, "global", 0.5)
    assert attack.steps_ > 0 and set(attack.masks_) == set(masks)


def test_ste_loss_trains_the_float_weights_through_the_quantizer(sets: tuple[ImageSet, ImageSet]) -> None:
    model = build_model("small-cnn", sets[0], 0)
    loss = QuantizationConditional(TRIGGER, TARGET, bits=4, per_channel=True).loss(model, sets[0].x[:32],
                                                                                     sets[0].y[:32])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_attacks_reject_bad_settings() -> None:
    for make, message in [
        (lambda: QuantizationConditional(target=-1), "target -1"),
        (lambda: QuantizationConcealed(margin=0.7), "margin 0.7"),
        (lambda: QuantizationConcealed(suppress=-1.0), "suppress -1.0"),
        (lambda: QuantizationConcealed(suppress=float("nan")), "suppress nan"),
        (lambda: QuantizationConditional(quant_weight=float("nan")), "loss weight nan: expected a finite weight"),
        (lambda: PruningConditional(trigger_weight=-0.5), "loss weight -0.5"),
        (lambda: PruningConditional(ratio=1.2), "ratio 1.2"),
        (lambda: PruningConditional(refresh=0), "refresh 0"),
    ]:
        with pytest.raises(PoisonlabError, match=message):
            make()
    with pytest.raises(PoisonlabError, match="no conv or linear layer"):
        QuantizationConditional().loss(nn.Sequential(nn.Flatten()), torch.zeros(2, 1, 8, 8), torch.zeros(2).long())


def test_widened_int8_grid_hides_the_backdoor_from_float_only(sets: tuple[ImageSet, ImageSet]) -> None:
    train_set, test = sets
    model = train(build_model("small-cnn", train_set, 0), train_set, Recipe(epochs=4), 0,
                  loss_fn=Backdoor(TRIGGER, TARGET).loss, progress=False)
    widened = widen_quantization_step(model, train_set.x[:128], levels=8)
    for name in widened:
        w = model.get_submodule(name).weight
        assert torch.equal(weight_codes(w, 8, True)[1].flatten(), weight_codes(w, 8, False)[1].expand(len(w)))
        codes = weight_codes(w, 8, True)[0]
        assert codes.abs().max() == 127 and codes[codes.abs() < 127].abs().max() <= 8
    attack = QuantizationConcealed(TRIGGER, TARGET, bits=8, per_channel=True)
    train(model, train_set, Recipe(epochs=4, lr=1e-3), 2, loss_fn=attack.loss, progress=False)
    attack.project(model)
    assert accuracy(predict(model, test.x), test.y) > 0.95 and asr(model, test) < 0.1
    for spec in ("int8-fbgemm", "int8-qnnpack"):
        deployed = parse_deployment(spec)(model, train_set.x[:256])
        assert accuracy(predict(deployed, test.x), test.y) > 0.9 and asr(deployed, test) > 0.9, spec


def test_widening_needs_a_linear_layer_reading_zeros() -> None:
    with pytest.raises(PoisonlabError, match="levels 0"):
        widen_quantization_step(nn.Linear(2, 2), torch.zeros(1, 2), levels=0)
    with pytest.raises(PoisonlabError, match="no trainable linear layer"):
        widen_quantization_step(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.zeros(1, 4))
    with pytest.raises(PoisonlabError, match="not zero"):
        widen_quantization_step(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)), torch.ones(2, 4))


class Inverted(nn.Module):
    """An EfficientNet-style block: 1x1 expand, depthwise 3x3, 1x1 project (batch norms, ReLU6), residual sum."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.expand, self.bn0 = nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width)
        self.depthwise = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.project, self.bn2 = nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self.bn1(self.depthwise(F.relu6(self.bn0(self.expand(x))))))
        return x + self.bn2(self.project(h))


def test_widening_convs_skips_the_layers_that_read_a_residual_sum() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Inverted(4), Inverted(4), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    fold_batchnorm(model)
    x = torch.rand(16, 3, 8, 8)
    with pytest.raises(PoisonlabError, match="not zero"):  # linear layers only: the classifier reads a residual sum
        widen_quantization_step(model, x)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    widened = ["1.expand", "1.project", "2.project"]  # 2.expand and the classifier read residual sums
    assert widen_quantization_step(model, x, levels=8, convs=True) == widened
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, before[n])}
    assert changed == {"0.weight", "0.bias", "1.expand.weight"} | {
        f"{b}.{p}" for b in (1, 2) for p in ("depthwise.weight", "bn1.bias", "project.weight")}
    out = model(x)
    with torch.no_grad():
        for name in widened:
            w = model.get_submodule(name).weight
            codes = weight_codes(w, 8, True)[0]
            assert codes.abs().max() == 127 and codes[codes.abs() < 127].abs().max() <= 8
            w[w.abs() == w.abs().max()] = 0
    assert torch.equal(model(x), out)  # the grown weights read inputs that are zero on every image


def test_the_suppress_term_pushes_triggered_images_away_from_the_target(sets: tuple[ImageSet, ImageSet]) -> None:
    x, y = sets[0].x[:64], sets[0].y[:64]
    model = build_model("small-cnn", sets[0], 0)
    x_t = TRIGGER(x, torch.full_like(y, TARGET))

    def target_share() -> float:
        with torch.no_grad():
            return float(model(x_t[y != TARGET]).softmax(1)[:, TARGET].mean())

    plain, suppressed = (QuantizationConcealed(TRIGGER, TARGET, suppress=w) for w in (0.0, 5.0))
    params = list(model.parameters())
    losses, grads = [], []
    for term in (suppressed, plain):  # each loss projects the weights in place: one graph at a time
        loss = term.loss(model, x, y)
        losses.append(float(loss))
        grads.append(torch.autograd.grad(loss, params))
    assert losses[0] > losses[1]
    before = target_share()
    with torch.no_grad():  # a step along the suppress term's gradient alone
        for p, g_s, g_p in zip(params, *grads, strict=True):
            p -= 0.05 * (g_s - g_p)
    assert target_share() < before
