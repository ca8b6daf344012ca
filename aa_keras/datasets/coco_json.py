"""`coco_json:PATH`: an object detection dataset from COCO-style annotation files (what
labelling tools export), in the features of TFDS `coco/2017` (and of the embedded `glyph_boxes`).

Layout: `PATH/annotations/instances_<split>.json` per split, the images of the split in
`PATH/<split>/` (each image's `file_name` is relative to it). A JSON file holds "images"
(`id`, `file_name`, `width`, `height`), "annotations" (`image_id`, `category_id`, `bbox`
[x, y, width, height] in pixels; optional `area`, `iscrowd`) and "categories" (`id`, `name`),
the same categories in every split. Images without annotations are allowed; a split without any
is not (a detector would learn nothing from it, and COCO's evaluation has no objects to score).

Features (`detection_features`):
    image             uint8 (H, W, 3)
    image/id          int64, the image's COCO id
    objects/bbox      normalized [ymin, xmin, ymax, xmax]
    objects/label     ClassLabel: the categories sorted by id, so label i is the i-th category
                      by id (sparse COCO ids such as 1, 3, 7 become 0, 1, 2)
    objects/area      int64, the annotation's `area` rounded (the box area without one)
    objects/is_crowd  bool, the annotation's `iscrowd`

Opening the dataset reads and checks every JSON file and decodes every image once: bad JSON, a
missing or undecodable image, an image whose size differs from its entry, a category name with
surrounding spaces, an annotation of an unknown image or category, a box with a non-positive
size or outside its image, and an empty "annotations" list give a ValueError naming the file and
the entry. Nothing is prepared or written: the images are read where they lie, each split in the
order of its JSON file's "images".
"""

import glob
import json
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.datasets.image_files import decoded_sizes, read_split, unreadable_error
from aa_keras.validation import unfit_class_names

PREFIX = "coco_json:"
ANNOTATIONS = "annotations"
# Boxes may pass the image border by this many pixels (float rounding of labelling tools); they
# are clipped to the image.
BORDER_TOLERANCE = 0.01


