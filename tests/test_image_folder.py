"""`--dataset=image_folder:PATH`: TFDS's ImageFolder with its input checked, through the
classification input pipeline, the trainer and its command line; the errors for folders it
cannot train on; `scripts/make_image_folder.py`."""

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from aa_keras.applications import small_nets
from aa_keras.data import classification as data
from aa_keras.export import export as exporter
from aa_keras.export import predict
from aa_keras.training import classification, evaluate, recipes, train
from aa_keras.training.settings import settings_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# {split: {label: number of images}}; sizes differ per image to show that any size is taken.
LAYOUT = {"train": {"cat": 5, "dog": 3, "owl": 4}, "test": {"cat": 2, "dog": 2, "owl": 1}}


def _pixel(label, index):
    """The grey value that identifies image `index` of class `label` (unique per image)."""
    return 40 * ("cat", "dog", "owl").index(label) + 3 * index + 10


def _write(path, image, fmt="png"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode = tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg
    tf.io.write_file(str(path), encode(image))


def make_folder(root, layout=LAYOUT):
    """Writes a folder in the layout root/<split>/<label>/<image>, each image filled with
    `_pixel(label, index)`, train images as PNG, test images as JPEG, of assorted sizes."""
    for split, classes in layout.items():
        for label, count in classes.items():
            os.makedirs(root / split / label, exist_ok=True)
            for index in range(count):
                fmt = "png" if split == "train" else "jpg"
                image = np.full((20 + 3 * index, 30 - 2 * index, 3), _pixel(label, index), np.uint8)
                _write(root / split / label / f"{index}.{fmt}", image, fmt)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"))


def test_builder_gives_class_names_splits_and_labelled_images(folder):
    name = f"image_folder:{folder}"
    builder = data._builder(name)
    assert builder.info.features["label"].names == ["cat", "dog", "owl"]
    assert data.num_classes(name) == 3
    assert {split: data.split_size(name, split) for split in ("train", "test")} == {"train": 12, "test": 5}
    assert data.split_size(name, "train[:50%]") == 6 and data.split_size(name, "train+test") == 17
    # Every image comes once, with the label of its folder: the pixel value says which image it is.
    for split, classes in LAYOUT.items():
        seen = sorted(
            (int(label), int(round(float(image[0, 0, 0]) * 255)))
            for image, label in data.build_dataset(name, split, 8).as_numpy_iterator()
        )
        names = builder.info.features["label"].names
        expected = sorted((names.index(label), _pixel(label, index)) for label, count in classes.items() for index in range(count))
        if split == "test":  # JPEG is lossy: compare the labels and the pixel values within a few levels.
            assert [label for label, _ in seen] == [label for label, _ in expected]
            np.testing.assert_allclose([value for _, value in seen], [value for _, value in expected], atol=3)
        else:
            assert seen == expected


def test_training_order_follows_the_seed_and_images_are_resized(folder):
    name = f"image_folder:{folder}"
    first, again, other = (
        np.concatenate([labels for _, labels in data.build_dataset(name, "train", 16, 4, training=True, seed=seed)])
        for seed in (1, 1, 2)
    )
    images, _ = next(iter(data.build_dataset(name, "train", 16, 4, training=True, seed=1)))
    assert images.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(first, again)
    assert sorted(first) == sorted(other) and len(first) == 12


def _small(name, input_shape, classes):
    return small_nets.conv_small_net(input_shape, classes)


def test_trains_two_steps_and_records_the_folder_in_the_run(folder, tmp_path):
    name = f"image_folder:{folder}"
    recipe = recipes.get_recipe("quick", dataset=name, epochs=1, global_batch_size=4)
    model, metrics = classification.train(tf.distribute.get_strategy(), settings_for(
        "classification", "conv_small", str(tmp_path), recipe, steps_per_epoch=2, verbose=False, model_fn=_small
    ))
    assert model.output_shape == (None, 3)
    assert metrics["steps"] == 2 and np.isfinite(metrics["test_loss"])
    with open(tmp_path / "run_config.json") as f:
        assert json.load(f)["dataset"] == name


def test_cli_trains_on_a_folder(folder, tmp_path, capsys):
    train.FLAGS(["train", "--model=conv_small", f"--dataset=image_folder:{folder}", f"--model_dir={tmp_path}",
                 "--epochs=1", "--batch_size=4", "--steps_per_epoch=1"])  # fmt: skip
    try:
        rows = train.run(["train"])
    finally:
        train.FLAGS.unparse_flags()
    assert rows[0]["model"] == "conv_small" and (tmp_path / "conv_small" / "model.keras").exists()
    assert capsys.readouterr().out.splitlines()[-1].split()[0] == "conv_small"
    # The run's class names are the folder's, and evaluate and predict work from them.
    model_file = str(tmp_path / "conv_small" / "model.keras")
    assert (tmp_path / "conv_small" / "labels.txt").read_text() == "cat\ndog\nowl\n"
    evaluate.FLAGS(["aa-evaluate", f"--model={model_file}", f"--dataset=image_folder:{folder}"])
    try:
        result = evaluate.run(["aa-evaluate"])
    finally:
        evaluate.FLAGS.unparse_flags()
    assert result["examples"] == 5 and result["class_names"] == ["cat", "dog", "owl"]
    assert 0 <= result["metrics"]["accuracy"] <= result["metrics"]["top5_accuracy"] == 1
    image = str(folder / "test" / "owl" / sorted(os.listdir(folder / "test" / "owl"))[0])
    remaining = predict.FLAGS(["aa-predict", f"--model={model_file}", "--top=3", image])
    try:
        (found,) = predict.run(remaining)
    finally:
        predict.FLAGS.unparse_flags()
    assert sorted(p["class"] for p in found) == ["cat", "dog", "owl"]
    assert f"1. {found[0]['class']}" in capsys.readouterr().out


def _empty(root):
    root.mkdir()
    return root


def _split_without_images(root):
    make_folder(root, {"train": {"cat": 2, "dog": 2}})
    (root / "test" / "cat").mkdir(parents=True)
    (root / "test" / "cat" / "notes.txt").write_text("not an image")
    return root


def _corrupt(root):
    make_folder(root)
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    return root


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", r"image_folder:.*missing: no such folder"),
        (_empty, r"has no split folders"),
        (_split_without_images, r"split 'test' of .* has no images"),
        (lambda root: make_folder(root, {"train": {"cat": 2, "dog": 0}}), r"the classes \['dog'\] .* have no images"),
        (lambda root: make_folder(root, {"train": {"cat": 3}, "test": {"cat": 1}}), r"has 1 class \(\['cat'\]\); a classifier needs at least 2"),
        (_corrupt, r"1 file\(s\) that cannot be read or decoded as images: .*train/dog/broken\.png"),
    ],
    ids=["missing", "empty", "split_without_images", "class_without_images", "one_class", "corrupt_file"],
)
def test_folders_it_cannot_train_on_are_refused(tmp_path, make, message):
    root = make(tmp_path / "data")
    with pytest.raises(ValueError, match=r"^Invalid `dataset`: .*" + message):
        data.num_classes(f"image_folder:{root}")


