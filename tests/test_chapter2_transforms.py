"""Chapter 2: the normalizations and augmentations of the CNN study, against direct references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlvision.data import CIFAR10DataModule
from dlvision.data.transforms import (
    ChannelsLast,
    GlobalContrastNormalize,
    LpNormalize,
    MinMaxScale,
    PaddedCropFlip,
    RandomErasing,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandomRotation,
    TestTimeBlur,
    Whitening,
    blur,
    covariance_eigh,
    gaussian_kernels,
    make_augmentation,
    make_normalizer,
)


def correlated_images(n: int = 3000, shape=(3, 4, 4), seed: int = 0) -> torch.Tensor:
    """Images whose pixels are strongly correlated (a random mixing of independent sources)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    sources = rng.normal(size=(n, d)) * np.geomspace(3.0, 0.05, d)  # variances from 9 to 0.0025
    mixing, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a random rotation: every pixel mixes all sources
    x = sources @ mixing.T + rng.uniform(0, 1, size=d)
    return torch.from_numpy(x.reshape(n, *shape)).float()


def numpy_reference(x: torch.Tensor, eps: float):
    flat = x.reshape(len(x), -1).double().numpy()
    mean = flat.mean(0)
    cov = np.cov(flat, rowvar=False)
    s, u = np.linalg.eigh(cov)
    zca = u @ np.diag(1 / np.sqrt(s + eps)) @ u.T
    pca = np.diag(1 / np.sqrt(s + eps)) @ u.T
    return flat, mean, cov, s, zca, pca


def test_covariance_eigh_matches_numpy_in_float64():
    x = correlated_images()
    flat, mean, cov, s, _, _ = numpy_reference(x, 1e-3)
    m, eigenvalues, eigenvectors = covariance_eigh(x.reshape(len(x), -1), chunk=700)  # several chunks
    np.testing.assert_allclose(m.numpy(), mean, rtol=0, atol=1e-6)
    rebuilt = (eigenvectors * eigenvalues) @ eigenvectors.T
    np.testing.assert_allclose(rebuilt.numpy(), cov, rtol=0, atol=1e-5 * np.abs(cov).max())
    np.testing.assert_allclose(eigenvalues.numpy(), np.clip(s, 0, None), rtol=1e-4, atol=1e-6)


def test_zca_whitened_training_data_has_identity_covariance_and_matches_numpy():
    x = correlated_images()
    eps = 1e-5
    flat, mean, cov, s, zca, _ = numpy_reference(x, eps)
    norm = make_normalizer("zca", 3, eps=eps).fit(x)
    np.testing.assert_allclose(norm.matrix.double().numpy(), zca, rtol=1e-3, atol=1e-3 * np.abs(zca).max())
    z = norm(x).reshape(len(x), -1).double().numpy()
    assert norm(x).shape == x.shape
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    # identity up to eps: the eigen-directions keep s / (s + eps) of their variance
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(z.shape[1]), atol=5e-3)
    # ZCA is symmetric (it rotates back), and the numpy reference gives the same outputs
    torch.testing.assert_close(norm.matrix, norm.matrix.T, atol=1e-4, rtol=0)
    np.testing.assert_allclose(z, (flat - mean) @ zca.T, rtol=0, atol=2e-3)


def test_zca_eps_shrinks_the_small_directions_exactly_as_predicted():
    x = correlated_images()
    eps = 0.02
    flat, mean, cov, s, _, _ = numpy_reference(x, eps)
    z = make_normalizer("zca", 3, eps=eps).fit(x)(x).reshape(len(x), -1).double().numpy()
    _, u = np.linalg.eigh(cov)
    # in the eigenbasis the whitened covariance is diag(s / (s + eps)), far from 1 for s << eps
    np.testing.assert_allclose(np.diag(u.T @ np.cov(z, rowvar=False) @ u), s / (s + eps), atol=5e-3)
    assert (s / (s + eps)).min() < 0.5  # the test data does have directions below eps


