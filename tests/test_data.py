import math
from pathlib import Path

import pytest
import torch

from conftest import make_cifar_canonical, make_image_folder, make_mnist
from dlvision.data import (
    CIFAR10DataModule,
    CirclesDataModule,
    DataFormatError,
    DatasetNotFoundError,
    MNISTDataModule,
    make_circles,
)
from dlvision.data import cifar10 as cifar10_module


# ---------------------------------------------------------------- circles
def test_circles_generator_matches_the_course_statistics():
    x, y = make_circles(4000, seed=3)
    radius = x.norm(dim=1)
    assert y.float().mean().item() == pytest.approx(0.5)
    assert radius[y == 0].mean().item() == pytest.approx(1.0, abs=0.05)  # outer ring
    assert radius[y == 1].mean().item() == pytest.approx(0.4, abs=0.06)  # inner disc
    assert radius[y == 0].std().item() == pytest.approx(0.2, abs=0.03)
    x2, y2 = make_circles(4000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded
    assert not torch.equal(make_circles(4000, seed=4)[0], x)


def test_circles_module_sizes_and_validation_on_test_split():
    dm = CirclesDataModule(n_train=50, n_test=30, val_size=0, batch_size=10)
    dm.setup("fit")
    assert len(dm.train_set) == 50 and len(dm.test_set) == 30 and dm.val_set is dm.test_set
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (10, 2) and x.dtype == torch.float32 and y.dtype == torch.long
    dm = CirclesDataModule(n_train=50, val_size=0.2)
    dm.setup("fit")
    assert len(dm.train_set) == 40 and len(dm.val_set) == 10


def test_circles_mat_file_is_read_with_scipy(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    x, y = make_circles(20, seed=0)
    onehot = torch.nn.functional.one_hot(y, 2).numpy().astype("uint8")
    path = tmp_path / "circles.mat"
    scipy_io.savemat(path, {"Xtrain": x.double().numpy(), "Ytrain": onehot, "Xtest": x[:10].double().numpy(), "Ytest": onehot[:10]})
    dm = CirclesDataModule(mat_path=path, val_size=0)
    dm.setup("fit")
    assert len(dm.train_set) == 20 and len(dm.test_set) == 10
    assert torch.equal(dm.test_set.targets, y[:10])
    torch.testing.assert_close(dm.test_set.inputs, x[:10])


def test_circles_mat_errors_are_clear(tmp_path):
    pytest.importorskip("scipy.io")
    with pytest.raises(DatasetNotFoundError, match="circles .mat file not found at .*nope.mat"):
        CirclesDataModule(mat_path=tmp_path / "nope.mat").setup("fit")
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"this is not a mat file")
    with pytest.raises(DataFormatError, match="could not read"):
        CirclesDataModule(mat_path=bad).setup("fit")


# ---------------------------------------------------------------- MNIST
@pytest.mark.parametrize("variant, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_reads_idx_files_with_torchvision(tmp_path, variant, folder):
    root = make_mnist(tmp_path, name=folder, n_train=100, n_test=40)
    dm = MNISTDataModule(data_dir=root, variant=variant, val_size=20, batch_size=16)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (80, 20, 40)
    assert dm.train_set.inputs.shape[1:] == (1, 28, 28) and dm.train_set.inputs.dtype == torch.uint8
    # the train and validation parts are disjoint and together the whole training file
    all_train = torch.cat([dm.train_set.inputs, dm.val_set.inputs]).flatten(1)
    assert len({tuple(row.tolist()) for row in all_train}) == 100


def test_validation_split_is_seeded():
    a, b, c = (CirclesDataModule(n_train=60, val_size=10, split_seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.val_set.inputs, b.val_set.inputs)
    assert not torch.equal(a.val_set.inputs, c.val_set.inputs)


def test_missing_mnist_says_where_it_looked_and_how_to_provide_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        MNISTDataModule(data_dir=tmp_path / "empty").setup("fit")
    message = str(err.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "--data.download true" in message and "unpack.sh" in message


def test_corrupt_mnist_file_is_reported(tmp_path):
    root = make_mnist(tmp_path)
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataFormatError, match="corrupt"):
        MNISTDataModule(data_dir=root).setup("fit")


def test_mismatched_mnist_images_and_labels_are_reported(tmp_path):
    root = make_mnist(tmp_path, n_train=50)
    other = make_mnist(tmp_path / "other", n_train=30)
    (root / "MNIST/raw/train-labels-idx1-ubyte").write_bytes((other / "MNIST/raw/train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataFormatError, match="50 inputs but 30 labels|do not match"):
        MNISTDataModule(data_dir=root, val_size=0).setup("fit")


def test_failed_download_offline_is_explained(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DatasetNotFoundError, match="download .*failed.*unpack.sh"):
        MNISTDataModule(data_dir=tmp_path, download=True).prepare_data()


# ---------------------------------------------------------------- CIFAR-10
def test_cifar_canonical_files_read_by_torchvision(cifar_dir):
    dm = CIFAR10DataModule(data_dir=cifar_dir, check_integrity=False, val_size=10)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (90, 10, 30)
    assert dm.train_set.inputs.shape[1:] == (3, 32, 32) and dm.train_set.inputs.dtype == torch.uint8
    assert dm.layout()[0] == "canonical"


def test_cifar_canonical_md5_check_is_on_by_default(cifar_dir):
    with pytest.raises(DataFormatError, match="check_integrity false"):
        CIFAR10DataModule(data_dir=cifar_dir).setup("fit")


def test_cifar_corrupt_pickle_is_reported(cifar_dir):
    (cifar_dir / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataFormatError):
        CIFAR10DataModule(data_dir=cifar_dir, check_integrity=False).setup("fit")


def test_cifar_image_folder_is_detected_decoded_and_matches_the_files(cifar_folder):
    dm = CIFAR10DataModule(data_dir=cifar_folder, val_size=0)
    dm.setup("fit")
    assert dm.layout() == ("folder", cifar_folder / "cifar10-jpg")
    assert len(dm.train_set) == 60 and len(dm.test_set) == 30
    assert torch.bincount(dm.train_set.targets).tolist() == [6] * 10
    from torchvision.io import read_image

    first = read_image(str(cifar_folder / "cifar10-jpg" / "test" / "airplane" / "0000.png"))
    assert torch.equal(dm.test_set.inputs[0], first)


def test_cifar_image_folder_is_decoded_once_then_read_from_the_cache(cifar_folder, monkeypatch):
    CIFAR10DataModule(data_dir=cifar_folder, val_size=0).setup("fit")
    assert (cifar_folder / "cifar10-jpg" / ".dlvision-train-uint8.pt").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cifar10_module, "decode_folder", no_decoding)
    dm = CIFAR10DataModule(data_dir=cifar_folder, val_size=0)
    dm.setup("fit")
    assert len(dm.train_set) == 60


def test_cifar_cache_is_refreshed_when_the_files_change(cifar_folder):
    CIFAR10DataModule(data_dir=cifar_folder, val_size=0).setup("fit")
    make_image_folder(cifar_folder / "cifar10-jpg", n_train_per_class=7)
    dm = CIFAR10DataModule(data_dir=cifar_folder, val_size=0)
    dm.setup("fit")
    assert len(dm.train_set) == 70


def test_cifar_jpeg_folder_given_directly(tmp_path):
    root = make_image_folder(tmp_path / "jpg", n_train_per_class=2, n_test_per_class=1, fmt="jpg")
    dm = CIFAR10DataModule(data_dir=root, val_size=0)
    dm.setup("fit")
    assert dm.train_set.inputs.shape == (20, 3, 32, 32)


def test_cifar_missing_lists_the_paths_and_both_ways_to_provide_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        CIFAR10DataModule(data_dir=tmp_path / "none").setup("fit")
    message = str(err.value)
    assert str(tmp_path / "none" / "cifar-10-batches-py") in message
    assert "--data.download true" in message and "train/<class>" in message


def test_cifar_folder_with_wrong_image_size_or_corrupt_file_is_reported(tmp_path):
    root = make_image_folder(tmp_path / "small", n_train_per_class=1, n_test_per_class=1, size=16)
    with pytest.raises(DataFormatError, match="32x32"):
        CIFAR10DataModule(data_dir=root, val_size=0, cache=False).setup("fit")
    root = make_image_folder(tmp_path / "corrupt", n_train_per_class=1, n_test_per_class=1)
    (root / "train" / "cat" / "0000.png").write_bytes(b"broken")
    with pytest.raises(DataFormatError, match="cannot decode .*cat/0000.png"):
        CIFAR10DataModule(data_dir=root, val_size=0, cache=False).setup("fit")


def test_cifar_folder_with_mismatched_classes_is_reported(tmp_path):
    root = make_image_folder(tmp_path / "f", n_train_per_class=1, n_test_per_class=1)
    (root / "test" / "truck").rename(root / "test" / "lorry")
    with pytest.raises(DataFormatError, match="differ from the training classes"):
        CIFAR10DataModule(data_dir=root, val_size=0, cache=False).setup("fit")


# ---------------------------------------------------------------- settings and batches
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"val_size": -1}, "val_size must be"),
        ({"val_size": 1.5}, "neither a whole count nor a fraction"),
        ({"num_workers": -2}, "num_workers"),
        ({"normalize": "whiten-ish"}, "unknown normalization"),
        ({"augment": ["spin"]}, "unknown augmentation"),
    ],
)
def test_nonsense_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CIFAR10DataModule(**kwargs)


