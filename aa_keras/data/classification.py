"""TFDS input pipelines: `build_dataset` gives (float32 images in [0, 1], int labels).

Any TFDS image classification dataset works (`cifar10`, `cifar100`, `imagenet2012` with a
`manual_dir`, ...), as does the embedded `glyph_pairs`, which is generated on first use, and a
folder of images `image_folder:PATH` (`PATH/<split>/<label>/<image>`, see
`aa_keras.datasets.image_folder`), read where it lies.
Preprocessing follows the recipe: Inception crops (`official.vision.ops.preprocess_ops`) with
optional RandAugment (`official.vision.ops.augment`), CIFAR pad-crop-flip, or a plain resize.
"""

import functools

import tensorflow as tf
import tensorflow_datasets as tfds
from official.vision.ops import augment, preprocess_ops

import aa_keras.datasets  # noqa: F401  (registers glyph_pairs with TFDS)
from aa_keras.datasets import coco_json, image_folder
from aa_keras.validation import positive_int

EMBEDDED_DATASETS = ("glyph_pairs",)
PREPROCESSING = ("inception", "cifar", "none")
_CIFAR_PAD = 4


def tfds_builder(name, data_dir, embedded, expected):
    """The TFDS builder of `name`; a dataset in `embedded` is generated into `data_dir` on
    first use (nothing is downloaded). Raises a ValueError for a name TFDS does not know, or
    a folder dataset (`image_folder:`, `coco_json:`) of the other task, saying what to use
    instead (`expected`, e.g. "a TFDS detection dataset")."""
    if name.startswith((image_folder.PREFIX, coco_json.PREFIX)):
        raise ValueError(f"Invalid `dataset`: received dataset={name!r}, which this task does not read. Use {expected}.")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"Unknown dataset: received dataset={name!r}, which TFDS does not know. Use {expected}."
        ) from error
    if name.split("/")[0] in embedded:  # any configuration, e.g. glyph_pairs/canvas64
        builder.download_and_prepare()
    return builder


@functools.lru_cache(maxsize=None)
def folder_builder(path):
    """The checked `ImageFolder` of `path` (every image is decoded once to check it, so a
    process opens each folder once; a folder changed since is not read again)."""
    return image_folder.ImageFolder(path)


def _builder(name, data_dir=None):
    """The TFDS builder of `name`, prepared; a clear error when its data is missing.
    `image_folder:PATH` is TFDS's `ImageFolder` of PATH (`data_dir` is not used)."""
    if name.startswith(image_folder.PREFIX):
        return folder_builder(name[len(image_folder.PREFIX) :])
    builder = tfds_builder(
        name,
        data_dir,
        EMBEDDED_DATASETS,
        "a TFDS image classification name (e.g. 'cifar10', 'cifar100', 'imagenet2012'), "
        f"{EMBEDDED_DATASETS[0]!r}, or {image_folder.PREFIX}PATH for a folder PATH/<split>/<label>/<image>",
    )
    supervised = builder.info.supervised_keys
    if not supervised or len(supervised) != 2 or "image" not in builder.info.features:
        raise ValueError(
            f"Invalid dataset: {name!r} is not a TFDS image classification dataset (it needs an "
            f"'image' feature and (image, label) supervised keys, has {supervised!r})."
        )
    return builder


