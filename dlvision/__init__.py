"""dlvision: the basics of deep learning for vision (MLP, CNN, ViT) as a Lightning template."""

from dlvision._startup import collector_paused

with collector_paused():  # torch and Lightning: about 0.6 s faster to import (dlvision/_startup.py)
    from dlvision.tasks import Classifier

__version__ = "0.1.0"
__all__ = ["Classifier", "__version__"]
