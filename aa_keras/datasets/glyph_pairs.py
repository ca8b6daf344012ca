"""`glyph_pairs`: an offline TFDS image dataset whose task needs long-range spatial reasoning.

Each 32x32 RGB image shows two 5x5 glyphs drawn from a fixed alphabet, placed at least
`MIN_DISTANCE` pixels apart (centre to centre) on a noisy background. The label says whether
the two glyphs have the same shape. Each glyph gets its own random colour, so colour says
nothing about the label; only comparing the two shapes does, and the two lie farther apart
than the receptive field of a few local convolutions. Same-different problems of this kind
are known to be hard for convolutional networks (Kim, Ricci and Serre, "Not-So-CLEVR", 2018).

Everything is generated on the machine from `SEED` in a few seconds, identically on every
machine: `tfds.builder("glyph_pairs").download_and_prepare()` downloads nothing.

Configurations: `glyph_pairs/canvas32` (the default, described above) and
`glyph_pairs/canvas64`: the same glyphs (5x5 pixels, same alphabet) on 64x64 canvases, at least
32 pixels apart, for models moved from 32x32 to 64x64 inputs with content of the same scale.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
GLYPH_SIZE = 5
NUM_GLYPHS = 16
MIN_DISTANCE = 16.0
# A glyph pair differs in at least this many of its GLYPH_SIZE**2 cells.
MIN_GLYPH_HAMMING = 6
SEED = 2019
SPLIT_SIZES = {"train": 20000, "test": 2000}


def make_alphabet(rng, num_glyphs=NUM_GLYPHS, size=GLYPH_SIZE, min_hamming=MIN_GLYPH_HAMMING):
    """`num_glyphs` distinct binary (size, size) glyphs, each 8..17 cells on, every pair at
    Hamming distance >= `min_hamming`, drawn by rejection from `rng`."""
    glyphs = []
    while len(glyphs) < num_glyphs:
        glyph = rng.random((size, size)) < 0.5
        if not 8 <= glyph.sum() <= 17:
            continue
        if all(np.sum(glyph != other) >= min_hamming for other in glyphs):
            glyphs.append(glyph)
    return np.stack(glyphs)


def _far_apart_positions(rng, image_size, min_distance):
    """Top-left corners of two glyphs whose centres are >= `min_distance` apart."""
    span = image_size - GLYPH_SIZE + 1
    while True:
        corners = rng.integers(0, span, size=(2, 2))
        if np.hypot(*(corners[0] - corners[1])) >= min_distance:
            return corners


def make_placed_example(rng, alphabet, image_size=IMAGE_SIZE, min_distance=MIN_DISTANCE):
    """One (uint8 image (image_size, image_size, 3), label, corners) triple; label 1 means same
    shape; corners (2, 2) holds the (row, column) of each glyph's top-left cell."""
    label = int(rng.integers(2))
    first = int(rng.integers(len(alphabet)))
    second = first if label else int((first + rng.integers(1, len(alphabet))) % len(alphabet))
    image = rng.integers(0, 64, size=(image_size, image_size, 3), dtype=np.uint8)
    corners = _far_apart_positions(rng, image_size, min_distance)
    for glyph_id, (row, col) in zip((first, second), corners):
        colour = rng.integers(128, 256, size=3, dtype=np.uint8)
        window = image[row : row + GLYPH_SIZE, col : col + GLYPH_SIZE]
        window[alphabet[glyph_id]] = colour
    return image, label, corners


def make_example(rng, alphabet, image_size=IMAGE_SIZE, min_distance=MIN_DISTANCE):
    """One (uint8 image (image_size, image_size, 3), label) pair; label 1 means same shape."""
    image, label, _ = make_placed_example(rng, alphabet, image_size, min_distance)
    return image, label


@dataclasses.dataclass(eq=False)
class GlyphPairsConfig(tfds.core.BuilderConfig):
    """A canvas size and the least distance between the glyph centres, in pixels."""

    image_size: int = IMAGE_SIZE
    min_distance: float = MIN_DISTANCE


class GlyphPairs(tfds.core.GeneratorBasedBuilder):
    """Are the two far-apart glyphs in the image the same shape? Generated offline from a seed."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 16 glyphs, 32x32 images, 20000 train / 2000 test."}
    BUILDER_CONFIGS = [
        GlyphPairsConfig(name="canvas32", description="32x32 images, glyphs at least 16 px apart (the default)."),
        GlyphPairsConfig(
            name="canvas64",
            description="64x64 images, the same 5x5 glyphs at least 32 px apart.",
            image_size=64,
            min_distance=32.0,
        ),
    ]
    # Nothing is downloaded, so there are no URL checksums to look up. Looking them up would
    # resolve `code_path`, which in tensorflow-datasets 4.9.10 needs the `importlib_resources`
    # package that it does not declare for Python >= 3.9.
    url_infos = None

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(self.builder_config.image_size,) * 2 + (3,)),
                    "label": tfds.features.ClassLabel(names=["different", "same"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {
            split: self._generate_examples(split_index, num_examples)
            for split_index, (split, num_examples) in enumerate(SPLIT_SIZES.items())
        }

    def _generate_examples(self, split_index, num_examples):
        # The alphabet comes from SEED alone, so every split shares it; each split has its own stream.
        alphabet = make_alphabet(np.random.default_rng(SEED))
        rng = np.random.default_rng([SEED, split_index])
        for index in range(num_examples):
            image, label = make_example(
                rng, alphabet, self.builder_config.image_size, self.builder_config.min_distance
            )
            yield index, {"image": image, "label": label}
