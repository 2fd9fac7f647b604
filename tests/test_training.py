import pytest
import torch

from poisonlab.core import PoisonlabError
from poisonlab.data import make_synthetic
from poisonlab.models import MODELS, build_model, efficientnet, load_model, save_model
from poisonlab.training import Recipe, predict, train


def _trained(data, seed):
    return train(build_model("small-cnn", data, seed), data, Recipe(epochs=2, batch_size=64), seed, progress=False)


def test_training_is_deterministic_for_a_seed(synthetic):
    a, b, c = _trained(synthetic, 0), _trained(synthetic, 0), _trained(synthetic, 1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a[-1].weight, c[-1].weight)


def test_training_learns_and_normaliser_is_fitted(synthetic):
    model = build_model("badnets-cnn", synthetic, 0)
    assert torch.allclose(model[0].mean.flatten(), synthetic.x.mean(dim=(0, 2, 3)))
    before = (predict(model, synthetic.x) == synthetic.y).float().mean()
    train(model, synthetic, Recipe(epochs=5, batch_size=32), 0, progress=False)
    assert (predict(model, synthetic.x) == synthetic.y).float().mean() > max(0.9, before)


def test_a_diverging_loss_and_a_bad_recipe_are_clear_errors(synthetic):
    model = build_model("small-cnn", synthetic, 0)
    with pytest.raises(PoisonlabError, match="loss became nan"):
        train(model, synthetic, Recipe(epochs=1), 0, loss_fn=lambda m, x, y: m(x).sum() * float("nan"), progress=False)
    with pytest.raises(PoisonlabError, match="epochs: 0; expected an integer in \\[1, 10000\\]"):
        Recipe(epochs=0)


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 12)])
def test_every_model_fits_every_shape(name, channels, size):
    if name.startswith("efficientnet") and not efficientnet.available():
        pytest.skip("needs the optional extra poisonlab[surrogate]")
    data = make_synthetic(20, num_classes=3, size=size, channels=channels)
    assert build_model(name, data, 0)(data.x).shape == (20, 3)


def test_safetensors_round_trip_and_mismatch_errors(synthetic, tmp_path):
    model = _trained(synthetic, 0)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    again = load_model("small-cnn", synthetic.shape, 4, path)
    assert torch.equal(predict(model, synthetic.x), predict(again, synthetic.x))
    as_text = load_model("small-cnn", synthetic.shape, 4, str(path))  # Python callers pass plain strings
    assert torch.equal(predict(model, synthetic.x), predict(as_text, synthetic.x))
    with pytest.raises(PoisonlabError, match="do not fit small-cnn .* 10 classes"):
        load_model("small-cnn", synthetic.shape, 10, path)
    with pytest.raises(PoisonlabError, match="do not fit badnets-cnn"):
        load_model("badnets-cnn", synthetic.shape, 4, path)
    with pytest.raises(PoisonlabError, match="no such weights file"):
        load_model("small-cnn", synthetic.shape, 4, tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(PoisonlabError, match="not a readable safetensors"):
        load_model("small-cnn", synthetic.shape, 4, tmp_path / "bad.safetensors")
