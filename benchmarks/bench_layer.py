"""Speed and memory of AttentionAugmentation2D against Conv2D and the straightforward reference.

    python -m benchmarks.bench_layer                      # the full table (about 7 minutes)
    python -m benchmarks.bench_layer --sizes=14 --memory_sizes= --repeats=3

Implementations: `aa` (the library layer: on this CPU the fused attention kernel, see
`aa_keras/ops/fused_attention.py`), `aa_tf_ops` (the same layer with `attention_implementation="tf_ops"`: the
TensorFlow-op path that GPUs, TPUs, XLA and exported files run), `conv`
(`keras.layers.Conv2D(filters, kernel_size)`), `reference` (`benchmarks/reference_layer.py`:
materialised, tiled logits as in the paper's appendix) and `softmax` (a bare `tf.nn.softmax` over
the layer's (B, Nh, HW, HW) logits, forward and backward: a floor under any attention that
materialises its weights in float32).

For each spatial size the forward and training-step (forward + gradients w.r.t. the input and all
weights) times are measured side by side, interleaved in rounds, in one fresh subprocess; above
`--reference_alone_above` the reference runs in a second subprocess with only `aa` beside it
(it needs tens of GB there). Peak memory (the whole process's peak resident set, VmHWM) of one
training step and of one forward pass is measured in a fresh subprocess per implementation, size
and pass. Results are printed as a table and written as JSON. Ratios, not absolute times, are the
figures to compare: the machine may be shared.
"""

import json
import math
import os
import subprocess
import sys
import time

from absl import app, flags, logging

from benchmarks import machine

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["7", "14", "28", "56"], "Spatial sizes for the timings.")
flags.DEFINE_list("memory_sizes", ["7", "14", "28", "56", "112"], "Spatial sizes for peak memory.")
flags.DEFINE_list(
    "impls",
    ["aa", "aa_tf_ops", "conv", "reference", "softmax"],
    "Implementations: aa, aa_tf_ops, conv, reference, softmax.",
)
flags.DEFINE_integer("reference_alone_above", 28, "Above this size the reference is timed in its own process.")
flags.DEFINE_integer("reference_memory_max_size", 56, "Largest size at which the reference's memory is measured.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("filters", 256, "Input channels and output filters.")
flags.DEFINE_integer("kernel_size", 3, "Kernel size.")
flags.DEFINE_integer("num_heads", 8, "Attention heads.")
flags.DEFINE_float("depth", 0.2, "depth_k = depth_v as a fraction of filters.")
flags.DEFINE_integer("query_block_size", None, "Passed to the layer (None: chosen from the size).")
flags.DEFINE_integer("repeats", 5, "Least timed runs per implementation (median reported).")
flags.DEFINE_float(
    "min_seconds", 10.0, "More timed rounds at a size until they take about this long (small sizes are noisy)."
)
flags.DEFINE_integer("warmup", 2, "Untimed rounds first.", lower_bound=1)
flags.DEFINE_boolean("jit_compile", False, "Compile the timed functions with XLA.")
flags.DEFINE_string("output", "benchmarks/results/bench_layer.json", "Where to write the JSON.")
flags.DEFINE_enum("worker", None, ["time", "memory"], "Internal: run one measurement and print JSON.")
flags.DEFINE_integer("size", None, "Internal: the worker's spatial size.")
flags.DEFINE_string("impl", None, "Internal: the memory worker's implementation.")
flags.DEFINE_enum("pass_", "train_step", ["forward", "train_step"], "Internal: the memory worker's pass.")

_WORKER_FLAGS = ("batch", "filters", "kernel_size", "num_heads", "depth", "query_block_size", "repeats",
                 "min_seconds", "warmup", "jit_compile")


def make_layer(impl):
    """The layer of `impl` (aa, aa_tf_ops, conv, reference) with the flags' shapes, unbuilt."""
    import keras

    from aa_keras.layers import AttentionAugmentation2D

    if impl == "conv":
        return keras.layers.Conv2D(FLAGS.filters, FLAGS.kernel_size, padding="same")
    arguments = dict(
        depth_k=FLAGS.depth, depth_v=FLAGS.depth, num_heads=FLAGS.num_heads, query_block_size=FLAGS.query_block_size
    )
    if impl == "reference":
        from benchmarks.reference_layer import ReferenceAttentionAugmentation2D  # TensorFlow only

        return ReferenceAttentionAugmentation2D(FLAGS.filters, FLAGS.kernel_size, **arguments)
    implementation = "tf_ops" if impl == "aa_tf_ops" else "auto"
    return AttentionAugmentation2D(FLAGS.filters, FLAGS.kernel_size, attention_implementation=implementation, **arguments)


def tf_functions(impl, size):
    """{"forward": fn, "train_step": fn}: tf.functions of one implementation at one size."""
    import tensorflow as tf

    if impl == "softmax":
        positions = size * size
        x = tf.random.normal((FLAGS.batch, FLAGS.num_heads, positions, positions), seed=1)
        layer = tf.nn.softmax
        variables = []
        output_shape = x.shape
    else:
        layer = make_layer(impl)
        shape = (FLAGS.batch, size, size, FLAGS.filters)
        x = tf.random.normal(shape, seed=1)
        layer.build(shape)
        variables = layer.trainable_variables
        output_shape = layer.compute_output_shape(shape)
    upstream = tf.random.normal(output_shape, seed=2)

    @tf.function(jit_compile=FLAGS.jit_compile)
    def forward():
        return layer(x)

    @tf.function(jit_compile=FLAGS.jit_compile)
    def train_step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * upstream)
        return tape.gradient(loss, [x] + variables)

    return {"forward": forward, "train_step": train_step}


