"""Where the time of a TFLite model goes: every operator timed on its own with LiteRT; and the
int8 recipes of `export.tflite` against each other.

    python -m benchmarks.tflite_profile --keras=runs/quick/aa_small/model.keras
    python -m benchmarks.tflite_profile runs/quick/export/model_int8.tflite runs/quick/export/model_float32.tflite

With `--keras`, the model is converted (batch 1, calibrated on train images of `--dataset`) to
float32 and to five int8 variants: the converter's default (everything int8); the op names
BATCH_MATMUL and SOFTMAX kept float (`denylisted_ops`: the exporter's first recipe); each
attention's core kept float (`attention_core_nodes`: the products, the sums and reshapes between
them, the softmax); each attention block kept float from the split of the qkv projection to the
attention output (`tflite.attention_block_nodes`: the exporter's second recipe); and the same
up to the softmax, the product with v in int8 with v symmetric (`tflite.convert`; see
`benchmarks/int8_symmetric_kv.py`); and the exporter's: that recipe on
`export.mobile_attention`'s graph, with that graph's float32. The eight are timed side by side
(`bench_tflite.side_by_side_ms`), checked against the Keras model's top-1 on test images, and
both float32 files and both int8 files of `tflite.convert` are profiled operator by operator.

LiteRT's Python interpreter has no per-operator profiler, so each operator of the model's main
subgraph is cut out into a one-operator model (same tensors, quantization and constants; its
non-constant inputs become the model's inputs, filled with random values of their type) and
timed with the interpreter as it runs the whole model: the default XNNPACK delegate takes the
operator if it supports it, with the same options. A row says whether XNNPACK took it. The
operators' times add up to about the whole model's (printed alongside): the rest is what the
delegate gains by running neighbouring operators as one graph, and the interpreter's per-node
overhead.
"""

import argparse
import collections
import copy
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils

from aa_keras.export import report, tflite
from benchmarks.bench_tflite import side_by_side_ms, versions

# The int8 recipe of `tflite.convert` on the layer's own graph: each attention block float up to
# the softmax; and the exporter's: the same on `mobile_attention`'s graph, with its float32.
EXPORT_VARIANT = "int8 float attention block but P v"
MOBILE_VARIANT = "int8 mobile attention graph (export)"
MOBILE_FLOAT = "float32 mobile attention graph (export)"
# The node LiteRT puts in the execution plan for a partition that a delegate took.
_DELEGATE_NODE = "DELEGATE"


def _single_op_models(flatbuffer):
    """Yields (operator index, op name, one-operator flatbuffer) for the main subgraph."""
    model = flatbuffer_utils.read_model_from_bytearray(flatbuffer)
    subgraph = model.subgraphs[0]
    constant = {i for i, t in enumerate(subgraph.tensors) if model.buffers[t.buffer].data is not None}
    operators = subgraph.operators
    empty = type(model.buffers[0])()
    for index, op in enumerate(operators):
        single = copy.copy(model)
        # Only the operator's own constants are kept: a 224x224 model's other weights, copied
        # for each of its hundreds of operators, would make the profile take hours.
        used = {subgraph.tensors[i].buffer for i in (*op.inputs, *op.outputs) if i >= 0}
        single.buffers = [buffer if b in used else empty for b, buffer in enumerate(model.buffers)]
        graph = copy.copy(subgraph)
        graph.operators = [op]
        graph.inputs = [i for i in op.inputs if i >= 0 and i not in constant]
        graph.outputs = list(op.outputs)
        single.subgraphs = [graph]
        single.signatureDefs = []
        name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        yield index, name, bytes(flatbuffer_utils.convert_object_to_bytearray(single))


class _InputRunner:
    """`report.median_latency_ms`'s runner interface over an interpreter with several inputs."""

    def __init__(self, interpreter, rng):
        self._interpreter = interpreter
        self._inputs = interpreter.get_input_details()
        self._rng = rng

    def prepare(self, _):
        values = []
        for detail in self._inputs:
            dtype = detail["dtype"]
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                value = self._rng.integers(max(info.min, -128), min(info.max, 127) + 1, detail["shape"])
            else:
                value = self._rng.standard_normal(detail["shape"])
            values.append(np.asarray(value, dtype))
        return values

    def run(self, values):
        for detail, value in zip(self._inputs, values):
            self._interpreter.set_tensor(detail["index"], value)
        self._interpreter.invoke()


def delegated(interpreter):
    """Whether the interpreter's execution plan has a delegate node (XNNPACK took operators)."""
    return any(op["op_name"] == _DELEGATE_NODE for op in interpreter._get_ops_details())


