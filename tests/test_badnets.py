import pytest
import torch

from poisonlab.attacks import BadNets
from poisonlab.core import PoisonlabError
from poisonlab.data import make_synthetic
from poisonlab.metrics import evaluate
from poisonlab.models import build_model
from poisonlab.training import Recipe, train
from poisonlab.triggers import Patch


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_all_to_one_poisons_exactly_rate_of_non_target_samples(synthetic):
    attack = BadNets(trigger=Patch(size=2), target=1, rate=0.05)
    p = attack.poison(synthetic, _gen())
    assert len(p.indices) == 30 and p.indices.unique().numel() == 30
    assert torch.equal(p.indices, p.indices.sort().values)
    assert (synthetic.y[p.indices] != 1).all() and (p.data.y[p.indices] == 1).all()
    untouched = torch.ones(len(synthetic), dtype=torch.bool)
    untouched[p.indices] = False
    assert torch.equal(p.data.x[untouched], synthetic.x[untouched])
    assert torch.equal(p.data.y[untouched], synthetic.y[untouched])
    assert (p.data.x[p.indices][..., 9:11, 9:11] == 1).all()
    assert torch.equal(p.data.x[p.indices][..., :9, :], synthetic.x[p.indices][..., :9, :])


def test_all_to_all_count_and_determinism(synthetic):
    attack = BadNets(mode="all-to-all", count=17)
    a, b = attack.poison(synthetic, _gen(3)), attack.poison(synthetic, _gen(3))
    assert len(a.indices) == 17 and torch.equal(a.indices, b.indices) and torch.equal(a.data.x, b.data.x)
    assert torch.equal(a.data.y[a.indices], (synthetic.y[a.indices] + 1) % 4)
    assert not torch.equal(a.indices, attack.poison(synthetic, _gen(4)).indices)


def test_triggered_test_set_is_aligned(synthetic):
    p = BadNets(target=2, rate=0.1).poison(synthetic, _gen())
    trig = p.triggered(synthetic)
    assert len(trig) == len(synthetic) and (trig.y == 2).all() and (trig.x[..., 8:11, 8:11] == 1).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0.0}, r"expected a fraction in \(0, 1\)"),
        ({"rate": 1.0}, "fraction"),
        ({"count": 0}, "at least 1"),
        ({"count": 10_000}, "exceeds the"),
        ({"target": 7}, r"class in \[0, 3\]"),
        ({"rate": 0.0001}, "poisons no sample"),
        ({"mode": "one-to-one"}, "all-to-one or all-to-all"),
    ],
)
def test_bad_budgets_and_targets(synthetic, kwargs, message):
    with pytest.raises(PoisonlabError, match=message):
        BadNets(**{"target": 1, **kwargs}).poison(synthetic, _gen())


def test_a_tiny_backdoor_is_learned_and_the_clean_model_ignores_the_trigger():
    full = make_synthetic(1000, num_classes=4, size=12, seed=0)
    data, test = full.subset(slice(0, 600)), full.subset(slice(600, 1000))
    p = BadNets(trigger=Patch(size=3), target=0, rate=0.1).poison(data, _gen())
    recipe = Recipe(epochs=15, batch_size=32, lr=5e-3)
    clean = train(build_model("small-cnn", data, 0), data, recipe, 0, progress=False)
    backdoored = train(build_model("small-cnn", p.data, 0), p.data, recipe, 0, progress=False)
    bd, cl = evaluate(backdoored, test, p.triggered(test)), evaluate(clean, test, p.triggered(test))
    assert bd["clean_accuracy"] > 0.9 and cl["clean_accuracy"] > 0.9
    assert bd["attack_success_rate"] > 0.9
    assert cl["attack_success_rate"] < 0.3
