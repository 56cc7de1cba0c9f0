"""Tests of mbakt_tf.data: IDX files, Fashion-MNIST, TFDS (mocked), synthetic data, pipelines.

Tiny generated files and mocked TFDS only: no network, no real datasets.
"""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from mbakt_tf import data
from mbakt_tf.data import fashion_mnist, pipeline, synthetic, tfds_source

NUM_TRAIN, NUM_TEST = 50, 20


def batches(ds):
    """All batches of `ds` as a list of numpy (images, labels) pairs."""
    return [(x.numpy(), y.numpy()) for x, y in ds]


def stacked(ds):
    pairs = batches(ds)
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def write_fashion_files(directory, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=0):
    """Four tiny Fashion-MNIST-style IDX .gz files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", num_train), ("test", num_test)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    os.makedirs(directory, exist_ok=True)
    for key, filename in fashion_mnist.FILES.items():
        data.write_idx(os.path.join(directory, filename), arrays[key])
    return arrays


@pytest.fixture
def fashion_dir(tmp_path):
    directory = str(tmp_path / "fashion")
    return directory, write_fashion_files(directory)


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("filename", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-7, 0, 70000], dtype=np.int32),
        np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    ],
    ids=["uint8", "int32", "float32"],
)
def test_idx_round_trip(tmp_path, filename, array):
    path = tmp_path / filename
    data.write_idx(path, array)
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == filename.endswith(".gz")
    result = data.read_idx(path)
    assert result.shape == array.shape and result.dtype == array.dtype
    np.testing.assert_array_equal(result, array)
    result[...] = 0  # writable


def test_idx_corrupt_files_name_file_and_problem(tmp_path):
    data.write_idx(tmp_path / "ok-idx1-ubyte", np.arange(10, dtype=np.uint8))
    raw = (tmp_path / "ok-idx1-ubyte").read_bytes()
    cases = {
        "magic-idx1-ubyte": (b"\x01\x02" + raw[2:], "magic number"),
        "short-idx1-ubyte": (raw[:-3], "truncated IDX data"),
        "long-idx1-ubyte": (raw + b"\x00", "unexpected bytes"),
        "notgzip-idx1-ubyte.gz": (raw, "not a gzip file"),
        "cutgzip-idx1-ubyte.gz": (gzip.compress(raw)[:-10], "gzip"),
    }
    for filename, (content, problem) in cases.items():
        path = tmp_path / filename
        path.write_bytes(content)
        with pytest.raises(ValueError, match=problem) as error:
            data.read_idx(path)
        assert str(path) in str(error.value)


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_splits(fashion_dir):
    directory, arrays = fashion_dir
    splits = data.load_classification(
        "fashion_mnist", data_dir=directory, batch_size=8, validation_fraction=0.2, seed=3
    )
    info = splits.info
    assert (info.name, info.num_classes, info.input_shape) == ("fashion_mnist", 10, (28, 28, 1))
    assert info.class_names == fashion_mnist.CLASS_NAMES
    assert (info.num_train, info.num_validation, info.num_test) == (40, 10, 20)
    assert directory in info.source

    train = batches(splits.train)
    assert [x.shape for x, _ in train] == [(8, 28, 28, 1)] * 5  # 40 / 8, full batches only
    assert [y.shape for _, y in train] == [(8,)] * 5
    test = batches(splits.test)
    assert [len(y) for _, y in test] == [8, 8, 4]  # evaluation keeps the partial batch
    for x, y in train + test:
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 255.0
        assert 0 <= y.min() and y.max() < 10
    for ds in (splits.train, splits.validation, splits.test):
        assert ds.element_spec[0].shape[1:] == (28, 28, 1)
        assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int32

    # Validation and test are the source images, unaugmented, in order.
    _, val_idx = pipeline.carve_validation(NUM_TRAIN, 0.2, seed=3)
    val_x, val_y = stacked(splits.validation)
    np.testing.assert_array_equal(val_x[..., 0], arrays["train_images"][val_idx])
    np.testing.assert_array_equal(val_y, arrays["train_labels"][val_idx])
    test_x, test_y = stacked(splits.test)
    np.testing.assert_array_equal(test_x[..., 0], arrays["test_images"])
    np.testing.assert_array_equal(test_y, arrays["test_labels"])


def test_validation_carve_is_seeded(fashion_dir):
    directory, _ = fashion_dir

    def validation(seed):
        splits = data.load_classification(
            "fashion_mnist", data_dir=directory, batch_size=8, validation_fraction=0.2,
            seed=seed, augment=False,
        )
        return stacked(splits.validation)[0]

    np.testing.assert_array_equal(validation(0), validation(0))
    assert not np.array_equal(validation(0), validation(1))
    splits = data.load_classification(
        "fashion_mnist", data_dir=directory, batch_size=8, validation_fraction=0
    )
    assert splits.validation is None and splits.info.num_validation == 0
    assert splits.info.num_train == NUM_TRAIN


def test_augmentation_only_on_train(fashion_dir):
    directory, _ = fashion_dir
    kwargs = dict(data_dir=directory, batch_size=10, validation_fraction=0.2, seed=0)
    plain = data.load_classification("fashion_mnist", augment=False, **kwargs)
    augmented = data.load_classification("fashion_mnist", augment=True, **kwargs)

    # Same seed, same shuffle: same labels in the same order, but moved pixels.
    plain_train, augmented_train = batches(plain.train), batches(augmented.train)
    assert [y.tolist() for _, y in plain_train] == [y.tolist() for _, y in augmented_train]
    for (x0, _), (x1, _) in zip(plain_train, augmented_train):
        assert x1.shape == x0.shape and x1.dtype == x0.dtype == np.float32
        assert 0.0 <= x1.min() and x1.max() <= 255.0
    assert not all(np.array_equal(x0, x1) for (x0, _), (x1, _) in zip(plain_train, augmented_train))

    for name in ("validation", "test"):
        for (x0, y0), (x1, y1) in zip(batches(getattr(plain, name)), batches(getattr(augmented, name))):
            np.testing.assert_array_equal(x0, x1)
            np.testing.assert_array_equal(y0, y1)


def test_train_reshuffles_each_epoch(fashion_dir):
    directory, _ = fashion_dir
    splits = data.load_classification(
        "fashion_mnist", data_dir=directory, batch_size=5, validation_fraction=0, augment=False,
    )
    epoch1, epoch2 = stacked(splits.train)[1], stacked(splits.train)[1]
    assert sorted(epoch1) == sorted(epoch2) and list(epoch1) != list(epoch2)


def test_limits_and_resize(fashion_dir):
    directory, _ = fashion_dir
    splits = data.load_classification(
        "fashion_mnist", data_dir=directory, batch_size=4, image_size=32,
        train_limit=12, test_limit=6,
    )
    assert (splits.info.num_train, splits.info.num_test) == (12, 6)
    assert splits.info.input_shape == (32, 32, 1)
    train = batches(splits.train)
    assert [x.shape for x, _ in train] == [(4, 32, 32, 1)] * 3
    assert [len(y) for _, y in batches(splits.test)] == [4, 2]
    with pytest.raises(ValueError, match="fewer than batch_size"):
        data.load_classification("fashion_mnist", data_dir=directory, batch_size=64)


def test_fashion_mnist_missing_files_error(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load_classification("fashion_mnist", data_dir=str(missing))
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    assert str(missing) in message and "no such directory" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "github.com/zalandoresearch/fashion-mnist" in message and "data_dir" in message

    # Default search: one error that lists every directory and what each lacks.
    partial, empty = tmp_path / "partial", tmp_path / "empty"
    write_fashion_files(str(partial))
    os.remove(partial / fashion_mnist.FILES["test_labels"])
    os.makedirs(empty)
    monkeypatch.setattr(fashion_mnist, "DEFAULT_SEARCH_DIRS", (str(partial), str(empty)))
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load_classification("fashion_mnist")
    message = str(error.value)
    assert str(partial) in message and str(empty) in message
    assert f"missing: {fashion_mnist.FILES['test_labels']}" in message


def test_fashion_mnist_corrupt_file(fashion_dir):
    directory, _ = fashion_dir
    path = os.path.join(directory, fashion_mnist.FILES["train_labels"])
    with open(path, "wb") as f:
        f.write(b"definitely not gzip")
    with pytest.raises(ValueError, match="not a gzip file") as error:
        data.load_classification("fashion_mnist", data_dir=directory)
    assert path in str(error.value)


def test_fashion_mnist_count_mismatch(fashion_dir):
    directory, arrays = fashion_dir
    data.write_idx(
        os.path.join(directory, fashion_mnist.FILES["test_labels"]), arrays["test_labels"][:-1]
    )
    with pytest.raises(ValueError, match="20 images but 19 labels|20 images in .* but 19 labels"):
        data.load_classification("fashion_mnist", data_dir=directory)


# ---------------------------------------------------------------- array validation


def test_validate_arrays_errors():
    images = np.zeros((4, 8, 8, 1), np.uint8)
    labels = np.array([0, 1, 2, 3])
    x, y = data.validate_arrays(images, labels, num_classes=4)
    assert y.dtype == np.int32
    with pytest.raises(ValueError, match="labels out of range"):
        data.validate_arrays(images, np.array([0, 1, 2, 4]), num_classes=4)
    with pytest.raises(ValueError, match="labels out of range"):
        data.validate_arrays(images, np.array([0, -1, 2, 3]), num_classes=4)
    with pytest.raises(ValueError, match="rank 4"):
        data.validate_arrays(images[..., 0], labels, num_classes=4)
    with pytest.raises(ValueError, match="rank 1"):
        data.validate_arrays(images, labels[:, None], num_classes=4)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        data.validate_arrays(images, labels[:3], num_classes=4)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        data.validate_arrays(np.full((4, 8, 8, 1), 300.0), labels, num_classes=4)


def test_out_of_range_labels_through_loader(fashion_dir):
    directory, arrays = fashion_dir
    labels = arrays["train_labels"].copy()
    labels[3] = 10
    data.write_idx(os.path.join(directory, fashion_mnist.FILES["train_labels"]), labels)
    with pytest.raises(ValueError, match="labels out of range"):
        data.load_classification("fashion_mnist", data_dir=directory)


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_learnable():
    kwargs = dict(num_classes=5, image_shape=(16, 16, 3), num_train=200, num_test=100)
    (x, y), (xt, yt) = synthetic.make_synthetic_splits(seed=7, **kwargs)
    (x2, y2), _ = synthetic.make_synthetic_splits(seed=7, **kwargs)
    (x3, _), _ = synthetic.make_synthetic_splits(seed=8, **kwargs)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, x3)
    assert not np.array_equal(x[:100], xt)  # test examples are new examples
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    assert np.bincount(y).tolist() == [40] * 5

    # Nearest class mean, fitted on train, scored on test: far above chance (0.2).
    means = np.stack([x[y == c].mean(axis=0) for c in range(5)]).reshape(5, -1)
    distances = ((xt.reshape(len(xt), 1, -1) - means[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == yt).mean()
    assert accuracy > 0.9, accuracy


def test_synthetic_through_loader():
    splits = data.load_classification(
        "synthetic", batch_size=16, seed=1,
        synthetic_kwargs=dict(num_classes=3, image_shape=(12, 12, 2), num_train=64, num_test=20),
    )
    info = splits.info
    assert (info.num_classes, info.input_shape) == (3, (12, 12, 2))
    assert (info.num_train, info.num_validation, info.num_test) == (58, 6, 20)
    assert info.class_names == ["class_0", "class_1", "class_2"]
    assert [x.shape for x, _ in batches(splits.train)] == [(16, 12, 12, 2)] * 3
    with pytest.raises(ValueError, match="synthetic_kwargs"):
        data.load_classification("cifar10", synthetic_kwargs={})
    with pytest.raises(ValueError, match="Unknown synthetic_kwargs"):
        data.load_classification("synthetic", synthetic_kwargs={"num_images": 10})


# ---------------------------------------------------------------- TFDS


def test_tfds_mocked_cifar10(tmp_path):
    # `mock_data` works offline for cifar10: the builder's features (10 classes,
    # 32x32x3) are defined in TFDS's code, and the examples are generated.
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=40):
        splits = data.load_classification(
            "cifar10", data_dir=str(tmp_path), batch_size=8, validation_fraction=0.25,
            train_limit=24, test_limit=12,
        )
        info = splits.info
        assert (info.num_classes, info.input_shape, len(info.class_names)) == (10, (32, 32, 3), 10)
        assert (info.num_train, info.num_validation, info.num_test) == (24, 10, 12)
        train = batches(splits.train)
        assert [x.shape for x, _ in train] == [(8, 32, 32, 3)] * 3
        assert all(x.dtype == np.float32 and y.dtype == np.int32 for x, y in train)
        assert sum(len(y) for _, y in batches(splits.validation)) == 10
        assert [len(y) for _, y in batches(splits.test)] == [8, 4]

        resized = data.load_classification("cifar10", batch_size=8, image_size=(16, 20))
        assert resized.info.input_shape == (16, 20, 3)
        assert next(iter(resized.train))[0].shape == (8, 16, 20, 3)


def test_tfds_mocked_grayscale_keeps_one_channel():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=16):
        splits = data.load_classification("tfds:fashion_mnist", batch_size=4)
        assert splits.info.input_shape == (28, 28, 1)
        assert next(iter(splits.train))[0].shape == (4, 28, 28, 1)


def test_tfds_mocked_varying_image_sizes_need_image_size():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=12):  # oxford_iiit_pet: images of any size
        with pytest.raises(ValueError, match="varying size"):
            data.load_classification("oxford_iiit_pet", batch_size=4)
        splits = data.load_classification("oxford_iiit_pet", batch_size=4, image_size=24)
        assert (splits.info.num_classes, splits.info.input_shape) == (37, (24, 24, 3))
        assert [x.shape for x, _ in batches(splits.test)] == [(4, 24, 24, 3)] * 3


def test_tfds_not_prepared_offline(tmp_path, monkeypatch):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load_classification("cifar10", data_dir=str(tmp_path), download=False)
    message = str(error.value)
    assert str(tmp_path) in message and "download=False" in message and "internet" in message

    # download=True on a machine without network: the download's failure becomes a clear error.
    import tensorflow_datasets as tfds

    def no_network(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(data.DatasetNotFoundError, match="downloading it failed.*Failed to resolve"):
        data.load_classification("cifar10", data_dir=str(tmp_path), download=True)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset_xyz'") as error:
        data.load_classification("no_such_dataset_xyz")
    message = str(error.value)
    assert "fashion_mnist" in message and "synthetic" in message and "TFDS" in message
    assert data.available_datasets() == ["fashion_mnist", "synthetic", "folder"]


def test_build_augmentation_options():
    images = np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 3)).astype("float32")
    identity = data.build_augmentation((12, 12, 3), pad=0, flip=False)
    np.testing.assert_array_equal(identity(images, training=True), images)
    augmentation = data.build_augmentation((12, 12, 3), pad=2, flip=True, seed=0)
    out = np.asarray(augmentation(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_array_equal(augmentation(images, training=False), images)
    with pytest.raises(ValueError, match="pad"):
        data.build_augmentation((12, 12, 3), pad=12)
