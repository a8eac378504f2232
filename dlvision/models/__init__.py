"""Pure ``nn.Module`` networks: they know nothing of Lightning and plug into ``dlvision.Classifier``."""

from dlvision.models.cnn import CourseCNN
from dlvision.models.mlp import MLP

__all__ = ["CourseCNN", "MLP"]