def test_exporter_takes_its_calibration_and_parity_images_from_a_folder(folder):
    images = exporter.dataset_images(f"image_folder:{folder}", "test", (16, 16, 3), 3)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.float32 and 0 < images.max() <= 1


def test_a_split_the_folder_lacks_and_a_task_that_does_not_read_folders(folder):
    with pytest.raises(ValueError, match=r"Invalid split 'validation' of image_folder:.*its splits are \['test', 'train'\]"):
        data.split_size(f"image_folder:{folder}", "validation")
    with pytest.raises(ValueError, match=r"image_folder:PATH"):
        data.num_classes("image_folder:")
    from aa_keras.data import detection as detection_data

    with pytest.raises(ValueError, match=r"dataset='image_folder:.*which this task does not read.*coco_json:PATH"):
        detection_data.num_classes(f"image_folder:{folder}")


def test_make_image_folder_writes_glyph_pairs_as_pngs(tmp_path, data_dir):
    spec = importlib.util.spec_from_file_location("make_image_folder", os.path.join(REPO, "scripts", "make_image_folder.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "glyphs"
    assert script.write_image_folder(str(out), limit=6, data_dir=data_dir) == {"train": 6, "test": 6}
    assert sorted(os.listdir(out)) == ["test", "train"] and sorted(os.listdir(out / "train")) == ["different", "same"]
    # The folder gives the same images and labels as the TFDS dataset.
    ours = data.build_dataset(f"image_folder:{out}", "test", 32)
    theirs = data.build_dataset("glyph_pairs", "test[:6]", 32, data_dir=data_dir)
    key = lambda pair: pair[0].tobytes()  # noqa: E731
    ours, theirs = sorted(ours.as_numpy_iterator(), key=key), sorted(theirs.as_numpy_iterator(), key=key)
    for (image, label), (expected_image, expected_label) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(image, expected_image)
        assert label == expected_label
    with pytest.raises(ValueError, match="exists; give a new folder"):
        script.write_image_folder(str(out), limit=1, data_dir=data_dir)
    with pytest.raises(ValueError, match="Invalid `--limit`"):
        script.write_image_folder(str(tmp_path / "other"), limit=0, data_dir=data_dir)


def test_damaged_images_are_told_from_other_formats(tmp_path):
    """Before: a truncated PNG was only "cannot be read or decoded"; aa-predict called it "not a
    PNG, JPEG, BMP or GIF"."""
    root = make_folder(tmp_path / "data")
    whole = (root / "train" / "dog" / "0.png").read_bytes()
    (root / "train" / "dog" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "train" / "owl" / "notes.png").write_text("not an image")
    (root / "train" / "owl" / "empty.jpg").write_bytes(b"")
    damaged = r"train/dog/cut\.png is a damaged or truncated PNG file"
    with pytest.raises(ValueError, match=rf"has 3 file\(s\) that cannot be read or decoded as images: .*{damaged}"):
        data.num_classes(f"image_folder:{root}")
    with pytest.raises(ValueError, match=r"train/owl/empty\.jpg is empty; .*train/owl/notes\.png is not a PNG, JPEG"):
        data.num_classes(f"image_folder:{root}")
    with pytest.raises(ValueError, match=r"^Invalid image: '.*train/dog/cut\.png' is a damaged or truncated PNG file"):
        predict.read_image(str(root / "train" / "dog" / "cut.png"))


def test_class_folders_with_surrounding_spaces_are_named(tmp_path):
    """Before: refused as "Invalid class names" at the run's start, without saying they are folders."""
    root = make_folder(tmp_path / "data", {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    for split in ("train", "test"):
        os.rename(root / split / "dog", root / split / "dog ")
    with pytest.raises(ValueError, match=r"the class folders \['.*data/test/dog ', '.*data/train/dog '\] of "
                                         r"image_folder:.*data have names with leading or trailing spaces.*rename "
                                         r"them in every split \(e.g. 'dog ' to 'dog'\)"):
        data.num_classes(f"image_folder:{root}")
