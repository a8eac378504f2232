"""Larger Vision Transformers from timm (the optional extra ``timm``), built for the data at hand.

A timm ViT such as ``vit_small_patch16_224`` expects 224x224 RGB images: given MNIST's 28x28 it
fails with "Input height (28) doesn't match model (224)", because its positional embedding has
one entry per patch of a 14x14 grid (a CNN has no such limit: its convolutions slide over any
size). ``TimmViT`` offers the two ways out of the course comparison:

- ``resize: false`` (the default): build the model at the data's resolution (``img_size``) with a
  ``patch_size`` that tiles it (28x28 with patch 4: 49 tokens). A 16-pixel patch does *not* tile
  28 (timm would see only the top-left 16x16 pixels): that fails here with a clear message.
- ``resize: true``: keep the model's native size (224 for these) and resize every batch to it
  (bilinear) inside ``forward``; 64 times the pixels of 28x28, and as many more tokens.

``pretrained: true`` loads weights from the Hugging Face hub, or from ``checkpoint_path`` (a
``.safetensors``/``.pth``/``.bin`` state dict) when given; timm then adapts them to the new model:
the positional embedding is resampled to the new grid, the patch embedding resampled to the new
patch size and its RGB filters summed for one channel, and the head is dropped when the class
count differs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlvision.models.vit import check_patch_tiles


def import_timm():
    """timm, or an ImportError saying how to install it."""
    try:
        import timm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TimmViT needs timm, an optional extra of dlvision: pip install 'dlvision[timm]' "
            "(or pip install timm)"
        ) from err
    return timm


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but could neither be downloaded nor read from a file."""


class TimmViT(nn.Module):
    """Any timm Vision Transformer (``name``), built for ``img_size`` x ``img_size`` images with
    ``in_chans`` channels and ``num_classes`` classes.

    ``patch_size`` (only without ``resize``) must tile ``img_size``; None keeps the model's own patch
    (which must then tile the image too). ``model_kwargs`` go to ``timm.create_model`` (for example
    ``{embed_dim: 64, depth: 4, num_heads: 4, drop_path_rate: 0.1}``). Pretrained weights come
    from the hub, or from ``checkpoint_path`` if given (no network needed).
    """

    def __init__(
        self,
        name: str = "vit_small_patch16_224",
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 28,
        patch_size: int | None = 4,
        resize: bool = False,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        timm = import_timm()
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:10] if "_" in name else []
            raise ValueError(f"timm has no model {name!r}" + (f"; similar: {close}" if close else ""))
        if checkpoint_path is not None and not pretrained:
            pretrained = True  # a weight file means: load it
        self.name, self.num_classes, self.in_chans = name, num_classes, in_chans
        self.img_size, self.resize = img_size, resize
        kwargs = dict(model_kwargs or {})
        kwargs.update(num_classes=num_classes, in_chans=in_chans)
        if resize:
            default_cfg = timm.models.get_pretrained_cfg(name)
            native = (default_cfg.input_size[-1] if default_cfg is not None else None) or 224
            self.model_size = int(kwargs.get("img_size", native))
        else:
            self.model_size = img_size
            kwargs["img_size"] = img_size
            if patch_size is not None:
                kwargs["patch_size"] = patch_size
        create = dict(pretrained=pretrained, **kwargs)
        if checkpoint_path is not None:
            path = Path(checkpoint_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"checkpoint_path {str(path)!r} does not exist: give the weight file of {name} "
                    f"(model.safetensors or pytorch_model.bin from the Hugging Face hub, or a torch state dict)"
                )
            create["pretrained_cfg_overlay"] = {"file": str(path)}
        # Build first without weights, to check the geometry before any download.
        probe = timm.create_model(name, pretrained=False, **kwargs)
        embed = getattr(probe, "patch_embed", None)
        if embed is not None and not resize:
            patch = int(embed.patch_size[0])
            try:
                check_patch_tiles(img_size, patch)
            except ValueError as err:
                raise ValueError(
                    f"{name}: {err}. timm would cut {img_size // patch}x{img_size // patch} patch(es) and never "
                    f"see the rest of the image (with patch 16 on 28x28: only the top-left 16x16 pixels); set "
                    f"patch_size to a divisor, or resize: true to feed the model its native size"
                ) from None
        if not pretrained:
            self.model = probe
        else:
            del probe
            self.model = self._create_pretrained(timm, name, create, checkpoint_path)
        self.patch_size = int(self.model.patch_embed.patch_size[0]) if embed is not None else None

    @staticmethod
    def _create_pretrained(timm, name: str, create: dict, checkpoint_path: str | None) -> nn.Module:
        try:
            return timm.create_model(name, **create)
        except Exception as err:  # noqa: BLE001 - the hub raises many kinds; all mean "not available"
            if checkpoint_path is not None:
                raise PretrainedWeightsUnavailable(
                    f"could not load the weights of {name} from {checkpoint_path}: {err}"
                ) from err
            cfg = timm.models.get_pretrained_cfg(name)
            hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
            where = (f"https://huggingface.co/{hub} (file model.safetensors)" if hub
                     else "the model's page on the Hugging Face hub")
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise PretrainedWeightsUnavailable(
                f"pretrained weights of {name} could not be downloaded{offline}: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}\nOffline, download them on a machine with "
                f"internet from {where}, copy the file here and pass its path: "
                f"--model.init_args.net.init_args.checkpoint_path path/to/model.safetensors "
                f"(or checkpoint_path: ... in the config); or use pretrained: false to train from scratch"
            ) from err

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize and tuple(x.shape[-2:]) != (self.model_size, self.model_size):
            x = F.interpolate(x, size=(self.model_size, self.model_size), mode="bilinear", align_corners=False)
        elif not self.resize and tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"{self.name} was built for {self.img_size}x{self.img_size} inputs, got {tuple(x.shape[-2:])}: "
                f"set img_size to the data's size, or resize: true"
            )
        return self.model(x)
