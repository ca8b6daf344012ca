"""Times the attention alone: the fused kernel's forward and backward ops, and the TensorFlow-op
path's attention forward and training step, for the layer's shapes.

    python -m benchmarks.bench_kernel                      # 14, 28, 56; batch 8, Nh 8, dkh = dvh = 6
    python -m benchmarks.bench_kernel --sizes=56 --intra_op_threads=1

The inputs are q, k (B, H, W, Nh, dkh), v (B, H, W, Nh, dvh) and the relative tables, as
`aa_keras.layers.attention.multi_head_attention_2d` takes them. Median of `--repeats` runs after
one warm-up, in milliseconds, and nanoseconds per logit (B * Nh * (HW)^2 logits).
"""

import argparse
import time

import tensorflow as tf


def _median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def _functions(size, batch, heads, depth):
    from aa_keras.layers.attention import multi_head_attention_2d
    from aa_keras.ops import fused_attention

    normal = lambda *shape: tf.random.normal(shape, seed=1)  # noqa: E731
    q, k, v, d_out = (normal(batch, size, size, heads, depth) for _ in range(4))
    tables = normal(2 * size - 1, depth), normal(2 * size - 1, depth)
    kernels = fused_attention.library()
    out, stats = kernels.aa_fused_attention(q, k, v, *tables, relative=True)

    def tf_ops_step():
        with tf.GradientTape() as tape:
            tape.watch([q, k, v, *tables])
            loss = tf.reduce_sum(multi_head_attention_2d(q, k, v, *tables) * d_out)
        return tape.gradient(loss, [q, k, v, *tables])

    def tf_ops_forward():
        return multi_head_attention_2d(q, k, v, *tables)

    return {
        "fused forward": tf.function(lambda: kernels.aa_fused_attention(q, k, v, *tables, relative=True)),
        "fused backward": tf.function(
            lambda: kernels.aa_fused_attention_grad(q, k, v, *tables, out, stats, d_out, relative=True)
        ),
        "tf ops forward": tf.function(tf_ops_forward),
        "tf ops training step": tf.function(tf_ops_step),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="14,28,56", help="Comma-separated heights = widths.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--depth", type=int, default=6, help="Key and value depth per head.")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--intra_op_threads", type=int, default=0, help="0: TensorFlow's default.")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    print(f"{'size':>4}  {'what':<22}{'ms':>10}{'ns / logit':>12}")
    for size in (int(s) for s in args.sizes.split(",")):
        logits = args.batch * args.heads * (size * size) ** 2
        for name, fn in _functions(size, args.batch, args.heads, args.depth).items():
            ms = _median_ms(fn, args.repeats)
            print(f"{size:>4}  {name:<22}{ms:10.2f}{ms * 1e6 / logits:12.3f}")


if __name__ == "__main__":
    main()
