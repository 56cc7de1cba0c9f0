"""Your own images from a folder: class folders and images/ + masks/, the splits, the scripts, and bad input.

Every test writes its own tiny folder (JPEG, PNG, BMP, GIF; RGB and gray).
Each class (or mask class) has its own brightness, so a test can tell that an
image arrived with its own label.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mbakt_tf import data, saved_runs, training
from mbakt_tf.cli import quiet_start
from mbakt_tf.data import folder_layout
from mbakt_tf.data.types import DataFolderError, DatasetNotFoundError
from tests.helpers import tiny_model, tiny_segmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("cat", "dog", "eel")  # class k has brightness BRIGHTNESS[k]
BRIGHTNESS = (30, 130, 230)


# ------------------------------------------------------------------ writing folders


def write_image(path, pixels):
    """Writes uint8 (H, W, C) pixels in the format of the file's extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jpg", ".jpeg"):
        tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=100))
    elif ext == ".png":
        tf.io.write_file(path, tf.io.encode_png(pixels))
    else:  # BMP, GIF: TensorFlow decodes them but does not encode them
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def class_image(label, size=(16, 16), channels=3, seed=0):
    """A flat image of the class's brightness with a little noise."""
    noise = np.random.default_rng(seed).integers(-4, 5, size=tuple(size) + (channels,))
    return np.clip(BRIGHTNESS[label] + noise, 0, 255).astype(np.uint8)


def write_class_folder(folder, per_class, exts=(".jpg", ".png"), gray_every=3, size=(16, 16), start=0):
    """`per_class` images per class in folder/<class>/, alternating `exts`; every `gray_every`-th one gray."""
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            channels = 1 if gray_every and i % gray_every == 0 else 3
            ext = exts[i % len(exts)]
            write_image(os.path.join(folder, name, f"{start + i:03d}{ext}"),
                        class_image(label, size, channels, seed=i))


