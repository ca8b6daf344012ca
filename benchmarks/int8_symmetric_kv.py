"""The int8 attention with its batched matmuls in int8 under XNNPACK (issue 14): symmetric k and v.

    python -m benchmarks.int8_symmetric_kv --pairs=small,resnet50

LiteRT's XNNPACK delegate takes an int8 BATCH_MATMUL only when its right-hand input has zero
point 0; the converter quantizes activations with a zero point, so in its int8 model the
attention's products q k^T and P v (right-hand inputs k and v) and the relative logits' products
(right-hand input a constant table, quantized like an activation) run on LiteRT's reference
kernels. `tflite.symmetric_matmul_rhs` rewrites an int8 model so that every such right-hand
input has zero point 0 (k and v with the qkv projection's output and the split, reshapes and
transposes between). Variants of the AA model, all from one calibration (100 train images of
glyph_pairs; 16 random images at 224x224), builtin ops only:

- `int8 attention block float (before)`: the exporter's recipe before this script: each
  attention block float, from the split of the qkv projection to the attention output;
- `int8 symmetric k and v, int8 softmax`: the converter's full int8 model, rewritten;
- `int8 symmetric k and v, float softmax`: the same with SOFTMAX left float (`denylisted_ops`),
  which XNNPACK runs (its softmax is float only) between DEQUANTIZE and QUANTIZE;
- `int8 block float but P v int8 (export)`: `tflite.convert`'s recipe on the layer's own graph:
  each block float up to the softmax, the product with v in int8 with v symmetric (the
  exporter's int8 file converts `mobile_attention`'s graph instead, whose folded logits run in
  int8 too).

For each pair (`small`: the default run's trained aa_small / conv_small; `resnet50`:
AAResNet-50 / ResNet-50 at 224x224, random weights) the AA model's float32 file, its int8
variants and the conv twin's int8 file are timed side by side in interleaved rounds
(`bench_tflite.side_by_side_ms`, best round; 1 thread, batch 1), with the top-1 agreement with
Keras on the 200 test images (small pair), how many BATCH_MATMUL and SOFTMAX ops XNNPACK takes
(each op tested on its own, `tflite_profile.xnnpack_ops`) and the whole model's delegate
partitions. For the small pair the int8 variants are then profiled operator by operator, and
the first (16x16) attention of three of them is cut into its logits, its softmax and its product
with v, each timed side by side as a model of its own (`attention_parts`). Writes everything to
`--output`.
"""

import argparse
import copy
import os
import tempfile

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils

from aa_keras.export import model_source, parity, report, saved_model, tflite
from benchmarks import bench_tflite, tflite_profile

BLOCK = "int8 attention block float (before)"
SYMMETRIC = ("int8 symmetric k and v, int8 softmax", "int8 symmetric k and v, float softmax")
EXPORT = "int8 block float but P v int8 (export)"


def variants(saved_model_dir, calibration):
    """{name: flatbuffer}: float32, the exporter's int8 recipe before and now, and the two
    symmetric variants (see the module docstring)."""
    calibrated = tflite.calibrate(tf.lite.TFLiteConverter.from_saved_model(saved_model_dir), calibration)
    block = tflite.attention_block_nodes(calibrated)
    return {
        "float32": tflite.convert(saved_model_dir, "float32"),
        BLOCK: tflite.quantize_int8(calibrated, denylisted_nodes=block, denylisted_ops=list(tflite.INT8_FLOAT_OPS)),
        SYMMETRIC[0]: tflite.symmetric_matmul_rhs(tflite.quantize_int8(calibrated), calibrated),
        SYMMETRIC[1]: tflite.symmetric_matmul_rhs(
            tflite.quantize_int8(calibrated, denylisted_ops=["SOFTMAX"]), calibrated
        ),
        EXPORT: tflite.convert(saved_model_dir, "int8", calibration),
    }


def delegation(flatbuffer):
    """How many BATCH_MATMUL and SOFTMAX ops XNNPACK takes, the ops it leaves, and the number
    of delegate partitions of the whole model."""
    ops = tflite_profile.xnnpack_ops(flatbuffer)
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    interpreter.allocate_tensors()
    plan = [op["op_name"] for op in interpreter._get_ops_details()]
    counts = {
        op: f"{sum(taken for name, taken in ops if name == op)} of {sum(name == op for name, _ in ops)}"
        for op in ("BATCH_MATMUL", "SOFTMAX")
    }
    not_taken = sorted({name for name, taken in ops if not taken})
    return counts | {"delegate_partitions": plan.count(tflite_profile._DELEGATE_NODE), "not_taken": not_taken}


def sub_model(flatbuffer, indices):
    """The operators `indices` of the main subgraph as a model of their own: its inputs the
    non-constant tensors they read and none of them writes, its outputs those they write that
    another operator or the model reads."""
    model = flatbuffer_utils.read_model_from_bytearray(flatbuffer)
    graph = model.subgraphs[0]
    constant = {i for i, t in enumerate(graph.tensors) if model.buffers[t.buffer].data is not None}
    ops = [graph.operators[i] for i in indices]
    written = {t for op in ops for t in op.outputs}
    read_outside = {t for i, op in enumerate(graph.operators) if i not in indices for t in op.inputs} | set(graph.outputs)
    part = copy.copy(graph)
    part.operators = ops
    part.inputs = sorted({t for op in ops for t in op.inputs if t >= 0} - constant - written)
    part.outputs = sorted(written & read_outside)
    model.subgraphs = [part]
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def attention_parts(flatbuffer):
    """{part: operator indices} of the model's first attention: the logits (from the split of
    the qkv projection to the softmax), the softmax (with a DEQUANTIZE before and a QUANTIZE
    after it), the product with v (to the output projection), and all three."""
    graph, names, _, producer, consumers = tflite.operator_graph(flatbuffer)
    split = names.index("SPLIT_V")
    softmax = names.index("SOFTMAX")
    end = next(i for i in range(softmax, len(names)) if names[i] == "CONV_2D")
    op = graph.operators[softmax]
    first = producer[op.inputs[0]] if names[producer[op.inputs[0]]] == "DEQUANTIZE" else softmax
    after = consumers[op.outputs[0]]
    last = after[0] if len(after) == 1 and names[after[0]] == "QUANTIZE" else softmax
    return {
        "logits": list(range(split + 1, first)),
        "softmax": list(range(first, last + 1)),
        "product with v": list(range(last + 1, end)),
        "attention": list(range(split + 1, end)),
    }