def _load(builder, split, training, seed, data_dir=None):
    """The raw (encoded image, label) examples of `split`, in shuffled file order when training."""
    read_config = tfds.ReadConfig(shuffle_seed=seed) if training else None
    try:
        return builder.as_dataset(
            split=split,
            shuffle_files=training,
            as_supervised=True,
            decoders={builder.info.supervised_keys[0]: tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
    except AssertionError as error:  # TFDS's "could not find data" for an unprepared dataset.
        name = builder.name
        where = f" --data_dir={data_dir}" if data_dir else ""
        if name.startswith("imagenet2012"):
            how = (
                "ImageNet cannot be downloaded automatically: download ILSVRC2012_img_train.tar and "
                "ILSVRC2012_img_val.tar from https://image-net.org into a folder DIR, then run "
                f"`tfds build {name} --manual_dir=DIR{where}` (or pass --manual_dir=DIR to the trainer's "
                "first run)."
            )
        else:
            how = f"prepare it with `tfds build {name}{where}`."
        raise ValueError(f"Dataset {name!r} is not prepared in {builder.data_dir}: {how}") from error


def prepare(name, data_dir=None, manual_dir=None):
    """Prepares `name` (generating `glyph_pairs`; with `manual_dir` building e.g. ImageNet from
    its archives). Returns the builder."""
    builder = _builder(name, data_dir)
    if manual_dir is not None and not builder.is_prepared():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def num_classes(name, data_dir=None):
    """Number of classes of the dataset's label."""
    builder = _builder(name, data_dir)
    return builder.info.features[builder.info.supervised_keys[1]].num_classes


def class_names(name, data_dir=None):
    """The names of the dataset's classes, in label order (TFDS's `ClassLabel` names)."""
    builder = _builder(name, data_dir)
    return list(builder.info.features[builder.info.supervised_keys[1]].names)


def split_size(name, split, data_dir=None):
    """Number of examples in `split`."""
    return int(_load(_builder(name, data_dir), split, training=False, seed=None, data_dir=data_dir).cardinality())


def decode_image(encoded):
    """uint8 (H, W, 3) from encoded PNG, JPEG, BMP or GIF bytes (grey images get 3 channels)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _resize(image, image_size):
    return tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)


def _preprocess(image, image_size, preprocessing, training, randaugment):
    """uint8 (H, W, 3) -> float32 (image_size, image_size, 3) in [0, 1]."""
    if preprocessing == "inception":
        if training:
            image = preprocess_ops.random_crop_image(image)
        else:
            image = preprocess_ops.center_crop_image(image)
        image = _resize(image, image_size)
    elif preprocessing == "cifar":
        image = _resize(image, image_size)
        if training:
            padded = image_size + 2 * _CIFAR_PAD
            image = tf.image.pad_to_bounding_box(image, _CIFAR_PAD, _CIFAR_PAD, padded, padded)
            image = tf.image.random_crop(image, [image_size, image_size, 3])
    else:
        image = _resize(image, image_size)
    if training and preprocessing != "none":
        image = tf.image.random_flip_left_right(image)
    if training and randaugment is not None:
        image = tf.cast(randaugment.distort(tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)), tf.float32)
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def evaluation_image(image, image_size, preprocessing="none"):
    """A uint8 (H, W, 3) image of any size as the evaluation pipeline of `preprocessing` gives
    it to the model: float32 (image_size, image_size, 3) in [0, 1]."""
    return _preprocess(tf.cast(image, tf.float32), image_size, preprocessing, False, None)


def build_dataset(
    name,
    split,
    image_size,
    global_batch_size=None,
    data_dir=None,
    training=False,
    preprocessing="none",
    randaugment_magnitude=0,
    input_context=None,
    seed=0,
    skip_batches=0,
    shuffle_buffer=10000,
):
    """A `tf.data.Dataset` of (float32 image (image_size, image_size, 3) in [0, 1], int32 label).

    Args:
        name: TFDS dataset name; `glyph_pairs` is generated into `data_dir` on first use;
            `image_folder:PATH` reads the folder PATH/<split>/<label>/<image>.
        split: TFDS split, e.g. "train", "test", "validation", "train[:10%]".
        image_size: side of the output images.
        global_batch_size: batch over all replicas; None for unbatched examples. Training
            batches drop the remainder.
        data_dir: TFDS data directory; None for the TFDS default (~/tensorflow_datasets).
        training: shuffle (files and examples, from `seed`) and augment.
        preprocessing: one of "inception", "cifar", "none" (see `training.recipes.Recipe`).
        randaugment_magnitude: RandAugment magnitude for training images; 0 is off.
        input_context: a `tf.distribute.InputContext`: the split is cut into one even part per
            input pipeline and batches are per replica.
        seed: shuffle seed; the same seed gives the same order.
        skip_batches: batches (of this pipeline) to skip from the start, to resume mid-epoch.
        shuffle_buffer: examples in the shuffle buffer.

    Returns:
        The dataset, batched when `global_batch_size` is given.
    """
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"Invalid `preprocessing`: received {preprocessing!r}, expected one of {PREPROCESSING}.")
    positive_int("image_size", image_size)
    dataset, batch_size = pipeline_examples(
        lambda part: _load(_builder(name, data_dir), part, training, seed, data_dir=data_dir),
        split, global_batch_size, input_context, training, seed, skip_batches, shuffle_buffer,
    )
    randaugment = augment.RandAugment(num_layers=2, magnitude=randaugment_magnitude) if randaugment_magnitude else None

    def preprocess(encoded, label):
        image = tf.cast(decode_image(encoded), tf.float32)
        return _preprocess(image, image_size, preprocessing, training, randaugment), tf.cast(label, tf.int32)

    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)


def pipeline_examples(load, split, global_batch_size, input_context, training, seed, skip_batches, shuffle_buffer):
    """The examples of one input pipeline, before preprocessing and batching.

    Args:
        load: `(split) -> tf.data.Dataset` of raw examples.
        split, global_batch_size, input_context, training, seed, skip_batches, shuffle_buffer:
            as in `build_dataset`: with an `input_context` only this pipeline's even part of
            `split` is loaded; training shuffles from `seed`; the examples of the first
            `skip_batches` batches of this pipeline are skipped.

    Returns:
        (dataset, batch size: per replica with an `input_context`, else `global_batch_size`).
    """
    batch_size = global_batch_size
    if input_context is not None:
        if global_batch_size is None:
            raise ValueError("`global_batch_size` is required with an `input_context`.")
        batch_size = per_replica_batch_size(global_batch_size, input_context.num_replicas_in_sync)
        split = tfds.even_splits(split, n=input_context.num_input_pipelines)[input_context.input_pipeline_id]
    dataset = load(split)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    if skip_batches:
        replicas_per_pipeline = 1 if input_context is None else (
            input_context.num_replicas_in_sync // input_context.num_input_pipelines
        )
        dataset = dataset.skip(skip_batches * batch_size * replicas_per_pipeline)
    return dataset, batch_size


def per_replica_batch_size(global_batch_size, num_replicas):
    """`global_batch_size / num_replicas`; a ValueError when it does not divide."""
    if not isinstance(global_batch_size, int) or global_batch_size <= 0 or global_batch_size % num_replicas:
        raise ValueError(
            f"Invalid global batch size: received global_batch_size={global_batch_size!r}, which does not "
            f"split evenly over {num_replicas} replicas; use a multiple of {num_replicas}."
        )
    return global_batch_size // num_replicas
