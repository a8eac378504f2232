"""dlvision: the basics of deep learning for vision (MLP, CNN, ViT) as a Lightning template."""

from dlvision.tasks import Classifier

__version__ = "0.1.0"
__all__ = ["Classifier", "__version__"]
