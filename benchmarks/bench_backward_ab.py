"""A/B timing of the fused kernel's gradient op: two sources of fused_attention.cc in one process.

Each source is compiled (same flags as aa_keras.ops.fused_attention) into a library of its own
with its ops renamed (AaFusedAttention -> Aa<Tag>FusedAttention), so both load side by side.
The gradient op alone is timed (forward outputs computed once), or with `--op forward` the
forward op, old and new alternately in interleaved rounds; medians reported, with the ratio
old / new (> 1: new is faster) and the max abs difference of each output. With `--op network`,
the train step of AA-WRN-28-10 at 32x32 (batch `--batch`), traced once on each library (the
layer's `fused_attention.library()` pointed at it while tracing): a kernel change measured in
the network, in one process (runs of separate processes differed by up to 8% in this step).

    python benchmarks/bench_backward_ab.py --old-rev HEAD~1 [--batch 8] [--rounds 15] [--op forward]
    python benchmarks/bench_backward_ab.py --old-rev HEAD~1 --op network --batch 32 --rounds 7
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import tensorflow as tf

from aa_keras.ops import fused_attention as fa

SHAPES = [  # name, batch, H, W, heads, dkh, dvh
    ("wrn32", None, 32, 32, 8, 20, 2),
    ("wrn16", None, 16, 16, 8, 20, 4),
    ("wrn8", None, 8, 8, 8, 20, 8),
    ("layer14", None, 14, 14, 8, 6, 6),
    ("layer28", None, 28, 28, 8, 6, 6),
    ("layer56", None, 56, 56, 8, 6, 6),
    ("wrnlayer32", None, 32, 32, 8, 4, 4),  # speed_targets' 160-channel layer: dk = dv = 0.2 F
    ("wrnlayer16", None, 16, 16, 8, 8, 8),  # its 320-channel layer
    ("resnet14", None, 14, 14, 8, 20, 3),  # AAResNet-50's stage-4 layers (stage 3's: dvh 2)
]


def build(source_text, tag, workdir):
    src = os.path.join(workdir, f"{tag}.cc")
    text = source_text.replace('REGISTER_OP("AaFusedAttention', f'REGISTER_OP("Aa{tag}FusedAttention')
    text = text.replace('Name("AaFusedAttention', f'Name("Aa{tag}FusedAttention')
    open(src, "w").write(text)
    out = os.path.join(workdir, f"{tag}.so")
    cmd = fa._compile_command(out)
    cmd[cmd.index(str(fa.SOURCE))] = src
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return tf.load_op_library(out), tag.lower()


def op(lib, tag, name):
    return getattr(lib, f"aa_{tag}_fused_attention{name}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-rev", default="HEAD")
    parser.add_argument("--old-file", default="", help="instead of --old-rev")
    parser.add_argument("--new-file", default=str(fa.SOURCE))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", default="")
    parser.add_argument("--json", default="")
    parser.add_argument("--op", choices=["gradient", "forward", "network"], default="gradient")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    old_src = subprocess.run(["git", "show", f"{args.old_rev}:aa_keras/ops/fused_attention.cc"], cwd=root,
                             check=True, capture_output=True, text=True).stdout
    if args.old_file:
        old_src = open(args.old_file).read()
    new_src = open(args.new_file).read()
    workdir = tempfile.mkdtemp()
    libs = {"old": build(old_src, "Old", workdir), "new": build(new_src, "New", workdir)}
    if args.op == "network":
        results = {"wrn28_10": _network(libs, args.batch, args.rounds)}
        if args.json:
            json.dump(results, open(args.json, "w"), indent=1)
        return
    rng = np.random.default_rng(0)
    results = {}
    for name, _, h, w, nh, dk, dv in SHAPES:
        if args.only and name not in args.only.split(","):
            continue
        b = args.batch
        q = tf.constant(rng.standard_normal((b, h, w, nh, dk)).astype(np.float32) * dk**-0.5)
        k = tf.constant(rng.standard_normal((b, h, w, nh, dk)).astype(np.float32))
        v = tf.constant(rng.standard_normal((b, h, w, nh, dv)).astype(np.float32))
        rh = tf.constant(rng.standard_normal((2 * h - 1, dk)).astype(np.float32) * 0.1)
        rw = tf.constant(rng.standard_normal((2 * w - 1, dk)).astype(np.float32) * 0.1)
        d_out = tf.constant(rng.standard_normal((b, h, w, nh, dv)).astype(np.float32))
        fns, grads = {}, {}
        for key, (lib, tag) in libs.items():
            out, stats = op(lib, tag, "")(q, k, v, rh, rw, relative=True)
            if args.op == "forward":
                f = tf.function(lambda lib=lib, tag=tag: op(lib, tag, "")(q, k, v, rh, rw, relative=True))
            else:
                f = tf.function(lambda out=out, stats=stats, lib=lib, tag=tag: op(lib, tag, "_grad")(
                    q, k, v, rh, rw, out, stats, d_out, relative=True))
            grads[key] = [g.numpy() for g in f()]
            fns[key] = f
        results[name] = {"op": args.op, "batch": b, **_interleaved(fns, args.rounds), **_differences(grads)}
        _report(name, results[name])
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)


def _interleaved(fns, rounds):
    """Medians of fns["old"] and fns["new"] called alternately (each round's order swapped), wall
    and this process's CPU time (less sensitive to other load), in ms, and their ratios."""
    times = {"old": [], "new": []}
    cpu = {"old": [], "new": []}
    reps = max(1, int(0.3 / max(1e-4, _time(fns["old"]))))
    for r in range(rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        for key in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                fns[key]()
            times[key].append((time.perf_counter() - t0) / reps)
            cpu[key].append((time.process_time() - c0) / reps)
    med = {key: float(np.median(t)) for key, t in times.items()}
    med_cpu = {key: float(np.median(t)) for key, t in cpu.items()}
    return {"old_ms": med["old"] * 1e3, "new_ms": med["new"] * 1e3, "ratio_old_over_new": med["old"] / med["new"],
            "old_cpu_ms": med_cpu["old"] * 1e3, "new_cpu_ms": med_cpu["new"] * 1e3,
            "cpu_ratio_old_over_new": med_cpu["old"] / med_cpu["new"]}


def _differences(outputs):
    """{"max_abs_diff", "max_abs"}: per output, the max abs difference of outputs["old"] and
    outputs["new"] (lists of arrays), and the max abs value of the old one (its scale)."""
    return {"max_abs_diff": [float(np.max(np.abs(a - c))) for a, c in zip(outputs["old"], outputs["new"])],
            "max_abs": [float(np.max(np.abs(a))) for a in outputs["old"]]}


def _report(name, row):
    print(f"{name:8s} b={row['batch']} old {row['old_ms']:8.2f} ms  new {row['new_ms']:8.2f} ms  "
          f"old/new {row['ratio_old_over_new']:.2f} (CPU time {row['cpu_ratio_old_over_new']:.2f})  "
          f"maxdiff {max(row['max_abs_diff']):.2e} (scale {max(row['max_abs']):.2e})", flush=True)


def _network(libs, batch, rounds):
    """AA-WRN-28-10's train step (gradients of sum(output * fixed upstream) with respect to every
    weight) on each library, interleaved; the max abs difference of the gradients (the network's
    other float32 ops are not bitwise repeatable run to run: 2.5e-6 with one source on both sides)."""
    from aa_keras.applications.wide_resnet import AAWideResNet

    model = AAWideResNet(28, 10, input_shape=(32, 32, 3))
    x = tf.random.normal((batch, 32, 32, 3), seed=1)
    upstream = tf.random.normal((batch, *model.output.shape[1:]), seed=2)
    library = fa.library
    fns, grads = {}, {}
    try:
        for key, (lib, tag) in libs.items():
            kernels = types.SimpleNamespace(aa_fused_attention=op(lib, tag, ""),
                                            aa_fused_attention_grad=op(lib, tag, "_grad"))
            fa.library = lambda kernels=kernels: kernels

            @tf.function(autograph=False)
            def step():
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(model(x, training=True) * upstream)
                return tape.gradient(loss, model.trainable_variables)

            grads[key] = [g.numpy() for g in step()]  # traced here, on this library
            fns[key] = step
    finally:
        fa.library = library
    row = {"op": "network", "batch": batch, **_interleaved(fns, rounds), **_differences(grads)}
    _report("wrn28_10", row)
    return row


def _time(f):
    f()
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
