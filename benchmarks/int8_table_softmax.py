"""A softmax of int8 ops for the int8 attention (issue 27), against the exporter's float softmax.

    python -m benchmarks.int8_table_softmax --small_model=... --small_baseline=...

LiteRT's XNNPACK delegate has no int8 SOFTMAX, but it runs DEQUANTIZE -> EXP -> QUANTIZE as one
table lookup. The variant replaces each attention's softmax(logits) v in `mobile_attention`'s
graph (the exporter's `DEFAULT_STEPS`) by exp(logits - max) v / sum exp(logits - max): the row
maximum, the subtraction, the sum and both products in int8, the EXP (the table) and the final
division in float; v and the folded logits' extended keys symmetric (`tflite.symmetric_matmul_rhs`).
`sum_in_float` also keeps the sum in float. All from one calibration (100 train images of
glyph_pairs), timed side by side with the exporter's int8 file of the trained small pair
(`bench_tflite.side_by_side_stats`, 1 thread, batch 1, process CPU time), with the top-1 agreement
with Keras on 200 and on `--accuracy_images` test images, the test accuracy, and the delegation.
Writes everything to `--output`.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from aa_keras.export import mobile_attention, parity, report, saved_model, tflite
from benchmarks import attention_graph_steps, bench_tflite


class TableSoftmaxAttention(mobile_attention.MobileAttention2D):
    """`MobileAttention2D` with the softmax's normalisation after the product with v."""

    def _attend(self, logits, v):
        weights = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
        return tf.matmul(weights, v) / tf.reduce_sum(weights, axis=-1, keepdims=True)


def table_softmax_int8(saved_model_dir, batches, float_ops):
    """The int8 model of `saved_model_dir` with the ops named `float_ops` in float."""
    calibrated = tflite.calibrate(tf.lite.TFLiteConverter.from_saved_model(saved_model_dir), batches)
    graph, names, tensors, _, _ = tflite.operator_graph(calibrated)
    floats = [tensors[op.outputs[0]] for op, name in zip(graph.operators, names) if name in float_ops]
    return tflite.symmetric_matmul_rhs(tflite.quantize_int8(calibrated, denylisted_nodes=floats), calibrated)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small_model", default="runs/quick/aa_small/model.keras")
    parser.add_argument("--small_baseline", default="runs/quick/conv_small/model.keras")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--accuracy_images", type=int, default=2000)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "int8_table_softmax.json"))
    args = parser.parse_args(argv)
    model, _, images, calibration = bench_tflite.load_pair("small", args.small_model, args.small_baseline, 200, 100)
    batches, _ = parity.batches(calibration, 1)
    shape = tuple(model.input.shape[1:])
    flatbuffers = {}
    with tempfile.TemporaryDirectory() as directory:
        for label, layer_class in (("export", mobile_attention.MobileAttention2D), ("table", TableSoftmaxAttention)):
            source = os.path.join(directory, label)
            network = mobile_attention.rebuild(model, mobile_attention.DEFAULT_STEPS, layer_class)
            saved_model.write_saved_model(network, source, shape, batch=1)
            if label == "export":
                flatbuffers["exporter's int8 (float softmax)"] = tflite.convert(source, "int8", batches)
            else:
                flatbuffers["table softmax, int8 sum"] = table_softmax_int8(source, batches, ("EXP", "DIV"))
                flatbuffers["table softmax, float sum"] = table_softmax_int8(source, batches, ("EXP", "SUM", "DIV"))
        paths = {}
        for index, (label, flatbuffer) in enumerate(flatbuffers.items()):
            tflite.check_builtin_ops(tflite.list_ops(flatbuffer), what=label)
            paths[label] = os.path.join(directory, f"{index}.tflite")
            with open(paths[label], "wb") as f:
                f.write(flatbuffer)
        runners = {label: tflite.TFLiteRunner(path, 1) for label, path in paths.items()}
        stats = bench_tflite.side_by_side_stats(runners, images[:1], args.rounds)
        test_images, labels = attention_graph_steps.labelled_test_images(model, args.accuracy_images)
        image_sets = {200: images, len(labels): test_images}

        def top1_of(predict):
            return {count: np.argmax(parity.predict(predict, data, 1), -1) for count, data in image_sets.items()}

        references = top1_of(lambda x: np.asarray(model(x, training=False)))
        rows = {}
        for label, runner in runners.items():
            predicted = top1_of(runner)
            top1 = {count: float(np.mean(predicted[count] == references[count])) for count in image_sets}
            scores = predicted[len(labels)]
            rows[label] = {
                "ms": stats[label]["cpu_ms"],
                "timing": stats[label],
                "top1_agreement_200": top1[200],
                f"top1_agreement_{len(labels)}": top1[len(labels)],
                "test_accuracy": float(np.mean(scores == labels)),
                "delegation": bench_tflite.delegation(flatbuffers[label]),
            }
            print(f"  {label:<34} {rows[label]['ms']:.3f} ms  top-1 {top1[200]:.3f} (200) {top1[len(labels)]:.4f} "
                  f"({len(labels)})  accuracy {rows[label]['test_accuracy']:.4f}  {rows[label]['delegation']}")
    result = {
        "command": "python -m benchmarks.int8_table_softmax " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": bench_tflite.versions(),
        "threads": 1,
        "batch": 1,
        "clock": "process_cpu",
        "rows": rows,
    }
    report.write_json(args.output, result)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
