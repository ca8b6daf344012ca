"""`image_folder:PATH`: an image classification dataset from a folder of image files, read by
TFDS's `tfds.folder_dataset.ImageFolder` with its input checked.

Layout (TFDS's): `PATH/<split>/<label>/<image>`, with .jpg, .jpeg or .png images of any size.
The splits are the folder names under PATH; the classes are the label folder names over all
splits, sorted, so that `info.features["label"].names[i]` is the name of label i. Features:
"image" (uint8 (H, W, 3)), "label" (ClassLabel), "image/filename"; supervised keys
("image", "label"). Nothing is prepared or written: the files are read where they lie.
"""

import os

import tensorflow_datasets as tfds

from aa_keras.datasets.image_files import decoded_sizes, read_split, unreadable_error
from aa_keras.validation import unfit_class_names

PREFIX = "image_folder:"


class ImageFolder(tfds.folder_dataset.ImageFolder, skip_registration=True):
    """TFDS's `ImageFolder` that rejects what it cannot train on and reads split slices.

    Opening it checks the folder: a ValueError ("Invalid `dataset`: ...") for a missing or
    empty folder, a split folder without images, a label folder whose name has leading or
    trailing spaces, a label folder without images in any split, fewer than two classes, or files
    that do not decode as images (named, damaged ones told from other formats). Every image is
    decoded once for the last check.

    Each split is read in TFDS's fixed order (its files shuffled once, seeded by the split
    name); `shuffle_files` is ignored, so that a seeded pipeline reads the same order every
    time. Splits take TFDS's slice syntax ("train[:10%]", "train+test", `tfds.even_splits`).
    """

    def __init__(self, root_dir):
        if not root_dir:
            raise ValueError(f"Invalid `dataset`: received {PREFIX!r} without a folder; use {PREFIX}PATH.")
        root_dir = os.path.abspath(os.path.expanduser(root_dir))
        name = f"{PREFIX}{root_dir}"
        layout = f"{root_dir}/<split>/<label>/<image> (.jpg, .jpeg or .png)"
        if not os.path.isdir(root_dir):
            raise ValueError(f"Invalid `dataset`: {name}: no such folder. Give a folder in the layout {layout}.")
        split_folders = sorted(entry for entry in os.listdir(root_dir) if os.path.isdir(os.path.join(root_dir, entry)))
        if not split_folders:
            raise ValueError(
                f"Invalid `dataset`: {name} has no split folders (e.g. 'train', 'test'). Put the images in {layout}."
            )
        super().__init__(root_dir)
        for split in split_folders:
            if not self._split_examples.get(split):
                raise ValueError(
                    f"Invalid `dataset`: split {split!r} of {name} has no images: put them in one folder per class, "
                    f"{root_dir}/{split}/<label>/<image> (.jpg, .jpeg or .png), or remove {root_dir}/{split}."
                )
        names = self.info.features["label"].names
        unfit = unfit_class_names(names)
        if unfit:
            folders = [os.path.join(root_dir, split, label) for split in split_folders for label in unfit]
            folders = [folder for folder in folders if os.path.isdir(folder)]
            raise ValueError(
                f"Invalid `dataset`: the class folders {folders} of {name} have "
                "names with leading or trailing spaces (or line breaks), which class names cannot have; rename "
                f"them in every split (e.g. {unfit[0]!r} to {unfit[0].strip()!r})."
            )
        if len(names) < 2:
            raise ValueError(
                f"Invalid `dataset`: {name} has {len(names)} class ({names}); a classifier needs at least 2 label "
                f"folders in {layout}."
            )
        used = {example.label for examples in self._split_examples.values() for example in examples}
        empty = [label for label in names if label not in used]
        if empty:
            raise ValueError(
                f"Invalid `dataset`: the classes {empty} of {name} have no images in any split; put images in "
                f"{root_dir}/<split>/<label>/ or remove those folders."
            )
        paths = [example.image_path for examples in self._split_examples.values() for example in examples]
        unreadable = set(paths) - set(decoded_sizes(paths))
        if unreadable:
            raise unreadable_error(name, unreadable)

    def is_prepared(self):
        """True: the folder is the dataset, there is nothing to prepare."""
        return True

    def _as_dataset(self, split, shuffle_files=False, decoders=None, read_config=None):
        del shuffle_files, read_config  # A fixed order; the input pipelines shuffle with their seed.
        load = super()._as_dataset
        name = f"{PREFIX}{self._data_dir}"
        return read_split(split, self.info.splits, lambda whole: load(whole, decoders=decoders), name)
