"""The export-time attention graph (`export.mobile_attention`) step by step: float32 and int8
TFLite of an AA model with the layer's own graph and with each rearrangement added in turn.

    python -m benchmarks.attention_graph_steps --small_model=... --small_baseline=...

For the trained small pair (`bench_tflite.load_pair("small")`) the AA model's variants (the
layer's graph; + `scale`; + `split`; + `pool` or + `depthwise_pool`; + `fold` on either, the
folded logits then int8 in `tflite.convert`'s recipe) are converted to float32 and to int8 by
`tflite.convert` (the exporter's recipe), and timed side by side with the conv twin's file of
the same kind (`bench_tflite.side_by_side_stats`, 1 thread, batch 1, process CPU time), with the
top-1 agreement with Keras on the test images, the ops XNNPACK leaves and the number of delegate
partitions (`bench_tflite.delegation`); and the test accuracy of the Keras model and of each AA
file on `--accuracy_images` labelled test images, and its top-1 agreement with Keras on them.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from aa_keras.export import mobile_attention, parity, report, saved_model, tflite
from benchmarks import bench_tflite

VARIANTS = {
    "layer graph": None,
    "+ scale": ("scale",),
    "+ split": ("scale", "split"),
    "+ pool": ("scale", "split", "pool"),
    "+ depthwise pool": ("scale", "split", "depthwise_pool"),
    "+ fold": ("scale", "split", "pool", "fold"),
    "+ depthwise pool + fold": ("scale", "split", "depthwise_pool", "fold"),
}


def convert_variants(model, twin, calibration, directory, kinds=("float32", "int8"), variants=VARIANTS):
    """{(label, kind): path} of the AA model's variants and the twin ("conv")."""
    shape = tuple(model.input.shape[1:])
    batches, _ = parity.batches(calibration, 1)
    paths = {}
    sources = {label: (model if steps is None else mobile_attention.rebuild(model, steps)) for label, steps in variants.items()}
    sources["conv"] = twin
    for index, (label, network) in enumerate(sources.items()):
        source = os.path.join(directory, f"source{index}")
        saved_model.write_saved_model(network, source, shape, batch=1)
        for kind in kinds:
            flatbuffer = tflite.convert(source, kind, batches)
            tflite.check_builtin_ops(tflite.list_ops(flatbuffer), what=f"{label} {kind}")
            paths[label, kind] = os.path.join(directory, f"{index}_{kind}.tflite")
            with open(paths[label, kind], "wb") as f:
                f.write(flatbuffer)
        shutil.rmtree(source)  # 200 MB at 224x224
    return paths


def bench(model, twin, images, calibration, rounds, directory, variants=VARIANTS, kinds=("float32", "int8")):
    paths = convert_variants(model, twin, calibration, directory, kinds, variants)
    references = {}
    if images is not None:
        for network in (model, twin):
            references[network] = parity.predict(lambda x: np.asarray(network(x, training=False)), images, 1)
    batch = calibration[:1] if images is None else images[:1]
    rows = {}
    for kind in kinds:
        runners = {label: tflite.TFLiteRunner(paths[label, kind], 1) for label in (*variants, "conv")}
        stats = bench_tflite.side_by_side_stats(runners, batch, rounds)
        for label, runner in runners.items():
            with open(paths[label, kind], "rb") as f:
                flatbuffer = f.read()
            rows[f"{label} {kind}"] = {
                "ms": stats[label]["cpu_ms"],
                "vs_conv": stats[label]["cpu_ms"] / stats["conv"]["cpu_ms"],
                "timing": stats[label],
                "size_bytes": len(flatbuffer),
                "top1_agreement": None if images is None else parity.metrics(
                    parity.predict(runner, images, 1), references[twin if label == "conv" else model]
                )["top1_agreement"],
                "delegation": bench_tflite.delegation(flatbuffer),
            }
    for label in (*variants, "conv") if len(kinds) == 2 else ():
        rows[f"{label} int8"]["int8_speedup_vs_float32"] = rows[f"{label} float32"]["ms"] / rows[f"{label} int8"]["ms"]
    return rows, paths