def test_validation_split_larger_than_training_set_is_rejected(cifar_dir):
    dm = CIFAR10DataModule(data_dir=cifar_dir, check_integrity=False, val_size=5000)
    with pytest.raises(ValueError, match="asks for 5000 validation samples but the training set has only 100"):
        dm.setup("fit")


def test_loaders_give_whole_batches_and_shuffle_only_training(cifar_dir):
    dm = CIFAR10DataModule(data_dir=cifar_dir, check_integrity=False, val_size=10, batch_size=32, eval_batch_size=64)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert [len(y) for _, y in train] == [32, 32, 26]
    assert sorted(torch.cat([y for _, y in train]).tolist()) == sorted(dm.train_set.targets.tolist())
    x, y = next(iter(dm.test_dataloader()))
    assert len(y) == 30 and torch.equal(x, dm.test_set.inputs)


class FakeTrainer:
    def __init__(self, training: bool):
        self.training = training


def test_batches_are_normalized_and_augmented_after_transfer(cifar_dir):
    dm = CIFAR10DataModule(data_dir=cifar_dir, check_integrity=False, val_size=10, normalize="standardize",
                           augment=["crop_flip"])
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    dm.trainer = FakeTrainer(training=True)
    xt, yt = dm.on_after_batch_transfer((x, y), 0)
    assert xt.shape == (32, 3, 28, 28) and xt.dtype == torch.float32 and torch.equal(yt, y)
    dm.trainer = FakeTrainer(training=False)
    xe, _ = dm.on_after_batch_transfer((x, y), 0)
    norm = dm.transform[1]
    expected = (x.float() / 255 - norm.mean.view(1, 3, 1, 1)) / norm.std.view(1, 3, 1, 1)
    torch.testing.assert_close(xe, expected[:, :, 2:30, 2:30])
    # the statistics come from the training part only (not validation, not test)
    train_float = dm.train_set.inputs.float() / 255
    torch.testing.assert_close(norm.mean, train_float.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)


