"""Do the heads of a trained AA model look from one glyph to the other? (glyph_pairs)

    python -m benchmarks.attention_focus                                  # train the default aa_small run first
    python -m benchmarks.attention_focus --model=runs/quick/aa_small/model.keras

On every test image of `glyph_pairs` the query is placed at the centre pixel of one glyph, then
of the other (two queries per image), and `aa_keras.visualize.attention_maps` gives each head's
attention over each AA layer's grid. A grid cell's weight is spread evenly over the pixels it
covers; the attention mass inside the *other* glyph's 5x5 box is compared with that box's share
of the image by area (25 / 1024 = 2.44% at 32x32), which is what a head that ignores content
would give on average. For contrast: the mass inside the query's own glyph box, and the mass
inside a glyph box (mean of the two) from a background query (the pixel nearest the image
centre that is at least 2 pixels from both boxes). The glyph positions come from the dataset's
own generator (`glyph_pairs.make_placed_example`, same seed): the whole test split is
regenerated and each prepared test image (TFDS stores them in its own order) is matched to its
regenerated twin by its pixels.

Without `--model` the default run's `aa_small` (recipe `quick`) is trained into `--model_dir`
first, or loaded from there if it has already finished. Prints a markdown table (medians per
head over the queries) and writes it with all figures as JSON to `--output`.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app, flags

from aa_keras.data import classification as data
from aa_keras.datasets import glyph_pairs
from aa_keras.programs.run_folder import RunFolder
from aa_keras.training import recipes
from aa_keras.training import classification
from aa_keras.training.settings import settings_for
from aa_keras.visualize import attention_layers, attention_maps

FLAGS = flags.FLAGS


def _define_flags():
    """The script's flags, defined only when it runs (tests may import its functions)."""
    flags.DEFINE_string("model", None, "A trained glyph_pairs .keras model; default: train aa_small into --model_dir.")
    flags.DEFINE_string("model_dir", "runs/attention_focus/aa_small", "Where the default run trains (or has trained).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory.")
    flags.DEFINE_integer("examples", glyph_pairs.SPLIT_SIZES["test"], "Test images to measure (the first ones).")
    flags.DEFINE_integer("batch", 200, "Images per attention_maps call.")
    flags.DEFINE_string("output", "benchmarks/results/attention_focus.json", "JSON output.")


def glyph_corners(split="test"):
    """{image bytes: (2, 2) top-left (row, column) of both glyphs} of every example of `split`,
    regenerated as the builder generates them."""
    alphabet = glyph_pairs.make_alphabet(np.random.default_rng(glyph_pairs.SEED))
    rng = np.random.default_rng([glyph_pairs.SEED, list(glyph_pairs.SPLIT_SIZES).index(split)])
    corners = {}
    for _ in range(glyph_pairs.SPLIT_SIZES[split]):
        image, _, placed = glyph_pairs.make_placed_example(rng, alphabet)
        corners[image.tobytes()] = placed
    return corners


def background_query(corners, size=glyph_pairs.IMAGE_SIZE, margin=2):
    """The pixel nearest the image centre that lies at least `margin` pixels outside both boxes."""
    ys, xs = np.mgrid[:size, :size]
    free = np.ones((size, size), bool)
    for row, col in corners:
        free &= ~((ys >= row - margin) & (ys < row + glyph_pairs.GLYPH_SIZE + margin)
                  & (xs >= col - margin) & (xs < col + glyph_pairs.GLYPH_SIZE + margin))  # fmt: skip
    distance = np.where(free, (ys - (size - 1) / 2) ** 2 + (xs - (size - 1) / 2) ** 2, np.inf)
    return np.unravel_index(np.argmin(distance), distance.shape)


def box_mass(maps, corners, image_size):
    """Attention mass inside glyph boxes.

    Args:
        maps: (B, Nh, Ha, Wa) attention weights of one query per image.
        corners: (B, 2) top-left (row, column) of the box in each image.
        image_size: side of the square images; a multiple of Ha and Wa.

    Returns:
        (B, Nh) mass inside each image's box, each cell's weight spread evenly over its pixels.
    """
    cell = image_size // maps.shape[-2], image_size // maps.shape[-1]
    if cell[0] * maps.shape[-2] != image_size or cell[1] * maps.shape[-1] != image_size:
        raise ValueError(f"The {maps.shape[-2:]} grid does not divide the {image_size}-pixel image evenly.")
    pixels = np.repeat(np.repeat(maps, cell[0], axis=-2), cell[1], axis=-1) / (cell[0] * cell[1])
    size = glyph_pairs.GLYPH_SIZE
    return np.stack([pixels[b, :, r : r + size, c : c + size].sum(axis=(-2, -1)) for b, (r, c) in enumerate(corners)])


