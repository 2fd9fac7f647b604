"""The one trainer: seeded, in-memory, minibatch Adam with a one-cycle schedule."""

from poisonlab.training.trainer import Recipe, predict, predict_confident, train

__all__ = ["Recipe", "predict", "predict_confident", "train"]
