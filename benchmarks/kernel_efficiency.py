"""Arithmetic rate of the fused attention kernel against Conv2D's, per CPU second (issue 26).

    python -m benchmarks.kernel_efficiency                 # WRN's 32x32 / 16x16 / 8x8, the layer's 14 / 28
    python -m benchmarks.kernel_efficiency --shapes=wrn32 --calls=3

On a shared machine wall time depends on the load; the CPU time of this process does much less.
For each shape: the fused op's forward and its gradient op (q, k (B, H, W, Nh, dkh),
v (B, H, W, Nh, dvh), relative tables), and the train step of the Conv2D the layer replaces
(3x3, `filters` in and out, same batch and grid), each called `--calls` times after one warm-up;
reported: wall and CPU milliseconds per call, and GFLOP per CPU second, counting 2 FLOPs per
multiply-add of the products only (the kernel: q k^T and p v forward; q k^T again, dO v^T,
dS k, dS^T q and p^T dO backward; the relative logits, the softmax and the exponentials are not
counted; Conv2D: forward, input gradient and weight gradient, 3 x 2 x B H W 9 C F). A kernel
that also spends time on exponentials and softmax shows a lower rate than its arithmetic allows.
The yardstick comes first: the rate of a 2048 x 2048 x 2048 float32 `tf.matmul`, TensorFlow's own
rate for a large product (not the machine's best: on the AVX2 VM about two thirds of the cores'
multiply-add peak, which `kernel_instructions` measures and `profile_step`'s floors use).
A second yardstick per shape, "library products": the same seven products (q k^T, p v; q k^T,
dO v^T, dS k, dS^T q, p^T dO) as one `tf.matmul` each per head, at each head's full shape
((N, dkh) x (dkh, N) and so on, N = size^2), for `LIBRARY_HEADS` heads in one `tf.function`
(scaled to the shape's batch x heads) and each output reduced to one element, so that the
(N, N) products stay in the caches instead of going to memory as an unfused attention's do: what
the machine's matrix-product library takes for the kernel's products alone at its shapes.
The JSON goes to `--output`.
"""

import argparse
import datetime
import json
import time

import keras
import tensorflow as tf

from benchmarks import machine

SHAPES = {  # name: (batch, size, heads, dkh, dvh, conv filters)
    "wrn32": (8, 32, 8, 20, 2, 160),
    "wrn16": (8, 16, 8, 20, 4, 320),
    "wrn8": (8, 8, 8, 20, 8, 640),
    "layer14": (8, 14, 8, 6, 6, 256),
    "layer28": (8, 28, 8, 6, 6, 256),
}


# Operations on the multiply-add pipes of the kernel's exponential (`Exp` in
# aa_keras/ops/fused_attention.cc); the forward op takes one per logit, and the gradient op one
# more (it recomputes the softmax weights instead of keeping them).
EXP_MULTIPLY_ADDS = 7


def attention_flops(batch, heads, positions, dkh, dvh):
    """FLOPs of the fused ops at one shape, 2 per multiply-add: "fused forward" and "fused gradient"
    (their matrix products), "exponentials" (both ops' exponentials, 2 per multiply-add-pipe
    operation, so that all three take the same time per unit at a matrix product's rate)."""
    logits = batch * heads * positions**2
    return {
        "fused forward": 2 * logits * (dkh + dvh),
        "fused gradient": 2 * logits * (3 * dkh + 2 * dvh),
        "exponentials": 2 * 2 * logits * EXP_MULTIPLY_ADDS,
    }


def matmul_function(size=2048):
    """(tf.function, FLOPs): the product of two fixed size x size float32 matrices: TensorFlow's
    rate for a large product."""
    a = tf.random.normal((size, size), seed=1)
    b = tf.random.normal((size, size), seed=2)
    return tf.function(lambda: tf.matmul(a, b), autograph=False), 2 * size**3


# Heads timed by the "library products" yardstick (the shape's batch x heads if fewer).
LIBRARY_HEADS = 8


def library_products(heads, positions, dkh, dvh):
    """(tf.function, heads it covers): the fused ops' seven matrix products per head as
    `tf.matmul`s, each output reduced to one element (see the module docstring)."""
    seeds = iter(range(200, 300))
    normal = lambda *shape: tf.random.normal(shape, seed=next(seeds))  # noqa: E731
    heads = min(heads, LIBRARY_HEADS)
    q, k = normal(heads, positions, dkh), normal(heads, positions, dkh)
    v, d_out = normal(heads, positions, dvh), normal(heads, positions, dvh)
    weights = normal(heads, positions, positions)  # p, and dS in the gradient's products

    @tf.function(autograph=False)
    def products():
        corners = []
        for h in range(heads):
            outputs = (
                tf.matmul(q[h], k[h], transpose_b=True),  # forward: logits
                tf.matmul(weights[h], v[h]),  # forward: p v
                tf.matmul(q[h], k[h], transpose_b=True),  # gradient: the logits again
                tf.matmul(d_out[h], v[h], transpose_b=True),  # dP = dO v^T
                tf.matmul(weights[h], k[h]),  # dQ = dS k
                tf.matmul(weights[h], q[h], transpose_a=True),  # dK = dS^T q
                tf.matmul(weights[h], d_out[h], transpose_a=True),  # dV = p^T dO
            )
            corners += [o[0, 0] for o in outputs]
        return tf.add_n(corners)

    return products, heads