def measure(model, images, corners, batch):
    """{layer: {"other", "own", "background": (N, Nh) masses}}: other and own over both queries
    of each image (glyph A -> box B, glyph B -> box A), background as the mean of both boxes."""
    image_size = images.shape[1]
    centres = corners + glyph_pairs.GLYPH_SIZE // 2
    backgrounds = np.array([background_query(c, image_size) for c in corners])
    queries = np.concatenate([centres, backgrounds[:, None]], axis=1)  # (N, 3, 2)
    results = {}
    for start in range(0, len(images), batch):
        stop = start + batch
        maps = attention_maps(model, images[start:stop], queries[start:stop])
        for name, m in maps.items():
            box_a, box_b = corners[start:stop, 0], corners[start:stop, 1]
            parts = {
                "other": np.concatenate([box_mass(m[:, 0], box_b, image_size), box_mass(m[:, 1], box_a, image_size)]),
                "own": np.concatenate([box_mass(m[:, 0], box_a, image_size), box_mass(m[:, 1], box_b, image_size)]),
                "background": (box_mass(m[:, 2], box_a, image_size) + box_mass(m[:, 2], box_b, image_size)) / 2,
            }
            for part, values in parts.items():
                results.setdefault(name, {}).setdefault(part, []).append(values)
    return {name: {part: np.concatenate(v) for part, v in parts.items()} for name, parts in results.items()}


def table(results, grids, share):
    """Markdown table: per layer and head, medians of each mass and the other box's median
    enrichment over the area share."""
    lines = [
        "| layer | grid | head | other glyph box | / area share | queries above share | own glyph box | background query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, parts in results.items():
        for head in range(parts["other"].shape[1]):
            other = parts["other"][:, head]
            lines.append(
                f"| {name} | {grids[name]} | {head} | {np.median(other):.1%} | {np.median(other) / share:.1f}x "
                f"| {np.mean(other > share):.0%} | {np.median(parts['own'][:, head]):.1%} "
                f"| {np.median(parts['background'][:, head]):.1%} |"
            )
    return "\n".join(lines)


def load_or_train(data_dir):
    if FLAGS.model:
        return keras.saving.load_model(FLAGS.model, compile=False), FLAGS.model
    path = RunFolder(FLAGS.model_dir).model
    if not os.path.exists(path):
        data.prepare("glyph_pairs", data_dir)
        keras.utils.set_random_seed(0)
        settings = settings_for("classification", "aa_small", FLAGS.model_dir, recipes.get_recipe("quick"),
                                data_dir=data_dir)  # fmt: skip
        classification.train(tf.distribute.get_strategy(), settings)
    return keras.saving.load_model(path, compile=False), path


def main(argv):
    del argv
    model, model_path = load_or_train(FLAGS.data_dir)
    regenerated = glyph_corners()
    builder = data.prepare("glyph_pairs", FLAGS.data_dir)
    split = builder.as_dataset(split=f"test[:{FLAGS.examples}]", as_supervised=True)
    raw = [image for image, _ in tfds.as_numpy(split)]
    if any(image.tobytes() not in regenerated for image in raw):
        raise SystemExit("A prepared test image is not among the regenerated ones: glyph positions unknown.")
    corners = np.stack([regenerated[image.tobytes()] for image in raw])
    # The model's inputs, as the trainer's evaluation prepares them (same order as `raw`).
    evaluation = data.build_dataset("glyph_pairs", f"test[:{FLAGS.examples}]", glyph_pairs.IMAGE_SIZE, data_dir=FLAGS.data_dir)
    images = np.stack([image.numpy() for image, _ in evaluation])
    if not np.allclose(images * 255, np.stack(raw), atol=1e-3):
        raise SystemExit("The evaluation images are not the prepared test images in the same order.")
    results = measure(model, images, corners, FLAGS.batch)
    grids = {layer.name: "x".join(map(str, layer._attention_size(*layer.input.shape[1:3])))
             for layer in attention_layers(model)}  # fmt: skip
    share = glyph_pairs.GLYPH_SIZE**2 / glyph_pairs.IMAGE_SIZE**2
    text = table(results, grids, share)
    print(f"model {model_path}, {len(images)} test images, 2 glyph-centre queries each; area share {share:.2%}\n")
    print(text)
    first = corners[0] + glyph_pairs.GLYPH_SIZE // 2
    print(f"\nTest image 0: glyph centres (y, x) {tuple(map(int, first[0]))} and {tuple(map(int, first[1]))}.")
    report = {
        "model": model_path,
        "examples": len(images),
        "area_share": share,
        "table": text,
        "median": {
            name: {part: np.median(values, axis=0).tolist() for part, values in parts.items()}
            for name, parts in results.items()
        },
        "fraction_above_share": {name: np.mean(parts["other"] > share, axis=0).tolist() for name, parts in results.items()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