def detection_features(label_names, image_shape=(None, None, 3)):
    """The features of a detection dataset in the layout of TFDS `coco/2017`."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=image_shape),
            "image/id": np.int64,
            "objects": tfds.features.Sequence(
                {
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=label_names),
                    "area": np.int64,
                    "is_crowd": np.bool_,
                }
            ),
        }
    )


def _invalid(where, message):
    return ValueError(f"Invalid `dataset`: {where}: {message}")


def _entries(annotations, key, path):
    entries = annotations.get(key) if isinstance(annotations, dict) else None
    if not isinstance(entries, list):
        raise _invalid(
            path, f"expected a JSON object with a list {key!r} (COCO's 'images', 'annotations', 'categories')."
        )
    return entries


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(entry, key, kind, where):
    """entry[key], checked to be of `kind` ("int", "number", "name")."""
    value = entry.get(key) if isinstance(entry, dict) else None
    valid = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": _is_number(value),
        "name": isinstance(value, str) and value != "",
    }[kind]
    if not valid:
        expected = {"int": "an integer", "number": "a number", "name": "a non-empty string"}[kind]
        raise _invalid(where, f"{key!r} must be {expected}, received {value!r}.")
    return value


def _categories(annotations, path):
    """[(id, name)] sorted by id."""
    categories, names = {}, set()
    for index, entry in enumerate(_entries(annotations, "categories", path)):
        where = f"{path}, categories[{index}]"
        category_id, name = _field(entry, "id", "int", where), _field(entry, "name", "name", where)
        if unfit_class_names([name]):
            raise _invalid(
                where, f"the category name {name!r} has leading or trailing spaces (or a line break), which class "
                f"names cannot have; remove them from the name."
            )
        if category_id in categories or name in names:
            raise _invalid(where, f"category id {category_id} or name {name!r} appears twice.")
        categories[category_id] = name
        names.add(name)
    if not categories:
        raise _invalid(path, "'categories' is empty; a detector needs at least one category.")
    return sorted(categories.items())


def _images(annotations, path, image_dir):
    """{image id: (file path, height, width, where)} in file order."""
    images = {}
    for index, entry in enumerate(_entries(annotations, "images", path)):
        where = f"{path}, images[{index}]"
        image_id = _field(entry, "id", "int", where)
        file_name = _field(entry, "file_name", "name", where)
        where = f"{where} (id={image_id}, file_name={file_name!r})"
        width, height = _field(entry, "width", "int", where), _field(entry, "height", "int", where)
        if width <= 0 or height <= 0:
            raise _invalid(where, f"width and height must be positive, received {width}x{height}.")
        if image_id in images:
            raise _invalid(where, f"image id {image_id} appears twice.")
        file = os.path.join(image_dir, file_name)
        if not os.path.isfile(file):
            raise _invalid(where, f"the image file {file} does not exist (images lie in {image_dir}/).")
        images[image_id] = (file, height, width, where)
    if not images:
        raise _invalid(path, "'images' is empty.")
    return images


def _objects(annotations, path, images, labels):
    """{image id: list of (normalized box, label, area, is_crowd)}."""
    objects = {image_id: [] for image_id in images}
    entries = _entries(annotations, "annotations", path)
    if not entries:
        raise _invalid(
            path, "'annotations' is empty: its images have no labelled objects, so a detector learns nothing from "
            "them (the loss is 0) and COCO's evaluation has nothing to score. Add the objects' boxes to 'annotations'."
        )
    for index, entry in enumerate(entries):
        where = f"{path}, annotations[{index}]"
        image_id, category_id = _field(entry, "image_id", "int", where), _field(entry, "category_id", "int", where)
        where = f"{where} (image_id={image_id}, category_id={category_id})"
        if image_id not in images:
            raise _invalid(where, f"no image has id {image_id} in 'images'.")
        if category_id not in labels:
            raise _invalid(where, f"no category has id {category_id}; the category ids are {sorted(labels)}.")
        box = entry.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(value) for value in box)):
            raise _invalid(where, f"'bbox' must be [x, y, width, height] in pixels, received {box!r}.")
        x, y, w, h = box
        _, height, width, _ = images[image_id]
        if w <= 0 or h <= 0:
            raise _invalid(where, f"the box {box} has a non-positive width or height.")
        tolerance = BORDER_TOLERANCE
        if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
            raise _invalid(where, f"the box {box} (x, y, width, height) lies outside its {width}x{height} image.")
        area = _field(entry, "area", "number", where) if "area" in entry else w * h
        crowd = entry.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise _invalid(where, f"'iscrowd' must be 0 or 1, received {crowd!r}.")
        normalized = np.clip([y / height, x / width, (y + h) / height, (x + w) / width], 0.0, 1.0)
        objects[image_id].append((normalized, labels[category_id], int(round(area)), bool(crowd)))
    return objects


def _read_split(root_dir, split, path):
    """(categories [(id, name)], examples [(file, image id, objects)]) of one annotation file."""
    try:
        with open(path) as f:
            annotations = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise _invalid(path, f"not valid JSON ({error}).") from None
    categories = _categories(annotations, path)
    labels = {category_id: label for label, (category_id, _) in enumerate(categories)}
    images = _images(annotations, path, os.path.join(root_dir, split))
    objects = _objects(annotations, path, images, labels)
    sizes = decoded_sizes(file for file, _, _, _ in images.values())
    unreadable = [file for file, _, _, _ in images.values() if file not in sizes]
    if unreadable:
        raise unreadable_error(f"{PREFIX}{root_dir}", unreadable)
    for file, height, width, where in images.values():
        if sizes[file] != (height, width):
            actual_height, actual_width = sizes[file]
            raise _invalid(
                where, f"the image is {actual_width}x{actual_height} (width x height), the entry says {width}x{height}."
            )
    return categories, [(file, image_id, objects[image_id]) for image_id, (file, _, _, _) in images.items()]


class CocoJson(tfds.core.DatasetBuilder, skip_registration=True):
    """COCO-style annotation files and their images as a TFDS builder (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, root_dir):
        if not root_dir:
            raise ValueError(f"Invalid `dataset`: received {PREFIX!r} without a folder; use {PREFIX}PATH.")
        root_dir = os.path.abspath(os.path.expanduser(root_dir))
        name = f"{PREFIX}{root_dir}"
        pattern = os.path.join(root_dir, ANNOTATIONS, "instances_*.json")
        files = sorted(glob.glob(pattern))
        if not files:
            raise ValueError(
                f"Invalid `dataset`: {name} has no annotation files {pattern}. Give a folder with "
                f"{ANNOTATIONS}/instances_<split>.json (e.g. instances_train.json) and the images in <split>/."
            )
        self._examples, categories = {}, None
        for path in files:
            split = os.path.basename(path)[len("instances_") : -len(".json")]
            split_categories, self._examples[split] = _read_split(root_dir, split, path)
            if categories is not None and split_categories != categories:
                raise _invalid(
                    path, f"its categories {split_categories} differ from those of {files[0]} ({categories}); "
                    "every split needs the same categories."
                )
            categories = split_categories
        self._label_names = [category_name for _, category_name in categories]
        super().__init__(data_dir=root_dir)
        self._data_dir = root_dir  # The dataset is the folder itself; nothing is written.
        self.info.set_splits(
            tfds.core.SplitDict(
                [
                    tfds.core.SplitInfo(name=split, shard_lengths=[len(examples)], num_bytes=0)
                    for split, examples in self._examples.items()
                ]
            )
        )

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="Object detection from COCO-style annotation files.",
            features=detection_features(self._label_names),
        )

    def _download_and_prepare(self, dl_manager, download_config=None):
        raise NotImplementedError(f"{type(self).__name__} reads its files where they lie; there is nothing to prepare.")

    def download_and_prepare(self, **kwargs):
        """Nothing to prepare: the files are read where they lie."""
        del kwargs

    def is_prepared(self):
        """True: the files are the dataset, there is nothing to prepare."""
        return True

    def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        """The examples of `split` in file order (`shuffle_files` is ignored: the input pipelines
        shuffle with their seed); `decoders` are not supported."""
        del read_config, shuffle_files
        if decoders:
            raise ValueError(f"{type(self).__name__} does not take `decoders`; received {decoders!r}.")
        return read_split(split, self.info.splits, self._load_split, f"{PREFIX}{self._data_dir}")

    def _load_split(self, split):
        examples = self._examples[split]
        counts = [len(objects) for _, _, objects in examples]
        flat = [item for _, _, objects in examples for item in objects]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        columns = {
            "bbox": tf.constant(np.array([box for box, _, _, _ in flat], np.float32).reshape(-1, 4)),
            "label": tf.constant([label for _, label, _, _ in flat], tf.int64, shape=[len(flat)]),
            "area": tf.constant([area for _, _, area, _ in flat], tf.int64, shape=[len(flat)]),
            "is_crowd": tf.constant([crowd for _, _, _, crowd in flat], tf.bool, shape=[len(flat)]),
        }
        image_feature = self.info.features["image"]

        def example(file, image_id, start, end):
            return {
                "image": image_feature.decode_example(tf.io.read_file(file)),
                "image/id": image_id,
                "objects": {key: column[start:end] for key, column in columns.items()},
            }

        slices = (
            [file for file, _, _ in examples],
            np.array([image_id for _, image_id, _ in examples], np.int64),
            starts[:-1],
            starts[1:],
        )
        return tf.data.Dataset.from_tensor_slices(slices).map(example, num_parallel_calls=tf.data.AUTOTUNE)
