"""Pure ``nn.Module`` networks: they know nothing of Lightning and plug into ``dlvision.Classifier``."""

from dlvision.models.cnn import CourseCNN
from dlvision.models.mlp import MLP

__all__ = ["CourseCNN", "MLP"]

from dlvision.models.vit import (  # noqa: E402  chapter 3
    Block,
    FeedForward,
    MultiHeadAttention,
    PatchEmbedding,
    SingleHeadAttention,
    ViT,
    sinusoidal_embedding,
)

__all__ += ["Block", "FeedForward", "MultiHeadAttention", "PatchEmbedding", "SingleHeadAttention", "ViT",
            "sinusoidal_embedding"]
from dlvision.models.timm_vit import TimmViT  # noqa: E402  chapter 3 (timm is imported only when one is built)

__all__ += ["TimmViT"]
from dlvision.models.analysis import FullyConvolutionalCNN, analyse, to_fully_convolutional  # noqa: E402  chapter 2

__all__ += ["FullyConvolutionalCNN", "analyse", "to_fully_convolutional"]