def test_pca_whitening_decorrelates_into_the_principal_axes():
    x = correlated_images()
    eps = 1e-5
    flat, mean, cov, s, _, pca = numpy_reference(x, eps)
    norm = make_normalizer("pca", 3, eps=eps).fit(x)
    z = norm(x).reshape(len(x), -1).double().numpy()
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(z.shape[1]), atol=5e-3)
    # same axes as numpy up to the sign of each eigenvector
    reference = (flat - mean) @ pca.T
    signs = np.sign((z * reference).sum(0))
    np.testing.assert_allclose(z * signs, reference, rtol=0, atol=2e-3)
    assert "pca" in norm.describe() and "eps=1e-05" in norm.describe()


def test_whitening_is_fitted_on_the_given_split_and_keeps_its_statistics_in_buffers():
    x = correlated_images(500)
    norm = Whitening(3, mode="zca", eps=1e-2).fit(x)
    assert set(norm.state_dict()) == {"mean", "matrix"}
    assert norm.matrix.shape == (48, 48) and norm.matrix.dtype == torch.float32
    fresh = Whitening(3, mode="zca", eps=1e-2)  # unfitted: empty buffers take the checkpoint's shapes
    with pytest.raises(RuntimeError, match="before fit"):
        fresh(x)
    fresh.load_state_dict(norm.state_dict())
    torch.testing.assert_close(fresh(x[:10]), norm(x[:10]))
    with pytest.raises(ValueError, match="fitted on images of 48 values"):
        norm(torch.zeros(2, 3, 5, 5))


def test_whitening_fit_is_cached_on_disk_and_reused_for_another_eps(tmp_path):
    x = correlated_images(800)
    first = Whitening(3, mode="zca", eps=1e-2, cache_dir=tmp_path).fit(x)
    assert not first.cache_hit and len(list(tmp_path.glob(".dlvision-whitening-*.pt"))) == 1
    second = Whitening(3, mode="zca", eps=1e-2, cache_dir=tmp_path).fit(x)
    assert second.cache_hit
    torch.testing.assert_close(second.matrix, first.matrix)
    other_eps = Whitening(3, mode="pca", eps=0.5, cache_dir=tmp_path).fit(x)
    assert other_eps.cache_hit
    torch.testing.assert_close(other_eps.matrix, Whitening(3, mode="pca", eps=0.5).fit(x).matrix)
    # other data: another cache entry, not a stale hit
    third = Whitening(3, mode="zca", eps=1e-2, cache_dir=tmp_path).fit(x + 1)
    assert not third.cache_hit and len(list(tmp_path.glob(".dlvision-whitening-*.pt"))) == 2


@pytest.mark.parametrize("eps", [0, -1e-3, float("nan")])
def test_whitening_rejects_eps_that_is_not_positive(eps):
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        make_normalizer("zca", 3, eps=eps)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        CIFAR10DataModule(normalize="pca", zca_eps=eps)


def test_gcn_gives_every_image_zero_mean_and_unit_std():
    x = correlated_images(50)
    z = GlobalContrastNormalize(3).fit(x)(x)
    flat = x.reshape(50, -1).double().numpy()
    reference = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True)
    np.testing.assert_allclose(z.reshape(50, -1).numpy(), reference, atol=1e-4)
    # a flat image does not divide by zero
    assert torch.isfinite(GlobalContrastNormalize(3)(torch.ones(1, 3, 4, 4))).all()


def test_l1_and_l2_give_every_image_a_unit_norm():
    x = correlated_images(20)
    for name, p in (("l1", 1), ("l2", 2)):
        z = make_normalizer(name, 3).fit(x)(x)
        assert isinstance(make_normalizer(name, 3), LpNormalize)
        torch.testing.assert_close(z.flatten(1).norm(p=p, dim=1), torch.ones(20))
        torch.testing.assert_close(z * x.flatten(1).norm(p=p, dim=1).view(-1, 1, 1, 1), x)


def test_minmax_maps_the_training_split_onto_zero_one_per_channel():
    x = correlated_images(200)
    norm = make_normalizer("minmax", 3).fit(x)
    assert isinstance(norm, MinMaxScale) and set(norm.state_dict()) == {"low", "high"}
    z = norm(x)
    torch.testing.assert_close(z.amin(dim=(0, 2, 3)), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.amax(dim=(0, 2, 3)), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(norm.low, x.transpose(0, 1).reshape(3, -1).min(1).values)


def test_unknown_normalization_and_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="unknown normalization 'whiten'.*zca"):
        make_normalizer("whiten", 3)
    with pytest.raises(ValueError, match="bad options.*gcn"):
        make_normalizer("gcn", 3, colour=2)


