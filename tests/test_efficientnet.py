"""EfficientNet-Lite0 fine-tuning: the rebuilt network is the pretrained one, the frozen part stays as pretrained,
and the fine-tuned model saves, loads and quantizes like the built-in ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from poisonlab.compress.quantize import quantize_static
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.models import build_model, construct, load_model, save_model
from poisonlab.models.efficientnet import Frozen, available, lite0_classifier, pretrained_lite0
from poisonlab.training import Recipe, predict, train

pytestmark = pytest.mark.skipif(not available(), reason="needs the optional extra poisonlab[surrogate]")


def photos(size: int) -> torch.Tensor:
    from skimage import data

    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return torch.cat([F.interpolate(torch.tensor(im).permute(2, 0, 1)[None].float() / 255, size=(size, size),
                                    mode="bilinear", antialias=True) for im in images])


def test_the_rebuilt_network_gives_the_packages_imagenet_logits() -> None:
    x = photos(224)
    reference = pretrained_lite0()
    model = lite0_classifier((3, 224, 224), 1000, trainable_blocks=5).eval()
    model[-1].load_state_dict(reference._fc.state_dict())
    with torch.no_grad():
        expected = reference((x * 255 - 127) / 128)
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-4)
    assert got.argmax(1)[1] in range(281, 286)  # skimage's chelsea is a cat: one of ImageNet's five domestic cats


@pytest.fixture(scope="module")
def tiny() -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(48, 3, 32, 32, generator=gen) * 0.2
    y = torch.arange(48) % 3
    x[y == 1, 0] += 0.7  # red, green and blue-ish classes: learnable in a few steps
    x[y == 2, 2] += 0.7
    return ImageSet(x.clamp(0, 1), y, ("grey", "red", "blue"))


def test_fine_tuning_leaves_the_frozen_part_as_pretrained(tiny: ImageSet) -> None:
    model = build_model("efficientnet-lite0", tiny, 0)
    frozen = next(m for m in model if isinstance(m, Frozen))
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    head = model[-1].weight.clone()
    train(model, tiny, Recipe(epochs=8, batch_size=16, lr=3e-3), seed=0, progress=False)
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in before.items()), "weights and BN statistics kept"
    assert not torch.equal(head, model[-1].weight)
    assert (predict(model, tiny.x) == tiny.y).float().mean() > 0.9


def test_a_fine_tuned_model_saves_loads_and_quantizes(tiny: ImageSet, tmp_path: Path) -> None:
    model = train(build_model("efficientnet-lite0-frozen", tiny, 0), tiny, Recipe(epochs=8, batch_size=16),
                  seed=0, progress=False)
    save_model(model, tmp_path / "m.safetensors")
    again = load_model("efficientnet-lite0-frozen", tiny.shape, 3, tmp_path / "m.safetensors")
    assert torch.equal(predict(again, tiny.x), predict(model, tiny.x))
    for backend in ("fbgemm", "qnnpack"):
        int8 = quantize_static(model, backend, tiny.x)  # type: ignore[arg-type]
        with torch.no_grad():
            agree = (int8(tiny.x).argmax(1) == model(tiny.x).argmax(1)).float().mean()
        # measured 1.0 on both; 0.69 (fbgemm) and 0.33 (qnnpack, chance) before the stem's input kept its negative
        # values and qnnpack's ReLU6 got contiguous tensors
        assert agree > 0.9, backend


def test_grey_and_small_images_are_accepted_and_other_channel_counts_refused() -> None:
    assert construct("efficientnet-lite0", (1, 28, 28), 10).eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(PoisonlabError, match="expected 1- or 3-channel images"):
        construct("efficientnet-lite0", (4, 32, 32), 10)
