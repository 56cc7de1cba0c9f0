"""Semantic segmentation from a folder of your own images and masks.

`load_segmentation("folder", data_dir=PATH)` reads either

    PATH/images/<name>.jpg|jpeg|png|bmp|gif    PATH/masks/<name>.png     (test split carved: 20%)
or
    PATH/train/{images,masks}/...   PATH/test/{images,masks}/...   [PATH/validation/{images,masks}/...]

An image and its mask share their file name without the extension (and their
sub-folder, if any). A mask is an 8-bit one-channel (grayscale) PNG whose
pixel values are class indices: 0, 1, ..., num_classes - 1, and
`ignore_label` (default 255) for pixels that count in no loss and no metric
(borders, "don't care"). `num_classes` is, in this order: the argument
(`--num_classes`), the number of lines of `PATH/labels.txt` (one class name
per line, line i = class i), or the largest mask value that is not the ignore
label, plus one. Class names come from `labels.txt`, else `class_0`, ...

Images follow `image_files` (grayscale kept, otherwise RGB; one size or
`image_size`); masks are resized with nearest neighbours, so they stay class
indices. The splits follow `folder_layout` (fixed test carve, seeded
validation carve).

Every image and mask is decoded once before the pipelines are built, and
bad input fails here with a `DataFolderError` naming the file or folder: an
image without a mask (or a mask without an image), an unreadable file, a mask
that is not an 8-bit one-channel PNG (a palette PNG gets a hint to convert
it), a mask whose size differs from its image's, a mask value >= num_classes
that is not the ignore label, masks with a single class.

Example:
>>> import os, tempfile
>>> import numpy as np
>>> root = tempfile.mkdtemp()
>>> for sub in ("images", "masks"):
...     os.makedirs(os.path.join(root, sub))
>>> for i in range(6):
...     mask = np.zeros((8, 8, 1), np.uint8)
...     mask[2:6, 2:6] = 1 + i % 2
...     tf.io.write_file(os.path.join(root, "images", f"{i}.png"), tf.io.encode_png(mask * 100))
...     tf.io.write_file(os.path.join(root, "masks", f"{i}.png"), tf.io.encode_png(mask))
>>> splits = load_folder_segmentation(root, batch_size=2, validation_fraction=0.0)
>>> splits.info.num_classes, splits.info.ignore_label, splits.info.input_shape, splits.info.num_test
(3, 255, (8, 8, 1), 1)
"""

import os

import numpy as np
import tensorflow as tf

from mbakt_tf.data import folder_layout, image_files, split_plan
from mbakt_tf.data.pipeline import image_size_pair
from mbakt_tf.data.segmentation import IGNORE_LABEL, JointAugmentation, make_segmentation_dataset
from mbakt_tf.data.types import DataFolderError, SegmentationInfo

AUTOTUNE = tf.data.AUTOTUNE
LABELS_FILE = "labels.txt"
MASK_EXTENSION = ".png"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette (colour-indexed)", 4: "grayscale + alpha",
                    6: "RGBA"}


def _key(folder, path):
    return os.path.splitext(os.path.relpath(path, folder))[0]


def _listed(paths):
    shown = ", ".join(paths[: image_files.MAX_LISTED])
    return shown + (f" and {len(paths) - image_files.MAX_LISTED} more" if len(paths) > image_files.MAX_LISTED else "")


def read_pairs(folder):
    """`(image paths, mask paths, ignored files)` of `folder/images/` and `folder/masks/`, paired by name.

    Raises:
        DataFolderError: a missing or empty folder, a mask that is not a PNG,
            two images (or masks) of one name, an image without a mask or a
            mask without an image.
    """
    dirs = {sub: os.path.join(folder, sub) for sub in ("images", "masks")}
    for sub, path in dirs.items():
        if not os.path.isdir(path):
            raise DataFolderError(
                f"{path}: no such folder. Segmentation from a folder reads {dirs['images']}/ (the images) "
                f"and {dirs['masks']}/ (one PNG of class indices per image, same file name)."
            )
    images, ignored = image_files.list_images(dirs["images"])
    masks, other_masks = image_files.list_images(dirs["masks"])
    not_png = [m for m in masks if not m.lower().endswith(MASK_EXTENSION)]
    if not_png:
        raise DataFolderError(
            f"{not_png[0]}: masks must be PNG files ({len(not_png)} are not): a lossy format such as "
            "JPEG changes the class indices at object edges."
        )
    if not images:
        raise DataFolderError(f"{dirs['images']}: no images ({', '.join(image_files.IMAGE_EXTENSIONS)}).")
    by_key = {}
    for kind, folder_path, paths in (("images", dirs["images"], images), ("masks", dirs["masks"], masks)):
        keys = {}
        for path in paths:
            key = _key(folder_path, path)
            if key in keys:
                raise DataFolderError(
                    f"{keys[key]} and {path}: two {kind} named {key!r}; each image needs exactly one mask "
                    "of the same name."
                )
            keys[key] = path
        by_key[kind] = keys
    without_mask = [by_key["images"][k] for k in by_key["images"] if k not in by_key["masks"]]
    if without_mask:
        raise DataFolderError(
            f"{len(without_mask)} image(s) without a mask in {dirs['masks']} (same name, .png): "
            f"{_listed(without_mask)}."
        )
    without_image = [by_key["masks"][k] for k in by_key["masks"] if k not in by_key["images"]]
    if without_image:
        raise DataFolderError(
            f"{len(without_image)} mask(s) without an image in {dirs['images']}: {_listed(without_image)}."
        )
    keys = sorted(by_key["images"])
    return [by_key["images"][k] for k in keys], [by_key["masks"][k] for k in keys], ignored + other_masks