def time_attention_parts(files, labels, rounds):
    """{label: {part: ms}}: `attention_parts` of each labelled model cut out as models of their
    own (each one XNNPACK partition, random inputs) and timed side by side."""
    runners = {}
    for label in labels:
        for part, indices in attention_parts(files[label]).items():
            interpreter = Interpreter(model_content=sub_model(files[label], indices), num_threads=1)
            interpreter.allocate_tensors()
            runners[label, part] = tflite_profile._InputRunner(interpreter, np.random.default_rng(0))
    latency = bench_tflite.side_by_side_ms(runners, None, rounds)
    return {label: {part: latency[label, part] for (name, part) in runners if name == label} for label in labels}


def bench_pair(name, rounds, per_round, args, directory):
    """({label: row}, {label: flatbuffer}) of pair `name`: the AA model's `variants` and the
    conv twin's int8 file, timed side by side."""
    calibration_count = 100 if name == "small" else 16
    model, twin, images, calibration = bench_tflite.load_pair(
        name, args.small_model, args.small_baseline, 200, calibration_count
    )
    shape = model_source.image_shape(model, None)
    calibration, _ = parity.batches(calibration, 1)
    files = {}
    for label, network in (("aa", model), ("conv", twin)):
        source = os.path.join(directory, name, label, "saved_model")
        saved_model.write_saved_model(network, source, shape, batch=1)
        if label == "aa":
            files.update(variants(source, calibration))
        else:
            files["conv int8"] = tflite.convert(source, "int8", calibration)
    runners = {}
    for label, flatbuffer in files.items():
        tflite.check_builtin_ops(tflite.list_ops(flatbuffer), what=label)
        path = os.path.join(directory, name, f"{len(runners)}.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        runners[label] = tflite.TFLiteRunner(path, 1)
    batch = calibration[0] if images is None else images[:1]
    latency = bench_tflite.side_by_side_ms(runners, batch, rounds, per_round)
    rows = {}
    for label, runner in runners.items():
        row = {"ms": latency[label], "vs_conv_int8": latency[label] / latency["conv int8"]}
        row["size_bytes"] = len(files[label])
        if images is not None:
            network = twin if label == "conv int8" else model
            reference = parity.predict(lambda x: np.asarray(network(x, training=False)), images, 1)
            row["top1_agreement"] = parity.metrics(parity.predict(runner, images, 1), reference)["top1_agreement"]
        rows[label] = row | delegation(files[label])
    return rows, files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="small", help=f"comma-separated, from {bench_tflite.PAIRS}")
    parser.add_argument("--small_model", default="runs/quick/aa_small/model.keras")
    parser.add_argument("--small_baseline", default="runs/quick/conv_small/model.keras")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds of the small pair (5 runs each)")
    parser.add_argument("--rounds_224", type=int, default=5, help="interleaved rounds at 224x224 (1 run each)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per operator in the profiles (median)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "int8_symmetric_kv.json"))
    args = parser.parse_args(argv)
    pairs = args.pairs.split(",")
    if any(name not in bench_tflite.PAIRS for name in pairs):
        parser.error(f"Invalid `--pairs`: received {args.pairs!r}, expected names from {bench_tflite.PAIRS}.")
    result = {"versions": bench_tflite.versions(), "pairs": {}}
    with tempfile.TemporaryDirectory() as directory:
        for name in pairs:
            small = name == "small"
            rounds, per_round = (args.rounds, 5) if small else (args.rounds_224, 1)
            rows, files = bench_pair(name, rounds, per_round, args, directory)
            print(f"{name}: batch 1, 1 thread, side by side")
            for label, row in rows.items():
                agreement = f"{row['top1_agreement']:.3f}" if "top1_agreement" in row else "-"
                print(
                    f"  {label:<40} {row['ms']:>8.3f} ms  / conv int8 {row['vs_conv_int8']:5.2f}  "
                    f"top-1 {agreement}  "
                    f"XNNPACK BATCH_MATMUL {row['BATCH_MATMUL']}, SOFTMAX {row['SOFTMAX']}, "
                    f"{row['delegate_partitions']} partitions, not taken {row['not_taken']}"
                )
            profiles, parts = {}, {}
            if small:
                for label in (BLOCK, *SYMMETRIC, EXPORT):
                    profiles[label] = tflite_profile.profile(files[label], 1, args.runs)
                    print(tflite_profile.format_profile(label, profiles[label]))
                parts = time_attention_parts(files, (BLOCK, SYMMETRIC[1], EXPORT), args.rounds)
                print("the first attention's parts, each cut out as a model of its own, ms:")
                for label, times in parts.items():
                    print(f"  {label:<40} " + ", ".join(f"{part} {ms:.3f}" for part, ms in times.items()))
            result["pairs"][name] = {"rows": rows, "profiles": profiles, "attention_parts_ms": parts}
    report.write_json(args.output, result)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
