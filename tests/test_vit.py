"""Chapter 3: the ViT's parts, its configs, the pictures callback and a tiny fit through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dlvision.callbacks import ViTPictures
from dlvision.callbacks.vit_pictures import attention_grid, position_similarity_grid, similarity_matrix_image
from dlvision.cli import run_cli
from dlvision.models import (
    Block,
    FeedForward,
    MultiHeadAttention,
    PatchEmbedding,
    SingleHeadAttention,
    ViT,
    sinusoidal_embedding,
)

ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIGS = sorted((ROOT / "configs" / "vit").rglob("*.yaml"))


# ----- parts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("channels", "size", "patch", "tokens"), [(1, 28, 7, 16), (1, 28, 4, 49), (1, 28, 28, 1), (3, 32, 4, 64), (3, 32, 16, 4)]
)
def test_patch_embedding_shape_and_token_order(channels, size, patch, tokens):
    embed = PatchEmbedding(size, patch, channels, width=12)
    x = torch.randn(2, channels, size, size)
    out = embed(x)
    assert out.shape == (2, tokens, 12)
    assert embed.num_patches == tokens
    # token 1 (row 0, column 1) is the projection of exactly the pixels of that patch
    if tokens > 1:
        piece = x[:, :, :patch, patch : 2 * patch]
        expected = torch.einsum("bchw,ochw->bo", piece, embed.proj.weight) + embed.proj.bias
        torch.testing.assert_close(out[:, 1], expected, rtol=1e-4, atol=1e-5)


def test_patch_that_does_not_tile_fails_with_divisors():
    with pytest.raises(ValueError, match=r"patch_size 5 does not tile the 28x28 image.*\[1, 2, 4, 7, 14, 28\]"):
        ViT(img_size=28, patch_size=5)
    with pytest.raises(ValueError, match="does not tile the 32x32"):
        ViT(img_size=32, patch_size=7, in_channels=3)


def test_heads_that_do_not_divide_the_width_fail():
    with pytest.raises(ValueError, match=r"width 30 is not divisible by heads 4.*\[1, 2, 3, 5, 6, 10, 15, 30\]"):
        ViT(width=30, heads=4)
    with pytest.raises(ValueError, match="not divisible by heads 3"):
        MultiHeadAttention(32, 3)


def test_wrong_input_size_fails_clearly():
    with pytest.raises(ValueError, match=r"expected images \(batch, 1, 28, 28\), got \(2, 3, 32, 32\)"):
        ViT()(torch.randn(2, 3, 32, 32))


def test_feed_forward_is_linear_gelu_linear():
    mlp = FeedForward(8, 32)
    x = torch.randn(3, 5, 8)
    assert mlp.fc1.out_features == 32 and mlp.fc2.out_features == 8
    expected = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x)))
    torch.testing.assert_close(mlp(x), expected)


def test_single_head_attention_is_the_formula():
    torch.manual_seed(0)
    attn = SingleHeadAttention(16, head_dim=8)
    x = torch.randn(2, 5, 16)
    q, k, v = attn.q(x), attn.k(x), attn.v(x)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(attn(x), attn.proj(weights @ v))
    torch.testing.assert_close(attn.attention_weights(x).sum(-1), torch.ones(2, 5))


def test_one_head_of_multi_head_equals_single_head():
    torch.manual_seed(0)
    single, multi = SingleHeadAttention(16), MultiHeadAttention(16, heads=1, fused=False)
    with torch.no_grad():
        multi.qkv.weight.copy_(torch.cat([single.q.weight, single.k.weight, single.v.weight]))
        multi.qkv.bias.copy_(torch.cat([single.q.bias, single.k.bias, single.v.bias]))
        multi.proj.load_state_dict(single.proj.state_dict())
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(multi(x), single(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("width", "heads", "tokens"), [(32, 4, 17), (64, 16, 50), (12, 3, 2)])
def test_written_out_and_fused_attention_are_equal(width, heads, tokens):
    torch.manual_seed(1)
    fused = MultiHeadAttention(width, heads, fused=True)
    written = MultiHeadAttention(width, heads, fused=False)
    written.load_state_dict(fused.state_dict())
    x = torch.randn(4, tokens, width, requires_grad=True)
    out_fused, out_written = fused(x), written(x)
    torch.testing.assert_close(out_fused, out_written, rtol=1e-5, atol=1e-6)
    grad_fused = torch.autograd.grad(out_fused.square().sum(), x)[0]
    grad_written = torch.autograd.grad(out_written.square().sum(), x)[0]
    torch.testing.assert_close(grad_fused, grad_written, rtol=1e-4, atol=1e-5)
    # the written-out heads: each head is softmax(q k^T / sqrt(width/heads)) v on its own slice
    q, k, v = fused.qkv(x).chunk(3, dim=-1)
    h = width // heads
    heads_out = [torch.softmax(q[..., i * h:(i + 1) * h] @ k[..., i * h:(i + 1) * h].transpose(1, 2) / math.sqrt(h), -1)
                 @ v[..., i * h:(i + 1) * h] for i in range(heads)]
    torch.testing.assert_close(fused.proj(torch.cat(heads_out, -1)), out_fused, rtol=1e-5, atol=1e-6)


def test_whole_vit_same_output_with_both_attentions():
    torch.manual_seed(2)
    model = ViT(patch_size=4, width=32, depth=2, heads=4)
    x = torch.rand(3, 1, 28, 28)
    fused = model(x)
    model.set_fused_attention(False)
    assert not model.blocks[0].attn.fused
    torch.testing.assert_close(model(x), fused, rtol=1e-5, atol=1e-5)


def test_block_is_pre_norm_with_residuals():
    torch.manual_seed(3)
    block = Block(16, 4, mlp_ratio=2)
    assert block.mlp.fc1.out_features == 32
    x = torch.randn(2, 5, 16)
    y = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), y + block.mlp(block.norm2(y)))


@pytest.mark.parametrize("width", [32, 7])
def test_sinusoidal_embedding_formula(width):
    table = sinusoidal_embedding(20, width)
    assert table.shape == (20, width)
    for pos in (0, 1, 5, 19):
        for i in range(width):
            angle = pos / 10000 ** ((i - i % 2) / width)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert table[pos, i].item() == pytest.approx(expected, abs=1e-6)


# ----- the ViT --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("channels", "size", "patch"), [(1, 28, 7), (1, 28, 2), (3, 32, 4), (3, 32, 8)])
def test_vit_output_shape(channels, size, patch):
    model = ViT(img_size=size, patch_size=patch, in_channels=channels, num_classes=7, width=16, depth=1, heads=2)
    assert model(torch.rand(5, channels, size, size)).shape == (5, 7)
    assert model.num_tokens == (size // patch) ** 2 + 1


def test_course_default_size():
    model = ViT()  # width 32, patch 7, 2 blocks, 4 heads, mlp_ratio 4
    assert (model.width, model.depth, model.heads, model.num_tokens) == (32, 2, 4, 17)
    assert model.blocks[0].mlp.fc1.out_features == 128
    assert sum(p.numel() for p in model.parameters()) == 27434


def test_class_token_path():
    torch.manual_seed(4)
    model = ViT(width=16, depth=2, heads=2).eval()
    x = torch.rand(2, 1, 28, 28)
    features = model.forward_features(x)
    assert features.shape == (2, 17, 16)
    torch.testing.assert_close(model(x), model.head(features[:, 0]))
    # the class token is the first token: with the prepended token and position 0 in place
    embedded = model.embed(x)
    torch.testing.assert_close(embedded[:, 0], (model.cls_token[0, 0] + model.pos_embed[0, 0]).expand(2, -1))
    # it is learned: its gradient is not zero
    model(x).sum().backward()
    assert model.cls_token.grad.abs().sum() > 0


def test_positional_embedding_options():
    sinus = ViT(width=16, heads=2, pos_embedding="sinusoidal")
    learned = ViT(width=16, heads=2, pos_embedding="learned")
    assert "pos_embed" not in dict(sinus.named_parameters()) and "pos_embed" not in sinus.state_dict()
    torch.testing.assert_close(sinus.pos_embed[0], sinusoidal_embedding(17, 16))
    assert isinstance(learned.pos_embed, nn.Parameter) and learned.pos_embed.shape == (1, 17, 16)
    with pytest.raises(ValueError, match="pos_embedding must be 'sinusoidal' or 'learned'"):
        ViT(pos_embedding="rotary")


def test_attention_maps_and_position_similarity():
    torch.manual_seed(5)
    model = ViT(patch_size=4, width=16, depth=2, heads=4)
    x = torch.rand(3, 1, 28, 28)
    maps = model.attention_maps(x)
    assert maps.shape == (3, 4, 7, 7)
    # equal to the last block's attention of the class token, recomputed by hand
    tokens = model.blocks[0](model.embed(x))
    full = model.blocks[1].attn.attention_weights(model.blocks[1].norm1(tokens))
    torch.testing.assert_close(maps, full[:, :, 0, 1:].reshape(3, 4, 7, 7))
    assert (maps.sum(dim=(-1, -2)) <= 1 + 1e-5).all()
    similarity = model.position_similarity()
    assert similarity.shape == (49, 49)
    torch.testing.assert_close(similarity.diagonal(), torch.ones(49))


# ----- pictures --------------------------------------------------------------------------------------
def test_picture_helpers_shapes():
    grid = attention_grid(torch.rand(3, 1, 28, 28), torch.rand(3, 4, 7, 7))
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1
    # 3 rows of 5 tiles (image + 4 heads) of 28 pixels with 2 pixels padding
    assert grid.shape[1:] == (2 + 3 * 30, 2 + 5 * 30)
    assert attention_grid(torch.rand(1, 1, 28, 28), torch.rand(1, 2, 4, 4), scale=4).shape[1:] == (2 + 114, 2 + 3 * 114)
    sim = torch.eye(16) * 2 - 1
    assert position_similarity_grid(sim, (4, 4)).shape[0] == 3
    assert similarity_matrix_image(sim).shape == (3, 256, 256)


def test_callback_rejects_bad_settings():
    with pytest.raises(ValueError, match="must be positive"):
        ViTPictures(num_images=0)


# ----- configs and the CLI ----------------------------------------------------------------------------
def test_course_config_builds_the_default_vit():
    cli = run_cli(["--config", str(ROOT / "configs/vit.yaml")], run=False)
    net = cli.model.net
    assert isinstance(net, ViT)
    assert (net.width, net.patch_embed.patch_size, net.depth, net.heads) == (32, 7, 2, 4)
    assert cli.datamodule.batch_size == 128 and cli.trainer.max_epochs == 10
    assert cli.datamodule.val_size == 0  # all 60,000 training images, as the course
    assert cli.trainer.gradient_clip_val == 1.0
    assert cli.datamodule.augment == ["pad_crop"]  # shifts of up to one pixel, no flip
    assert cli.datamodule.augment_options == {"pad_crop": {"padding": 1, "flip_p": 0.0}}
    scheduler = cli.model.scheduler_factory(torch.optim.Adam(cli.model.parameters(), lr=1e-3))
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == cli.trainer.max_epochs and cli.model.scheduler_interval == "epoch"


@pytest.mark.parametrize("config", STUDY_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_study_configs_stack_on_the_course_config(config):
    cli = run_cli(["--config", str(ROOT / "configs/vit.yaml"), "--config", str(config)], run=False)
    net = cli.model.net
    study, value = config.parent.name, config.stem
    if config.stem == "fashion":
        assert cli.datamodule.variant == "fashion_mnist"
        return
    if config.stem == "constant_lr":
        assert cli.model.scheduler_factory is None and net.width == 32 and cli.trainer.gradient_clip_val is None
        assert cli.datamodule.augment == [] and cli.datamodule.augment_options == {}
        assert cli.model.configure_optimizers().param_groups[0]["lr"] == 1e-3
        return
    attribute = {"width": net.width, "depth": net.depth, "heads": net.heads,
                 "patch": net.patch_embed.patch_size, "mlp_ratio": net.blocks[0].mlp.fc1.out_features / net.width}
    assert attribute[study] == float(value)
    assert cli.trainer.logger.name == f"vit_{study}{value}"


def test_best_config_builds():
    cli = run_cli(["--config", str(ROOT / "configs/vit_best.yaml")], run=False)
    assert isinstance(cli.model.net, ViT)
    assert cli.trainer.max_epochs <= 20


def test_tiny_fit_through_the_cli_logs_pictures(mnist_dir, tmp_path):
    cli = run_cli([
        "fit", "--config", str(ROOT / "configs/vit.yaml"),
        "--data.data_dir", str(mnist_dir), "--data.val_size", "20", "--data.batch_size", "32",
        "--model.net.init_args.width", "16", "--model.net.init_args.heads", "2",
        "--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+", "dlvision.callbacks.ViTPictures", "--trainer.callbacks.every_n_epochs", "1",
    ])
    metrics = cli.trainer.callback_metrics
    assert {"train/loss", "val/acc"} <= set(metrics)
    assert torch.isfinite(metrics["train/loss"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(cli.trainer.logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {"inputs", "attention/class_token", "position/similarity", "position/similarity_matrix"} <= images