def check_mask_format(path):
    """Raises `DataFolderError` unless `path` is an 8-bit one-channel PNG (read from its header)."""
    with open(path, "rb") as f:
        header = f.read(26)
    if len(header) < 26 or not header.startswith(_PNG_SIGNATURE) or header[12:16] != b"IHDR":
        raise image_files.unreadable_error([path], "mask")
    depth, color_type = header[24], header[25]
    kind = _PNG_COLOR_TYPES.get(color_type, f"colour type {color_type}")
    if color_type == 3:
        raise DataFolderError(
            f"{path}: a palette (colour-indexed) PNG. Its pixels decode to colours, not to class indices. "
            "Save each mask as an 8-bit grayscale PNG of the indices, e.g. with Pillow: "
            "Image.fromarray(np.array(Image.open(path))).save(path)."
        )
    if color_type != 0 or depth != 8:
        raise DataFolderError(
            f"{path}: {'an' if depth == 8 else 'a'} {depth}-bit {kind} PNG; a mask must be an 8-bit one-channel (grayscale) PNG whose "
            "pixel values are class indices."
        )


def _mask_measure(mask):
    flat = tf.cast(tf.reshape(mask, [-1]), tf.int32)
    return tf.shape(mask), tf.math.bincount(flat, minlength=256, maxlength=256)


