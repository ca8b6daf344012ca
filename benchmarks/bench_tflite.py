"""Size and latency of every TFLite kind and ONNX, attention-augmented model against its conv
twin, with top-1 agreement against the Keras model.

    python -m benchmarks.bench_tflite                      # the small pair of the default run, and ResNet-50 at 224
    python -m benchmarks.bench_tflite --pairs=small --threads=1

Pairs: `small` is `aa_small` / `conv_small` from the `.keras` files of the default training run
(`--small_model`, `--small_baseline`; `python -m aa_keras.training.train` writes them), checked on the
test images of glyph_pairs and int8-calibrated on its train images; `resnet50` is AAResNet-50 /
ResNet-50 at 224x224 with 1000 classes and random weights (nothing can be trained at that size
here), int8-calibrated on uniform random images: its latencies are those of any weights, its
top-1 agreement is not measured (an untrained network's near-tied logits say nothing about the
quantization). Every artifact is written by `export.classification.write_artifacts` (batch 1, builtin
ops checked); latencies are the best of interleaved rounds (`side_by_side_stats`), the model and
its twin alternating in one process, so the ratio is from one run; with one thread a round is
timed by the calling thread's CPU time, which the machine's other processes do not inflate (the
wall clock's figures and spreads are kept beside it). Writes the rows, the versions of LiteRT,
onnxruntime and TensorFlow, and a Markdown table to `--output`.
"""

import argparse
import importlib.metadata
import os
import platform
import sys
import tempfile
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from aa_keras.applications import build_model
from aa_keras.export import classification as export_classification
from aa_keras.export import export, mobile_attention, model_source, parity, report, tflite
from benchmarks import machine

KINDS = (*export_classification.TFLITE_KINDS, "onnx")
# The kinds that the exporter converts from `mobile_attention`'s graph, also written with the
# layer's own graph for the side-by-side.
LAYER_GRAPH_KINDS = ("tflite_int8",)
PAIRS = ("small", "resnet50")
DEFAULT_OUTPUT = os.path.join(os.path.dirname(__file__), "results", "bench_tflite.json")


