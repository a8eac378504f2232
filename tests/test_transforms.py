import pytest
import torch

from dlvision.data.transforms import CenterCrop, RandomCropFlip, Standardize, ToFloat, make_augmentation, make_normalizer


def test_standardize_gives_zero_mean_unit_std_per_channel_on_the_fitted_data():
    x = torch.rand(64, 3, 8, 8) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + torch.tensor([0.0, 1.0, -3.0]).view(1, 3, 1, 1)
    norm = Standardize(3).fit(x)
    z = norm(x)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    # reference: torch's own per-channel statistics
    torch.testing.assert_close(norm.mean, x.transpose(0, 1).reshape(3, -1).mean(1))
    assert "mean=(" in norm.describe()


def test_standardize_statistics_live_in_buffers():
    norm = Standardize(3).fit(torch.rand(10, 3, 4, 4))
    assert set(norm.state_dict()) == {"mean", "std"}


def test_to_float_scales_uint8():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
    torch.testing.assert_close(ToFloat()(x), torch.tensor([0.0, 1.0]).view(1, 1, 1, 2))


def reference_crop(x, top, left, size, flip):
    out = x[:, top : top + size, left : left + size]
    return out.flip(-1) if flip else out


def test_random_crop_flip_is_a_real_crop_of_each_image_with_its_own_offset_and_flip():
    torch.manual_seed(0)
    x = torch.arange(200 * 3 * 32 * 32, dtype=torch.float32).view(200, 3, 32, 32)
    aug = RandomCropFlip(28).train()
    out = aug(x)
    assert out.shape == (200, 3, 28, 28)
    offsets, flips = set(), 0
    for img, crop in zip(x, out):
        # recover the offset from the top-left value and check against a plain slicing reference
        flipped = crop[0, 0, 0] > crop[0, 0, -1]
        corner = crop[0, 0, -1] if flipped else crop[0, 0, 0]
        top, left = divmod(int(corner.item()) % 1024, 32)
        torch.testing.assert_close(crop, reference_crop(img, top, left, 28, bool(flipped)))
        offsets.add((top, left))
        flips += int(flipped)
    assert len(offsets) > 10  # per-image randomness, not one offset per batch
    assert 60 < flips < 140  # p = 0.5


def test_random_crop_flip_eval_is_the_center_crop():
    x = torch.rand(4, 3, 32, 32)
    aug = RandomCropFlip(28).eval()
    torch.testing.assert_close(aug(x), x[:, :, 2:30, 2:30])
    torch.testing.assert_close(CenterCrop(28)(x), x[:, :, 2:30, 2:30])


def test_random_crop_works_on_uint8_and_with_padding():
    x = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    out = RandomCropFlip(32, padding=4).train()(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert RandomCropFlip(32, padding=4).eval()(x) is x


def test_unknown_names_fail_with_the_choices():
    with pytest.raises(ValueError, match="unknown augmentation 'spin'.*crop_flip"):
        make_augmentation("spin", 28)
    with pytest.raises(ValueError, match="unknown normalization 'foo'.*standardize"):
        make_normalizer("foo", 3)