def _measure(fn, calls):
    """(wall ms, CPU ms) per call, after one warm-up call."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls * 1e3, (time.process_time() - cpu) / calls * 1e3


def _row(name, calls):
    from aa_keras.ops import fused_attention

    batch, size, heads, dkh, dvh, filters = SHAPES[name]
    seeds = iter(range(100))
    normal = lambda *shape: tf.random.normal(shape, seed=next(seeds))  # noqa: E731
    q, k = normal(batch, size, size, heads, dkh) * dkh**-0.5, normal(batch, size, size, heads, dkh)
    v, d_out = normal(batch, size, size, heads, dvh), normal(batch, size, size, heads, dvh)
    tables = normal(2 * size - 1, dkh) * 0.1, normal(2 * size - 1, dkh) * 0.1
    kernels = fused_attention.library()
    out, stats = kernels.aa_fused_attention(q, k, v, *tables, relative=True)
    forward = tf.function(lambda: kernels.aa_fused_attention(q, k, v, *tables, relative=True))
    gradient = tf.function(lambda: kernels.aa_fused_attention_grad(q, k, v, *tables, out, stats, d_out, relative=True))
    conv = keras.layers.Conv2D(filters, 3, padding="same")
    x = normal(batch, size, size, filters)
    conv.build(x.shape)
    upstream = tf.random.normal(x.shape, seed=7)

    @tf.function
    def conv_step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(conv(x) * upstream)
        return tape.gradient(loss, [x, *conv.trainable_variables])

    products, heads_timed = library_products(batch * heads, size * size, dkh, dvh)
    flops = attention_flops(batch, heads, size * size, dkh, dvh)
    flops["conv2d train step"] = 3 * 2 * batch * size * size * 9 * filters * filters
    flops["library products"] = flops["fused forward"] + flops["fused gradient"]
    row = {"shape": name, "batch": batch, "size": size, "heads": heads, "dkh": dkh, "dvh": dvh, "filters": filters}
    parts = (("fused forward", forward, 1), ("fused gradient", gradient, 1), ("conv2d train step", conv_step, 1),
             ("library products", products, batch * heads / heads_timed))
    for part, fn, scale in parts:
        wall_ms, cpu_ms = (t * scale for t in _measure(fn, calls))
        row[part] = {"wall_ms": wall_ms, "cpu_ms": cpu_ms, "gflop": flops[part] / 1e9,
                     "gflop_per_cpu_s": flops[part] / 1e9 / (cpu_ms / 1e3)}
        print(f"{name:8s} {part:18s} wall {wall_ms:9.1f} ms  cpu {cpu_ms:9.1f} ms  "
              f"{row[part]['gflop_per_cpu_s']:6.1f} GFLOP/cpu-s", flush=True)
    fused_ms = row["fused forward"]["cpu_ms"] + row["fused gradient"]["cpu_ms"]
    row["fused / library products"] = fused_ms / row["library products"]["cpu_ms"]
    row["library products / conv2d train step"] = (row["library products"]["cpu_ms"]
                                                   / row["conv2d train step"]["cpu_ms"])
    print(f"{name:8s} fused forward + gradient / library products {row['fused / library products']:.2f}, "
          f"library products / Conv2D step {row['library products / conv2d train step']:.2f}", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/kernel_efficiency.json")
    args = parser.parse_args()
    matmul, matmul_flops = matmul_function()
    matmul_rate = matmul_flops / 1e9 / (_measure(matmul, args.calls)[1] / 1e3)
    print(f"matmul 2048 x 2048 x 2048: {matmul_rate:6.1f} GFLOP/cpu-s", flush=True)
    rows = [_row(name, args.calls) for name in args.shapes.split(",")]
    results = {
        "benchmark": "kernel_efficiency",
        "command": f"python -m benchmarks.kernel_efficiency --shapes={args.shapes} --calls={args.calls}",
        "machine": machine.record(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "flops_counted": "2 per multiply-add of the matrix products (see the module docstring)",
        "matmul_gflop_per_cpu_s": matmul_rate,
        "rows": rows,
    }
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