def side_by_side_stats(runners, batch, rounds, per_round=None, warmup_s=0.5, round_s=0.05):
    """Latency statistics of `runners` ({name: runner with prepare/run}) timed side by side.

    Each runner first runs for at least `warmup_s` seconds (weight packing, caches). Then
    `rounds` interleaved rounds, the runners' order reversed every other round, each round
    `per_round` runs of each runner (None: as many as last about `round_s` seconds, at least 1,
    from the warm-up's mean). Every round is timed twice: by the wall clock and by the process's
    CPU time (`time.process_time`, all its threads). With one interpreter thread the process's
    CPU time is the latency without the time the scheduler gave other processes: on this 2-core
    machine under a load of 9, AAResNet-50 / ResNet-50 int8 at 224 took 22.5-23.1 ms of CPU per
    run (ResNet-50) while the wall clock read 45-72 ms, and the ratio of
    the best wall-clock rounds ranged 1.09-1.79 over six trials against 1.33-1.37 by CPU time.

    Returns:
        {name: {"cpu_ms", "wall_ms": the best round's ms per run by each clock; "cpu_median_ms",
        "wall_median_ms", "wall_p90_ms": over the rounds; "wall_spread": wall median / best;
        "cpu_spread": likewise; "rounds", "per_round"}}. The best round counts (timeit's
        convention: the least disturbed round is closest to the runtime's own cost); the spread
        says how much the load moved the rounds.
    """
    prepared = {name: runner.prepare(batch) for name, runner in runners.items()}
    counts = {}
    for name, runner in runners.items():
        start, runs = time.perf_counter(), 0
        while runs < 2 or time.perf_counter() - start < warmup_s:
            runner.run(prepared[name])
            runs += 1
        counts[name] = per_round or max(1, int(round_s * runs / (time.perf_counter() - start)))
    wall = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    order = list(runners)
    for index in range(rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            runner = runners[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(counts[name]):
                runner.run(prepared[name])
            cpu[name].append(1000.0 * (time.process_time() - start_cpu) / counts[name])
            wall[name].append(1000.0 * (time.perf_counter() - start) / counts[name])
    stats = {}
    for name in runners:
        stats[name] = {
            "cpu_ms": min(cpu[name]),
            "wall_ms": min(wall[name]),
            "cpu_median_ms": float(np.median(cpu[name])),
            "wall_median_ms": float(np.median(wall[name])),
            "wall_p90_ms": float(np.percentile(wall[name], 90)),
            "cpu_spread": float(np.median(cpu[name])) / min(cpu[name]),
            "wall_spread": float(np.median(wall[name])) / min(wall[name]),
            "rounds": rounds,
            "per_round": counts[name],
        }
    return stats


def latency_ms(row, threads):
    """(ms, clock) of a `side_by_side_stats` row: the process's CPU time with one thread (one
    thread's work: its CPU time is its latency), the wall clock with more (their CPU times add)."""
    if threads == 1:
        return row["cpu_ms"], "process_cpu"
    return row["wall_ms"], "wall"


def side_by_side_ms(runners, batch, rounds, per_round=None, threads=1):
    """{name: ms per run} of `side_by_side_stats` by `latency_ms`."""
    stats = side_by_side_stats(runners, batch, rounds, per_round)
    return {name: latency_ms(row, threads)[0] for name, row in stats.items()}


def _runner(kind, path, threads):
    if kind == "onnx":
        from aa_keras.export import onnx_model

        return onnx_model.OnnxRunner(path, threads)
    return tflite.TFLiteRunner(path, threads)


def load_pair(name, small_model, small_baseline, num_images, num_calibration):
    """(model, twin, evaluation images or None, calibration images) of pair `name`."""
    if name == "small":
        model = model_source.load_keras_file(small_model, name="--small_model")
        twin = model_source.load_keras_file(small_baseline, name="--small_baseline")
        shape = model_source.image_shape(model, None)
        images = export.dataset_images("glyph_pairs", "test", shape, num_images)
        calibration = export.dataset_images("glyph_pairs", "train", shape, num_calibration)
        return model, twin, export_classification.snap_to_8_bit(images), calibration
    shape = (224, 224, 3)
    model = build_model("aa_resnet50", shape, 1000)
    twin = build_model("resnet50", shape, 1000)
    calibration = np.random.default_rng(0).random((num_calibration, *shape), dtype=np.float32)
    return model, twin, None, calibration


def delegation(flatbuffer, threads=1):
    """{"partitions": the number of XNNPACK delegate partitions in LiteRT's whole-model plan,
    "not_taken": the op types it leaves to LiteRT's own kernels, sorted}.

    The interpreter lists the model's nodes and, after them, one DELEGATE node per partition
    whose inputs and outputs are the partition's; a node belongs to a partition when it writes
    a tensor reached backward from the partition's outputs without crossing its inputs."""
    interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()
    original = [node for node in nodes if node["op_name"] != "DELEGATE"]
    producer = {int(t): node["index"] for node in original for t in node["outputs"]}
    taken = set()
    for partition in (node for node in nodes if node["op_name"] == "DELEGATE"):
        inputs = {int(t) for t in partition["inputs"]}
        stack = [int(t) for t in partition["outputs"]]
        while stack:
            t = stack.pop()
            if t in inputs or t not in producer or producer[t] in taken:
                continue
            taken.add(producer[t])
            stack += [int(u) for u in nodes[producer[t]]["inputs"] if u >= 0]
    return {
        "partitions": len(nodes) - len(original),
        "not_taken": sorted({node["op_name"] for node in original if node["index"] not in taken}),
    }


def _delegation(kind, path):
    """`delegation` of a TFLite file; None for ONNX."""
    if kind == "onnx":
        return None
    with open(path, "rb") as f:
        return delegation(f.read())


def bench_pair(name, model, twin, images, calibration, threads, rounds, directory, per_round=None, kinds=KINDS):
    """Rows {pair, artifact, threads, size and latency of both, ratio, top-1 agreements, the AA
    file's XNNPACK delegation}. The AA model's files are the exporter's (int8: each attention as
    `mobile_attention`'s graph); its int8 file with the layer's own graph (the recipe before) is
    timed in the same rounds, in rows of artifact "tflite_int8 layer graph"."""
    shape = model_source.image_shape(model, None)
    old_kinds = [kind for kind in LAYER_GRAPH_KINDS if kind in kinds]
    artifacts = {}
    for label, network, written, steps in (
        ("aa", model, kinds, mobile_attention.DEFAULT_STEPS),
        ("conv", twin, kinds, mobile_attention.DEFAULT_STEPS),
        ("aa_layer_graph", model, old_kinds, ()),
    ):
        artifacts[label] = export_classification.write_artifacts(
            network, os.path.join(directory, name, label), written, shape, 1, False, calibration, attention_steps=steps
        )
    agreement = {}
    if images is not None:
        for label, network in (("aa", model), ("conv", twin), ("aa_layer_graph", model)):
            reference = parity.predict(lambda x: np.asarray(network(x, training=False)), images, 1)
            for kind in artifacts[label]:
                runner = _runner(kind, artifacts[label][kind]["path"], 1)
                outputs = parity.predict(runner, images, 1)
                agreement[label, kind] = parity.metrics(outputs, reference)["top1_agreement"]
    batch = calibration[:1] if images is None else images[:1]
    rows = []
    for kind in kinds:
        aa_labels = ("aa", "aa_layer_graph") if kind in old_kinds else ("aa",)
        for count in threads:
            runners = {label: _runner(kind, artifacts[label][kind]["path"], count) for label in (*aa_labels, "conv")}
            stats = side_by_side_stats(runners, batch, rounds, per_round)
            conv_ms, clock = latency_ms(stats["conv"], count)
            for label in aa_labels:
                aa_ms, _ = latency_ms(stats[label], count)
                rows.append({
                    "pair": name,
                    "artifact": kind if label == "aa" else f"{kind} layer graph",
                    "threads": count,
                    "runtime": runners[label].runtime,
                    "aa_size_bytes": report.size_bytes(artifacts[label][kind]["path"]),
                    "conv_size_bytes": report.size_bytes(artifacts["conv"][kind]["path"]),
                    "clock": clock,
                    "aa_ms": aa_ms,
                    "conv_ms": conv_ms,
                    "aa_vs_conv": aa_ms / conv_ms,
                    "aa_timing": stats[label],
                    "conv_timing": stats["conv"],
                    "aa_top1_agreement": agreement.get((label, kind)),
                    "conv_top1_agreement": agreement.get(("conv", kind)),
                    "aa_delegation": _delegation(kind, artifacts[label][kind]["path"]),
                })
                print(format_table(rows[-1:], header=False), flush=True)
    return rows


def format_table(rows, header=True):
    """The rows as a Markdown table."""
    lines = []
    if header:
        lines += [
            "| pair | artifact | threads | AA MiB | conv MiB | clock | AA ms | conv ms | AA / conv | AA / conv wall medians "
            "| spread AA, conv (wall) | AA top-1 vs Keras | conv top-1 vs Keras | AA partitions, ops XNNPACK leaves |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for row in rows:
        aa, conv = row["aa_timing"], row["conv_timing"]
        found = row.get("aa_delegation")
        delegation = "-" if found is None else f"{found['partitions']}: {' '.join(found['not_taken']) or 'none'}"
        agreement = [
            "-" if row[key] is None else f"{row[key]:.3f}" for key in ("aa_top1_agreement", "conv_top1_agreement")
        ]
        lines.append(
            f"| {row['pair']} | {row['artifact']} | {row['threads']} | {row['aa_size_bytes'] / 2**20:.2f} | "
            f"{row['conv_size_bytes'] / 2**20:.2f} | {row['clock']} | {row['aa_ms']:.3f} | {row['conv_ms']:.3f} | "
            f"{row['aa_vs_conv']:.2f} | {aa['wall_median_ms'] / conv['wall_median_ms']:.2f} | "
            f"{aa['wall_spread']:.2f}, {conv['wall_spread']:.2f} | {agreement[0]} | {agreement[1]} | {delegation} |"
        )
    return "\n".join(lines)


def versions():
    return {
        name: importlib.metadata.version(name)
        for name in ("ai-edge-litert", "onnxruntime", "tensorflow", "keras", "tf2onnx")
    } | {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": machine.cpu()[0],
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, from {PAIRS}")
    parser.add_argument("--small_model", default="runs/quick/aa_small/model.keras")
    parser.add_argument("--small_baseline", default="runs/quick/conv_small/model.keras")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, from {KINDS}")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds of the small pair (~50 ms each)")
    parser.add_argument("--rounds_224", type=int, default=10, help="interleaved timing rounds at 224x224 (1 run each)")
    parser.add_argument("--num_images", type=int, default=200, help="test images of the small pair")
    parser.add_argument("--calibration_images", type=int, default=100, help="int8 calibration images of the small pair")
    parser.add_argument("--calibration_images_224", type=int, default=16, help="random int8 calibration images at 224x224")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    pairs = [name.strip() for name in args.pairs.split(",")]
    if not pairs or any(name not in PAIRS for name in pairs):
        parser.error(f"Invalid `--pairs`: received {args.pairs!r}, expected names from {PAIRS}.")
    try:
        threads = [int(count) for count in args.threads.split(",")]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        parser.error(f"Invalid `--threads`: received {args.threads!r}, expected positive ints like 1,2.")
    kinds = [kind.strip() for kind in args.kinds.split(",")]
    if not kinds or any(kind not in KINDS for kind in kinds):
        parser.error(f"Invalid `--kinds`: received {args.kinds!r}, expected names from {KINDS}.")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name in pairs:
            model, twin, images, calibration = load_pair(
                name,
                args.small_model,
                args.small_baseline,
                args.num_images,
                args.calibration_images if name == "small" else args.calibration_images_224,
            )
            rounds, per_round = (args.rounds, None) if name == "small" else (args.rounds_224, 1)
            rows += bench_pair(name, model, twin, images, calibration, threads, rounds, directory, per_round, kinds)
    table = format_table(rows)
    result = {
        "command": "python -m benchmarks.bench_tflite " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": versions(),
        "batch": 1,
        "rounds": {"small": args.rounds, "resnet50": args.rounds_224},
        "num_images": args.num_images,
        "calibration_images": {"small": args.calibration_images, "resnet50": args.calibration_images_224},
        "small_model": args.small_model,
        "small_baseline": args.small_baseline,
        "rows": rows,
        "table": table,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    report.write_json(args.output, result)
    print(table)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
