"""LightningModules: the training logic, metrics and logging around the pure networks."""

from dlvision.tasks.classification import Classifier
from dlvision.tasks.scratch import ScratchClassifier

__all__ = ["Classifier", "ScratchClassifier"]
