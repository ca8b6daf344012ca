"""`glyph_boxes`: an offline TFDS object detection dataset in the layout of TFDS `coco/2017`.

Each 128x128 RGB image shows 1 to `MAX_OBJECTS` glyphs of the `glyph_pairs` alphabet
(`NUM_GLYPHS` binary 5x5 shapes, see `aa_keras.datasets.glyph_pairs.make_alphabet`), each
magnified by an integer factor in `SCALES` (30 to 55 pixels), drawn in a random bright colour on
a dark noisy background, without overlaps. The class of an object is its shape; its box is
the tight box of the glyph's pixels. Sizes are chosen so that every object has an anchor of a
standard RetinaNet (P3-P7, anchor size 4, 3 scales, 3 aspect ratios) with IoU >= 0.5.

Features follow `coco/2017`, so one input pipeline serves both:
    image          uint8 (128, 128, 3)
    image/id       int64, unique over the dataset
    objects/bbox   normalized [ymin, xmin, ymax, xmax]
    objects/label  ClassLabel, NUM_GLYPHS classes
    objects/area   int64, the box area in pixels
    objects/is_crowd  bool, always False

Everything is generated on the machine from `SEED` in a few seconds, identically everywhere:
`tfds.builder("glyph_boxes").download_and_prepare()` downloads nothing.
"""

import numpy as np
import tensorflow_datasets as tfds

from aa_keras.datasets.coco_json import detection_features
from aa_keras.datasets.glyph_pairs import NUM_GLYPHS, make_alphabet
from aa_keras.datasets.glyph_pairs import SEED as ALPHABET_SEED

IMAGE_SIZE = 128
MAX_OBJECTS = 3
SCALES = (6, 7, 8, 9, 10, 11)
# Free pixels kept between the boxes of two objects.
MARGIN = 2
SEED = 7
SPLIT_SIZES = {"train": 2000, "test": 200}


def _tight_box(mask):
    """[ymin, xmin, ymax, xmax) of the on-pixels of a boolean mask, in pixels."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])


def _overlaps(box, others):
    return any(
        box[0] < o[2] + MARGIN and o[0] < box[2] + MARGIN and box[1] < o[3] + MARGIN and o[1] < box[3] + MARGIN
        for o in others
    )


def make_example(rng, alphabet):
    """One image and its objects: (uint8 (IMAGE_SIZE, IMAGE_SIZE, 3), int (N, 4) pixel boxes
    [ymin, xmin, ymax, xmax), int (N,) labels), 1 <= N <= MAX_OBJECTS."""
    image = rng.integers(0, 64, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(len(alphabet)))
        mask = np.kron(alphabet[label], np.ones((int(rng.choice(SCALES)),) * 2, dtype=bool))
        for _attempt in range(20):  # Rejection sampling of a free place; give up on a full image.
            top, left = rng.integers(0, IMAGE_SIZE - len(mask) + 1, size=2)
            box = _tight_box(mask) + [top, left, top, left]
            if not _overlaps(box, boxes):
                break
        else:
            continue
        window = image[top : top + len(mask), left : left + len(mask)]
        window[mask] = rng.integers(128, 256, size=3, dtype=np.uint8)
        boxes.append(box)
        labels.append(label)
    return image, np.array(boxes), np.array(labels)


class GlyphBoxes(tfds.core.GeneratorBasedBuilder):
    """Find and name every glyph in the image. Generated offline from a seed."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 16 glyph classes, 128x128 images, 2000 train / 200 test."}
    url_infos = None  # Nothing is downloaded (see `GlyphPairs.url_infos`).

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=detection_features(
                [f"glyph_{i}" for i in range(NUM_GLYPHS)], image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {
            split: self._generate_examples(split_index, num_examples)
            for split_index, (split, num_examples) in enumerate(SPLIT_SIZES.items())
        }

    def _generate_examples(self, split_index, num_examples):
        alphabet = make_alphabet(np.random.default_rng(ALPHABET_SEED))
        rng = np.random.default_rng([SEED, split_index])
        first_id = sum(list(SPLIT_SIZES.values())[:split_index])
        for index in range(num_examples):
            image, boxes, labels = make_example(rng, alphabet)
            yield index, {
                "image": image,
                "image/id": first_id + index,
                "objects": {
                    "bbox": (boxes / IMAGE_SIZE).astype(np.float32),
                    "label": labels,
                    "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
                    "is_crowd": np.zeros(len(labels), dtype=bool),
                },
            }
