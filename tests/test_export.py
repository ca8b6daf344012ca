"""The exporter: every format of a small trained AA model, parity, op sets, report, errors."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import aa_keras
from aa_keras.export import classification as export_classification
from aa_keras.export import export as exporter
from aa_keras.export.settings import ExportSettings
from aa_keras.export import model_source, parity, staging, tflite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16
CLASSES = 4
ALL_FORMATS = ["saved_model", "tflite", "onnx"]


def quadrant_images(count, seed):
    """A stand-in dataset: dim noise with one bright quadrant, whose index is the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    images = rng.uniform(0.0, 0.3, (count, SIZE, SIZE, 3)).astype(np.float32)
    half = SIZE // 2
    for image, label in zip(images, labels):
        row, column = divmod(int(label), 2)
        image[row * half : (row + 1) * half, column * half : (column + 1) * half] += 0.6
    return images, labels


def tiny_classifier(attention):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    if attention:
        x = aa_keras.AttentionAugmentation2D(16, 3, depth_k=8, depth_v=8, num_heads=2)(x)
    else:
        x = keras.layers.Conv2D(16, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x))


def trained(attention):
    """Trained for a few epochs, so that the class scores are separated as in a real model
    (int8 agreement on a random-weight model says little)."""
    keras.utils.set_random_seed(0)
    model = tiny_classifier(attention)
    images, labels = quadrant_images(512, seed=0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, epochs=5, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def models():
    return trained(attention=True), trained(attention=False)


@pytest.fixture(scope="module")
def model_files(models, tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    paths = (str(directory / "aa.keras"), str(directory / "conv.keras"))
    for model, path in zip(models, paths):
        model.save(path)
    return paths


@pytest.fixture(scope="module")
def full_export(models, tmp_path_factory):
    """One export of the AA model and the conv baseline to every format, uint8 SavedModel."""
    model, baseline = models
    output_dir = str(tmp_path_factory.mktemp("full") / "export")
    eval_images, _ = quadrant_images(100, seed=1)
    calibration_images, _ = quadrant_images(64, seed=2)
    result = export_classification.export(
        model, output_dir, ALL_FORMATS, eval_images, calibration_images, baseline=baseline,
        settings=ExportSettings(latency_runs=5, uint8_input=True),
    )
    return output_dir, result, export_classification.snap_to_8_bit(eval_images)


def test_every_format_is_written_and_passes_parity(full_export):
    output_dir, result, _ = full_export
    rows = {(row["model"], row["artifact"]): row for row in result["rows"]}
    assert set(rows) == {(m, k) for m in ("model", "baseline") for k in export_classification.ARTIFACT_KINDS}
    for (label, kind), row in rows.items():
        assert os.path.exists(row["file"]), row["file"]
        assert row["file"].startswith(output_dir)
        assert row["check"]["passed"], (label, kind, row["check"])
        assert row["size_bytes"] > 0 and row["latency_ms"] > 0
    assert rows["model", "tflite_float32"]["parity"]["max_abs_diff"] <= 1e-4
    assert rows["model", "tflite_float16"]["parity"]["max_rel_diff"] <= 1e-2
    assert rows["model", "tflite_int8"]["parity"]["top1_agreement"] >= 0.95
    leftovers = [name for name in os.listdir(os.path.dirname(output_dir)) if name.startswith(".")]
    assert leftovers == []
    assert not [name for name in os.listdir(output_dir) if name.startswith(".tflite_source")]


def test_saved_model_serves_uint8_images_like_keras(full_export, models):
    output_dir, _, images = full_export
    signature = tf.saved_model.load(os.path.join(output_dir, "saved_model")).signatures["serving_default"]
    assert signature.structured_input_signature[1]["images"].dtype == tf.uint8
    assert list(signature.structured_outputs) == ["predictions"]
    pixels = np.round(images[:8] * 255).astype(np.uint8)
    served = signature(images=tf.constant(pixels))["predictions"].numpy()
    expected = models[0](pixels.astype(np.float32) / 255.0).numpy()
    assert np.abs(served - expected).max() <= 1e-4
    assert np.std(expected) > 0.1  # the outputs are not trivially equal


def _op_types(graph_def):
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return {node.op for node in nodes}


def test_saved_model_holds_standard_ops_only(full_export):
    """The fused CPU kernel is a custom op: the exporter traces the attention from standard ops,
    so the file loads and converts without aa_keras."""
    output_dir, _, _ = full_export
    signature = tf.saved_model.load(os.path.join(output_dir, "saved_model")).signatures["serving_default"]
    ops = _op_types(signature.graph.as_graph_def())
    assert "BatchMatMulV2" in ops  # the attention is there
    assert not {"AaFusedAttention", "AaFusedAttentionGrad"} & ops


def test_int8_tflite_has_int8_io_and_agrees_with_keras(full_export, models):
    output_dir, _, images = full_export
    interpreter = Interpreter(model_path=os.path.join(output_dir, "model_int8.tflite"))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    scale, zero_point = inp["quantization"]
    agree = 0
    for image in images[:40]:
        interpreter.set_tensor(inp["index"], np.round(image[None] / scale + zero_point).astype(np.int8))
        interpreter.invoke()
        agree += interpreter.get_tensor(out["index"]).argmax() == models[0](image[None]).numpy().argmax()
    assert agree >= 0.95 * 40


def test_onnx_runs_in_onnxruntime_like_keras(full_export, models):
    output_dir, _, images = full_export
    session = onnxruntime.InferenceSession(os.path.join(output_dir, "model.onnx"))
    (outputs,) = session.run(["predictions"], {"images": images[:8]})
    assert np.abs(outputs - models[0](images[:8]).numpy()).max() <= 1e-4


def test_tflite_op_sets_are_builtin_and_contain_the_attention(full_export):
    output_dir, result, _ = full_export
    for row in result["rows"]:
        if row["artifact"].startswith("tflite_"):
            with open(row["file"], "rb") as f:
                assert tflite.list_ops(f.read()) == row["ops"]
            assert not [op for op in row["ops"] if op.startswith(("CUSTOM", "UNKNOWN"))], row["ops"]
    model_ops = {row["artifact"]: row.get("ops") for row in result["rows"] if row["model"] == "model"}
    assert {"BATCH_MATMUL", "SOFTMAX"} <= set(model_ops["tflite_float32"])
    assert "MatMul" in model_ops["onnx"] and "Softmax" in model_ops["onnx"]


def test_builtin_check_rejects_custom_ops():
    function = tf.function(lambda x: tf.math.igamma(x, x + 1.0)).get_concrete_function(
        tf.TensorSpec([4], tf.float32)
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.allow_custom_ops = True
    ops = tflite.list_ops(converter.convert())
    assert "CUSTOM:Igamma" in ops
    with pytest.raises(ValueError, match="non-builtin ops.*Igamma"):
        tflite.check_builtin_ops(ops)


def test_report_json_and_baseline_ratios(full_export):
    output_dir, result, _ = full_export
    with open(os.path.join(output_dir, exporter.REPORT_FILE)) as f:
        written = json.load(f)
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    sizes = {(row["model"], row["artifact"]): row["size_bytes"] for row in written["rows"]}
    for row in written["rows"]:
        if row["model"] == "model":
            assert row["size_vs_baseline"] == pytest.approx(sizes["model", row["artifact"]] / sizes["baseline", row["artifact"]])
    assert os.path.getsize(os.path.join(output_dir, "model_float16.tflite")) == sizes["model", "tflite_float16"]
    for kind in export_classification.ARTIFACT_KINDS:
        assert kind in written["table"]


def test_parity_metrics():
    reference = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], np.float32)
    outputs = reference.copy()
    outputs[0, 2] += 1.5  # changes the arg-max of the first row only
    values = parity.metrics(outputs, reference)
    assert values["max_abs_diff"] == pytest.approx(1.5)
    assert values["max_rel_diff"] == pytest.approx(1.5 / 3.0)
    assert values["top1_agreement"] == 0.5
    assert not parity.check("tflite_int8", values)["passed"]
    assert parity.check("tflite_float32", parity.metrics(reference, reference))["passed"]
    pieces, count = parity.batches(reference, 3)
    assert count == 2 and pieces[0].shape == (3, 3) and np.array_equal(pieces[0][:2], reference)


def test_parity_failure_leaves_nothing_behind(models, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.CHECKS, "saved_model", ("max_abs_diff", -1.0, "max"))
    images, _ = quadrant_images(4, seed=3)
    with pytest.raises(exporter.ParityError, match="saved_model"):
        export_classification.export(models[0], str(tmp_path / "out"), "saved_model", images, images, settings=ExportSettings(latency_runs=1))
    assert os.listdir(tmp_path) == []


def test_baseline_parity_failure_is_reported_not_fatal(models, tmp_path, monkeypatch):
    model, baseline = models
    real_evaluate = export_classification.evaluate

    def evaluate_failing_baseline(network, *args):
        rows = real_evaluate(network, *args)
        for row in rows if network is baseline else ():
            row["check"] = {**row["check"], "passed": False}
        return rows

    monkeypatch.setattr(export_classification, "evaluate", evaluate_failing_baseline)
    images, _ = quadrant_images(4, seed=3)
    result = export_classification.export(
        model, str(tmp_path / "out"), "saved_model", images, images, baseline=baseline,
        settings=ExportSettings(latency_runs=1),
    )
    assert [(row["model"], row["check"]["passed"]) for row in result["rows"]] == [("model", True), ("baseline", False)]
    assert result["table"].splitlines()[-1].split()[-1] == "NO"
    assert os.path.isdir(tmp_path / "out" / "baseline" / "saved_model")


def test_overwrite_replaces_a_previous_export_and_its_leftovers(models, tmp_path):
    output_dir = tmp_path / "out"
    images, _ = quadrant_images(4, seed=3)
    export_classification.export(models[0], str(output_dir), "tflite_float32", images, settings=ExportSettings(latency_runs=1))
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        export_classification.export(models[0], str(output_dir), "saved_model", images, images)
    assert sorted(os.listdir(output_dir)) == [exporter.REPORT_FILE, "model_float32.tflite"]
    # Staging folders of a killed export into the same place.
    (tmp_path / ".out.partial-killed").mkdir()
    (tmp_path / ".out.old-killed").mkdir()
    export_classification.export(models[0], str(output_dir), "saved_model", images, settings=ExportSettings(latency_runs=1, overwrite=True))
    assert sorted(os.listdir(output_dir)) == [exporter.REPORT_FILE, "saved_model"]
    assert os.listdir(tmp_path) == ["out"]


def _tree(path):
    return sorted(os.path.relpath(os.path.join(root, name), path) for root, dirs, files in os.walk(path)
                  for name in dirs + files)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("foreign file", "not one: it holds \\['notes.txt'\\]"),
        ("no report", "not one: it has no export_report.json"),
        ("training run", "holds a training run \\(checkpoints, run_config.json\\)"),
        ("model inside", "contains the model being exported"),
        ("working directory", "is the working directory or one of its parents"),
        ("parent of working directory", "is the working directory or one of its parents"),
    ],
)
def test_overwrite_refuses_folders_that_are_not_a_previous_export(case, reason, model_files, tmp_path, monkeypatch):
    """`--overwrite` replaced any folder, deleting a training run or a project; now it refuses,
    before touching anything, every folder that is not a previous export."""
    folder = tmp_path / "folder"
    (folder / "saved_model").mkdir(parents=True)
    (folder / exporter.REPORT_FILE).write_text("{}")
    sources = ()
    if case == "foreign file":
        (folder / "notes.txt").write_text("mine")
    elif case == "no report":
        (folder / exporter.REPORT_FILE).unlink()
    elif case == "training run":
        (folder / "checkpoints").mkdir()
        (folder / "run_config.json").write_text("{}")
    elif case == "model inside":
        sources = (str(folder / "saved_model" / "model.keras"),)
    elif case == "working directory":
        monkeypatch.chdir(folder)
    else:
        (folder / "saved_model" / "deeper").mkdir()
        monkeypatch.chdir(folder / "saved_model" / "deeper")
    before = _tree(folder)
    with pytest.raises(ValueError, match=reason):
        staging.check_output_dir(str(folder), overwrite=True, sources=sources)
    assert _tree(folder) == before


