"""Speed and memory of AttentionAugmentation2D against Conv2D and the straightforward reference.

    python -m benchmarks.bench_layer                      # the full table (minutes)
    python -m benchmarks.bench_layer --sizes=14 --memory_sizes= --repeats=3

For each spatial size the forward and training-step (forward + gradients w.r.t. the input and
all weights) times of the three implementations are measured side by side, interleaved, in one
fresh subprocess; peak memory (max RSS of the whole process) of one training step is measured
in a fresh subprocess per implementation and size. Results are printed as a table and written
as JSON. Ratios, not absolute times, are the figures to compare: the machine may be shared.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["7", "14", "28", "56"], "Spatial sizes for the timings.")
flags.DEFINE_list("memory_sizes", ["7", "14", "28", "56", "112"], "Spatial sizes for peak memory.")
flags.DEFINE_list("impls", ["aa", "conv", "reference"], "Implementations: aa, conv, reference.")
flags.DEFINE_integer("reference_max_size", 56, "Largest size at which the reference runs.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("filters", 256, "Input channels and output filters.")
flags.DEFINE_integer("kernel_size", 3, "Kernel size.")
flags.DEFINE_integer("num_heads", 8, "Attention heads.")
flags.DEFINE_float("depth", 0.2, "depth_k = depth_v as a fraction of filters.")
flags.DEFINE_integer("repeats", 5, "Timed runs per implementation (median reported).")
flags.DEFINE_integer("warmup", 2, "Untimed runs first.")
flags.DEFINE_boolean("jit_compile", False, "Compile the timed functions with XLA.")
flags.DEFINE_string("output", "benchmarks/results/bench_layer.json", "Where to write the JSON.")
flags.DEFINE_enum("worker", None, ["time", "memory"], "Internal: run one measurement and print JSON.")
flags.DEFINE_integer("size", None, "Internal: the worker's spatial size.")
flags.DEFINE_string("impl", None, "Internal: the memory worker's implementation.")


def _make_layer(impl):
    import keras

    from aa_keras.layers import AttentionAugmentation2D
    from benchmarks.reference_layer import ReferenceAttentionAugmentation2D

    if impl == "conv":
        return keras.layers.Conv2D(FLAGS.filters, FLAGS.kernel_size, padding="same")
    layer_class = {"aa": AttentionAugmentation2D, "reference": ReferenceAttentionAugmentation2D}[impl]
    return layer_class(
        FLAGS.filters, FLAGS.kernel_size, depth_k=FLAGS.depth, depth_v=FLAGS.depth, num_heads=FLAGS.num_heads
    )


def _functions(impl, size):
    """(forward, train_step) tf.functions of one implementation at one size."""
    import tensorflow as tf

    layer = _make_layer(impl)
    shape = (FLAGS.batch, size, size, FLAGS.filters)
    x = tf.random.normal(shape, seed=1)
    layer.build(shape)
    upstream = tf.random.normal(layer.compute_output_shape(shape), seed=2)

    @tf.function(jit_compile=FLAGS.jit_compile)
    def forward():
        return layer(x)

    @tf.function(jit_compile=FLAGS.jit_compile)
    def train_step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * upstream)
        return tape.gradient(loss, [x] + layer.trainable_variables)

    return forward, train_step


def _time_worker(size):
    """Times every implementation at `size`, interleaved; returns {impl: {forward_s, train_step_s}}."""
    impls = [i for i in FLAGS.impls if i != "reference" or size <= FLAGS.reference_max_size]
    functions = {impl: _functions(impl, size) for impl in impls}
    times = {impl: {"forward": [], "train_step": []} for impl in impls}
    for repeat in range(FLAGS.warmup + FLAGS.repeats):
        for impl in impls:
            for kind, fn in zip(("forward", "train_step"), functions[impl]):
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                if repeat >= FLAGS.warmup:
                    times[impl][kind].append(elapsed)
    return {
        impl: {f"{kind}_s": sorted(values)[len(values) // 2] for kind, values in kinds.items()}
        for impl, kinds in times.items()
    }


def _memory_worker(impl, size):
    """Peak RSS (GiB) of a process that runs one training step of `impl` at `size`."""
    _, train_step = _functions(impl, size)
    train_step()
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _run_worker(args):
    """Runs this module as a worker subprocess; returns its JSON result, or an error string."""
    command = [sys.executable, "-m", "benchmarks.bench_layer", *args] + [
        FLAGS[name].serialize()
        for name in ("impls", "reference_max_size", "batch", "filters", "kernel_size", "num_heads",
                     "depth", "repeats", "warmup", "jit_compile")
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        return {"error": tail[0]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _ratio(numerator, denominator):
    if numerator is None or denominator is None:
        return None
    return numerator / denominator


def _table(results):
    lines = [
        "| size | impl | forward ms | train step ms | train vs conv | reference / aa (train) | peak RSS GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    sizes = sorted({int(s) for s in list(results["time"]) + list(results["memory"])})
    for size in sizes:
        timing = results["time"].get(str(size), {})
        memory = results["memory"].get(str(size), {})
        for impl in FLAGS.impls:
            t = timing.get(impl, {})
            m = memory.get(impl, {})
            train = t.get("train_step_s")
            conv_train = timing.get("conv", {}).get("train_step_s")
            vs_conv = _ratio(train, conv_train)
            ref_over_aa = _ratio(timing.get("reference", {}).get("train_step_s"), timing.get("aa", {}).get("train_step_s"))
            if not t and not m:
                continue
            fmt = lambda v, scale=1.0, digits=1: "-" if v is None else f"{v * scale:.{digits}f}"
            rss = m.get("peak_rss_gib") if "error" not in m else None
            lines.append(
                f"| {size} | {impl} | {fmt(t.get('forward_s'), 1e3)} | {fmt(train, 1e3)} | "
                f"{fmt(vs_conv, digits=2)} | {fmt(ref_over_aa, digits=2) if impl == 'aa' else ''} | "
                f"{fmt(rss, digits=2) if 'error' not in m else m['error'][:40]} |"
            )
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.worker == "time":
        print(json.dumps(_time_worker(FLAGS.size)))
        return
    if FLAGS.worker == "memory":
        print(json.dumps(_memory_worker(FLAGS.impl, FLAGS.size)))
        return
    results = {"config": {name: FLAGS[name].value for name in ("batch", "filters", "kernel_size", "num_heads", "depth",
                                                             "repeats", "jit_compile")},
               "machine": {"cpus": os.cpu_count(), "platform": sys.platform}, "time": {}, "memory": {}}
    for size in FLAGS.sizes:
        logging.info("timing size %s", size)
        results["time"][size] = _run_worker(["--worker=time", f"--size={size}"])
    for size in FLAGS.memory_sizes:
        results["memory"][size] = {}
        for impl in FLAGS.impls:
            if impl == "reference" and int(size) > FLAGS.reference_max_size:
                continue
            logging.info("memory size %s %s", size, impl)
            results["memory"][size][impl] = _run_worker(["--worker=memory", f"--size={size}", f"--impl={impl}"])
    table = _table(results)
    print(table)
    results["table"] = table
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    tmp = FLAGS.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, FLAGS.output)
    logging.info("wrote %s", FLAGS.output)


if __name__ == "__main__":
    app.run(main)
