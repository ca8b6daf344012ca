"""What the builders that read image files from disk (`image_folder`, `coco_json`) share: the
check that every file decodes, and the reading of TFDS split slices from whole splits."""

import functools

import tensorflow as tf
import tensorflow_datasets as tfds

# The first bytes of the formats that `tf.io.decode_image` decodes.
SIGNATURES = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8", "BMP": b"BM", "GIF": b"GIF8"}


def decoded_sizes(paths):
    """{path: (height, width)} of the files in `paths` that decode as images the way the input
    pipelines decode them (`tf.io.decode_image`: JPEG, PNG, GIF, BMP); a path missing from the
    result cannot be read or decoded. Every file is decoded once (in parallel)."""
    paths = list(paths)
    if not paths:
        return {}

    def size(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return path, tf.shape(image)[:2]

    dataset = tf.data.Dataset.from_tensor_slices(paths).map(size, num_parallel_calls=tf.data.AUTOTUNE)
    return {
        path.decode(): (int(shape[0]), int(shape[1]))
        for path, shape in dataset.ignore_errors().as_numpy_iterator()
    }


def undecodable_reason(path):
    """Why the file `path` does not decode as an image, to follow its name ("is empty"): it cannot
    be read, is empty, is a damaged or truncated PNG, JPEG, BMP or GIF, or is of another format."""
    try:
        with open(path, "rb") as f:
            head = f.read(max(len(signature) for signature in SIGNATURES.values()))
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if not head:
        return "is empty"
    kind = next((kind for kind, signature in SIGNATURES.items() if head.startswith(signature)), None)
    if kind is not None:
        return f"is a damaged or truncated {kind} file (it starts as one but does not decode)"
    return "is not a PNG, JPEG, BMP or GIF image"


def unreadable_error(dataset, paths):
    """The ValueError for `paths` (non-empty) that do not decode as images, naming them and why."""
    paths = sorted(paths)
    shown = "; ".join(f"{path} {undecodable_reason(path)}" for path in paths[:5])
    more = f"; and {len(paths) - 5} more" if len(paths) > 5 else ""
    return ValueError(
        f"Invalid `dataset`: {dataset} has {len(paths)} file(s) that cannot be read or decoded as images: "
        f"{shown}{more}. Replace or remove them."
    )


def read_split(split, split_infos, load, dataset):
    """The examples of `split` (a TFDS split: a name, a slice such as "train[:10%]", a sum
    "train+test", or one of `tfds.even_splits`).

    Args:
        split: the split.
        split_infos: the builder's `info.splits`.
        load: `(split name) -> tf.data.Dataset` of the whole split, always in the same order.
        dataset: the dataset's name, for the error of an unknown split.

    Returns:
        A `tf.data.Dataset`.
    """
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"Invalid split {split!r} of {dataset}: its splits are {sorted(split_infos)} ({error}). A recipe reads "
            "its `train_split` and `eval_split` ('train' and 'test' for the quick recipes)."
        ) from error
    parts = []
    for part in instructions:  # from_ None is the start, to None the end of the split.
        examples = load(part.splitname).skip(part.from_ or 0)
        parts.append(examples if part.to is None else examples.take(part.to - (part.from_ or 0)))
    return functools.reduce(lambda first, second: first.concatenate(second), parts)
