"""`--task=detection --dataset=coco_json:PATH`: COCO-style annotation files read into the
features of `glyph_boxes`, through the detection input pipeline and the trainer; the errors for
malformed files, each naming the file and the entry."""

import copy
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.data import classification as data
from aa_keras.data import detection as detection_data
from aa_keras.datasets import CocoJson
from aa_keras.export import export as exporter
from aa_keras.training import detection, recipes
from aa_keras.training.settings import settings_for

SIZE = 64
# Sparse category ids, listed out of order: label i is the i-th category by id.
CATEGORIES = [{"id": 7, "name": "bar"}, {"id": 2, "name": "square"}]
IMAGES = [
    {"id": 11, "file_name": "a.png", "width": 64, "height": 48},
    {"id": 12, "file_name": "sub/b.jpg", "width": 40, "height": 56},  # no boxes
]
ANNOTATIONS = [
    {"id": 1, "image_id": 11, "category_id": 2, "bbox": [8, 4, 16, 12], "area": 150, "iscrowd": 0},
    {"id": 2, "image_id": 11, "category_id": 7, "bbox": [30.5, 20, 33.5, 28]},
]


def _write_image(path, height, width, fmt):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tf.io.write_file(str(path), tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image))


def make_coco(root, annotations=None, splits=("train", "test")):
    """Writes root/annotations/instances_<split>.json (the JSON of `annotations`, default the
    two images above) and the images into root/<split>/."""
    annotations = annotations or {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    os.makedirs(root / "annotations", exist_ok=True)
    for split in splits:
        for entry in IMAGES:
            _write_image(root / split / entry["file_name"], entry["height"], entry["width"], entry["file_name"][-3:])
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(annotations, f)
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"))


def test_features_labels_and_boxes(coco, tmp_path):
    name = f"coco_json:{coco}"
    builder = detection_data.builder(name)
    assert builder.info.features["objects"]["label"].names == ["square", "bar"]
    assert detection_data.num_classes(name) == 2
    assert detection_data.split_size(name, "train") == 2 and detection_data.split_size(name, "train[:1]") == 1
    # The same features as glyph_boxes, images of any size aside.
    dataset = builder.as_dataset(split="train")
    expected = tfds.builder("glyph_boxes", data_dir=str(tmp_path)).info.features.get_tensor_spec()
    expected["image"] = tf.TensorSpec((None, None, 3), tf.uint8)
    assert dataset.element_spec == expected
    first, second = dataset.as_numpy_iterator()
    assert first["image"].shape == (48, 64, 3) and second["image"].shape == (56, 40, 3)
    assert (first["image/id"], second["image/id"]) == (11, 12)
    objects = first["objects"]
    np.testing.assert_allclose(objects["bbox"], [[4 / 48, 8 / 64, 16 / 48, 24 / 64], [20 / 48, 30.5 / 64, 1.0, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(objects["label"], [0, 1])  # category 2 -> 0, category 7 -> 1
    np.testing.assert_array_equal(objects["area"], [150, round(33.5 * 28)])
    np.testing.assert_array_equal(objects["is_crowd"], [False, False])
    assert second["objects"]["bbox"].shape == (0, 4) and second["objects"]["label"].shape == (0,)
    # The image is what was written.
    np.testing.assert_array_equal(first["image"], tf.io.decode_png(tf.io.read_file(str(coco / "train" / "a.png"))))


def test_pipelines_take_images_without_boxes(coco):
    name = f"coco_json:{coco}"
    images, targets = next(iter(detection_data.build_dataset(name, "train", SIZE, 2, training=True, max_instances=4, flip=False)))
    assert images.shape == (2, SIZE, SIZE, 3)
    counts = sorted(int(np.sum(labels >= 0)) for labels in targets["labels"].numpy())
    assert counts == [0, 2]
    _, truth = next(iter(detection_data.build_dataset(name, "test", SIZE, 2, max_instances=4)))
    np.testing.assert_array_equal(truth["source_id"], [11, 12])
    np.testing.assert_array_equal(truth["classes"][0][:2], [1, 2])  # label + 1
    np.testing.assert_array_equal(truth["num_detections"], [2, 0])


def test_exporter_takes_its_parity_images_from_coco_json(coco):
    images = exporter.dataset_images(f"coco_json:{coco}", "test", (SIZE, SIZE, 3), 2, task="detection")
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.float32


def test_trains_a_detector_two_steps(coco, tmp_path):
    keras.utils.set_random_seed(0)
    recipe = recipes.get_detection_recipe("quick_detection", dataset=f"coco_json:{coco}", image_size=SIZE, max_instances=4)
    model, metrics = detection.train(
        tf.distribute.get_strategy(), settings_for(
            "detection", "retinanet_r18", str(tmp_path), recipe=recipe, global_batch_size=1,
            epochs=1, steps_per_epoch=2, verbose=False,
        ),
    )  # fmt: skip
    assert metrics["steps"] == 2 and np.isfinite(metrics["history"][0]["train_loss"])
    assert set(metrics["coco"]) == set(detection.COCO_METRICS)
    assert model.output["cls_logits"].shape[-1] == 2
    assert json.load(open(tmp_path / "run_config.json"))["dataset"] == f"coco_json:{coco}"


def _edit(change):
    """The default annotations, deep-copied and changed by `change(annotations)`."""
    annotations = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    annotations = copy.deepcopy(annotations)
    change(annotations)
    return annotations


ENTRY_ERRORS = {
    "no_images_key": (lambda a: a.pop("images"), r"instances_train\.json: expected a JSON object with a list 'images'"),
    "missing_image": (
        lambda a: a["images"][1].update(file_name="gone.png"),
        r"images\[1\] \(id=12, file_name='gone.png'\): the image file .*train/gone\.png does not exist",
    ),
    "unknown_image": (
        lambda a: a["annotations"][1].update(image_id=99),
        r"annotations\[1\] \(image_id=99, category_id=7\): no image has id 99",
    ),
    "unknown_category": (
        lambda a: a["annotations"][0].update(category_id=4),
        r"annotations\[0\] \(image_id=11, category_id=4\): no category has id 4; the category ids are \[2, 7\]",
    ),
    "box_outside": (
        lambda a: a["annotations"][0].update(bbox=[50, 4, 16, 12]),
        r"annotations\[0\] .*the box \[50, 4, 16, 12\] \(x, y, width, height\) lies outside its 64x48 image",
    ),
    "negative_origin": (
        lambda a: a["annotations"][1].update(bbox=[-2, 4, 16, 12]),
        r"annotations\[1\] .*lies outside its 64x48 image",
    ),
    "zero_width": (
        lambda a: a["annotations"][1].update(bbox=[8, 4, 0, 12]),
        r"annotations\[1\] .*the box \[8, 4, 0, 12\] has a non-positive width or height",
    ),
    "bad_bbox": (lambda a: a["annotations"][0].update(bbox=[8, 4, 16]), r"annotations\[0\] .*'bbox' must be \[x, y, width, height\]"),
    "wrong_size": (
        lambda a: a["images"][0].update(width=70),
        r"images\[0\] \(id=11, file_name='a.png'\): the image is 64x48 \(width x height\), the entry says 70x48",
    ),
    "duplicate_image": (lambda a: a["images"][1].update(id=11), r"images\[1\] .*image id 11 appears twice"),
    "duplicate_category": (lambda a: a["categories"][1].update(name="bar"), r"categories\[1\]: .*appears twice"),
    "no_categories": (lambda a: a.update(categories=[]), r"'categories' is empty"),
}


@pytest.mark.parametrize("change, message", ENTRY_ERRORS.values(), ids=ENTRY_ERRORS.keys())
def test_malformed_entries_name_the_file_and_the_entry(tmp_path, change, message):
    root = make_coco(tmp_path / "coco", _edit(change), splits=("train",))
    with pytest.raises(ValueError, match=rf"^Invalid `dataset`: {tmp_path}/coco/annotations/.*{message}"):
        CocoJson(str(root))


def test_bad_files_and_folders(tmp_path):
    with pytest.raises(ValueError, match=r"coco_json:.*missing has no annotation files .*instances_<split>\.json"):
        detection_data.builder(f"coco_json:{tmp_path / 'missing'}")
    root = make_coco(tmp_path / "bad_json", splits=("train",))
    (root / "annotations" / "instances_train.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"bad_json/annotations/instances_train\.json: not valid JSON \(.*line 1"):
        CocoJson(str(root))
    root = make_coco(tmp_path / "corrupt", splits=("train",))
    (root / "train" / "sub" / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"cannot be read or decoded as images: .*corrupt/train/sub/b\.jpg"):
        CocoJson(str(root))
    root = make_coco(tmp_path / "two", splits=("train",))
    make_coco(root, _edit(lambda a: a["categories"][0].update(name="rod")), splits=("test",))
    with pytest.raises(ValueError, match=r"instances_train\.json: its categories .* differ from those of .*instances_test\.json .*'rod'"):
        CocoJson(str(root))
    with pytest.raises(ValueError, match=r"dataset='coco_json:.*which this task does not read.*image_folder:PATH"):
        data.num_classes(f"coco_json:{root}")


def test_a_split_without_annotations_is_refused_at_open(tmp_path):
    """Before: an empty 'annotations' list trained with loss 0 and reported AP -100%."""
    root = make_coco(tmp_path / "coco", _edit(lambda a: a.update(annotations=[])), splits=("train",))
    with pytest.raises(ValueError, match=r"instances_train\.json: 'annotations' is empty: .* nothing to score"):
        CocoJson(str(root))


def test_a_category_name_with_surrounding_spaces_is_refused_at_open(tmp_path):
    """Before: it passed the dataset's checks and failed later, as a bad labels.txt entry."""
    root = make_coco(tmp_path / "coco", _edit(lambda a: a["categories"][1].update(name="square ")), splits=("train",))
    with pytest.raises(ValueError, match=r"categories\[1\]: the category name 'square ' has leading or trailing spaces"):
        CocoJson(str(root))