def xnnpack_ops(flatbuffer):
    """[(op name, whether XNNPACK takes it)] for the operators of the main subgraph, each tested
    on its own."""
    result = []
    for _, name, single in _single_op_models(flatbuffer):
        interpreter = Interpreter(model_content=single, num_threads=1)
        interpreter.allocate_tensors()
        result.append((name, delegated(interpreter)))
    return result


def profile(flatbuffer, threads=1, runs=50, seed=0):
    """Per-operator median latencies of a TFLite model.

    Returns:
        {"total_ms": the whole model's median latency, "ops": [{"index", "op", "ms",
        "xnnpack", "input_types", "output_shape"}] in execution order}.
    """
    rng = np.random.default_rng(seed)
    whole = Interpreter(model_content=flatbuffer, num_threads=threads)
    whole.allocate_tensors()
    total = report.median_latency_ms(_InputRunner(whole, rng), None, runs)
    rows = []
    for index, name, single in _single_op_models(flatbuffer):
        interpreter = Interpreter(model_content=single, num_threads=threads)
        interpreter.allocate_tensors()
        runner = _InputRunner(interpreter, rng)
        detail = interpreter._get_ops_details()[0]
        rows.append({
            "index": index,
            "op": name,
            "ms": report.median_latency_ms(runner, None, runs),
            "xnnpack": delegated(interpreter),
            "input_types": [np.dtype(t).name for t in detail["operand_types"]] if detail["op_name"] != _DELEGATE_NODE
            else [np.dtype(d["dtype"]).name for d in interpreter.get_input_details()],
            "output_shape": [int(d) for d in interpreter.get_output_details()[0]["shape"]],
        })
    return {"total_ms": total, "ops": rows}


def by_op_type(result):
    """{(op, xnnpack): (count, ms)} summed over the operators, largest time first."""
    sums = collections.defaultdict(lambda: [0, 0.0])
    for row in result["ops"]:
        key = (row["op"], row["xnnpack"])
        sums[key][0] += 1
        sums[key][1] += row["ms"]
    return dict(sorted(((k, tuple(v)) for k, v in sums.items()), key=lambda item: -item[1][1]))


def format_profile(name, result, top=12):
    """The per-type sums and the slowest operators as text."""
    op_sum = sum(row["ms"] for row in result["ops"])
    lines = [f"{name}: whole model {result['total_ms']:.3f} ms, operators one by one {op_sum:.3f} ms"]
    lines.append(f"  {'op':<24} {'xnnpack':<8} {'count':>5} {'ms':>8} {'share':>6}")
    for (op, xnnpack), (count, ms) in by_op_type(result).items():
        lines.append(f"  {op:<24} {'yes' if xnnpack else 'no':<8} {count:>5} {ms:>8.3f} {ms / op_sum:>6.1%}")
    lines.append("  slowest operators:")
    for row in sorted(result["ops"], key=lambda r: -r["ms"])[:top]:
        lines.append(
            f"  #{row['index']:<4} {row['op']:<20} {'xnnpack' if row['xnnpack'] else 'builtin':<8} "
            f"{row['ms']:>8.3f} ms  in {','.join(row['input_types'])}  out {row['output_shape']}"
        )
    return "\n".join(lines)


# What links an attention's logit products to its softmax and the softmax to the weighted sum.
_ISLAND_OPS = ("ADD", "RESHAPE", "TRANSPOSE")


def attention_core_nodes(flatbuffer):
    """Names of the output tensors of each attention's core, the island of the variant that keeps
    it in float32: each SOFTMAX,
    and the ops reached from it, backward and forward, through ADD, RESHAPE and TRANSPOSE up to
    and including the nearest BATCH_MATMULs (the logit products before it, the product with the
    values after it)."""
    graph, names, tensors, producer, consumers = tflite.operator_graph(flatbuffer)
    neighbours = (
        lambda i: [producer[t] for t in graph.operators[i].inputs if t in producer],
        lambda i: [j for t in graph.operators[i].outputs for j in consumers.get(t, [])],
    )
    kept = set()
    for softmax in (i for i, name in enumerate(names) if name == "SOFTMAX"):
        kept.add(softmax)
        for step in neighbours:
            stack = [softmax]
            while stack:
                for j in step(stack.pop()):
                    if j in kept or names[j] not in ("BATCH_MATMUL", *_ISLAND_OPS):
                        continue
                    kept.add(j)
                    if names[j] != "BATCH_MATMUL":
                        stack.append(j)
    return [tensors[t] for i in sorted(kept) for t in graph.operators[i].outputs]