def _time_worker(size, impls):
    """Times `impls` at `size` (see `time_rounds`). Returns {impl: {forward_s, train_step_s}}."""
    return time_rounds({impl: tf_functions(impl, size) for impl in impls})


def time_rounds(functions):
    """Times {impl: {kind: fn}} in interleaved rounds (each runs every function once):
    `--warmup` untimed rounds, then at least `--repeats` and about `--min_seconds` of timed ones.
    Returns {impl: {f"{kind}_s": median seconds, f"{kind}_rounds_s": each timed round's seconds}}."""
    impls = list(functions)
    times = {impl: {kind: [] for kind in functions[impl]} for impl in impls}

    def run_round():
        elapsed = {}
        for impl in impls:
            for kind, fn in functions[impl].items():
                start = time.perf_counter()
                fn()
                elapsed[impl, kind] = time.perf_counter() - start
        return elapsed

    for _ in range(FLAGS.warmup):
        round_seconds = sum(run_round().values())
    rounds = max(FLAGS.repeats, math.ceil(FLAGS.min_seconds / round_seconds))
    for _ in range(rounds):
        for (impl, kind), elapsed in run_round().items():
            times[impl][kind].append(elapsed)
    return {
        impl: {
            **{f"{kind}_s": sorted(values)[len(values) // 2] for kind, values in kinds.items()},
            **{f"{kind}_rounds_s": values for kind, values in kinds.items()},
        }
        for impl, kinds in times.items()
    }


def _peak_rss_gib():
    """This process's own peak resident set (VmHWM in /proc/self/status), in GiB.

    Not `ru_maxrss`: Linux carries a parent's peak into a child across fork and exec, so a
    worker started by a large parent would report the parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    raise RuntimeError("No VmHWM in /proc/self/status (peak memory is measured on Linux only).")


def _memory_worker(impl, size, pass_):
    """Peak RSS (GiB) of a process that runs one `pass_` of `impl` at `size`."""
    tf_functions(impl, size)[pass_]()
    return {"peak_rss_gib": _peak_rss_gib()}


def _run_worker(args):
    """Runs this module as a worker subprocess; returns its JSON result, or {"error": ...}."""
    command = [sys.executable, "-m", "benchmarks.bench_layer", *args] + [FLAGS[n].serialize() for n in _WORKER_FLAGS]
    result = subprocess.run([c for c in command if c], capture_output=True, text=True)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        return {"error": f"exit code {result.returncode}: {tail[0][:200]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _timings(size):
    """All timings at one size: {impl: {...}}, with "reference_vs_aa" taken from one process."""
    together = [i for i in FLAGS.impls if i != "reference" or size <= FLAGS.reference_alone_above]
    timing = _run_worker(["--worker=time", f"--size={size}", f"--impls={','.join(together)}"])
    if "error" in timing:
        return {"error": timing["error"]}
    pair = timing
    if "reference" in FLAGS.impls and size > FLAGS.reference_alone_above:
        pair = _run_worker(["--worker=time", f"--size={size}", "--impls=aa,reference"])
        timing["reference"] = pair if "error" in pair else pair["reference"]
    if "reference" in pair and "aa" in pair and "error" not in pair:
        timing["reference_vs_aa"] = {
            kind: pair["reference"][f"{kind}_s"] / pair["aa"][f"{kind}_s"] for kind in ("forward", "train_step")
        }
    return timing


def _fmt(value, scale=1.0, digits=1):
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _table(results):
    lines = [
        "| size | impl | forward ms | train step ms | forward / conv | train step / conv | reference / aa "
        "(fwd, train) | peak RSS GiB (fwd, train) | peak RSS / conv (fwd, train) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sizes = sorted({int(s) for s in list(results["time"]) + list(results["memory"])})
    for size in sizes:
        timing = results["time"].get(str(size), {})
        memory = results["memory"].get(str(size), {})
        conv = timing.get("conv", {})
        conv_rss = [memory.get("conv", {}).get(p, {}).get("peak_rss_gib") for p in ("forward", "train_step")]
        for impl in FLAGS.impls:
            t, m = timing.get(impl, {}), memory.get(impl, {})
            if not t and not m:
                continue
            ratios = [
                _fmt(t.get(k) / conv[k], digits=2) if t.get(k) and conv.get(k) else "-"
                for k in ("forward_s", "train_step_s")
            ]
            ref = timing.get("reference_vs_aa") if impl == "aa" else None
            ref_cell = f"{ref['forward']:.2f}, {ref['train_step']:.2f}" if ref else ""
            rss = [m.get(p, {}).get("peak_rss_gib") for p in ("forward", "train_step")]
            rss_cell = ", ".join(_fmt(v, digits=2) for v in rss) if m else ""
            rss_ratios = [_fmt(v / c, digits=2) if v and c else "-" for v, c in zip(rss, conv_rss)]
            rss_ratio_cell = ", ".join(rss_ratios) if m else ""
            if "error" in t:
                ratios, ref_cell = ["error", t["error"][:40]], ""
            lines.append(
                f"| {size} | {impl} | {_fmt(t.get('forward_s'), 1e3)} | {_fmt(t.get('train_step_s'), 1e3)} | "
                f"{ratios[0]} | {ratios[1]} | {ref_cell} | {rss_cell} | {rss_ratio_cell} |"
            )
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.worker == "time":
        print(json.dumps(_time_worker(FLAGS.size, FLAGS.impls)))
        return
    if FLAGS.worker == "memory":
        print(json.dumps(_memory_worker(FLAGS.impl, FLAGS.size, FLAGS.pass_)))
        return
    results = {
        "config": {name: FLAGS[name].value for name in _WORKER_FLAGS},
        "machine": machine.record(),
        "time": {},
        "memory": {},
    }
    for size in FLAGS.sizes:
        logging.info("timing size %s", size)
        results["time"][size] = _timings(int(size))
    for size in FLAGS.memory_sizes:
        results["memory"][size] = {}
        for impl in FLAGS.impls:
            if impl == "softmax" or (impl == "reference" and int(size) > FLAGS.reference_memory_max_size):
                continue
            results["memory"][size][impl] = {}
            for pass_ in ("forward", "train_step"):
                logging.info("memory size %s %s %s", size, impl, pass_)
                results["memory"][size][impl][pass_] = _run_worker(
                    ["--worker=memory", f"--size={size}", f"--impl={impl}", f"--pass_={pass_}"]
                )
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
