"""The int8 TFLite recipe (each attention float up to the softmax, the product with v in int8
with v symmetric, folded logits in int8), the per-operator profiler and the TFLite benchmark's pieces, on small trained
models; the whole detector's TFLite file and its detection matching."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils
from test_export import SIZE, quadrant_images, trained

from aa_keras.applications import retinanet
from aa_keras.export import classification as export_classification
from aa_keras.export import detection as export_detection
from aa_keras.export import detection_checks, detection_conversion, detection_runner, detection_signatures
from aa_keras.export import export as exporter
from aa_keras.export.settings import ExportSettings
from aa_keras.export import mobile_attention, parity, saved_model, tflite
from benchmarks import bench_tflite, tflite_profile


@pytest.fixture(scope="module")
def models():
    return {"aa": trained(attention=True), "conv": trained(attention=False)}


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    """{label: (calibrated model, int8 flatbuffer of the recipe, the converter's default int8)}."""
    calibration, _ = parity.batches(quadrant_images(64, seed=2)[0], 1)
    result = {}
    for label, model in models.items():
        source = str(tmp_path_factory.mktemp(label) / "saved_model")
        saved_model.write_saved_model(model, source, (SIZE, SIZE, 3), batch=1)
        calibrated = tflite.calibrate(tf.lite.TFLiteConverter.from_saved_model(source), calibration)
        result[label] = (calibrated, tflite.convert(source, "int8", calibration), tflite.quantize_int8(calibrated))
    return result


def _op_types(flatbuffer):
    """[(op name, input dtypes)] of the main subgraph, in order."""
    interpreter = Interpreter(model_content=flatbuffer)
    return [
        (op["op_name"], [np.dtype(t).name for t in op["operand_types"]])
        for op in interpreter._get_ops_details()
    ]


def _top1_agreement(flatbuffer, model, images, tmp_path):
    path = str(tmp_path / "model.tflite")
    with open(path, "wb") as f:
        f.write(flatbuffer)
    runner = tflite.TFLiteRunner(path)
    reference = np.asarray(model(images, training=False))
    return parity.metrics(parity.predict(runner, images, 1), reference)["top1_agreement"]


def test_attention_core_nodes_of_the_profiled_variant(converted):
    nodes = tflite_profile.attention_core_nodes(converted["aa"][0])
    layer = [name.rsplit("/", 1)[-1] for name in nodes]
    # q k^T, the two relative-logit products, their sums, the softmax and the product with v.
    assert {"MatMul", "MatMul_1", "Softmax", "add", "add_1"} <= set(layer), layer
    assert sum("Einsum" in name for name in layer) >= 2
    assert not [name for name in nodes if "qkv" in name or "attn_out" in name or "conv" in name.lower()]
    assert tflite_profile.attention_core_nodes(converted["conv"][0]) == []


def test_attention_block_nodes_span_the_split_of_qkv_to_the_attention_output(converted):
    nodes = tflite.attention_block_nodes(converted["aa"][0])
    layer = [name.rsplit("/", 1)[-1] for name in nodes]
    assert {"MatMul", "MatMul_1", "Softmax", "add", "add_1", "transpose", "split"} <= set(layer), layer
    assert sum("Einsum" in name for name in layer) >= 2
    assert not [name for name in nodes if "qkv" in name or "attn_out" in name or "conv" in name.lower()]
    assert tflite.attention_block_nodes(converted["conv"][0]) == []


def _batch_matmuls(flatbuffer):
    """[(input dtypes, right-hand input's zero point)] of the main subgraph's BATCH_MATMULs."""
    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return [
        ([np.dtype(t).name for t in op["operand_types"]], int(tensors[op["inputs"][1]]["quantization"][1]))
        for op in interpreter._get_ops_details()
        if op["op_name"] == "BATCH_MATMUL"
    ]


def test_int8_recipe_runs_each_attention_in_float_up_to_the_softmax(converted):
    calibrated, recipe, default = converted["aa"]
    ops = _op_types(recipe)
    tflite.check_builtin_ops(tflite.list_ops(recipe))
    # One float island per attention block: entered by DEQUANTIZE, left by the one QUANTIZE of
    # the softmax's output; the product with v in int8, v symmetric.
    softmaxes = sum(name == "SOFTMAX" for name, _ in ops)
    assert softmaxes >= 1 and sum(name == "QUANTIZE" for name, _ in ops) == softmaxes
    for name, types in ops:
        if name == "SOFTMAX":
            assert types == ["float32"], (name, types)
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            assert types[:2] == ["int8", "int8"], (name, types)
    products = _batch_matmuls(recipe)
    int8_products = [zero_point for types, zero_point in products if types == ["int8", "int8"]]
    assert int8_products == [0] * softmaxes
    assert sum(types == ["float32", "float32"] for types, _ in products) == len(products) - softmaxes
    assert ("ADD", ["int8", "int8"]) in ops  # The batch normalisation outside the blocks.
    interpreter = Interpreter(model_content=recipe)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # The converter's default quantizes them, and then LiteRT's XNNPACK delegate leaves the int8
    # softmax to the reference kernel; in the recipe it takes every attention op, the int8 product
    # with v included, and every op but SPLIT_V and AVERAGE_POOL_2D.
    assert ("SOFTMAX", ["int8"]) in _op_types(default)
    delegated = tflite_profile.xnnpack_ops(recipe)
    assert {name for name, ok in delegated if not ok} <= {"SPLIT_V", "AVERAGE_POOL_2D"}, delegated
    assert not all(ok for name, ok in tflite_profile.xnnpack_ops(default) if name == "SOFTMAX")


def test_symmetric_matmul_rhs_lets_xnnpack_take_every_int8_batch_matmul(converted, models, tmp_path):
    """On the converter's fully int8 model: k, v and the relative logits' constant tables get
    zero point 0, XNNPACK then takes every BATCH_MATMUL, and the model still agrees with Keras."""
    calibrated, _, default = converted["aa"]
    before = _batch_matmuls(default)
    assert any(zero_point != 0 for _, zero_point in before)
    assert not all(ok for name, ok in tflite_profile.xnnpack_ops(default) if name == "BATCH_MATMUL")
    symmetric = tflite.symmetric_matmul_rhs(default, calibrated)
    after = _batch_matmuls(symmetric)
    assert [types for types, _ in after] == [types for types, _ in before] and {z for _, z in after} == {0}
    # A computed right-hand input's symmetric range just covers its calibrated one, whatever the
    # sign of its zero point (the same model with every zero point negated has the other signs).
    graph, names, _, producer, _ = tflite.operator_graph(default)
    computed = [
        op.inputs[1] for op, name in zip(graph.operators, names) if name == "BATCH_MATMUL" and op.inputs[1] in producer
    ]
    negated = flatbuffer_utils.read_model_from_bytearray(default)
    for tensor in negated.subgraphs[0].tensors:
        if tensor.quantization is not None and tensor.quantization.zeroPoint is not None:
            tensor.quantization.zeroPoint = np.minimum(-tensor.quantization.zeroPoint, 127)
    negated = bytes(flatbuffer_utils.convert_object_to_bytearray(negated))
    signs = set()
    for quantized in (default, negated):
        params = [
            {t["index"]: t["quantization"] for t in Interpreter(model_content=fb).get_tensor_details()}
            for fb in (quantized, tflite.symmetric_matmul_rhs(quantized, calibrated))
        ]
        for t in computed:
            (scale, zero_point), (new_scale, new_zero_point) = params[0][t], params[1][t]
            signs.add(np.sign(zero_point))
            assert new_zero_point == 0
            assert new_scale == pytest.approx(max(scale * (128 + zero_point), scale * (127 - zero_point)) / 127)
    assert {-1, 1} <= signs
    assert all(ok for name, ok in tflite_profile.xnnpack_ops(symmetric) if name == "BATCH_MATMUL")
    images = export_classification.snap_to_8_bit(quadrant_images(200, seed=1)[0])
    assert _top1_agreement(symmetric, models["aa"], images, tmp_path) >= 0.97


def test_symmetric_matmul_rhs_follows_a_split_to_its_data_input(tmp_path):
    """SPLIT's inputs are (axis, data): the rewritten v's parameters reach the split's data input,
    so that the int8 SPLIT, which copies bytes, still maps its input to the same values (with the
    axis taken for the data, the split's input kept its old zero point and XNNPACK refused the
    model)."""
    rng = np.random.default_rng(0)
    weights = tf.constant(rng.normal(size=(8, 16)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec((1, 12, 8), tf.float32)])
    def attend(x):
        y = tf.nn.relu(tf.einsum("bnc,cd->bnd", x, weights)) - 0.5  # Asymmetric: zero point != 0.
        a, v = tf.split(y, 2, axis=-1)
        return tf.matmul(tf.nn.softmax(tf.matmul(a, a, transpose_b=True)), v)

    batches = [rng.normal(size=(1, 12, 8)).astype(np.float32) for _ in range(32)]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([attend.get_concrete_function()], attend)
    calibrated = tflite.calibrate(converter, batches)
    default = tflite.quantize_int8(calibrated, io_type=tf.float32)
    symmetric = tflite.symmetric_matmul_rhs(default, calibrated)
    assert any(zero_point != 0 for _, zero_point in _batch_matmuls(default))
    assert {zero_point for _, zero_point in _batch_matmuls(symmetric)} == {0}
    interpreter = Interpreter(model_content=symmetric)
    params = {t["index"]: t["quantization"] for t in interpreter.get_tensor_details()}
    (split,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "SPLIT"]
    assert {params[t] for t in (split["inputs"][1], *split["outputs"])} == {params[split["outputs"][0]]}
    assert params[split["outputs"][0]][1] == 0
    inputs = np.concatenate(batches[:8])
    reference = np.concatenate([attend(x).numpy() for x in batches[:8]])
    errors = {}
    for label, flatbuffer in (("default", default), ("symmetric", symmetric)):
        path = tmp_path / f"{label}.tflite"
        path.write_bytes(flatbuffer)
        errors[label] = np.abs(parity.predict(tflite.TFLiteRunner(str(path)), inputs, 1) - reference).mean()
    # Symmetric v has about half the resolution of the asymmetric one: a small loss, not a wrong model.
    assert errors["symmetric"] < 1.5 * errors["default"] < 0.1 * np.abs(reference).mean()


def test_int8_recipe_runs_the_folded_logits_in_int8_on_symmetric_extended_keys(models, tmp_path):
    """With `mobile_attention`'s `fold`, the logits (q k^T and both relative terms, one
    BATCH_MATMUL of [q ; a ; b] with [k ; one-hot keys]) are int8 with zero point 0 on the
    extended keys, whose one-hot entries are exact; only the softmax stays float, and XNNPACK
    takes every op."""
    model = models["aa"]
    source = str(tmp_path / "saved_model")
    saved_model.write_saved_model(
        mobile_attention.rebuild(model, ("scale", "split", "depthwise_pool", "fold")), source, (SIZE, SIZE, 3), batch=1
    )
    calibration, _ = parity.batches(quadrant_images(64, seed=2)[0], 1)
    recipe = tflite.convert(source, "int8", calibration)
    ops = _op_types(recipe)
    assert [types for name, types in ops if name == "SOFTMAX"] == [["float32"]]
    assert sum(name == "DEQUANTIZE" for name, _ in ops) == sum(name == "QUANTIZE" for name, _ in ops) == 1
    assert [z for _, z in _batch_matmuls(recipe)] == [0] * 4  # two relative products, the logits, P v
    assert all(types == ["int8", "int8"] for types, _ in _batch_matmuls(recipe))
    interpreter = Interpreter(model_content=recipe)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    details = interpreter._get_ops_details()
    computed = {t for op in details for t in op["outputs"]}
    (onehot,) = [
        tensors[t] for op in details if op["op_name"] == "CONCATENATION" for t in op["inputs"] if t not in computed
    ]
    scale, zero_point = onehot["quantization"]
    values = (interpreter.get_tensor(onehot["index"]).astype(np.float32) - zero_point) * scale
    assert zero_point == 0 and set(np.unique(values)) == {0.0, 1.0}
    assert all(ok for _, ok in tflite_profile.xnnpack_ops(recipe))
    images = export_classification.snap_to_8_bit(quadrant_images(200, seed=1)[0])
    assert _top1_agreement(recipe, model, images, tmp_path) >= 0.97


def test_symmetric_matmul_rhs_leaves_a_model_input_as_it_is():
    """A right-hand input that is the model's int8 input has neither a producer nor constant
    values: it keeps its zero point (it was read as a constant and failed)."""
    rng = np.random.default_rng(0)

    @tf.function(input_signature=[tf.TensorSpec((1, 6, 4), tf.float32)])
    def product(x):
        return tf.matmul(x, x, transpose_b=True)

    batches = [rng.uniform(size=(1, 6, 4)).astype(np.float32) for _ in range(8)]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([product.get_concrete_function()], product)
    calibrated = tflite.calibrate(converter, batches)
    quantized = tflite.quantize_int8(calibrated)
    ((types, zero_point),) = _batch_matmuls(quantized)
    assert types == ["int8", "int8"] and zero_point != 0
    assert tflite.symmetric_matmul_rhs(quantized, calibrated) == quantized


def test_int8_recipe_agrees_with_keras(converted, models, tmp_path):
    images = export_classification.snap_to_8_bit(quadrant_images(200, seed=1)[0])
    assert _top1_agreement(converted["aa"][1], models["aa"], images, tmp_path) >= 0.97


def test_a_model_without_attention_is_quantized_as_by_default(converted, tmp_path):
    """No SOFTMAX, nothing kept in float: the recipe's model computes what the default does."""
    _, recipe, default = converted["conv"]
    assert _op_types(recipe) == _op_types(default)
    images = quadrant_images(16, seed=3)[0]
    outputs = []
    for name, flatbuffer in (("recipe", recipe), ("default", default)):
        path = str(tmp_path / f"{name}.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        outputs.append(parity.predict(tflite.TFLiteRunner(path), images, 1))
    np.testing.assert_array_equal(*outputs)


def test_exporter_checks_the_int8_recipe(models, tmp_path):
    eval_images, _ = quadrant_images(100, seed=1)
    calibration_images, _ = quadrant_images(64, seed=2)
    result = export_classification.export(
        models["aa"], str(tmp_path / "export"), ["tflite_int8"], eval_images, calibration_images,
        settings=ExportSettings(latency_runs=3),
    )
    (row,) = result["rows"]
    assert row["check"]["passed"] and row["check"]["metric"] == "top1_agreement"
    assert row["parity"]["top1_agreement"] >= 0.97
    assert {"SOFTMAX", "BATCH_MATMUL", "DEQUANTIZE", "QUANTIZE"} <= set(row["ops"])


def test_int8_needs_calibration_images(tmp_path):
    with pytest.raises(ValueError, match="representative_batches"):
        tflite.calibrate(None, [])


def test_profile_times_every_operator(converted):
    recipe = converted["aa"][1]
    result = tflite_profile.profile(recipe, runs=2)
    assert [row["op"] for row in result["ops"]] == [name for name, _ in _op_types(recipe)]
    assert result["total_ms"] > 0 and all(row["ms"] > 0 for row in result["ops"])
    sums = tflite_profile.by_op_type(result)
    assert sum(count for count, _ in sums.values()) == len(result["ops"])
    assert "SOFTMAX" in tflite_profile.format_profile("aa int8", result)


@pytest.mark.slow  # About 20 s: the benchmark's plumbing, not an export check.
def test_bench_pair_rows_and_table(models, tmp_path):
    images = export_classification.snap_to_8_bit(quadrant_images(20, seed=1)[0])
    calibration = quadrant_images(16, seed=2)[0]
    kinds = ("tflite_float32", "tflite_int8", "onnx")
    rows = bench_tflite.bench_pair(
        "tiny", models["aa"], models["conv"], images, calibration, [1], 2, str(tmp_path), kinds=kinds
    )
    assert [row["artifact"] for row in rows] == ["tflite_float32", "tflite_int8", "tflite_int8 layer graph", "onnx"]
    for row in rows:
        assert row["aa_ms"] > 0 and row["conv_ms"] > 0 and row["clock"] == "process_cpu"
        assert row["aa_vs_conv"] == pytest.approx(row["aa_ms"] / row["conv_ms"])
        assert row["aa_size_bytes"] > 0 and 0.0 <= row["aa_top1_agreement"] <= 1.0
        assert row["aa_timing"]["wall_spread"] >= 1.0 and row["aa_timing"]["rounds"] == 2
    by_kind = {row["artifact"]: row for row in rows}
    assert by_kind["tflite_float32"]["aa_top1_agreement"] == 1.0
    for kind in ("tflite_int8", "tflite_int8 layer graph"):
        assert by_kind[kind]["aa_top1_agreement"] >= 0.97
    # The exporter's graph leaves XNNPACK nothing; the layer's leaves its SPLIT_V.
    assert by_kind["tflite_int8"]["aa_delegation"] == {"partitions": 1, "not_taken": []}
    assert "SPLIT_V" in by_kind["tflite_int8 layer graph"]["aa_delegation"]["not_taken"]
    table = bench_tflite.format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| tiny | onnx | 1 |" in table


# --- the whole detector in one .tflite ---------------------------------------------------------


def test_detection_matching_counts_same_class_overlapping_detections():
    box = [10.0, 10.0, 30.0, 30.0]
    reference = {
        "boxes": np.array([[box, [40, 40, 60, 60], [0, 0, 20, 20], [50, 0, 60, 10]]], np.float32),
        "scores": np.array([[0.9, 0.8, 0.7, 0.1]], np.float32),  # the last is under MATCH_MIN_SCORE
        "classes": np.array([[1, 2, 0, 1]]),
        "num_detections": np.array([4]),
    }
    outputs = {
        "boxes": np.array([[[10, 10, 30, 30.5], [40, 40, 60, 60], [0, 0, 16, 20], [0, 0, 0, 0]]], np.float32),
        "scores": np.array([[0.9, 0.8, 0.7, 0.0]], np.float32),
        "classes": np.array([[1, 1, 0, 0]]),  # the second has the wrong class, the third IoU 0.8
        "num_detections": np.array([3]),
    }
    values = detection_checks.detection_matching(outputs, reference)
    assert (values["compared"], values["matched"]) == (3, 1) and not values["passed"]
    assert detection_checks.detection_matching(reference, reference) == {
        "compared": 3, "matched": 3, "matched_fraction": 1.0, "passed": True
    }
    # Every box moved 4 px (IoU 0.67 for these 20 px boxes, 0.33 for the 10 px one): none matched.
    shifted = dict(reference, boxes=reference["boxes"] + np.array([4, 4, 4, 4], np.float32))
    assert detection_checks.detection_matching(shifted, reference)["matched"] == 0
    assert not detection_checks.detection_matching(shifted, reference)["passed"]


def test_detection_matching_fails_when_there_is_nothing_to_compare():
    """A detector whose scores all stay under MATCH_MIN_SCORE (untrained, or weak) gives the
    check nothing to compare: that is a failure, not a pass."""
    weak = {
        "boxes": np.array([[[10, 10, 30, 30], [0, 0, 0, 0]]], np.float32),
        "scores": np.array([[0.29, 0.0]], np.float32),
        "classes": np.array([[1, 0]]),
        "num_detections": np.array([1]),
    }
    for reference in (weak, dict(weak, num_detections=np.array([0]))):
        values = detection_checks.detection_matching(reference, reference)
        assert values == {"compared": 0, "matched": 0, "matched_fraction": None, "passed": False}
    row = {"artifact": "tflite", "size_bytes": 2**20, "parity": values}
    assert "FAILED" in detection_checks.format_table([row]) and "nothing to compare" in detection_checks.format_table([row])


class _ShiftedBoxes:
    """An `Interpreter` whose signature runner moves every box down and right by a quarter of
    its size (IoU 0.39 with where it was)."""

    def __init__(self, model_path):
        self._interpreter = Interpreter(model_path=model_path)

    def get_signature_runner(self, name):
        return _ShiftedRunner(self._interpreter.get_signature_runner(name))


class _ShiftedRunner:
    """A signature runner whose outputs' boxes are moved as `_ShiftedBoxes` says; its input and
    output details are the real runner's."""

    def __init__(self, runner):
        self._runner = runner
        self.get_input_details = runner.get_input_details
        self.get_output_details = runner.get_output_details

    def __call__(self, **inputs):
        outputs = dict(self._runner(**inputs))
        boxes = outputs["boxes"]
        size = boxes[..., 2:] - boxes[..., :2]
        outputs["boxes"] = boxes + np.concatenate([size, size], axis=-1) / 4
        return outputs


@pytest.mark.slow
def test_whole_detector_tflite_has_builtin_ops_and_computes_its_graph(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    detector = retinanet.build_detector(
        "aa_retinanet_r18", input_shape=(64, 64, 3), classes=3, confidence_threshold=0.001
    )
    images = np.random.default_rng(1).random((2, 64, 64, 3)).astype(np.float32)
    # The untrained detector scores about 0.01: nothing reaches MATCH_MIN_SCORE, nothing is
    # compared, and the export fails and writes nothing.
    with pytest.raises(exporter.ParityError, match="nothing to compare"):
        export_detection.export_detector(detector, str(tmp_path / "export"), images, formats=["tflite"])
    assert not (tmp_path / "export").exists() or not list((tmp_path / "export").iterdir())
    monkeypatch.setattr(detection_checks, "MATCH_MIN_SCORE", 0.0)
    with monkeypatch.context() as patch:
        patch.setattr(detection_runner, "Interpreter", _ShiftedBoxes)
        with pytest.raises(exporter.ParityError, match=r"tflite .*FAILED +\d+ of [1-9]\d* detections"):
            export_detection.export_detector(detector, str(tmp_path / "export"), images, formats=["tflite"])
    # The file itself (its match with keras-hub's suppression is measured on a trained detector
    # by benchmarks/detector_tflite.py: on these near-tied scores the two suppressions differ).
    source = str(tmp_path / "source")
    saved_model.write_signature(detector, detection_signatures.serve_builtin_detections(detector, 1), source, (64, 64, 3), 1)
    flatbuffer, ops = detection_conversion.convert_builtin(source, "full detector")
    assert "NON_MAX_SUPPRESSION_V4" in ops and "ARG_MAX" in ops
    tflite.check_builtin_ops(ops)
    runner = Interpreter(model_content=flatbuffer).get_signature_runner("serving_default")
    graph = tf.function(detection_signatures.serve_builtin_detections(detector, 1))
    for image in images:
        found = runner(images=image[None])
        expected = {name: np.asarray(value) for name, value in graph(image[None]).items()}
        assert int(found["num_detections"][0]) == int(expected["num_detections"][0]) > 0
        # The untrained detector's scores are near-ties (about 0.01): float rounding may swap
        # neighbours, so the leading detections are compared in order and all of them as sets.
        np.testing.assert_array_equal(found["classes"][:, :20], expected["classes"][:, :20])
        np.testing.assert_allclose(found["boxes"][:, :20], expected["boxes"][:, :20], atol=1e-2)
        np.testing.assert_allclose(found["scores"][:, :20], expected["scores"][:, :20], atol=1e-4)
        assert detection_checks.detection_matching(found, expected)["matched_fraction"] >= 0.95


@pytest.mark.slow  # An int8 conversion of a 64x64 detector: about 3 min on the loaded 2-core VM.
def test_int8_detector_is_int8_up_to_its_heads_and_float_after(tmp_path):
    """The network runs int8 (each attention block float, as the classifier's recipe) up to its
    heads' output layers; those, the decoding and suppression float32; float32 images in,
    detections out."""
    keras.utils.set_random_seed(0)
    detector = retinanet.build_detector("aa_retinanet_r18", input_shape=(64, 64, 3), classes=3)
    source = str(tmp_path / "source")
    saved_model.write_signature(detector, detection_signatures.serve_builtin_detections(detector, 1), source, (64, 64, 3), 1)
    calibration, _ = parity.batches(np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32), 1)
    flatbuffer, ops = detection_conversion.convert_builtin(source, "full detector", calibration)
    tflite.check_builtin_ops(ops)
    assert "NON_MAX_SUPPRESSION_V4" in ops and "QUANTIZE" in ops and "DEQUANTIZE" in ops
    interpreter = Interpreter(model_content=flatbuffer)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert {np.dtype(d["dtype"]) for d in interpreter.get_output_details()} == {np.dtype(np.float32), np.dtype(np.int32)}
    types = _op_types(flatbuffer)
    # Every convolution int8 but the heads' output layers, one per head and pyramid level (P3-P7).
    convolutions = [t for name, t in types if name == "CONV_2D"]
    assert sum(t[:2] == ["int8", "int8"] for t in convolutions) == len(convolutions) - 10
    assert sum(set(t) == {"float32"} for t in convolutions) == 10
    for name, operands in types:
        if name in ("EXP", "LOGISTIC", "NON_MAX_SUPPRESSION_V4", "SELECT_V2", *tflite.INT8_FLOAT_OPS):
            assert "int8" not in operands, (name, operands)
    # What stays float: the decoding and suppression, the ops after them, and of the network only
    # the heads' output layers and the reshapes and concatenations that join them.
    nodes = detection_conversion.postprocess_nodes(tflite.calibrate(tf.lite.TFLiteConverter.from_saved_model(source), calibration))
    network = [name for name in nodes if name.startswith(detector.name)]
    assert len(network) == 22 and all(
        "logits_layer" in name or "_pred_P" in name or name.endswith(("bbox_regression_1/concat", "cls_logits_1/concat"))
        for name in network
    ), network