def format_rows(rows):
    lines = [f"  {'variant':<22} {'ms':>7} {'/ conv':>7} {'spread':>6} {'top-1':>6} {'partitions':>10}  not taken by XNNPACK"]
    for name, row in rows.items():
        top1 = "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"
        lines.append(
            f"  {name:<22} {row['ms']:>7.3f} {row['vs_conv']:>7.2f} {row['timing']['cpu_spread']:>6.2f} {top1:>6} "
            f"{row['delegation']['partitions']:>10}  {','.join(row['delegation']['not_taken'])}"
        )
    return "\n".join(lines)


def labelled_test_images(model, count):
    """(images snapped to 8 bits, labels) of the first `count` glyph_pairs test images."""
    from aa_keras.data import classification as data
    from aa_keras.export import classification

    size = model.input.shape[1]
    dataset = data.build_dataset("glyph_pairs", "test", size, global_batch_size=None, training=False)
    pairs = list(dataset.take(count).as_numpy_iterator())
    images = np.stack([np.asarray(image, np.float32) for image, _ in pairs])
    return classification.snap_to_8_bit(images), np.array([int(label) for _, label in pairs])


def test_accuracy(paths, model, count):
    """({variant name: test accuracy} of the Keras model and of every file in `paths`,
    {variant name: top-1 agreement with the Keras model} of every file), on `count` test images."""
    images, labels = labelled_test_images(model, count)
    scores = {"keras": parity.predict(lambda x: np.asarray(model(x, training=False)), images, 1)}
    for (label, kind), path in paths.items():
        if label != "conv":
            scores[f"{label} {kind}"] = parity.predict(tflite.TFLiteRunner(path, 1), images, 1)
    predicted = {name: np.argmax(value, -1) for name, value in scores.items()}
    accuracy = {name: float(np.mean(top1 == labels)) for name, top1 in predicted.items()}
    agreement = {name: float(np.mean(top1 == predicted["keras"])) for name, top1 in predicted.items() if name != "keras"}
    return accuracy | {"images": len(labels)}, agreement | {"images": len(labels)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="small", choices=bench_tflite.PAIRS)
    parser.add_argument("--small_model", default="runs/quick/aa_small/model.keras")
    parser.add_argument("--small_baseline", default="runs/quick/conv_small/model.keras")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--kinds", default="float32,int8", choices=("float32,int8", "int8", "float32"))
    parser.add_argument("--accuracy_images", type=int, default=2000, help="test images for the small pair's accuracy")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "attention_graph_steps.json"))
    args = parser.parse_args(argv)
    model, twin, images, calibration = bench_tflite.load_pair(
        args.pair, args.small_model, args.small_baseline, 200, 100 if args.pair == "small" else 16
    )
    names = [name.strip() for name in args.variants.split(",")]
    if any(name not in VARIANTS for name in names):
        parser.error(f"Invalid `--variants`: received {args.variants!r}, expected names from {list(VARIANTS)}.")
    with tempfile.TemporaryDirectory() as directory:
        variants = {name: VARIANTS[name] for name in names}
        rows, paths = bench(model, twin, images, calibration, args.rounds, directory, variants, tuple(args.kinds.split(",")))
        accuracy, agreement = test_accuracy(paths, model, args.accuracy_images) if args.pair == "small" else (None, None)
    print(format_rows(rows))
    print("test accuracy:", accuracy)
    print("top-1 agreement with Keras on the test images:", agreement)
    result = {
        "command": "python -m benchmarks.attention_graph_steps " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": bench_tflite.versions(),
        "pair": args.pair,
        "threads": 1,
        "batch": 1,
        "clock": "process_cpu",
        "rows": rows,
        "test_accuracy": accuracy,
        "test_top1_agreement": agreement,
    }
    report.write_json(args.output, result)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
