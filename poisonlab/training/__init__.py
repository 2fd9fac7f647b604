"""The one trainer: seeded, in-memory, minibatch Adam with a one-cycle schedule."""

from poisonlab.training.trainer import Recipe, predict, train

__all__ = ["Recipe", "predict", "train"]
