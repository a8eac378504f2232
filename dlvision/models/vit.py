"""The Vision Transformer of chapter 3 (COURSE.md section 3), built from its parts.

Each part is its own small ``nn.Module``: the patch embedding, the MLP (``FeedForward``), one head
of self-attention written out (the didactic version), multi-head self-attention in two forms that
give the same result (written out, or through ``F.scaled_dot_product_attention``, the default),
the pre-norm ``Block`` and the ``ViT`` (class token, sinusoidal or learned positional embedding,
final LayerNorm, linear head on the class token).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"an image size is an int or (height, width), got {size}")
    return size  # type: ignore[return-value]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_patch_tiles(img_size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
    """The (rows, columns) of patches, or a ValueError when ``patch_size`` does not tile the image."""
    height, width = _pair(img_size)
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    if height % patch_size or width % patch_size:
        common = sorted(set(_divisors(height)) & set(_divisors(width)))
        raise ValueError(
            f"patch_size {patch_size} does not tile the {height}x{width} image (the last "
            f"{height % patch_size} rows / {width % patch_size} columns would be dropped): choose a "
            f"patch size dividing both sides, one of {common}"
        )
    return height // patch_size, width // patch_size


def check_heads_divide(width: int, heads: int) -> int:
    """The width of one head, or a ValueError when ``heads`` does not divide ``width``."""
    if width <= 0 or heads <= 0:
        raise ValueError(f"width and heads must be positive, got width={width}, heads={heads}")
    if width % heads:
        raise ValueError(
            f"width {width} is not divisible by heads {heads}: each head gets width/heads dimensions; "
            f"choose heads among {_divisors(width)} or a width that is a multiple of {heads}"
        )
    return width // heads


class PatchEmbedding(nn.Module):
    """Cut the image into ``patch_size`` squares and project each to ``width`` dimensions.

    A convolution with kernel = stride = patch size, reshaped to (batch, tokens, width); the tokens
    are in row-major order over the (rows, columns) grid of patches.
    """

    def __init__(self, img_size: int | tuple[int, int] = 28, patch_size: int = 7, in_channels: int = 1,
                 width: int = 32) -> None:
        super().__init__()
        if in_channels <= 0 or width <= 0:
            raise ValueError(f"in_channels and width must be positive, got {in_channels}, {width}")
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        self.grid_size = check_patch_tiles(self.img_size, patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"expected images (batch, {self.in_channels}, {self.img_size[0]}, {self.img_size[1]}), got "
                f"{tuple(x.shape)}: build the ViT with this img_size and in_channels"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, width, gh, gw) -> (B, gh*gw, width)


class FeedForward(nn.Module):
    """The transformer's MLP: Linear(width, hidden) -> GELU -> Linear(hidden, width)."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SingleHeadAttention(nn.Module):
    """One head of self-attention, written out: Q = XW_q, K = XW_k, V = XW_v,
    softmax(QKᵀ/√d_k)V, then the output projection back to ``width``.

    ``head_dim`` (d_k) defaults to ``width``. The didactic version: ``MultiHeadAttention`` with
    one head computes the same function.
    """

    def __init__(self, width: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim or width
        self.q = nn.Linear(width, self.head_dim)
        self.k = nn.Linear(width, self.head_dim)
        self.v = nn.Linear(width, self.head_dim)
        self.proj = nn.Linear(self.head_dim, width)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(QKᵀ/√d_k): (batch, tokens, tokens), each row sums to 1."""
        q, k = self.q(x), self.k(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attention_weights(x) @ self.v(x))


class MultiHeadAttention(nn.Module):
    """h heads of width d/h, each softmax(QKᵀ·(d/h)^−½)V; the heads concatenated, then W_O.

    ``fused=True`` (the default, for speed) computes the heads with
    ``F.scaled_dot_product_attention``; ``fused=False`` writes the same computation out. Both use
    the same weights (one ``qkv`` projection, then ``proj`` = W_O) and give the same result.
    """

    def __init__(self, width: int, heads: int, fused: bool = True, attn_dropout: float = 0.0,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.head_dim = check_heads_divide(width, heads)
        self.width, self.heads, self.fused = width, heads, fused
        self.scale = self.head_dim ** -0.5
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (B, heads, tokens, head_dim)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention of every head: (batch, heads, tokens, tokens), rows summing to 1."""
        q, k, _ = self._split_heads(x)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self._split_heads(x)
        dropout = self.attn_dropout if self.training else 0.0
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            if dropout:
                attn = F.dropout(attn, dropout)
            out = attn @ v
        out = out.transpose(1, 2).reshape(batch, tokens, self.width)  # concatenate the heads
        return self.proj(out)


class Block(nn.Module):
    """The pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)), hidden = mlp_ratio·width."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, fused: bool = True,
                 dropout: float = 0.0, attn_dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        if hidden <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.norm1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads, fused=fused, attn_dropout=attn_dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = FeedForward(width, hidden, dropout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


def sinusoidal_embedding(positions: int, width: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed positional embedding of "Attention is all you need": (positions, width) with
    PE[p, 2i] = sin(p / base^(2i/width)) and PE[p, 2i+1] = cos(p / base^(2i/width))."""
    position = torch.arange(positions, dtype=torch.float64).unsqueeze(1)
    even = torch.arange(0, width, 2, dtype=torch.float64)
    angle = position / base ** (even / width)  # (positions, ceil(width / 2))
    table = torch.zeros(positions, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : width // 2])
    return table.float()


class ViT(nn.Module):
    """The Vision Transformer of the course: patch embedding, a learnable class token prepended,
    positional embedding added (``sinusoidal`` or ``learned``, over the class token and every
    patch), ``depth`` pre-norm blocks, a final LayerNorm and a linear head on the class token.

    Works for any channel count and any image size that ``patch_size`` tiles (MNIST 28x28 with
    patch 2/4/7/14/28, CIFAR-10 32x32 with 2/4/8/16/32). Course defaults: width 32, patch 7
    (16 tokens + the class token), 2 blocks, 4 heads, mlp_ratio 4.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 28,
        patch_size: int = 7,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        pos_embedding: Literal["sinusoidal", "learned"] = "sinusoidal",
        fused_attention: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes <= 0 or depth <= 0:
            raise ValueError(f"num_classes and depth must be positive, got {num_classes}, {depth}")
        check_heads_divide(width, heads)
        if pos_embedding not in ("sinusoidal", "learned"):
            raise ValueError(f"pos_embedding must be 'sinusoidal' or 'learned', got {pos_embedding!r}")
        self.num_classes, self.width, self.depth, self.heads = num_classes, width, depth, heads
        self.patch_embed = PatchEmbedding(img_size, patch_size, in_channels, width)
        self.grid_size, self.num_patches = self.patch_embed.grid_size, self.patch_embed.num_patches
        self.num_tokens = self.num_patches + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embedding_kind = pos_embedding
        if pos_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, width))
        else:
            self.register_buffer("pos_embed", sinusoidal_embedding(self.num_tokens, width).unsqueeze(0),
                                 persistent=False)
        self.pos_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, fused_attention, dropout, attn_dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal (std 0.02) for the class token and a learned positional embedding; the
        linear layers keep PyTorch's default (uniform, ±1/√fan_in). timm's std 0.02 for every linear
        layer suits widths near 768; at widths 32-64 it starts the attention almost uniform and learns
        far slower (MNIST, course default, 2 epochs of 20k images: 80.4 % val with std 0.02, 92.0 %
        with PyTorch's default)."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every block between F.scaled_dot_product_attention and the written-out form."""
        for block in self.blocks:
            block.attn.fused = fused

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token prepended and the positional embedding added."""
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the blocks and the final LayerNorm: (batch, 1 + patches, width)."""
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, block: int = -1) -> torch.Tensor:
        """How much the class token attends to each patch, per head, in ``block`` (the last by
        default): (batch, heads, grid rows, grid columns), each head's map summing to at most 1
        (the rest goes to the class token itself)."""
        tokens = self.embed(x)
        index = block % self.depth
        for i, layer in enumerate(self.blocks):
            if i == index:
                attn = layer.attn.attention_weights(layer.norm1(tokens))  # (B, heads, T, T)
                return attn[:, :, 0, 1:].reshape(x.shape[0], self.heads, *self.grid_size)
            tokens = layer(tokens)
        raise AssertionError("unreachable")

    def position_similarity(self) -> torch.Tensor:
        """Cosine similarity of the patches' positional embeddings: (patches, patches)."""
        pos = F.normalize(self.pos_embed[0, 1:].detach().float(), dim=-1)
        return pos @ pos.T
