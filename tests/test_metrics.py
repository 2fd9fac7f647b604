import math

import torch

from poisonlab.metrics import accuracy, attack_success_rate, per_class_asr


def test_accuracy_and_asr_on_hand_made_cases():
    true = torch.tensor([0, 1, 2, 8, 8, 3])
    target = torch.full_like(true, 8)
    pred = torch.tensor([8, 8, 5, 8, 1, 3])
    assert accuracy(pred, true) == 2 / 6
    # the two true 8s do not count, whatever they are predicted as: 2 of the 4 others hit 8
    assert attack_success_rate(pred, target, true) == 0.5
    assert per_class_asr(pred, target, true, 10) == [1.0, 1.0, 0.0, 0.0, None, None, None, None, None, None]


def test_all_to_all_asr_and_empty_input():
    true = torch.tensor([0, 1, 2, 3])
    target = (true + 1) % 4
    pred = torch.tensor([1, 2, 2, 0])
    assert attack_success_rate(pred, target, true) == 0.75
    assert per_class_asr(pred, target, true, 4) == [1.0, 1.0, 0.0, 1.0]
    assert math.isnan(accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)))