def test_protected_folders_are_refused_even_when_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ValueError, match="is the home folder"):
        staging.check_output_dir(str(tmp_path), overwrite=True)
    with pytest.raises(ValueError, match="is the root folder"):
        staging.check_output_dir("/", overwrite=True)


def test_command_line_overwrite_of_the_run_folder_keeps_the_run(model_files, tmp_path):
    """The data-loss case of the issue: exporting a run's model.keras into the run folder with
    --overwrite deleted model.keras and checkpoints/; now it exits with the reason."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-1.index").write_bytes(b"checkpoint")
    model = run / "model.keras"
    model.write_bytes(open(model_files[0], "rb").read())
    before = _tree(run)
    completed = subprocess.run(
        [sys.executable, "-m", "aa_keras.export.export", f"--model={model}", f"--output_dir={run}", "--overwrite",
         "--baseline=none", "--formats=saved_model"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert completed.returncode != 0
    assert "holds a training run (checkpoints)" in completed.stderr
    assert _tree(run) == before


def test_saved_model_signature_checks_its_input(full_export):
    """A rank-3 input aborted the serving process (a CHECK failure in a conv kernel) and a wrong
    size failed deep inside; the signature now checks the shape first and says what it expects."""
    serve = tf.saved_model.load(os.path.join(full_export[0], "saved_model")).signatures["serving_default"]
    assert serve(images=tf.zeros((2, SIZE, SIZE, 3), tf.uint8))["predictions"].shape == (2, CLASSES)
    expected = f"expects `images` of shape \\(batch, {SIZE}, {SIZE}, 3\\) uint8"
    for shape in [(SIZE, SIZE, 3), (1, SIZE + 1, SIZE, 3), (1, SIZE, SIZE, 1), (1, 1, SIZE, SIZE, 3)]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
            serve(images=tf.zeros(shape, tf.uint8))


def test_calibration_images_are_needed_only_for_int8(models, tmp_path):
    images, _ = quadrant_images(4, seed=3)
    export_classification.export(models[0], str(tmp_path / "float"), "tflite_float32", images, images[:0], settings=ExportSettings(latency_runs=1))
    with pytest.raises(ValueError, match="--calibration_images`: the int8 TFLite model needs at least one"):
        export_classification.export(models[0], str(tmp_path / "int8"), "tflite_int8", images, images[:0], settings=ExportSettings(latency_runs=1))
    assert not (tmp_path / "int8").exists()


def test_lambda_layer_needs_an_explicit_opt_in(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.Dense(CLASSES)(keras.layers.Flatten()(keras.layers.Lambda(lambda x: 2.0 * x)(inputs)))
    path = str(tmp_path / "lambda.keras")
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="holds a Lambda layer.*pass --nosafe_mode"):
        model_source.load_model(path)
    assert model_source.load_model(path, safe_mode=False).outputs[0].shape[-1] == CLASSES


def test_unknown_format(models, tmp_path):
    images, _ = quadrant_images(4, seed=3)
    with pytest.raises(ValueError, match=r"--formats.*unknown \['tflite_int4'\]"):
        export_classification.export(models[0], str(tmp_path / "out"), "saved_model,tflite_int4", images, images)
    assert os.listdir(tmp_path) == []


def test_bad_image_size_and_batch(models, tmp_path):
    images, _ = quadrant_images(4, seed=3)
    with pytest.raises(ValueError, match=r"--image_size`: 24 does not match.*\(16, 16\)"):
        export_classification.export(models[0], str(tmp_path / "out"), "saved_model", images, images, settings=ExportSettings(image_size=24))
    with pytest.raises(ValueError, match="--batch`: expected a positive int, received 0"):
        export_classification.export(models[0], str(tmp_path / "out"), "saved_model", images, images, settings=ExportSettings(batch=0))
    with pytest.raises(ValueError, match=r"evaluation images have shape \(4, 16, 16, 1\)"):
        export_classification.export(models[0], str(tmp_path / "out"), "saved_model", images[..., :1], images)
    assert os.listdir(tmp_path) == []


def test_missing_and_non_keras_files(tmp_path):
    from aa_keras.export import model_source

    with pytest.raises(ValueError, match="does not exist"):
        model_source.load_model(str(tmp_path / "missing.keras"))
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="not a Keras 3 `.keras` archive"):
        model_source.load_model(str(text))
    archive = tmp_path / "model.h5"
    with zipfile.ZipFile(archive, "w") as f:
        f.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="not a Keras 3 `.keras` archive"):
        model_source.load_model(str(archive))


def test_builder_names(tmp_path):
    from aa_keras.export import model_source

    model = model_source.load_model("aa_small", image_size=SIZE, classes=3)
    assert tuple(model.outputs[0].shape) == (None, 3)
    assert any(isinstance(layer, aa_keras.AttentionAugmentation2D) for layer in model.layers)
    with pytest.raises(ValueError, match="--baseline.*'aa_tiny'.*builder names are"):
        model_source.load_model("aa_tiny", image_size=SIZE, classes=3, flag="--baseline")
    with pytest.raises(ValueError, match="--image_size` is required"):
        model_source.load_model("conv_small", classes=3)


def test_unknown_custom_object(tmp_path, monkeypatch):
    from aa_keras.export import model_source

    @keras.saving.register_keras_serializable(package="test_export")
    class Doubler(keras.layers.Layer):
        def call(self, inputs):
            return 2.0 * inputs

    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.Dense(CLASSES)(keras.layers.Flatten()(Doubler()(inputs)))
    path = str(tmp_path / "custom.keras")
    keras.Model(inputs, outputs).save(path)
    monkeypatch.delitem(keras.saving.get_custom_objects(), "test_export>Doubler")
    with pytest.raises(ValueError, match="custom object 'Doubler'.*not registered"):
        model_source.load_model(path)


def test_command_line_exports_a_keras_file(model_files, tmp_path, monkeypatch, capsys):
    """`main` end to end, with a stand-in for the dataset of `aa_keras.data.classification.build_dataset`."""

    def build_dataset(name, split, image_size, global_batch_size=None, data_dir=None, training=False):
        assert (name, image_size, global_batch_size, training) == ("stand_in", SIZE, None, False)
        images, labels = quadrant_images(32, seed={"train": 4, "test": 5}[split])
        return tf.data.Dataset.from_tensor_slices((images, labels))

    monkeypatch.setattr(exporter.data, "build_dataset", build_dataset)
    names = [f"quadrant_{i}" for i in range(CLASSES)]
    monkeypatch.setattr(exporter.data, "class_names", lambda name, data_dir=None: names)
    output_dir = str(tmp_path / "cli")
    argv = [
        "aa-export", f"--model={model_files[0]}", f"--baseline={model_files[1]}", f"--output_dir={output_dir}",
        "--formats=tflite_float32,tflite_int8", "--dataset=stand_in", "--num_images=24", "--batch=4",
        "--threads=2", "--latency_runs=3",
    ]
    try:
        exporter.FLAGS(argv)
        exporter.main(argv[:1])
    finally:
        exporter.FLAGS.unparse_flags()
    printed = capsys.readouterr().out
    assert "tflite_int8" in printed and exporter.REPORT_FILE in printed
    with open(os.path.join(output_dir, exporter.REPORT_FILE)) as f:
        written = json.load(f)
    assert written["num_eval_images"] == 24 and written["batch"] == 4
    assert [(row["model"], row["artifact"]) for row in written["rows"]] == [
        ("model", "tflite_float32"), ("model", "tflite_int8"),
        ("baseline", "tflite_float32"), ("baseline", "tflite_int8"),
    ]
    interpreter = Interpreter(model_path=os.path.join(output_dir, "model_float32.tflite"))
    assert list(interpreter.get_input_details()[0]["shape"]) == [4, SIZE, SIZE, 3]
    # The model file has no labels.txt next to it: the export carries the --dataset's names.
    for folder in (output_dir, os.path.join(output_dir, "baseline")):
        with open(os.path.join(folder, "labels.txt")) as f:
            assert f.read().splitlines() == names


def test_command_line_error_is_clear_and_writes_nothing(tmp_path):
    output_dir = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "aa_keras.export.export", f"--model={tmp_path / 'missing.keras'}",
         f"--output_dir={output_dir}", "--baseline=none"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert completed.returncode != 0
    assert "aa-export: error: Invalid `--model`" in completed.stderr and "does not exist" in completed.stderr
    assert not output_dir.exists()


def test_a_truncated_or_corrupted_keras_file_is_called_damaged(tmp_path):
    """Before: a truncated file was "not a Keras 3 `.keras` archive ... or pass a builder name",
    and one with a corrupted member ended in a BadZipFile traceback."""
    path = tmp_path / "model.keras"
    tiny_classifier(attention=False).save(path)
    whole = path.read_bytes()
    (tmp_path / "cut.keras").write_bytes(whole[: len(whole) // 2])
    scribbled = bytearray(whole)
    scribbled[200:260] = bytes(byte ^ 0xFF for byte in scribbled[200:260])  # inside the first member's data
    (tmp_path / "scribbled.keras").write_bytes(bytes(scribbled))
    for name in ("cut.keras", "scribbled.keras"):
        with pytest.raises(ValueError, match=r"^Invalid `--model`: .* is damaged: a truncated or corrupted `.keras` "
                                             r"archive .*Save the model again, or restore the file from a copy\.$"):
            model_source.load_model(str(tmp_path / name))


def test_command_line_refuses_num_images_below_1(model_files, tmp_path):
    """Before: `--num_images=0` read no images and said the split "gave no images"."""
    argv = ["aa-export", f"--model={model_files[0]}", "--baseline=none", f"--output_dir={tmp_path / 'out'}",
            "--num_images=0"]  # fmt: skip
    exporter.FLAGS(argv)
    try:
        with pytest.raises(SystemExit, match=r"^aa-export: error: Invalid `--num_images`: expected a positive int, "
                                             r"received --num_images=0\.$"):
            exporter.main(argv[:1])
    finally:
        exporter.FLAGS.unparse_flags()
    assert not (tmp_path / "out").exists()
