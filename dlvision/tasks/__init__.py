"""LightningModules: the training logic, metrics and logging around the pure networks."""

from dlvision.tasks.classification import Classifier

__all__ = ["Classifier"]