def read_class_names(data_dir):
    """The lines of `data_dir/labels.txt` (one class name per line), or None without that file."""
    path = os.path.join(data_dir, LABELS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f.read().splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        raise DataFolderError(f"{path}: one class name per line (line i = class i), no empty lines.")
    return names


def resolve_classes(data_dir, mask_paths, histograms, num_classes, ignore_label):
    """`(num_classes, class names)` from the argument, labels.txt or the masks; every value checked.

    Raises:
        DataFolderError: a mask value >= num_classes that is not the ignore
            label (the first such mask is named), a single class,
            `num_classes` and labels.txt that disagree, an ignore label that
            is a class index.
    """
    names = read_class_names(data_dir)
    labels_path = os.path.join(data_dir, LABELS_FILE)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise DataFolderError(f"{labels_path} names {len(names)} classes but num_classes={num_classes}.")
    if num_classes is None and names is not None:
        num_classes = len(names)
    present = np.sum(histograms, axis=0) > 0
    if 0 <= ignore_label < len(present):
        present[ignore_label] = False
    if num_classes is None:
        values = np.flatnonzero(present)
        num_classes = int(values.max()) + 1 if len(values) else 1
        source = "the largest mask value + 1"
    else:
        source = labels_path if names is not None else "num_classes"
    for path, histogram in zip(mask_paths, histograms):
        bad = [v for v in np.flatnonzero(histogram) if v >= num_classes and v != ignore_label]
        if bad:
            raise DataFolderError(
                f"{path}: mask value(s) {', '.join(str(v) for v in bad[:5])} >= num_classes={num_classes} "
                f"(from {source}) and not the ignore label {ignore_label}. Mask values are class indices "
                f"0..{num_classes - 1}, or {ignore_label} for ignored pixels."
            )
    if num_classes < 2 or np.sum(present[:num_classes]) < 2:
        shown = sorted(int(v) for v in np.flatnonzero(present))
        raise DataFolderError(
            f"{os.path.dirname(mask_paths[0])}: the masks show only class {shown or [0]} (the ignore label "
            f"{ignore_label} aside); segmentation needs at least two classes."
        )
    if 0 <= ignore_label < num_classes:
        raise DataFolderError(
            f"ignore_label={ignore_label} is a class index (num_classes={num_classes}): use a value outside "
            f"[0, {num_classes}), e.g. 255."
        )
    return num_classes, names or [f"class_{i}" for i in range(num_classes)]


def decode_mask(path, size):
    """The mask PNG at `path` as uint8 (size[0], size[1]), resized with nearest neighbours."""
    mask = tf.io.decode_png(tf.io.read_file(path), channels=1)
    mask = tf.image.resize(mask, size, method="nearest")[..., 0]
    return tf.ensure_shape(tf.cast(mask, tf.uint8), tuple(size))


def load_folder_segmentation(data_dir, batch_size=128, validation_fraction=0.1, image_size=None, augment=True,
                             seed=0, train_limit=None, test_limit=None, num_classes=None,
                             ignore_label=IGNORE_LABEL, test_fraction=folder_layout.TEST_FRACTION):
    """Loads an images/ + masks/ folder as batched train/validation/test segmentation pipelines.

    Args:
        data_dir: the data folder (see the module doc for its layouts).
        batch_size, validation_fraction, image_size, seed, train_limit,
        test_limit: as for `load_segmentation`; a validation/ folder
            replaces the validation carve.
        augment: True: joint translation (shifted-in pixels get the ignore
            label) and horizontal flip; False: none; or a callable.
        num_classes: classes per pixel; None: labels.txt, else the masks.
        ignore_label: the mask value of ignored pixels (None: 255).
        test_fraction: without a test/ folder, the share of the pairs carved
            into the test split (fixed seed).

    Returns:
        `DatasetSplits` with a `SegmentationInfo` whose `class_counts` are,
        per split, the number of images showing each class.

    Raises:
        DatasetNotFoundError: `data_dir` is not a folder.
        DataFolderError: bad input, named (see the module doc).
    """
    ignore_label = IGNORE_LABEL if ignore_label is None else int(ignore_label)
    data_dir = folder_layout.data_folder(data_dir)
    folders = folder_layout.split_folders(data_dir)
    image_paths, mask_paths, ignored = read_pairs(folders["train"])
    ranges = {"train": np.arange(len(image_paths))}
    for split in ("validation", "test"):
        if folders[split] is not None:
            more_images, more_masks, more_ignored = read_pairs(folders[split])
            ranges[split] = np.arange(len(image_paths), len(image_paths) + len(more_images))
            image_paths, mask_paths = image_paths + more_images, mask_paths + more_masks
            ignored += more_ignored
    for path in mask_paths:
        check_mask_format(path)
    shapes = image_files.scan_images(image_paths)
    measured = image_files.scan(mask_paths, _mask_measure, what="mask")
    for image, mask, shape, (mask_shape, _) in zip(image_paths, mask_paths, shapes, measured):
        if tuple(shape[:2]) != tuple(mask_shape[:2]):
            raise DataFolderError(
                f"{mask}: mask is {mask_shape[0]}x{mask_shape[1]} but its image {image} is "
                f"{shape[0]}x{shape[1]} (height x width); a mask labels every pixel of its image."
            )
    histograms = np.stack([histogram for _, histogram in measured])
    num_classes, class_names = resolve_classes(data_dir, mask_paths, histograms, num_classes,
                                               ignore_label)
    channels = image_files.dataset_channels(shapes)
    size = image_files.check_sizes(image_paths, shapes, image_size_pair(image_size))
    image_paths, mask_paths = np.array(image_paths), np.array(mask_paths)

    train = ranges["train"]
    if "test" in ranges:
        test = ranges["test"]
    else:
        train, test = folder_layout.carve_test(np.zeros(len(train), int), test_fraction,
                                               describe=lambda _: os.path.join(folders["train"], "images"))
    plan = folder_layout.plan_indices(train, ranges.get("validation"), test, validation_fraction, seed,
                                      train_limit, test_limit)
    parts = {"train": plan.train, "validation": plan.validation, "test": plan.test}
    shows = histograms[:, :num_classes] > 0
    counts = {split: {name: int(np.sum(shows[idx, k])) for k, name in enumerate(class_names)}
              for split, idx in parts.items() if idx is not None}
    layout = ("images/ + masks/" if folders["train"] == data_dir else
              ", ".join(f"{split}/" for split in folder_layout.SPLIT_FOLDERS if split in ranges))
    if "test" not in ranges:
        layout += f"; test split: {test_fraction:.0%} carved"
    source = (f"image + mask folder {os.path.abspath(data_dir)} ({layout}; "
              f"{'grayscale' if channels == 1 else 'RGB'}; ignore label {ignore_label})")
    if ignored:
        source += f"; ignored {len(ignored)} file(s) that are not images, e.g. {ignored[0]}"
    input_shape = tuple(size) + (channels,)
    info = SegmentationInfo(
        name=os.path.basename(os.path.abspath(data_dir)), num_classes=num_classes, input_shape=input_shape,
        class_names=class_names, source=source, class_counts=counts, ignore_label=ignore_label, **plan.counts,
    )

    def dataset(indices):
        ds = tf.data.Dataset.from_tensor_slices((image_paths[indices], mask_paths[indices]))
        return ds.map(lambda image, mask: (image_files.decode_image(image, channels, size), decode_mask(mask, size)),
                      num_parallel_calls=AUTOTUNE)

    plan = split_plan.SplitPlan(*(None if idx is None else dataset(idx) for idx in parts.values()),
                                **plan.counts)
    augmentation = split_plan.choose_augmentation(
        augment, lambda: JointAugmentation(input_shape, flip=True, seed=seed, mask_fill=ignore_label))
    return split_plan.build_splits(info, plan, make_segmentation_dataset, batch_size, size, augmentation, seed)
