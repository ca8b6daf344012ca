"""Times, one TensorFlow op at a time, the passes that the attention makes over one block of weights.

    python -m benchmarks.attention_ops                  # 56x56, a block of 392 queries, batch 8, Nh 8
    python -m benchmarks.attention_ops --size=28 --queries=784

Each op reads or writes a (batch, heads, queries, size * size) float32 tensor (315 MB at the
defaults), so on a CPU their times show where a memory-bound attention spends its time. Minimum
of `--repeats` runs per op, in milliseconds.
"""

import argparse
import time

import tensorflow as tf


def _ops(batch, heads, queries, size, depth):
    positions = size * size
    normal = lambda *shape: tf.random.normal(shape, seed=1)  # noqa: E731
    q = normal(batch, heads, queries, depth)
    k = normal(batch, heads, positions, depth)
    v = normal(batch, heads, positions, depth)
    logits_h, logits_w = normal(batch, heads, queries, size, 1), normal(batch, heads, queries, 1, size)
    weights, other = tf.random.uniform((batch, heads, queries, positions)), normal(batch, heads, queries, positions)
    d_out_and_row = normal(batch, heads, queries, depth + 1)
    v_and_one = normal(batch, heads, positions, depth + 1)
    blocked = lambda x: tf.reshape(x, [batch, heads, queries, size, size])  # noqa: E731
    return {
        "q k^T": lambda: tf.matmul(q, k, transpose_b=True),
        "sum of the relative terms": lambda: logits_h + logits_w,
        "add to the logits": lambda: weights + other,
        "softmax": lambda: tf.nn.softmax(weights),
        "weights v": lambda: tf.matmul(weights, v),
        "[dO, -row] [v, 1]^T": lambda: tf.matmul(d_out_and_row, v_and_one, transpose_b=True),
        "weights * (dP - row)": lambda: weights * other,
        "dQ = dL k": lambda: tf.matmul(other, k),
        "dK = dL^T q": lambda: tf.matmul(other, q, transpose_a=True),
        "dV = P^T dO": lambda: tf.matmul(weights, q, transpose_a=True),
        "relative gradient (height)": lambda: tf.reduce_sum(blocked(other), axis=4),
        "relative gradient (width)": lambda: tf.reduce_sum(blocked(other), axis=3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=56, help="Height = width of the feature map.")
    parser.add_argument("--queries", type=int, default=392, help="Queries in the block.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--depth", type=int, default=6, help="Key and value depth per head.")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    ops = {name: tf.function(fn) for name, fn in _ops(args.batch, args.heads, args.queries, args.size, args.depth).items()}
    times = {name: [] for name in ops}
    for _ in range(args.repeats + 1):
        for name, fn in ops.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:<30}{min(values[1:]) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
