"""IBD-PSC: amplification by hooks equals amplified parameters; depth choice; PSC; errors on bad settings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.defenses.ibd_psc import IbdPsc, amplifiable, amplified, choose_depths, psc


def _bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def test_hooks_equal_amplified_batch_norm_parameters():
    net = _bn_net()
    x = torch.rand(6, 3, 8, 8)
    layers = amplifiable(net)
    assert layers == [net[1], net[4]]
    with amplified(layers[-1:], 1.5), torch.no_grad():
        hooked = net(x)
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        scaled[4].weight.mul_(1.5)
        scaled[4].bias.mul_(1.5)
        expected = scaled(x)
        plain = net(x)
    torch.testing.assert_close(hooked, expected)
    assert not torch.allclose(plain, expected)  # the hook is gone after the block
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain)


def test_models_without_batch_norm_amplify_convolutions_and_hidden_linears():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(),
                        nn.Linear(8, 3))
    assert amplifiable(net) == [net[0], net[3]]  # not the logits layer
    with pytest.raises(PoisonlabError, match="nothing|no batch norm"):
        amplifiable(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_depths_start_where_benign_error_reaches_xi_and_psc_is_a_confidence():
    net = _bn_net()
    x = torch.rand(64, 3, 8, 8)
    y = net(x).argmax(1)
    chosen = choose_depths(net, x, (y + 1) % 4, n=5, xi=0.5, scale=1.5, batch_size=16)
    assert chosen.depths == (1, 2) and chosen.layers == 2  # xi reached at once; at most as many depths as layers
    never = choose_depths(net, x, y, n=5, xi=1.0, scale=1.0001, batch_size=16)
    assert never.depths == (2,) and never.benign_error < 1.0  # xi never reached: the deepest depth serves
    scores = psc(net, x, chosen, 1.5, batch_size=16)
    assert scores.shape == (64,) and bool(((scores >= 0) & (scores <= 1)).all())
    with amplified(amplifiable(net)[-1:], 1.5), torch.no_grad():
        one = torch.softmax(net(x), 1).gather(1, y[:, None])[:, 0]
    with amplified(amplifiable(net), 1.5), torch.no_grad():
        two = torch.softmax(net(x), 1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(scores, ((one + two) / 2).double())


def test_bad_settings_and_unfitted_filter_are_refused():
    with pytest.raises(PoisonlabError, match="scale"):
        IbdPsc(scale=1.0)
    with pytest.raises(PoisonlabError, match="xi"):
        IbdPsc(xi=0.0)
    with pytest.raises(PoisonlabError, match="false-rejection"):
        IbdPsc(frr=1.0)
    with pytest.raises(PoisonlabError, match="fit"):
        IbdPsc().detect(_bn_net(), torch.rand(2, 3, 8, 8))
    with pytest.raises(PoisonlabError, match="at least 2"):
        IbdPsc().fit(_bn_net(), ImageSet(torch.rand(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), ("a", "b")))
