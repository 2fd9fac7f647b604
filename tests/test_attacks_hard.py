"""WaNet (warping trigger, noise mode) and SIG (clean-label sinusoid): triggers, poisoning, learned backdoors, CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from poisonlab.attacks.sig import SIG
from poisonlab.attacks.wanet import WaNet
from poisonlab.cli.app import app
from poisonlab.core import ImageSet, PoisonlabError, stamped
from poisonlab.data import make_synthetic
from poisonlab.metrics import evaluate
from poisonlab.models import build_model
from poisonlab.training import Recipe, train
from poisonlab.triggers import Patch, parse_trigger
from poisonlab.triggers.sinusoid import Sinusoid
from poisonlab.triggers.warp import Warp


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _identity(height: int, width: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack((cols, rows), -1)[None]


@pytest.mark.parametrize("trigger", [Warp(), Sinusoid(frequency=3)])
def test_triggers_are_pure_and_seeded(synthetic: ImageSet, trigger: Warp | Sinusoid) -> None:
    x = synthetic.x[:50]
    before = x.clone()
    out = trigger(x, None)
    assert torch.equal(x, before) and torch.equal(trigger(x, None), out)
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= float(out.min()) and float(out.max()) <= 1
    assert (out != x).flatten(1).any(1).all()
    if isinstance(trigger, Warp):
        assert torch.equal(Warp(seed=0)(x, None), out) and not torch.equal(Warp(seed=1)(x, None), out)


def test_warp_moves_pixels_by_the_field_and_keeps_the_image_close(synthetic: ImageSet) -> None:
    warp = Warp(k=4, strength=0.5)
    ramp = torch.linspace(0, 1, 14).expand(2, 3, 10, 14)  # intensity = column: a warp reads off where it sampled
    sampled = (warp.grid(10, 14)[0, ..., 0] + 1) / 2
    assert torch.allclose(warp(ramp, None), sampled.expand(2, 3, 10, 14), atol=1e-6)
    shift = (warp.grid(28, 28) - _identity(28, 28)) * 27 / 2  # in pixels
    assert 0.05 < float(shift.abs().mean()) and float(shift.abs().max()) < 1.0, "sub-pixel, as in the paper"
    x = synthetic.x
    diff = warp(x, None) - x
    psnr = -10 * math.log10(float((diff**2).mean()))
    assert float(diff.abs().mean()) < 0.06 and psnr > 20, "changes under the images' own pixel noise (0.15)"
    rgb = torch.rand(3, 3, 9, 11, generator=_gen())
    out = warp(rgb, None)
    assert out.shape == rgb.shape
    assert torch.allclose(warp(rgb[:, 1:2], None), out[:, 1:2]), "every channel moves alike"


def test_sinusoid_adds_the_paper_signal_along_columns() -> None:
    x = torch.full((2, 3, 5, 28), 0.5)
    out = Sinusoid(delta=20 / 255, frequency=6)(x, None)
    j = torch.arange(28)
    expected = 0.5 + 20 / 255 * torch.sin(2 * math.pi * j * 6 / 28)
    assert torch.allclose(out, expected.expand_as(x), atol=1e-6)
    assert torch.equal(Sinusoid(delta=0.9)(torch.ones(1, 1, 4, 28), None).max(), torch.tensor(1.0)), "clamped"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("warp:strength=0", r"warp strength 0: expected a number > 0"),
        ("warp:strength=-1", "warp strength -1: expected a number > 0"),
        ("warp:k=1", "warp k 1: expected a control grid of at least 2 x 2"),
        ("warp:grid_rescale=1.5", r"warp grid_rescale 1.5: expected a value in \(0, 1\]"),
        ("warp:seed=-1", r"warp seed: -1; expected an integer in \[0, 2\*\*63\)"),
        ("sinusoid:delta=0", r"sinusoid delta 0: expected an amplitude in \(0, 1\]"),
        ("sinusoid:delta=1.5", r"sinusoid delta 1.5: expected an amplitude in \(0, 1\]"),
        ("sinusoid:frequency=0", "sinusoid frequency 0: expected a number of cycles > 0"),
    ],
)
def test_trigger_parameters_are_refused_in_one_line(spec: str, message: str) -> None:
    with pytest.raises(PoisonlabError, match=message) as error:
        parse_trigger(spec)
    assert "\n" not in str(error.value)


def test_triggers_refuse_images_they_cannot_apply_to() -> None:
    with pytest.raises(PoisonlabError, match="warp k 16: expected at most the image's smaller side, 12"):
        Warp(k=16)(torch.zeros(1, 1, 12, 20), None)
    with pytest.raises(PoisonlabError, match="sinusoid frequency 6: expected fewer than 6 cycles"):
        Sinusoid(frequency=6)(torch.zeros(1, 1, 12, 12), None)  # at f = m/2 the signal is zero at every column


def test_wanet_noise_mode_keeps_true_labels_and_is_not_ground_truth(synthetic: ImageSet) -> None:
    attack = WaNet(target=1, rate=0.05, cross_ratio=2)
    p = attack.poison(synthetic, _gen())
    idx, noise = p.indices, p.noise_indices
    assert len(idx) == 30 and len(noise) == 60 and not torch.isin(noise, idx).any()
    assert (synthetic.y[idx] != 1).all() and (p.data.y[idx] == 1).all()
    assert torch.equal(p.data.x[idx], attack.trigger(synthetic.x[idx], None)), "poison carries the exact warp"
    assert torch.equal(p.data.y[noise], synthetic.y[noise]), "noise-mode samples keep their true labels"
    exact = attack.trigger(synthetic.x[noise], None)
    assert (p.data.x[noise] != synthetic.x[noise]).flatten(1).any(1).all()
    assert (p.data.x[noise] != exact).flatten(1).any(1).all(), "noise mode: the warp plus noise, not the warp"
    rest = torch.ones(len(synthetic), dtype=torch.bool)
    rest[idx], rest[noise] = False, False
    assert torch.equal(p.data.x[rest], synthetic.x[rest]) and torch.equal(p.data.y[rest], synthetic.y[rest])
    again = attack.poison(synthetic, _gen())
    assert torch.equal(again.data.x, p.data.x) and torch.equal(again.noise_indices, noise)
    assert len(WaNet(target=1, rate=0.05, cross_ratio=0).poison(synthetic, _gen()).noise_indices) == 0


def test_wanet_all_to_all_reuses_badnets_target_map(synthetic: ImageSet) -> None:
    p = WaNet(mode="all-to-all", count=20).poison(synthetic, _gen())
    assert torch.equal(p.data.y[p.indices], (synthetic.y[p.indices] + 1) % 4)
    assert torch.equal(p.triggered(synthetic).y, (synthetic.y + 1) % 4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: WaNet(trigger=Patch()), "wanet trigger .*: expected a warp trigger"),
        (lambda: WaNet(cross_ratio=-1), "wanet cross_ratio -1: expected a number >= 0"),
        (lambda: WaNet(target=1, rate=0.5, cross_ratio=2).poison(make_synthetic(100), _gen()),
         "wanet cross_ratio 2: 100 noise-mode samples exceed the 50 samples left unpoisoned"),
        (lambda: SIG(train_delta=0), r"sig train_delta 0: expected an amplitude in \(0, 1\]"),
        (lambda: SIG(test_delta=2), r"sig test_delta 2: expected an amplitude in \(0, 1\]"),
        (lambda: SIG(frequency=-1), "sig frequency -1: expected a number of cycles > 0"),
        (lambda: SIG(rate=0.5).poison(make_synthetic(100), _gen()),
         "sig poison budget 50 exceeds the 25 images of target class 0"),
        (lambda: SIG(target=4).poison(make_synthetic(100), _gen()), r"sig target 4: expected a class in \[0, 3\]"),
    ],
)
def test_attack_parameters_are_refused_in_one_line(make: Callable[[], object], message: str) -> None:
    with pytest.raises(PoisonlabError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


def test_sig_is_clean_label_and_touches_only_target_images(synthetic: ImageSet) -> None:
    attack = SIG(target=2, count=40, train_delta=20 / 255, test_delta=40 / 255, frequency=3)
    p = attack.poison(synthetic, _gen())
    assert torch.equal(p.data.y, synthetic.y), "no label changes"
    assert len(p.indices) == 40 and (synthetic.y[p.indices] == 2).all()
    changed = (p.data.x != synthetic.x).flatten(1).any(1)
    assert torch.equal(torch.nonzero(changed).flatten(), p.indices)
    assert torch.equal(p.data.x[p.indices], Sinusoid(20 / 255, 3)(synthetic.x[p.indices], None))
    trig = p.triggered(synthetic)
    assert (trig.y == 2).all() and torch.equal(trig.x, Sinusoid(40 / 255, 3)(synthetic.x, None))
    share = SIG(target=2, rate=0.05, frequency=3).poison(synthetic, _gen())
    assert len(share.indices) == 30, "rate is a share of the dataset"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A 12 px net's ops are too small to split: one thread trains faster and does not stall on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit(data: ImageSet, epochs: int) -> torch.nn.Module:
    return train(build_model("small-cnn", data, 0), data, Recipe(epochs=epochs, batch_size=32, lr=5e-3), 0,
                 progress=False)


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_wanet_backdoor_answers_its_own_warp_only() -> None:
    full = make_synthetic(1000, num_classes=4, size=12, seed=0, noise=0.05)
    data, test = full.subset(slice(0, 600)), full.subset(slice(600, None))
    # s = 1 (paper: 0.5 on 28 px): a 12 px image and 20 epochs leave the net less to learn the warp from
    p = WaNet(trigger=Warp(strength=1.0), target=0, rate=0.1, cross_ratio=2).poison(data, _gen())
    backdoored, clean = _fit(p.data, 20), _fit(data, 20)
    bd, cl = evaluate(backdoored, test, p.triggered(test)), evaluate(clean, test, p.triggered(test))
    assert bd["clean_accuracy"] > 0.95 and cl["clean_accuracy"] > 0.95
    assert bd["attack_success_rate"] > 0.9 and cl["attack_success_rate"] < 0.1
    other = stamped(test, Warp(strength=1.0, seed=1), p.target_map)
    assert evaluate(backdoored, test, other)["attack_success_rate"] < 0.1, "another warp is no trigger"


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_sig_backdoor_is_learned_without_a_label_change() -> None:
    # Clean-label poison works when the target class's own features are no easier to learn than the signal:
    # low-contrast prototypes under pixel noise, half the target class signed.
    proto = make_synthetic(1000, num_classes=4, size=12, seed=0, noise=0)
    noise = 0.15 * torch.randn(proto.x.shape, generator=_gen(1))
    full = ImageSet((0.5 + 0.15 * (proto.x - 0.5) + noise).clamp(0, 1), proto.y, proto.classes)
    data, test = full.subset(slice(0, 600)), full.subset(slice(600, None))
    half = int((data.y == 0).sum()) // 2
    p = SIG(target=0, count=half, train_delta=0.1, test_delta=0.3, frequency=2).poison(data, _gen())
    backdoored, clean = _fit(p.data, 15), _fit(data, 15)
    bd, cl = evaluate(backdoored, test, p.triggered(test)), evaluate(clean, test, p.triggered(test))
    assert bd["clean_accuracy"] > cl["clean_accuracy"] - 0.05 and cl["clean_accuracy"] > 0.75
    assert bd["attack_success_rate"] > 0.7 and cl["attack_success_rate"] < 0.1


@pytest.mark.parametrize("attack", ['name = "wanet"\ntarget = 1\nrate = 0.05\ntrigger = "warp:strength=0.75"\n',
                                    'name = "sig"\ntarget = 1\nrate = 0.1\nfrequency = 3\ntest_delta = 0.2\n'])
def test_a_config_runs_the_attack_through_the_pipeline(tmp_path: Path, attack: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text('dataset = "synthetic"\nmodel = "small-cnn"\ntrain_size = 400\ntest_size = 100\n'
                      f"[training]\nepochs = 1\n[attack]\n{attack}")
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["metrics"]["poisoned_samples"] == 20 if "wanet" in attack else 40
    assert 0 <= body["metrics"]["backdoored"]["attack_success_rate"] <= 1
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'trigger = "warp:strength=0.75"' in saved if "wanet" in attack else "test_delta = 0.2" in saved
