"""Chapter 3, larger transformers: the TimmViT wrapper (tiny timm models, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

from dlvision.cli import run_cli  # noqa: E402
from dlvision.models import TimmViT  # noqa: E402
from dlvision.models.timm_vit import PretrainedWeightsUnavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def test_builds_at_the_data_resolution_with_a_tiling_patch():
    model = TimmViT("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, num_classes=10, model_kwargs=TINY)
    assert model.model.patch_embed.grid_size == (7, 7)
    assert model.model.pos_embed.shape == (1, 50, 32)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert model.num_classes == 10 and model.patch_size == 4


def test_three_channels_at_32():
    model = TimmViT("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3, num_classes=5, model_kwargs=TINY)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_a_patch_that_does_not_tile_fails():
    with pytest.raises(ValueError, match=r"patch_size 16 does not tile the 28x28 image.*top-left 16x16"):
        TimmViT("vit_tiny_patch16_224", img_size=28, patch_size=None, model_kwargs=TINY)


def test_resize_mode_feeds_the_native_size():
    model = TimmViT("vit_tiny_patch16_224", img_size=28, resize=True, in_chans=1, model_kwargs=TINY)
    assert model.model_size == 224 and model.model.patch_embed.grid_size == (14, 14)
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_wrong_input_size_without_resize_fails():
    model = TimmViT("vit_tiny_patch16_224", img_size=28, patch_size=7, model_kwargs=TINY)
    with pytest.raises(ValueError, match="built for 28x28 inputs"):
        model(torch.rand(1, 1, 32, 32))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="timm has no model 'vit_nonexistent_patch3'"):
        TimmViT("vit_nonexistent_patch3")


def test_pretrained_offline_without_a_file_says_how_to_supply_it(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(PretrainedWeightsUnavailable, match=r"(?s)could not be downloaded.*checkpoint_path"):
        TimmViT("vit_tiny_patch16_224", img_size=28, patch_size=7, pretrained=True, model_kwargs=TINY)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint_path .*does not exist"):
        TimmViT("vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "nope.safetensors"), model_kwargs=TINY)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_and_adapts_a_local_checkpoint(tmp_path, suffix):
    """A 'pretrained' RGB model with 16-pixel patches at 32x32 and 1000 classes, loaded into a
    one-channel 28x28 model with 7-pixel patches and 10 classes: timm adapts the weights."""
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, in_chans=3, num_classes=1000, **TINY)
    state = source.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = TimmViT("vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, num_classes=10,
                    checkpoint_path=str(path), model_kwargs=TINY)
    loaded = model.model.state_dict()
    # the transformer itself is loaded unchanged
    for key in ("blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "cls_token", "norm.weight"):
        torch.testing.assert_close(loaded[key], state[key])
    # the patch embedding: resampled to 7x7 and its RGB filters summed for one channel
    from timm.layers import resample_patch_embed

    expected = resample_patch_embed(state["patch_embed.proj.weight"], [7, 7]).sum(dim=1, keepdim=True)
    torch.testing.assert_close(loaded["patch_embed.proj.weight"], expected, rtol=1e-4, atol=1e-5)
    # the positional embedding: resampled from a 2x2 to a 4x4 grid, class token position kept
    assert loaded["pos_embed"].shape == (1, 17, 32)
    torch.testing.assert_close(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0])
    # the head: a new one for 10 classes
    assert loaded["head.weight"].shape == (10, 32)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_tiny_timm_fit_through_the_cli(mnist_dir, tmp_path):
    cli = run_cli([
        "fit", "--config", str(ROOT / "configs/vit_timm.yaml"),
        "--data.data_dir", str(mnist_dir), "--data.val_size", "20", "--data.batch_size", "32",
        "--model.net.init_args.name", "vit_tiny_patch16_224", "--model.net.init_args.patch_size", "7",
        "--model.net.init_args.model_kwargs", '{"embed_dim": 32, "depth": 1, "num_heads": 2}',
        "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ])
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert isinstance(cli.model.net, TimmViT)


def test_benchmark_script_runs_and_prints_the_ratio(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("vit_vs_timm", ROOT / "benchmarks" / "vit_vs_timm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    models = bench.build_pair(16, 7, 1, 2, 2.0)  # raises if the sizes differ
    assert len({sum(p.numel() for p in m.parameters()) for m in models.values()}) == 1
    assert bench.main(["--settings", "course default", "--rounds", "1", "--steps", "1", "--warmup", "1",
                       "--batch-size", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ours/timm" in out and "course default" in out
