"""The embedded glyph_pairs dataset: generation, labels, determinism, and the build_dataset view."""

import numpy as np
import tensorflow_datasets as tfds

from aa_keras.data.classification import build_dataset
from aa_keras.datasets import glyph_pairs


def _glyphs_in(image, alphabet):
    """(glyph id, row, col) of every 5x5 window whose bright cells are exactly a glyph."""
    bright = image.min(axis=-1) >= 128
    size = glyph_pairs.GLYPH_SIZE
    windows = np.lib.stride_tricks.sliding_window_view(bright, (size, size))
    matches = np.all(windows[:, :, None] == alphabet[None, None], axis=(-2, -1))
    return [(glyph_id, row, col) for row, col, glyph_id in zip(*np.nonzero(matches))]


def test_alphabet_is_distinct_and_seeded():
    alphabet = glyph_pairs.make_alphabet(np.random.default_rng(glyph_pairs.SEED))
    again = glyph_pairs.make_alphabet(np.random.default_rng(glyph_pairs.SEED))
    np.testing.assert_array_equal(alphabet, again)
    assert alphabet.shape == (glyph_pairs.NUM_GLYPHS, glyph_pairs.GLYPH_SIZE, glyph_pairs.GLYPH_SIZE)
    for i in range(len(alphabet)):
        for j in range(i):
            assert np.sum(alphabet[i] != alphabet[j]) >= glyph_pairs.MIN_GLYPH_HAMMING


def test_generation_is_deterministic():
    builder = tfds.builder("glyph_pairs")
    first = list(zip(range(20), builder._generate_examples(1, 20)))
    second = list(zip(range(20), builder._generate_examples(1, 20)))
    for (_, (key_a, a)), (_, (key_b, b)) in zip(first, second):
        assert key_a == key_b and a["label"] == b["label"]
        np.testing.assert_array_equal(a["image"], b["image"])
    other_split = next(iter(builder._generate_examples(0, 1)))[1]
    assert not np.array_equal(other_split["image"], first[0][1][1]["image"])


def test_prepared_splits(data_dir):
    builder = tfds.builder("glyph_pairs", data_dir=data_dir)
    assert {s: builder.info.splits[s].num_examples for s in glyph_pairs.SPLIT_SIZES} == glyph_pairs.SPLIT_SIZES
    assert builder.info.features["label"].names == ["different", "same"]
    labels = np.array([int(l) for _, l in builder.as_dataset("train", as_supervised=True).take(2000)])
    assert 0.45 < labels.mean() < 0.55


def test_labels_say_whether_the_far_apart_glyphs_match(data_dir):
    alphabet = glyph_pairs.make_alphabet(np.random.default_rng(glyph_pairs.SEED))
    dataset = tfds.builder("glyph_pairs", data_dir=data_dir).as_dataset("test", as_supervised=True)
    for image, label in tfds.as_numpy(dataset.take(100)):
        found = _glyphs_in(image, alphabet)
        assert len(found) == 2, found
        (id_a, row_a, col_a), (id_b, row_b, col_b) = found
        assert np.hypot(row_a - row_b, col_a - col_b) >= glyph_pairs.MIN_DISTANCE
        assert (id_a == id_b) == bool(label)


def test_build_dataset_gives_unit_range_float_batches(data_dir):
    dataset = build_dataset("glyph_pairs", "test", 32, global_batch_size=16, data_dir=data_dir)
    images, labels = next(iter(dataset))
    assert images.shape == (16, 32, 32, 3) and images.dtype == "float32"
    assert labels.shape == (16,) and labels.dtype.is_integer
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0
    raw = next(iter(tfds.builder("glyph_pairs", data_dir=data_dir).as_dataset("test", as_supervised=True).batch(16)))
    np.testing.assert_allclose(images.numpy(), raw[0].numpy() / 255.0, atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), raw[1].numpy())


def test_canvas64_has_the_same_glyphs_farther_apart_on_64x64():
    assert tfds.builder("glyph_pairs/canvas64").info.features["image"].shape == (64, 64, 3)
    alphabet = glyph_pairs.make_alphabet(np.random.default_rng(glyph_pairs.SEED))
    rng = np.random.default_rng(0)
    for _ in range(50):
        image, label = glyph_pairs.make_example(rng, alphabet, image_size=64, min_distance=32.0)
        assert image.shape == (64, 64, 3)
        (id_a, row_a, col_a), (id_b, row_b, col_b) = _glyphs_in(image, alphabet)
        assert np.hypot(row_a - row_b, col_a - col_b) >= 32.0
        assert (id_a == id_b) == bool(label)