def int8_variants(saved_model_dir, calibration_batches, mobile_dir=None):
    """{name: flatbuffer}: float32 and the int8 variants compared (see the module docstring);
    with `mobile_dir`, the SavedModel of `mobile_attention.rebuild(model)`, also its float32 and
    int8 files."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    calibrated = tflite.calibrate(converter, calibration_batches)
    mobile = {}
    if mobile_dir is not None:
        mobile = {
            MOBILE_FLOAT: tflite.convert(mobile_dir, "float32"),
            MOBILE_VARIANT: tflite.convert(mobile_dir, "int8", calibration_batches),
        }
    return mobile | {
        "float32": tflite.convert(saved_model_dir, "float32"),
        "int8 default": tflite.quantize_int8(calibrated),
        "int8 float BATCH_MATMUL, SOFTMAX": tflite.quantize_int8(calibrated, denylisted_ops=list(tflite.INT8_FLOAT_OPS)),
        "int8 float attention core": tflite.quantize_int8(calibrated, denylisted_nodes=attention_core_nodes(calibrated)),
        "int8 float attention block": tflite.quantize_int8(
            calibrated, denylisted_nodes=tflite.attention_block_nodes(calibrated), denylisted_ops=list(tflite.INT8_FLOAT_OPS)
        ),
        EXPORT_VARIANT: tflite.convert(saved_model_dir, "int8", calibration_batches),
    }


def compare_int8_recipes(keras_path, dataset, threads, rounds, num_images=200, num_calibration=100):
    """The variants of `int8_variants` for a `.keras` classifier: latency side by side and top-1
    agreement with the Keras model; returns ({name: row}, {name: flatbuffer})."""
    from aa_keras.export import classification, export, mobile_attention, model_source, parity, saved_model

    model = model_source.load_keras_file(keras_path, "keras_path")
    shape = model_source.image_shape(model, None)
    images = classification.snap_to_8_bit(export.dataset_images(dataset, "test", shape, num_images))
    calibration, _ = parity.batches(export.dataset_images(dataset, "train", shape, num_calibration), 1)
    reference = parity.predict(lambda x: np.asarray(model(x, training=False)), images, 1)
    with tempfile.TemporaryDirectory() as directory:
        source = os.path.join(directory, "saved_model")
        saved_model.write_saved_model(model, source, shape, batch=1)
        mobile = os.path.join(directory, "mobile_saved_model")
        saved_model.write_saved_model(mobile_attention.rebuild(model), mobile, shape, batch=1)
        variants = int8_variants(source, calibration, mobile)
        runners = {}
        for name, flatbuffer in variants.items():
            path = os.path.join(directory, f"{len(runners)}.tflite")
            with open(path, "wb") as f:
                f.write(flatbuffer)
            tflite.check_builtin_ops(tflite.list_ops(flatbuffer), what=name)
            runners[name] = tflite.TFLiteRunner(path, threads)
        latency = side_by_side_ms(runners, images[:1], rounds, threads=threads)
        rows = {
            name: {
                "latency_ms": latency[name],
                "size_bytes": len(variants[name]),
                "top1_agreement": parity.metrics(parity.predict(runner, images, 1), reference)["top1_agreement"],
            }
            for name, runner in runners.items()
        }
    return rows, variants


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="TFLite files to profile")
    parser.add_argument("--keras", help="a .keras classifier: compare the int8 recipes on it, and profile them")
    parser.add_argument("--dataset", default="glyph_pairs", help="test and calibration images for --keras")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per operator (median)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds of --keras's comparison")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not args.models and not args.keras:
        parser.error("give TFLite files, or --keras")
    results = {}
    flatbuffers = {}
    for path in args.models:
        with open(path, "rb") as f:
            flatbuffers[path] = f.read()
    if args.keras:
        rows, variants = compare_int8_recipes(args.keras, args.dataset, args.threads, args.rounds)
        results["int8_recipes"] = {"model": args.keras, "threads": args.threads, "rows": rows}
        print(f"{args.keras}, batch 1, {args.threads} thread(s), side by side:")
        print(f"  {'variant':<40} {'ms':>7} {'x float32':>9} {'KiB':>7} {'top-1 vs Keras':>14}")
        for name, row in rows.items():
            print(
                f"  {name:<40} {row['latency_ms']:>7.3f} {row['latency_ms'] / rows['float32']['latency_ms']:>9.2f} "
                f"{row['size_bytes'] / 1024:>7.1f} {row['top1_agreement']:>14.3f}"
            )
        flatbuffers.update(
            (name, variants[name])
            for name in ("float32", MOBILE_FLOAT, EXPORT_VARIANT, MOBILE_VARIANT)
        )
    profiles = {}
    for name, flatbuffer in flatbuffers.items():
        tflite.check_builtin_ops(tflite.list_ops(flatbuffer), what=name)
        profiles[name] = profile(flatbuffer, args.threads, args.runs)
        print(format_profile(name, profiles[name]))
    results["profiles"] = profiles
    results["command"] = "python -m benchmarks.tflite_profile " + " ".join(sys.argv[1:] if argv is None else argv)
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["versions"] = versions()
    if args.json:
        report.write_json(args.json, results)


if __name__ == "__main__":
    main()
