"""Lightning callbacks of dlvision (pictures logged to TensorBoard and the like)."""

from dlvision.callbacks.decision_boundary import DecisionBoundary
from dlvision.callbacks.vit_pictures import ViTPictures  # noqa: F401  chapter 3