# ----- augmentations --------------------------------------------------------------------------------


def test_random_erasing_erases_one_rectangle_per_chosen_image_within_the_area_bounds():
    torch.manual_seed(0)
    x = torch.randn(400, 3, 32, 32) + 10  # no pixel is 0 before erasing
    aug = RandomErasing(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)).train()
    out = aug(x)
    erased = out == 0
    assert (erased.all(dim=1) == erased.any(dim=1)).all()  # all channels of a pixel together
    mask = erased[:, 0]
    chosen = mask.flatten(1).any(1)
    assert 150 < int(chosen.sum()) < 250  # p = 0.5, one draw per image
    areas = []
    for m in mask[chosen]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert int(m.sum()) == int(h * w)  # a filled rectangle
        areas.append(float(h * w) / 1024)
    assert 0.01 < min(areas) and max(areas) < 0.40 and len({round(a, 3) for a in areas}) > 20
    torch.testing.assert_close(out[~chosen], x[~chosen])
    assert aug.eval()(x) is x


def test_random_rotation_rotates_each_image_by_its_own_angle():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16).expand(64, 3, 16, 16).contiguous()
    out = RandomRotation(30).train()(x)
    assert out.shape == x.shape
    assert len({round(float(o.sum()), 3) for o in out}) > 30  # per-image angles
    # a rotation by 90 degrees is an exact permutation of a square image: compare with torch.rot90
    image = torch.rand(2, 3, 8, 8)
    rotated = RandomRotation.rotate(image, torch.full((2,), math.pi / 2))
    torch.testing.assert_close(rotated, torch.rot90(image, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(RandomRotation.rotate(image, torch.zeros(2)), image, atol=1e-5, rtol=0)
    assert RandomRotation(30).eval()(x) is x
    with pytest.raises(ValueError, match="degrees in"):
        RandomRotation(400)


def test_gaussian_blur_matches_torchvision_per_image():
    from torchvision.transforms.functional import gaussian_blur

    x = torch.rand(3, 3, 16, 16)
    sigmas = torch.tensor([0.5, 1.0, 2.0])
    out = blur(x, sigmas, 7)
    for image, result, sigma in zip(x, out, sigmas):
        torch.testing.assert_close(result, gaussian_blur(image, [7, 7], [float(sigma)] * 2), atol=1e-5, rtol=0)
    kernels = gaussian_kernels(torch.tensor([0.0, 1.0]), 5)
    torch.testing.assert_close(kernels.sum(1), torch.ones(2))
    torch.testing.assert_close(blur(x, torch.zeros(3), 5), x)  # sigma 0: unchanged


def test_random_blur_blurs_about_p_of_the_images_in_training_only():
    torch.manual_seed(0)
    x = torch.rand(200, 3, 16, 16)
    out = RandomGaussianBlur(p=0.5, sigma=(0.5, 1.5)).train()(x)
    changed = (out - x).flatten(1).abs().amax(1) > 1e-4
    assert 70 < int(changed.sum()) < 130
    assert RandomGaussianBlur().eval()(x) is x


def test_test_time_blur_blurs_evaluation_images_only_unless_asked():
    x = torch.rand(4, 3, 16, 16)
    aug = make_augmentation("test_blur", 28, sigma=1.0)
    assert isinstance(aug, TestTimeBlur)
    assert aug.train()(x) is x
    torch.testing.assert_close(aug.eval()(x), blur(x, torch.ones(4), aug.kernel_size))
    both = make_augmentation("test_blur", 28, sigma=1.0, train=True).train()
    torch.testing.assert_close(both(x), blur(x, torch.ones(4), aug.kernel_size))


def test_padded_crop_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.arange(100 * 32 * 32, dtype=torch.float32).view(100, 1, 32, 32) + 1
    out = PaddedCropFlip(4, flip_p=0.0).train()(x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    shifts = set()
    for image, crop in zip(padded, out):
        matches = [(t, l) for t in range(9) for l in range(9) if torch.equal(image[:, t : t + 32, l : l + 32], crop)]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 30
    assert PaddedCropFlip(4).eval()(x) is x


def test_flip_and_channels_last():
    torch.manual_seed(0)
    x = torch.rand(200, 3, 8, 8)
    out = RandomHorizontalFlip(0.5).train()(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert 70 < int(flipped.sum()) < 130 and torch.equal(out[~flipped], x[~flipped])
    cl = ChannelsLast()(x)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)


def test_augmentation_options_and_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown augmentation 'cutmix'.*erase"):
        make_augmentation("cutmix", 28)
    with pytest.raises(ValueError, match="bad options.*'rotate'"):
        make_augmentation("rotate", 28, angle=3)
    with pytest.raises(ValueError, match="erase needs p in"):
        make_augmentation("erase", 28, p=2.0)
    with pytest.raises(ValueError, match="unknown augmentation 'spin'"):
        CIFAR10DataModule(augment=["crop_flip", "spin"])
    with pytest.raises(ValueError, match=r"augment_options for \['rotate'\]"):
        CIFAR10DataModule(augment=["crop_flip"], augment_options={"rotate": {"degrees": 5}})


def test_data_module_whitens_and_augments_on_the_batch_and_checkpoints_the_fit(cifar_dir):
    dm = CIFAR10DataModule(cifar_dir, check_integrity=False, val_size=10, normalize="zca", zca_eps=0.1,
                           augment=["crop_flip", "erase", "rotate", "blur"],
                           augment_options={"erase": {"p": 1.0}, "rotate": {"degrees": 10}})
    dm.setup("fit")
    assert list(cifar_dir.glob(".dlvision-whitening-*.pt"))  # the fit is cached next to the data
    whitening = dm.transform[1]
    assert isinstance(whitening, Whitening) and whitening.eps == 0.1
    # fitted on the 90 training images only (not on validation or test)
    train = dm.train_set.inputs.float() / 255
    torch.testing.assert_close(whitening.mean, train.reshape(len(train), -1).mean(0))
    x, _ = next(iter(dm.train_dataloader()))
    dm.transform.train()
    augmented = dm.apply_transform(x)
    assert augmented.shape == (len(x), 3, 28, 28)
    dm.transform.eval()
    evaluated = dm.apply_transform(x)
    torch.testing.assert_close(evaluated, dm.apply_transform(x))  # deterministic in eval mode
    # a checkpointed data module restores the fitted whitening without refitting
    restored = CIFAR10DataModule(cifar_dir, check_integrity=False, val_size=10, normalize="zca", zca_eps=0.1, augment=["crop_flip"])
    restored.load_state_dict(dm.state_dict())
    restored.setup("test")
    restored.transform.eval()
    torch.testing.assert_close(restored.apply_transform(x), evaluated)


def test_covariance_of_uint8_images_is_exact_through_int8_products():
    from dlvision.data.transforms import _integer_gram, uint8_levels

    torch.manual_seed(0)
    images = torch.randint(0, 256, (1001, 3, 4, 4), dtype=torch.uint8)  # 1001 rows: padded to a multiple of 8
    images[:, 1] = images[:, 0] // 2 + 40  # correlated channels
    x = images.float().div_(255)
    q = uint8_levels(x)
    assert q is not None and torch.equal(q, images)
    assert uint8_levels(x + 1e-3) is None and uint8_levels(x.double()) is None
    assert _integer_gram(q.reshape(1001, -1)) is not None  # the int8 path is the one under test
    mean, eigenvalues, eigenvectors = covariance_eigh(x.reshape(1001, -1))
    flat = images.reshape(1001, -1).double().numpy() / 255
    np.testing.assert_allclose(mean.numpy(), flat.mean(0), rtol=0, atol=1e-12)
    rebuilt = (eigenvectors * eigenvalues) @ eigenvectors.T
    np.testing.assert_allclose(rebuilt.numpy(), np.cov(flat, rowvar=False), rtol=0, atol=1e-12)
