"""TFDS input pipelines for object detection, for datasets in the layout of TFDS `coco/2017`
(an "image" and "objects" with "bbox" (normalized [ymin, xmin, ymax, xmax]) and "label"; "id"
or "image/id", "area" and "is_crowd" when present), such as the embedded `glyph_boxes`, and
for COCO-style annotation files `coco_json:PATH` (`PATH/annotations/instances_<split>.json`,
the images in `PATH/<split>/`, see `aa_keras.datasets.coco_json`), read where they lie.

Images are resized RetinaNet-style with Model Garden's `preprocess_ops`: scaled to fit an
`image_size` square keeping the aspect ratio, then padded at the bottom and right. Training
adds a random horizontal flip and scale jitter (the scaled image is `scale` times the square,
`scale` uniform in [scale_min, scale_max], and a random `image_size` crop of it is kept).

Training examples: (float32 image (S, S, 3) in [0, 1], {"boxes": float32 (M, 4) [ymin, xmin,
ymax, xmax] in pixels of the image, "labels": int32 (M,)}), padded with -1 to `max_instances`
objects (crowd boxes are dropped). Evaluation examples: (image, ground truth) where the
ground truth has what `official.vision.evaluation.coco_evaluator.COCOEvaluator` reads.
"""

import functools

import tensorflow as tf
import tensorflow_datasets as tfds
from official.vision.ops import box_ops, preprocess_ops

import aa_keras.datasets  # noqa: F401  (registers glyph_boxes with TFDS)
from aa_keras.data.classification import pipeline_examples, tfds_builder
from aa_keras.datasets import coco_json
from aa_keras.validation import positive_int

EMBEDDED_DATASETS = ("glyph_boxes",)


@functools.lru_cache(maxsize=None)
def coco_json_builder(path):
    """The checked `CocoJson` of `path` (its images are decoded once to check them, so a process
    opens each folder once; a folder changed since is not read again)."""
    return coco_json.CocoJson(path)


def builder(name, data_dir=None):
    """The TFDS builder of the detection dataset `name`; `glyph_boxes` is generated on first
    use; `coco_json:PATH` reads COCO-style annotation files in PATH (`data_dir` is not used).
    Raises a ValueError for an unknown, unsuitable or unprepared dataset."""
    if name.startswith(coco_json.PREFIX):
        return coco_json_builder(name[len(coco_json.PREFIX) :])
    expected = (
        f"a TFDS detection dataset in the layout of 'coco/2017', {EMBEDDED_DATASETS[0]!r}, or {coco_json.PREFIX}PATH "
        "for PATH/annotations/instances_<split>.json with the images in PATH/<split>/"
    )
    dataset_builder = tfds_builder(name, data_dir, EMBEDDED_DATASETS, expected)
    features = dataset_builder.info.features
    objects = features["objects"] if "objects" in features else None
    if "image" not in features or objects is None or not {"bbox", "label"} <= set(objects.feature):
        raise ValueError(
            f"Invalid dataset: {name!r} is not a detection dataset in the layout of 'coco/2017' (it needs "
            f"'image' and 'objects' with 'bbox' and 'label'; it has {sorted(features)})."
        )
    return dataset_builder


def num_classes(name, data_dir=None):
    """Number of object classes of the dataset."""
    return builder(name, data_dir).info.features["objects"]["label"].num_classes


def class_names(name, data_dir=None):
    """The names of the object classes, in label order (TFDS's `ClassLabel` names)."""
    return list(builder(name, data_dir).info.features["objects"]["label"].names)


def split_size(name, split, data_dir=None):
    """Number of examples in `split` (a TFDS split string, slices included)."""
    dataset_builder = builder(name, data_dir)
    try:
        return int(dataset_builder.info.splits[split].num_examples)
    except KeyError as error:
        if not dataset_builder.is_prepared():  # An unprepared dataset has no splits yet.
            raise _not_prepared(dataset_builder) from error
        raise ValueError(
            f"Invalid split {split!r} of {name!r}; its splits are {sorted(dataset_builder.info.splits)}."
        ) from error


def _not_prepared(dataset_builder):
    config = dataset_builder.builder_config
    name = f"{dataset_builder.name}/{config.name}" if config else dataset_builder.name
    return ValueError(
        f"Dataset {name!r} is not prepared in {dataset_builder.data_dir}: prepare it with `tfds build {name}` "
        "(with the same --data_dir)."
    )


def _load(dataset_builder, split, training, seed):
    read_config = tfds.ReadConfig(shuffle_seed=seed) if training else None
    try:
        return dataset_builder.as_dataset(split=split, shuffle_files=training, read_config=read_config)
    except AssertionError as error:  # TFDS's "could not find data" for an unprepared dataset.
        raise _not_prepared(dataset_builder) from error


def _source_id(example):
    for key in ("image/id", "id"):
        if key in example:
            return tf.cast(example[key], tf.int64)
    raise ValueError("The dataset has neither an 'image/id' nor an 'id' feature to identify images for evaluation.")


def _objects(example):
    """(normalized boxes (N, 4), int32 labels (N,), bool is_crowd (N,), float32 areas or None)."""
    objects = example["objects"]
    boxes = tf.cast(objects["bbox"], tf.float32)
    labels = tf.cast(objects["label"], tf.int32)
    is_crowd = tf.cast(objects["is_crowd"], tf.bool) if "is_crowd" in objects else tf.zeros_like(labels, tf.bool)
    areas = tf.cast(objects["area"], tf.float32) if "area" in objects else None
    return boxes, labels, is_crowd, areas


