"""Detection: the (AA-)ResNet encoder as a keras-hub backbone, the AA-RetinaNet builders, the
glyph_boxes dataset, the input pipelines (glyph_boxes and a mocked coco/2017), the COCO
evaluation, training with resume on two replicas, the export, and both command lines with
`--task=detection`."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.applications import AAResNet, feature_extractor, retinanet
from aa_keras.data import detection as detection_data
from aa_keras.datasets import glyph_boxes
from aa_keras.datasets.glyph_pairs import SEED as ALPHABET_SEED
from aa_keras.datasets.glyph_pairs import make_alphabet
from aa_keras.export import detection as export_detection
from aa_keras.export import export as exporter
from aa_keras.layers import AttentionAugmentation2D
from aa_keras.training import detection, recipes, train
from aa_keras.training.settings import settings_for

SIZE = 64
CLASSES = 3


@pytest.fixture(scope="module")
def small_glyph_boxes(make_glyph_boxes):
    """glyph_boxes with 48 train and 16 test images, generated into a temporary data_dir."""
    return make_glyph_boxes(48, 16)


@pytest.fixture(scope="module")
def small_detector():
    keras.utils.set_random_seed(0)
    return retinanet.build_detector(
        "aa_retinanet_r18", input_shape=(SIZE, SIZE, 3), classes=CLASSES, confidence_threshold=0.001
    )


def num_anchors(size):
    return 9 * sum(int(np.ceil(size / 2**level)) ** 2 for level in range(3, 8))


# --- backbone and builders ---------------------------------------------------------------


def test_encoder_pyramid_is_the_aa_resnet_features():
    keras.utils.set_random_seed(1)
    encoder = retinanet.ResNetEncoder(18, True, (SIZE, SIZE, 3), {"min_key_depth_per_head": 0})
    reference = AAResNet(depth=18, include_top=False, input_shape=(SIZE, SIZE, 3), min_key_depth_per_head=0)
    reference.set_weights(encoder.get_weights())
    assert sorted(encoder.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    for level, tensor in encoder.pyramid_outputs.items():
        assert tensor.shape[1:3] == (SIZE // 2 ** int(level[1]),) * 2
    augmented = [layer.name for layer in encoder.layers if isinstance(layer, AttentionAugmentation2D)]
    assert augmented == [layer.name for layer in reference.layers if isinstance(layer, AttentionAugmentation2D)]
    assert augmented and all(name.startswith(("conv3", "conv4", "conv5")) for name in augmented)
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype(np.float32)
    ours = keras.Model(encoder.inputs, encoder.pyramid_outputs)(images)
    theirs = feature_extractor(reference)(images)
    for level in ("C3", "C4", "C5"):
        np.testing.assert_allclose(ours[f"P{level[1]}"], theirs[level], rtol=1e-5, atol=1e-5)


def test_detector_outputs_initialization_and_round_trip(small_detector, tmp_path):
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype(np.float32)
    outputs = small_detector(images)
    assert outputs["bbox_regression"].shape == (2, num_anchors(SIZE), 4)
    assert outputs["cls_logits"].shape == (2, num_anchors(SIZE), CLASSES)
    # P6 comes from the FPN's 256-channel P5, not from the backbone's C5 (512 channels here).
    fpn = small_detector.backbone.feature_pyramid
    assert fpn.output_conv_layers["P6"].kernel.shape[2] == fpn.num_filters == 256
    # RetinaNet's initialization: class probabilities start near the prior 0.01, deltas near 0.
    assert abs(float(tf.reduce_mean(tf.sigmoid(outputs["cls_logits"]))) - 0.01) < 0.005
    assert float(tf.reduce_max(tf.abs(outputs["bbox_regression"]))) < 0.5
    found = retinanet.detections(small_detector, images)
    assert found["boxes"].shape == (2, 100, 4) and found["scores"].shape == (2, 100)
    path = str(tmp_path / "detector.keras")
    small_detector.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored(images)["cls_logits"], outputs["cls_logits"])


def test_detections_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        detector = retinanet.build_detector(
            "aa_retinanet_r18", input_shape=(SIZE, SIZE, 3), classes=CLASSES, confidence_threshold=0.001
        )
    finally:
        keras.config.set_dtype_policy(previous)
    images = np.random.default_rng(0).random((1, SIZE, SIZE, 3)).astype(np.float32)
    assert detector(images)["cls_logits"].dtype == tf.bfloat16
    found = retinanet.detections(detector, images)
    assert found["boxes"].dtype == "float32" and int(found["num_detections"][0]) > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": 0}, "classes"),
        ({"input_shape": (32, 32, 3)}, "input_shape"),
        ({"input_shape": (None, 64, 3)}, "input_shape"),
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"max_detections": 0}, "max_detections"),
    ],
)
def test_builder_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        retinanet.build_detector("retinanet_r18", **{"input_shape": (SIZE, SIZE, 3), **kwargs})


def test_unknown_names_and_attention_without_augmentation():
    with pytest.raises(ValueError, match="aa_retinanet_r50"):
        retinanet.build_detector("retinanet_r7")
    with pytest.raises(ValueError, match="attention"):
        retinanet.ResNetEncoder(18, False, (SIZE, SIZE, 3), {"num_heads": 4})


# --- data --------------------------------------------------------------------------------


def test_glyph_boxes_objects_are_tight_separate_and_matchable():
    alphabet = make_alphabet(np.random.default_rng(ALPHABET_SEED))
    rng = np.random.default_rng(3)
    generator = retinanet.keras_hub.layers.AnchorGenerator("yxyx", 3, 7, 3, [0.5, 1.0, 2.0], 4)
    size = glyph_boxes.IMAGE_SIZE
    anchors = np.concatenate([np.asarray(a) for a in generator(np.zeros((1, size, size, 3))).values()])
    for _ in range(40):
        image, boxes, labels = glyph_boxes.make_example(rng, alphabet)
        assert 1 <= len(boxes) <= glyph_boxes.MAX_OBJECTS and np.all(labels < len(alphabet))
        bright = image.max(axis=-1) >= 128
        for i, (top, left, bottom, right) in enumerate(boxes):
            inside = bright[top:bottom, left:right]
            # Tight: the glyph touches all four sides of its box; nothing bright leaks out of it.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            for other in boxes[i + 1 :]:
                assert other[0] >= bottom or other[2] <= top or other[1] >= right or other[3] <= left
        assert bright.sum() == sum(bright[t:b, l:r].sum() for t, l, b, r in boxes)
        iou = keras.utils.bounding_boxes.compute_iou(boxes.astype(np.float32), anchors, "yxyx")
        assert np.asarray(iou).max(axis=1).min() >= 0.5


def test_training_examples_follow_the_image(small_glyph_boxes):
    plain = detection_data.build_dataset(
        "glyph_boxes", "train", SIZE, data_dir=small_glyph_boxes, training=True, flip=False, max_instances=4
    )
    evaluation = detection_data.build_dataset("glyph_boxes", "train", SIZE, data_dir=small_glyph_boxes,
                                              max_instances=4)
    train_by_sum = {}
    for image, target in plain:
        train_by_sum[round(float(tf.reduce_sum(image)), 2)] = target
    for image, truth in evaluation.take(16):
        target = train_by_sum[round(float(tf.reduce_sum(image)), 2)]
        count = int(truth["num_detections"])
        scale = float(truth["image_info"][2, 0])
        np.testing.assert_allclose(target["boxes"][:count], truth["boxes"][:count] * scale, atol=1e-4)
        np.testing.assert_array_equal(target["labels"][:count] + 1, truth["classes"][:count])
        assert np.all(target["labels"][count:] == -1) and np.all(target["boxes"][count:] == -1)
    jittered = detection_data.build_dataset(
        "glyph_boxes", "train", SIZE, 4, data_dir=small_glyph_boxes, training=True, scale_min=0.5, scale_max=2.0
    )
    images, targets = next(iter(jittered))
    assert images.shape == (4, SIZE, SIZE, 3) and 0.0 <= float(tf.reduce_min(images)) <= float(tf.reduce_max(images)) <= 1.0
    boxes = targets["boxes"].numpy()[targets["labels"].numpy() >= 0]
    assert np.all(boxes >= 0) and np.all(boxes <= SIZE) and np.all(boxes[:, 2:] > boxes[:, :2])


def test_pipeline_rejects_bad_arguments(small_glyph_boxes):
    with pytest.raises(ValueError, match="scale_min"):
        detection_data.build_dataset("glyph_boxes", "train", SIZE, data_dir=small_glyph_boxes, scale_min=1.5)
    with pytest.raises(ValueError, match="split"):
        detection_data.split_size("glyph_boxes", "validation", small_glyph_boxes)
    with pytest.raises(ValueError, match="coco/2017"):
        detection_data.builder("mnist", small_glyph_boxes)


# --- a mocked coco/2017 and the COCO evaluation -------------------------------------------

COCO_SHAPES = [(48, 80), (80, 48), (60, 60), (40, 100)]


def _coco_examples(builder, split, decoders=None, read_config=None, **kwargs):
    """A stand-in for `coco/2017`: non-square images with two objects each, one of them crowd."""
    del builder, split, decoders, read_config, kwargs

    def examples():
        rng = np.random.default_rng(0)
        for index, (height, width) in enumerate(COCO_SHAPES):
            boxes = np.array([[0.1, 0.1, 0.6, 0.5], [0.4, 0.5, 0.9, 0.95]], np.float32)
            yield {
                "image": rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
                "image/id": np.int64(1000 + index),
                "objects": {
                    "bbox": boxes,
                    "label": np.array([index % 80, 7], np.int64),
                    "area": (np.array([0.5 * 0.4, 0.5 * 0.45]) * height * width).astype(np.int64),
                    "is_crowd": np.array([False, True]),
                    "id": np.array([1, 2], np.int64),
                },
            }

    signature = {
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "image/id": tf.TensorSpec((), tf.int64),
        "objects": {
            "bbox": tf.TensorSpec((None, 4), tf.float32),
            "label": tf.TensorSpec((None,), tf.int64),
            "area": tf.TensorSpec((None,), tf.int64),
            "is_crowd": tf.TensorSpec((None,), tf.bool),
            "id": tf.TensorSpec((None,), tf.int64),
        },
    }
    return tf.data.Dataset.from_generator(examples, output_signature=signature)


def test_coco_pipeline_drops_crowds_and_evaluates_perfect_detections_at_ap_1():
    with tfds.testing.mock_data(as_dataset_fn=_coco_examples):
        assert detection_data.num_classes("coco/2017") == 80
        train = detection_data.build_dataset("coco/2017", "train", SIZE, 2, training=True, max_instances=4)
        _, targets = next(iter(train))
        assert np.all(np.sum(targets["labels"].numpy() >= 0, axis=1) == 1)  # The crowd box is dropped.
        evaluation = list(detection_data.build_dataset("coco/2017", "validation", SIZE, 2, max_instances=4))
    assert sum(len(truth["source_id"]) for _, truth in evaluation) == len(COCO_SHAPES)

    def score(shift):
        evaluator = detection.coco_evaluator.COCOEvaluator(annotation_file=None, include_mask=False)
        for _, truth in evaluation:
            # Perfect detections of the non-crowd objects, in pixels of the resized image.
            scale = truth["image_info"][:, 2:3, :].numpy()
            boxes = truth["boxes"].numpy()[:, :1] * np.tile(scale, (1, 1, 2)) + shift
            found = {
                "boxes": np.pad(boxes, ((0, 0), (0, 1), (0, 0))),
                "scores": np.array([[0.9, 0.0]] * len(boxes)),
                "classes": truth["classes"].numpy()[:, :2] - 1,
                "num_detections": np.ones(len(boxes), np.int32),
            }
            evaluator.update_state(truth, detection.coco_predictions(found, truth))
        return evaluator.result()

    assert score(0.0)["AP"] == pytest.approx(1.0)
    assert score(np.array([8.0, 8.0, 8.0, 8.0]))["AP75"] < 0.5


# --- training ----------------------------------------------------------------------------


def test_recipes_validate_detection_fields():
    assert recipes.get_detection_recipe("paper_coco").image_size == 640
    with pytest.raises(ValueError, match="scale_min"):
        recipes.get_detection_recipe("quick_detection", scale_min=0.0)
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        recipes.get_detection_recipe("quick_detection", randaugment_magnitude=5)
    with pytest.raises(ValueError, match="models"):
        recipes.get_detection_recipe("quick_detection", models=("aa_resnet50",))
    with pytest.raises(ValueError, match="paper_coco"):
        recipes.get_detection_recipe("coco")


def test_train_on_two_replicas_evaluate_and_resume(small_glyph_boxes, tmp_path, mirrored_strategy):
    model_dir = str(tmp_path / "run")
    arguments = dict(
        recipe=recipes.get_detection_recipe("quick_detection", image_size=SIZE, max_instances=4),
        data_dir=small_glyph_boxes, global_batch_size=4, steps_per_epoch=1, eval_examples=4, verbose=False,
    )
    keras.utils.set_random_seed(0)
    mirrored = mirrored_strategy
    _, first = detection.train(mirrored, settings_for("detection", "aa_retinanet_r18", model_dir, epochs=1, **arguments))
    assert first["steps"] == 1 and first["finished"]
    assert set(first["coco"]) == set(detection.COCO_METRICS)
    assert all(-1.0 <= value <= 1.0 for value in first["coco"].values())
    assert np.isfinite(first["history"][0]["train_loss"]) and first["history"][0]["train_loss"] > 0
    # The backbone's BatchNormalization statistics are re-estimated over the training images, two replicas.
    train_images = min(1000, detection_data.split_size("glyph_boxes", "train", small_glyph_boxes))
    assert first["batch_norm"]["images"] == train_images and first["batch_norm"]["layers"] > 0
    assert set(first["batch_norm"]["before"]["coco"]) == set(detection.COCO_METRICS)
    # A different network in the same model_dir is refused before anything is written.
    config = open(os.path.join(model_dir, "run_config.json")).read()
    with pytest.raises(ValueError, match="model"):
        detection.train(mirrored, settings_for("detection", "retinanet_r18", model_dir, epochs=2, **arguments))
    assert open(os.path.join(model_dir, "run_config.json")).read() == config
    # The same run with one more epoch resumes from the checkpoint of step 1 (on one replica).
    model, second = detection.train(
        tf.distribute.get_strategy(), settings_for("detection", "aa_retinanet_r18", model_dir, epochs=2, **arguments)
    )
    assert second["steps"] == 2 and [h["epoch"] for h in second["history"]] == [0, 1]
    assert json.load(open(os.path.join(model_dir, "metrics.json")))["steps"] == 2
    table = train.comparison_table([second], "detection").splitlines()
    assert table[1].split()[:2] == ["aa_retinanet_r18", f"{model.count_params():,}"]
    restored = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    images = np.random.default_rng(0).random((1, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(restored(images)["cls_logits"], model(images)["cls_logits"], atol=1e-5)


# --- export ------------------------------------------------------------------------------


def _export_cli(*flags):
    argv = ["aa-export", "--task=detection", *flags]
    exporter.FLAGS(argv)
    try:
        exporter.main(argv[:1])
    finally:
        exporter.FLAGS.unparse_flags()


def test_export_cli_writes_saved_model_and_builtin_tflite_of_the_raw_network(
    small_detector, small_glyph_boxes, tmp_path, capsys
):
    model_file = str(tmp_path / "detector.keras")
    small_detector.save(model_file)
    output_dir = str(tmp_path / "export")
    # The default formats of --task=detection, on 3 test images of glyph_boxes in batches of 2.
    _export_cli(f"--model={model_file}", f"--output_dir={output_dir}", "--dataset=glyph_boxes",
                f"--data_dir={small_glyph_boxes}", "--num_images=3", "--batch=2")  # fmt: skip
    printed = capsys.readouterr().out
    assert "tflite_raw" in printed and exporter.REPORT_FILE in printed
    result = json.load(open(os.path.join(output_dir, "export_report.json")))
    rows = {row["artifact"]: row for row in result["rows"]}
    assert list(rows) == ["saved_model", "tflite_raw"] and result["num_images"] == 3 and result["batch"] == 2
    assert rows["saved_model"]["parity"]["passed"] and rows["saved_model"]["parity"]["detections"] > 0
    assert rows["tflite_raw"]["parity"]["passed"]
    assert not [op for op in rows["tflite_raw"]["ops"] if op.startswith(("CUSTOM", "UNKNOWN"))]
    images = np.random.default_rng(1).random((2, SIZE, SIZE, 3)).astype(np.float32)
    served = tf.saved_model.load(os.path.join(output_dir, "saved_model")).signatures["serving_default"]
    outputs = served(images=tf.constant(images))
    assert sorted(outputs) == ["boxes", "classes", "num_detections", "scores"]
    found = retinanet.detections(small_detector, images)
    np.testing.assert_array_equal(outputs["num_detections"], found["num_detections"])
    with pytest.raises(SystemExit, match="not empty"):
        _export_cli(f"--model={model_file}", f"--output_dir={output_dir}", f"--data_dir={small_glyph_boxes}")
    assert json.load(open(os.path.join(output_dir, "export_report.json"))) == result


def test_export_rejects_bad_arguments(small_detector, tmp_path):
    images = np.zeros((1, SIZE, SIZE, 3), np.float32)
    with pytest.raises(ValueError, match="formats"):
        export_detection.export_detector(small_detector, str(tmp_path / "a"), images, formats=["onnx"])
    with pytest.raises(ValueError, match="images"):
        export_detection.export_detector(small_detector, str(tmp_path / "b"), np.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="RetinaNet"):
        export_detection.export_detector(keras.Sequential([keras.Input((SIZE, SIZE, 3))]), str(tmp_path / "c"), images)
    for calibration in (None, np.zeros((0, SIZE, SIZE, 3)), np.zeros((2, 32, 32, 3))):
        with pytest.raises(ValueError, match="calibration_images"):
            export_detection.export_detector(
                small_detector, str(tmp_path / "d"), images, formats=["tflite_int8"], calibration_images=calibration
            )
    assert os.listdir(tmp_path) == []


# --- the trainer's command line, and flag errors of both command lines --------------------


def _train_cli(*flags):
    argv = ["train", "--task=detection", *flags]
    train.FLAGS(argv)
    try:
        return train.run(argv[:1])
    finally:
        train.FLAGS.unparse_flags()


def test_train_cli_trains_a_detector_and_prints_the_comparison(small_glyph_boxes, tmp_path, capsys):
    rows = _train_cli("--model=aa_retinanet_r18", f"--data_dir={small_glyph_boxes}", f"--model_dir={tmp_path}",
                      "--epochs=1", "--batch_size=4", "--steps_per_epoch=1", f"--image_size={SIZE}",
                      "--eval_examples=4")  # fmt: skip
    assert [row["model"] for row in rows] == ["aa_retinanet_r18"]
    assert (rows[0]["task"], rows[0]["steps"], rows[0]["eval_examples"]) == ("detection", 1, 4)
    config = json.load(open(tmp_path / "aa_retinanet_r18" / "run_config.json"))
    quick = recipes.get_detection_recipe("quick_detection")  # --task=detection's default recipe
    assert (config["dataset"], config["optimizer"], config["image_size"]) == (quick.dataset, quick.optimizer, SIZE)
    table = capsys.readouterr().out.splitlines()[-2:]
    assert table[0].split() == ["model", "params", "AP", "AP50", "AP75", "train", "time"]
    assert table[1].split()[:2] == ["aa_retinanet_r18", f"{rows[0]['params']:,}"]
    restored = keras.saving.load_model(str(tmp_path / "aa_retinanet_r18" / "model.keras"))
    assert restored.count_params() == rows[0]["params"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model=aa_small"], r"Invalid `--model`: unknown detection networks \['aa_small'\]"),
        (["--recipe=quick"], r"Invalid `--recipe`: 'quick' is not a detection recipe.*quick_detection"),
        (["--task=classification", "--recipe=paper_coco"], r"Invalid `--recipe`: 'paper_coco' is not a classification"),
        (["--task=classification", "--eval_examples=4"], r"Invalid `--eval_examples`: it applies to --task=detection"),
        (["--randaugment=5"], r"Invalid `--randaugment`: it applies to --task=classification"),
    ],
)
def test_train_cli_flag_errors_name_the_flag(flags, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _train_cli(f"--model_dir={tmp_path / 'run'}", *flags)
    assert not (tmp_path / "run").exists()


def test_train_cli_on_unprepared_coco_says_how_to_prepare_it(tmp_path):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match="'coco/2017' is not prepared.*tfds build coco/2017"):
        _train_cli("--dataset=coco/2017", "--model=aa_retinanet_r50", "--recipe=paper_coco",
                   f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model=aa_retinanet_r18", "--formats=saved_model,onnx"], r"\['onnx'\] do not apply to --task=detection"),
        (["--model=aa_small", "--task=classification", "--formats=tflite_raw"],
         r"\['tflite_raw'\] do not apply to --task=classification"),
        (["--model=aa_retinanet_r18", "--threads=2"], r"--threads apply to --task=classification only"),
        (["--model=aa_small", f"--image_size={SIZE}"], r"Invalid `--model`: 'aa_small' is neither.*aa_retinanet_r18"),
        (["--model=CLASSIFIER"], r"Invalid `--model`: .* is not a RetinaNet detector"),
    ],
)
def test_export_cli_flag_errors_name_the_flag(flags, message, tmp_path):
    classifier = str(tmp_path / "classifier.keras")
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]).save(
        classifier
    )
    flags = [flag.replace("CLASSIFIER", classifier) for flag in flags]
    with pytest.raises(SystemExit, match=message):
        _export_cli(f"--output_dir={tmp_path / 'out'}", *flags)
    assert not (tmp_path / "out").exists()


# --- the paper's parameter counts --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(retinanet.DETECTORS.keys() & {"retinanet_r50", "aa_retinanet_r50",
                                                                         "retinanet_r101", "aa_retinanet_r101"}))
def test_parameters_within_3_percent_of_the_paper(name):
    from benchmarks.detection_param_table import PAPER, measure

    assert abs(measure(name)["params"] / 1e6 - PAPER[name]) / PAPER[name] <= 0.03


# --- COCO's "no data" value -----------------------------------------------------------------


def test_cocos_minus_one_is_shown_as_na_never_as_a_percentage():
    """Before: a detector evaluated on images without objects was listed with AP -100.00%."""
    coco = {name: -1.0 for name in detection.COCO_METRICS} | {"AP50": 0.5}
    row = {"model": "aa_retinanet_r18", "params": 1234, "train_seconds": 5.0, "coco": coco}
    table = train.comparison_table([row], "detection").splitlines()
    assert table[1].split() == ["aa_retinanet_r18", "1,234", "n/a", "50.00%", "n/a", "5s"]
    assert (detection.percent(-1.0), detection.percent(0.1234)) == ("n/a", "12.34%")


def test_export_cli_refuses_calibration_images_below_1_for_int8(small_detector, small_glyph_boxes, tmp_path):
    """Before: `--calibration_images=0` read no images and said the train split "gave no images"."""
    model_file = str(tmp_path / "detector.keras")
    small_detector.save(model_file)
    with pytest.raises(SystemExit, match=r"^aa-export: error: Invalid `--calibration_images`: expected a positive int, "
                                         r"received --calibration_images=0\.$"):
        _export_cli(f"--model={model_file}", f"--output_dir={tmp_path / 'out'}", "--formats=tflite_int8",
                    f"--data_dir={small_glyph_boxes}", "--num_images=2", "--calibration_images=0")  # fmt: skip
    assert not (tmp_path / "out").exists()
