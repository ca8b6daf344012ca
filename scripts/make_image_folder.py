"""Writes the embedded glyph_pairs dataset as an image folder, for `--dataset=image_folder:OUT`.

    python scripts/make_image_folder.py OUT                 # all 20000 train and 2000 test images
    python scripts/make_image_folder.py OUT --limit=500     # the first 500 images of each split
    python scripts/make_image_folder.py OUT --limit=1500 --test_limit=400   # a small folder

Each image of the train and test splits becomes a PNG file OUT/<split>/<label>/<index>.png, the
label folders named by the dataset's label names (`different`, `same`), the index its position
in the TFDS split. glyph_pairs is generated into --data_dir first if it is not there (nothing
is downloaded). OUT must not exist: the folder is written next to it and renamed into place
when complete, so an interrupted run leaves no partial OUT.
"""

import argparse
import os
import shutil
import sys
import tempfile

import tensorflow as tf
import tensorflow_datasets as tfds

import aa_keras.datasets  # noqa: F401  (registers glyph_pairs with TFDS)

SPLITS = ("train", "test")


def write_image_folder(out, limit=None, data_dir=None, dataset="glyph_pairs", test_limit=None):
    """Writes `dataset`'s train and test images (the first `limit` of train and the first
    `test_limit` of test, which defaults to `limit`; all with None) as PNG files into the new
    folder `out`; returns {split: number of images}."""
    test_limit = limit if test_limit is None else test_limit
    for name, value in (("limit", limit), ("test_limit", test_limit)):
        if value is not None and value <= 0:
            raise ValueError(f"Invalid `--{name}`: received {name}={value!r}, expected a positive number of images.")
    limits = {"train": limit, "test": test_limit}
    if os.path.exists(out):
        raise ValueError(f"Invalid output folder: {out!r} exists; give a new folder (nothing was written).")
    builder = tfds.builder(dataset, data_dir=data_dir)
    builder.download_and_prepare()
    names = builder.info.features["label"].names
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tmp-image-folder-")
    counts = {}
    try:
        for split in SPLITS:
            for name in names:
                os.makedirs(os.path.join(staging, split, name))
            examples = builder.as_dataset(split=split, as_supervised=True)
            if limits[split] is not None:
                examples = examples.take(limits[split])
            counts[split] = 0
            for index, (image, label) in enumerate(examples.as_numpy_iterator()):
                path = os.path.join(staging, split, names[label], f"{index:05d}.png")
                tf.io.write_file(path, tf.io.encode_png(image))
                counts[split] += 1
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="New folder to write OUT/<split>/<label>/<index>.png into.")
    parser.add_argument("--limit", type=int, default=None, help="At most this many images per split (default: all).")
    parser.add_argument("--test_limit", type=int, default=None, help="At most this many test images (default: --limit).")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory of glyph_pairs (default: TFDS's).")
    args = parser.parse_args(argv)
    try:
        counts = write_image_folder(args.out, args.limit, args.data_dir, test_limit=args.test_limit)
    except ValueError as error:
        sys.exit(f"make_image_folder: {error}")
    print(", ".join(f"{count} {split}" for split, count in counts.items()) + f" images written to {args.out}")


if __name__ == "__main__":
    main()