def _pad(tensor, size, value=-1):
    return preprocess_ops.clip_or_pad_to_fixed_size(tensor, size, constant_values=value)


def preprocess_for_training(example, image_size, scale_min=1.0, scale_max=1.0, flip=True, max_instances=100):
    """One training example (see the module docstring) from a TFDS example."""
    image = example["image"]
    boxes, labels, is_crowd, _ = _objects(example)
    keep = tf.logical_not(is_crowd)
    boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
    if flip:
        image, boxes, _ = preprocess_ops.random_horizontal_flip(image, boxes)
    original_size = tf.cast(tf.shape(image)[:2], tf.float32)
    image, info = preprocess_ops.resize_and_crop_image(
        image, [image_size, image_size], [image_size, image_size], aug_scale_min=scale_min, aug_scale_max=scale_max
    )
    boxes = box_ops.denormalize_boxes(boxes, original_size)
    boxes = preprocess_ops.resize_and_crop_boxes(boxes, info[2, :], [image_size, image_size], info[3, :])
    indices = box_ops.get_non_empty_box_indices(boxes)
    boxes, labels = tf.gather(boxes, indices), tf.gather(labels, indices)
    image = tf.ensure_shape(tf.cast(image, tf.float32) / 255.0, [image_size, image_size, 3])
    return image, {"boxes": _pad(boxes, max_instances), "labels": _pad(labels, max_instances)}


def resize_for_evaluation(image, image_size):
    """An image (H, W, 3) of any size as evaluation gives it to the detector: float32
    (image_size, image_size, 3) in [0, 1], scaled to fit and padded at the bottom and right;
    and `image_info` (4, 2) of `resize_and_crop_image` (its row 2 is the scale from pixels of
    the image to pixels of the resized one)."""
    image, info = preprocess_ops.resize_and_crop_image(image, [image_size, image_size], [image_size, image_size])
    return tf.ensure_shape(tf.cast(image, tf.float32) / 255.0, [image_size, image_size, 3]), info


def preprocess_for_evaluation(example, image_size, max_instances=100):
    """One evaluation example: (image, ground truth with `source_id`, `height`, `width`,
    `image_info` (4, 2) from `resize_and_crop_image`, `num_detections`, `boxes` in pixels of
    the original image, `classes` (label + 1: COCO category ids start at 1), `areas`,
    `is_crowds`), padded to `max_instances` objects."""
    image = example["image"]
    boxes, labels, is_crowd, areas = _objects(example)
    original_size = tf.cast(tf.shape(image)[:2], tf.float32)
    boxes = box_ops.denormalize_boxes(boxes, original_size)
    if areas is None:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    image, info = resize_for_evaluation(image, image_size)
    groundtruth = {
        "source_id": _source_id(example),
        "height": tf.cast(original_size[0], tf.int32),
        "width": tf.cast(original_size[1], tf.int32),
        "image_info": info,
        "num_detections": tf.minimum(tf.shape(labels)[0], max_instances),
        "boxes": _pad(boxes, max_instances),
        "classes": _pad(labels + 1, max_instances),
        "areas": _pad(areas, max_instances),
        "is_crowds": _pad(tf.cast(is_crowd, tf.int32), max_instances, 0),
    }
    return image, groundtruth


def build_dataset(
    name,
    split,
    image_size,
    global_batch_size=None,
    data_dir=None,
    training=False,
    scale_min=1.0,
    scale_max=1.0,
    flip=True,
    max_instances=100,
    input_context=None,
    seed=0,
    skip_batches=0,
    shuffle_buffer=1000,
):
    """A `tf.data.Dataset` of training or evaluation examples (see the module docstring).

    Args:
        name: TFDS name (e.g. "coco/2017", "glyph_boxes"); `glyph_boxes` is generated on first use;
            `coco_json:PATH` reads COCO-style annotation files in PATH.
        split: TFDS split, e.g. "train", "validation", "test", "train[:10%]".
        image_size: side of the square images.
        global_batch_size: batch over all replicas; None for unbatched examples. Training
            batches drop the remainder.
        data_dir: TFDS data directory.
        training: shuffle (from `seed`), flip and jitter; otherwise evaluation examples.
        scale_min, scale_max: scale jitter range of training (1, 1 is off).
        flip: random horizontal flips in training.
        max_instances: objects per image kept (padded to it).
        input_context: a `tf.distribute.InputContext`: one even part of the split per input
            pipeline, per-replica batches.
        seed: shuffle seed.
        skip_batches: batches (of this pipeline) skipped from the start, to resume mid-epoch.
        shuffle_buffer: examples in the shuffle buffer.

    Returns:
        The dataset, batched when `global_batch_size` is given.
    """
    positive_int("image_size", image_size)
    if not 0.0 < scale_min <= 1.0 <= scale_max:
        raise ValueError(
            f"Invalid scale jitter: expected 0 < scale_min <= 1 <= scale_max, received "
            f"scale_min={scale_min!r}, scale_max={scale_max!r}."
        )
    positive_int("max_instances", max_instances)
    dataset, batch_size = pipeline_examples(
        lambda part: _load(builder(name, data_dir), part, training, seed),
        split, global_batch_size, input_context, training, seed, skip_batches, shuffle_buffer,
    )
    if training:
        dataset = dataset.map(
            lambda example: preprocess_for_training(example, image_size, scale_min, scale_max, flip, max_instances),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = dataset.map(
            lambda example: preprocess_for_evaluation(example, image_size, max_instances),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if batch_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)