def test_normalizer_statistics_are_saved_and_restored(cifar_dir):
    dm = CIFAR10DataModule(data_dir=cifar_dir, check_integrity=False, val_size=10, normalize="standardize")
    dm.setup("fit")
    state = dm.state_dict()
    fresh = CIFAR10DataModule(data_dir=cifar_dir, check_integrity=False, val_size=10, normalize="standardize")
    state["transform"]["1.mean"] = state["transform"]["1.mean"] + 1.0
    fresh.load_state_dict(state)
    fresh.setup("test")
    torch.testing.assert_close(fresh.transform[1].mean, dm.transform[1].mean + 1.0)


def test_cifar_cache_is_found_however_the_data_dir_is_spelled(cifar_folder, monkeypatch):
    CIFAR10DataModule(data_dir=cifar_folder, val_size=0).setup("fit")
    monkeypatch.chdir(cifar_folder.parent)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cifar10_module, "decode_folder", no_decoding)
    dm = CIFAR10DataModule(data_dir=Path(cifar_folder.name), val_size=0)  # relative this time
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 60


def test_folder_signature_is_the_cache_key_of_before_and_follows_the_files(tmp_path, monkeypatch):
    import hashlib
    import os

    root = make_image_folder(tmp_path / "imgs") / "train"

    def reference(split_dir):  # the former formula: caches written by it must stay valid
        digest = hashlib.sha1()
        for dirpath, dirnames, filenames in os.walk(split_dir):
            dirnames.sort()
            for name in sorted(filenames):
                stat = os.stat(os.path.join(dirpath, name))
                relative = os.path.relpath(os.path.join(dirpath, name), split_dir)
                digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    signature = cifar10_module.folder_signature(root)
    assert signature == reference(root)
    monkeypatch.chdir(tmp_path)
    assert cifar10_module.folder_signature(Path("imgs/train")) == signature  # however the path is spelled
    (root / "loose.txt").write_text("a file at the top")  # files directly in the folder count too
    with_file = cifar10_module.folder_signature(root)
    assert with_file != signature and with_file == reference(root)
    image = next(root.glob("*/*.png"))
    os.utime(image, ns=(1, 1))
    assert cifar10_module.folder_signature(root) not in (signature, with_file)