def write_mask_folder(folder, count, size=(16, 16), num_classes=3, ignore=True, image_ext=".jpg"):
    """folder/images/<i>.jpg and folder/masks/<i>.png: a square of class 1 + i % (num_classes - 1), 255 border."""
    for i in range(count):
        mask = np.zeros(size, np.uint8)
        label = 1 + i % (num_classes - 1)
        mask[4:12, 4:12] = label
        if ignore:
            mask[4, 4:12] = 255
        image = np.where(mask[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, -1)
        write_image(os.path.join(folder, "images", f"{i:03d}{image_ext}"), image)
        write_image(os.path.join(folder, "masks", f"{i:03d}.png"), mask[..., None])


@pytest.fixture
def split_folder(tmp_path):
    """train/ (6 per class) and test/ (2 per class): JPEG and PNG, RGB and gray, 16x16."""
    root = tmp_path / "pets"
    write_class_folder(str(root / "train"), 6)
    write_class_folder(str(root / "test"), 2, start=100)
    return root


def batches(dataset):
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(images), np.concatenate(labels)


def brightness_labels(images):
    """The class each image's mean brightness is closest to."""
    means = images.reshape(len(images), -1).mean(axis=1)
    return np.argmin(np.abs(means[:, None] - np.array(BRIGHTNESS)[None]), axis=1)


# ------------------------------------------------------------------ classification


def test_class_folders_with_train_and_test_splits(split_folder):
    splits = data.load_classification("folder", data_dir=str(split_folder), batch_size=4,
                                      validation_fraction=0.2, augment=False)
    info = splits.info
    assert info.class_names == list(CLASSES) and info.num_classes == 3
    assert info.input_shape == (16, 16, 3)  # some images are RGB: every image is read as RGB
    assert (info.num_train, info.num_validation, info.num_test) == (14, 4, 6)
    assert info.class_counts["test"] == {"cat": 2, "dog": 2, "eel": 2}
    assert sum(info.class_counts["train"].values()) == 14
    assert "train/, test/" in info.source and info.name == "pets"
    table = info.counts_table()
    assert table.splitlines()[0].split() == ["class", "train", "validation", "test"]
    assert table.splitlines()[-1].split() == ["images", "14", "4", "6"]

    for split in (splits.train, splits.validation, splits.test):
        images, labels = batches(split)
        assert images.dtype == np.float32 and labels.dtype == np.int32 and images.shape[1:] == (16, 16, 3)
        np.testing.assert_array_equal(brightness_labels(images), labels)  # each image kept its own label
    # The gray file of each test class (100.jpg) was repeated over three channels; the noisy RGB ones were not.
    images, _ = batches(splits.test)
    gray = [np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
            for image in images]
    assert sum(gray) == 3


def test_model_fit_takes_the_folder_pipelines(split_folder):
    splits = data.load_classification("folder", data_dir=str(split_folder), batch_size=4)
    model = tiny_model(input_shape=(16, 16, 3), num_classes=3, mode="plain")
    history = model.fit(splits.train, epochs=1, steps_per_epoch=2, validation_data=splits.validation, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_gray_stays_gray_and_image_size_resizes(tmp_path):
    root = tmp_path / "shapes"
    write_class_folder(str(root / "train"), 4, exts=(".png", ".bmp", ".gif"), gray_every=1, size=(12, 10))
    write_class_folder(str(root / "test"), 2, exts=(".png",), gray_every=1, size=(20, 20))
    with pytest.raises(DataFolderError, match=r"Images differ in size: .*is 12x10, .*is 20x20.*--image_size"):
        data.load_classification("folder", data_dir=str(root), batch_size=4)
    splits = data.load_classification("folder", data_dir=str(root), batch_size=4, image_size=8, augment=False)
    assert splits.info.input_shape == (8, 8, 1)  # gray PNG, BMP and GIF (equal channels): gray
    images, labels = batches(splits.test)
    assert images.shape[1:] == (8, 8, 1)
    np.testing.assert_array_equal(brightness_labels(images), labels)


def test_colour_gifs_make_an_rgb_dataset(tmp_path):
    """A GIF with colour makes the dataset RGB; the gray PNGs beside it are repeated over three channels."""
    write_class_folder(str(tmp_path / "d"), 5, exts=(".png", ".gif"), gray_every=2)
    splits = data.load_classification("folder", data_dir=str(tmp_path / "d"), batch_size=2, augment=False)
    assert splits.info.input_shape == (16, 16, 3)
    images, labels = batches(splits.test)
    np.testing.assert_array_equal(brightness_labels(images), labels)


def test_one_folder_per_class_carves_the_same_test_split_for_every_seed(tmp_path):
    write_class_folder(str(tmp_path / "d"), 10)
    open(tmp_path / "d" / "cat" / "notes.txt", "w").write("not an image")
    os.makedirs(tmp_path / "d" / "dog" / "more")
    write_image(str(tmp_path / "d" / "dog" / "more" / "x.png"), class_image(1))  # sub-folders are read
    loads = [data.load_classification("folder", data_dir=str(tmp_path / "d"), batch_size=2, seed=seed,
                                      augment=False) for seed in (0, 1)]
    info = loads[0].info
    assert info.class_counts["test"] == {"cat": 2, "dog": 2, "eel": 2}  # 20% of each class
    assert info.num_train + info.num_validation + info.num_test == 31
    assert "ignored 1 file(s) that are not images" in info.source and "notes.txt" in info.source
    test_images = [batches(splits.test)[0] for splits in loads]
    np.testing.assert_array_equal(*test_images)  # the test carve does not follow the run's seed
    validation = [batches(splits.validation)[0] for splits in loads]
    assert not np.array_equal(*validation)  # the validation carve does


def test_limits_take_every_class(tmp_path):
    write_class_folder(str(tmp_path / "d"), 10)
    splits = data.load_classification("folder", data_dir=str(tmp_path / "d"), batch_size=2, train_limit=9,
                                      test_limit=3, validation_fraction=0.0)
    assert splits.info.num_train == 9 and splits.info.num_test == 3
    assert all(n > 0 for n in splits.info.class_counts["train"].values())


def test_a_validation_folder_replaces_the_carve(split_folder):
    write_class_folder(str(split_folder / "validation"), 1, start=200)
    splits = data.load_classification("folder", data_dir=str(split_folder), batch_size=3, validation_fraction=0.5)
    assert (splits.info.num_train, splits.info.num_validation, splits.info.num_test) == (18, 3, 6)
    assert splits.info.class_counts["validation"] == {"cat": 1, "dog": 1, "eel": 1}


def _break(path, how):
    if how == "garbage":
        with open(path, "wb") as f:
            f.write(b"this is not a picture")
    else:  # truncated
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[: len(content) // 3])


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_an_unreadable_image_is_refused_by_name(split_folder, how):
    bad = split_folder / "test" / "dog" / "100.jpg"
    _break(bad, how)
    with pytest.raises(DataFolderError) as caught:
        data.load_classification("folder", data_dir=str(split_folder), batch_size=4)
    message = str(caught.value)
    assert message.startswith("1 image file(s) cannot be read") and f"{bad}:" in message
    assert "refused rather than skipped" in message


def _empty_class(root):
    os.makedirs(root / "train" / "fox")
    return f"{root / 'train' / 'fox'}: an empty class folder"


def _one_class(root):
    for name in CLASSES[1:]:
        for split in ("train", "test"):
            for path in (root / split / name).iterdir():
                path.unlink()
            (root / split / name).rmdir()
    return f"{root / 'train'}: only one class folder (cat/)"


def _unknown_test_class(root):
    write_image(str(root / "test" / "fox" / "1.png"), class_image(0))
    return f"{root / 'test' / 'fox'}: class 'fox' has no folder in the training split"


def _loose_image(root):
    write_image(str(root / "train" / "stray.png"), class_image(0))
    return f"{root / 'train' / 'stray.png'}: an image outside the class folders"


def _stray_split(root):
    os.makedirs(root / "val" / "cat")
    return f"{root / 'val'}: a folder beside train/"


def _test_without_train(root):
    (root / "train").rename(root / "training")
    return f"{root} has test/ but no train/ folder"


@pytest.mark.parametrize("make_bad", [_empty_class, _one_class, _unknown_test_class, _loose_image, _stray_split,
                                      _test_without_train])
def test_bad_class_folders_are_refused_by_name(split_folder, make_bad):
    expected = make_bad(split_folder)
    with pytest.raises(DataFolderError) as caught:
        data.load_classification("folder", data_dir=str(split_folder), batch_size=4)
    assert expected in str(caught.value)


def test_a_class_of_one_image_cannot_give_a_carved_test_split(tmp_path):
    write_class_folder(str(tmp_path / "d"), 3)
    for path in list((tmp_path / "d" / "eel").iterdir())[1:]:
        path.unlink()
    with pytest.raises(DataFolderError, match=r"/d/eel: 1 file\(s\); carving a test split"):
        data.load_classification("folder", data_dir=str(tmp_path / "d"), batch_size=2)


def test_a_home_relative_folder_is_found(split_folder, monkeypatch):
    """`--data_dir=~/pets` reaches the loader unexpanded: the shell expands no `~` after `=`."""
    monkeypatch.setenv("HOME", str(split_folder.parent))
    splits = data.load_classification("folder", data_dir="~/pets", batch_size=4)
    assert splits.info.name == "pets" and str(split_folder) in splits.info.source


def test_a_missing_folder_is_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="No folder .*nowhere"):
        data.load_classification("folder", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="needs data_dir"):
        data.load_classification("folder")


# ------------------------------------------------------------------ segmentation


def test_images_and_masks_folder(tmp_path):
    write_mask_folder(str(tmp_path / "seg"), 10)
    splits = data.load_segmentation("folder", data_dir=str(tmp_path / "seg"), batch_size=2, augment=False,
                                    validation_fraction=0.0)
    info = splits.info
    assert (info.num_classes, info.ignore_label, info.input_shape) == (3, 255, (16, 16, 3))
    assert info.class_names == ["class_0", "class_1", "class_2"]
    assert (info.num_train, info.num_test) == (8, 2)
    assert info.class_counts["train"]["class_0"] == 8
    images, masks = batches(splits.train)
    assert masks.shape == (8, 16, 16) and masks.dtype == np.int32
    assert set(np.unique(masks)) == {0, 1, 2, 255}  # the ignore label is kept as such
    np.testing.assert_array_equal(images[..., 0] > 100, masks != 0)  # each image kept its own mask


def test_mask_split_folders_labels_txt_and_resize(tmp_path):
    root = tmp_path / "seg"
    write_mask_folder(str(root / "train"), 6, size=(20, 20), num_classes=4, image_ext=".png")
    write_mask_folder(str(root / "test"), 2, size=(20, 20), num_classes=4)
    (root / "labels.txt").write_text("ground\nsquare\ndisc\nstar\n")
    splits = data.load_segmentation("folder", data_dir=str(root), batch_size=2, image_size=10, augment=False)
    info = splits.info
    assert info.class_names == ["ground", "square", "disc", "star"] and info.input_shape == (10, 10, 3)
    assert info.num_test == 2 and info.class_counts["test"]["square"] == 1
    _, masks = batches(splits.test)
    assert masks.shape == (2, 10, 10) and set(np.unique(masks)) <= {0, 1, 2, 3, 255}  # nearest: still indices
    splits = data.load_segmentation("folder", data_dir=str(root), batch_size=2, image_size=10, num_classes=4)
    assert splits.info.num_classes == 4


def _mask(root, i=1):
    return root / "masks" / f"{i:03d}.png"


def _mask_size(root):
    write_image(str(_mask(root)), np.zeros((8, 16, 1), np.uint8))
    return f"{_mask(root)}: mask is 8x16 but its image"


def _mask_value(root):
    mask = np.zeros((16, 16, 1), np.uint8)
    mask[0, 0] = 7
    write_image(str(_mask(root)), mask)
    return f"{_mask(root)}: mask value(s) 7 >= num_classes=3"


def _palette_mask(root):
    image = Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").convert("P")
    image.save(_mask(root))
    return f"{_mask(root)}: a palette (colour-indexed) PNG"


def _rgb_mask(root):
    write_image(str(_mask(root)), np.zeros((16, 16, 3), np.uint8))
    return f"{_mask(root)}: an 8-bit RGB PNG; a mask must be"


def _missing_mask(root):
    _mask(root).unlink()
    return f"1 image(s) without a mask in {root / 'masks'}"


def _jpeg_mask(root):
    _mask(root).unlink()
    write_image(str(root / "masks" / "001.jpg"), np.zeros((16, 16, 1), np.uint8))
    return f"{root / 'masks' / '001.jpg'}: masks must be PNG files"


def _corrupt_mask(root):
    _break(_mask(root), "truncated")
    return f"{_mask(root)}:"


def _single_class(root):
    for i in range(8):
        write_image(str(_mask(root, i)), np.zeros((16, 16, 1), np.uint8))
    return "the masks show only class [0]"


@pytest.mark.parametrize("make_bad", [_mask_size, _mask_value, _palette_mask, _rgb_mask, _missing_mask, _jpeg_mask,
                                      _corrupt_mask, _single_class])
def test_bad_masks_are_refused_by_name(tmp_path, make_bad):
    root = tmp_path / "seg"
    write_mask_folder(str(root), 8)
    expected = make_bad(root)
    with pytest.raises(DataFolderError) as caught:
        data.load_segmentation("folder", data_dir=str(root), batch_size=2, num_classes=3)
    assert expected in str(caught.value)


def test_mask_settings_are_for_the_folder_alone():
    with pytest.raises(ValueError, match="num_classes is for name='folder'"):
        data.load_segmentation("synthetic", num_classes=3)
    with pytest.raises(ValueError, match="num_classes is for task='segmentation' with dataset='folder'"):
        training.TrainConfig(dataset="folder", data_dir="x", num_classes=3)
    histograms = np.zeros((1, 256), int)
    histograms[0, [0, 1, 2]] = 10
    with pytest.raises(ValueError, match="ignore_label=0 is a class index"):
        data.folder_segmentation.resolve_classes("/nowhere", ["m.png"], histograms, None, ignore_label=0)
    config = training.TrainConfig(task="segmentation", dataset="folder", data_dir="/data/streets/", ignore_label=0)
    assert config.run_name_for(training.MBAKTConfig(mode="plain")).startswith("streets_segmentation_")


# ------------------------------------------------------------------ runs on disk, scripts


def test_saved_runs_refuse_data_with_other_classes(split_folder, tmp_path):
    run_dir = tmp_path / "run"
    os.makedirs(run_dir)
    (run_dir / "model.keras").write_text("stand-in: load_run_splits reads only results.json")
    config = {"dataset": "folder", "data_dir": str(split_folder)}
    (run_dir / "results.json").write_text(json.dumps(
        {"train_config": config, "dataset": {"class_names": list(CLASSES), "num_train": 16}}))
    model = tiny_model(input_shape=(16, 16, 3), num_classes=3, mode="plain")
    # evaluate.py and export.py ask for batches of 256: capped at the run's 16 training images.
    splits = saved_runs.load_run_splits(model, str(run_dir / "model.keras"), batch_size=256, augment=False)
    assert splits.info.class_names == list(CLASSES)
    assert [len(x) for x, _ in splits.train] == [16]
    with pytest.raises(ValueError, match="predicts 4 classes but the data .* has 3: cat, dog, eel"):
        saved_runs.load_run_splits(tiny_model(input_shape=(16, 16, 3)), str(run_dir / "model.keras"), batch_size=4)
    (run_dir / "results.json").write_text(json.dumps(
        {"train_config": config, "dataset": {"class_names": ["ant", "bee", "cow"]}}))
    with pytest.raises(ValueError, match="was trained on the classes"):
        saved_runs.load_run_splits(model, str(run_dir / "model.keras"), batch_size=4)


def test_segmenter_runs_read_their_masks_with_the_models_classes(tmp_path):
    write_mask_folder(str(tmp_path / "seg"), 8)
    run_dir = tmp_path / "run"
    os.makedirs(run_dir)
    (run_dir / "results.json").write_text(json.dumps(
        {"train_config": {"dataset": "folder", "data_dir": str(tmp_path / "seg"), "task": "segmentation"}}))
    segmenter = tiny_segmenter(input_shape=(16, 16, 3), num_classes=5, mode="plain")  # 5 > the masks' 3
    splits = saved_runs.load_run_splits(segmenter, str(run_dir / "model.keras"), batch_size=2)
    assert splits.info.num_classes == 5 and splits.info.ignore_label == 255


def run_script(name, *args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=900, env=dict(os.environ, **(env or {})))


def test_train_script_refuses_bad_images_before_the_run_folder_and_starts_quietly(split_folder, tmp_path):
    bad = split_folder / "train" / "eel" / "002.jpg"
    _break(bad, "garbage")
    out = tmp_path / "runs"
    result = run_script("train.py", "--dataset=folder", f"--data_dir={split_folder}", f"--output_dir={out}",
                        "--epochs=1", env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: 1 image file(s) cannot be read" in result.stderr and f"{bad}:" in result.stderr
    assert not out.exists()  # refused before the run folder was made
    for noise in ("cudart_stub", "cuInit", "absl::InitializeLog", "cpu_feature_guard"):
        assert noise not in result.stderr


def test_quiet_start_keeps_real_lines():
    assert quiet_start.startup_noise(
        "E0000 00:00:1796592353.572856    3462 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error")
    assert quiet_start.startup_noise("WARNING: All log messages before absl::InitializeLog() is called are "
                                     "written to STDERR\n")
    assert not quiet_start.startup_noise(
        "E0000 00:00:1796592353.572856    3462 op_kernel.cc:1] Invalid argument: bad shape")
    assert not quiet_start.startup_noise("Traceback (most recent call last):")


@pytest.mark.slow
def test_scripts_train_evaluate_and_export_a_folder_with_mediapipe_metadata(split_folder, tmp_path):
    """The user path end to end: train.py on the folder, evaluate.py, export.py with TFLite Metadata."""
    out = tmp_path / "runs"
    train = run_script("train.py", "--dataset=folder", f"--data_dir={split_folder}", f"--output_dir={out}",
                       "--epochs=1", "--batch_size=4", "--mode=mbakt", "--tensorboard=false", "--verbose=0")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Dataset pets: image folder" in train.stdout and "\ncat " in train.stdout
    run_dir = out / "pets_small_resnet8_mbakt_seed0"
    assert (run_dir / "model.keras").is_file()

    evaluate = run_script("evaluate.py", f"--model={run_dir}")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "on pets test (6 images)" in evaluate.stdout

    export_dir = tmp_path / "export"
    metadata = "require" if _mediapipe_available() else "off"
    export = run_script("export.py", f"--model={run_dir}", f"--output_dir={export_dir}",
                        "--formats=float32,int8", "--int8_io=uint8", f"--tflite_metadata={metadata}",
                        "--benchmark_runs=0", "--max_int8_accuracy_drop=1", "--representative_samples=8",
                        "--min_mediapipe_agreement=0.8")
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert (export_dir / "labels.txt").read_text().splitlines() == list(CLASSES)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    if metadata == "require":
        for fmt in ("float32", "int8"):
            assert manifest["mediapipe"][fmt]["ran"], manifest["mediapipe"]
            assert manifest["files"][fmt]["tflite_metadata"]["written"]


def _mediapipe_available():
    from mbakt_tf.export import mediapipe_tasks

    try:
        mediapipe_tasks.mediapipe_python()
    except mediapipe_tasks.MediaPipeUnavailableError:
        return False
    return True


def test_fixed_file_order_is_the_same_everywhere():
    np.testing.assert_array_equal(folder_layout.mixed(np.arange(10)), folder_layout.mixed(np.arange(10)))
    assert sorted(folder_layout.mixed(np.arange(10))) == list(range(10))
