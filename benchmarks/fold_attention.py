"""The exact fold through `keras.ops.dot_product_attention` against the layer's `keras.ops` path, on JAX.

    KERAS_BACKEND=jax python -m benchmarks.fold_attention                 # 14, 28, 56 (a few minutes)
    KERAS_BACKEND=jax python -m benchmarks.fold_attention --sizes=14 --rounds=3

`../shared/DESIGN.md`'s identity: with a_i[x] = q_i . rW[x - wi + W - 1] and
b_i[y] = q_i . rH[y - hi + H - 1], logit(i, j) = [q_i ; a_i ; b_i] . [k_j ; onehot_W(wj) ; onehot_H(hj)]:
relative attention is plain dot-product attention with dkh + W + H key dimensions, which a fused
attention kernel (cuDNN or TPU flash attention behind `keras.ops.dot_product_attention` on JAX)
can run. JAX's kernel wants the values as wide as the keys, so v is zero-padded to dkh + W + H
channels and the output cut back to dvh.

Per size (batch 8, 8 heads, dkh = dvh = 6: `bench_layer`'s layer, 256 channels, depth 0.2): the
largest difference of the outputs and of every gradient (q, k, v, both tables) between the fold
and `aa_keras.layers.attention_ops.multi_head_attention_2d` (the path the layer runs on JAX), and
the jitted training step (forward and all gradients) of each, interleaved in rounds, median
seconds and their ratio. JSON to `--output`.
"""

import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from keras import ops  # noqa: E402

from aa_keras.layers import attention_ops  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["14", "28", "56"], "Spatial sizes (H = W).")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("num_heads", 8, "Heads.")
flags.DEFINE_integer("depth_k", 6, "Key depth per head, dkh.")
flags.DEFINE_integer("depth_v", 6, "Value depth per head, dvh.")
flags.DEFINE_integer("rounds", 5, "Timed rounds (after one untimed).")
flags.DEFINE_string("output", "benchmarks/results/fold_attention.json", "Where to write the JSON.")


def folded_attention(q, k, v, rel_height, rel_width):
    """The layer's attention as one `keras.ops.dot_product_attention` call, by the exact fold.

    Args:
        q, k: (B, H, W, Nh, dkh) queries (already scaled) and keys; v: (B, H, W, Nh, dvh).
        rel_height, rel_width: (2H - 1, dkh) and (2W - 1, dkh) relative tables.

    Returns:
        (B, H, W, Nh, dvh), as `attention_ops.multi_head_attention_2d`.
    """
    batch, height, width, heads, depth = ops.shape(q)
    positions = height * width
    logits_h, logits_w = attention_ops.relative_logits(ops.transpose(q, (0, 3, 1, 2, 4)), rel_height, rel_width)
    # a[b, i, n, x] = logits_w[b, n, i, 0, x], b_[b, i, n, y] = logits_h[b, n, i, y, 0]
    a = ops.transpose(ops.reshape(logits_w, (batch, heads, positions, width)), (0, 2, 1, 3))
    b_ = ops.transpose(ops.reshape(logits_h, (batch, heads, positions, height)), (0, 2, 1, 3))
    q_ext = ops.concatenate([ops.reshape(q, (batch, positions, heads, depth)), a, b_], axis=-1)
    # onehot_w[j, x] = [wj == x], onehot_h[j, y] = [hj == y] for key j = (hj, wj)
    index = np.arange(positions)
    onehots = np.concatenate([np.eye(width)[index % width], np.eye(height)[index // width]], axis=-1)
    onehots = ops.broadcast_to(ops.cast(onehots[None, :, None], k.dtype), (batch, positions, heads, width + height))
    k_ext = ops.concatenate([ops.reshape(k, (batch, positions, heads, depth)), onehots], axis=-1)
    extended, value_depth = depth + width + height, v.shape[-1]
    v_ext = ops.pad(ops.reshape(v, (batch, positions, heads, value_depth)), [(0, 0), (0, 0), (0, 0), (0, extended - value_depth)])
    out = ops.dot_product_attention(q_ext, k_ext, v_ext, scale=1.0)[..., :value_depth]
    return ops.reshape(out, (batch, height, width, heads, value_depth))


def _inputs(size, seed=0):
    rng = np.random.default_rng(seed)
    b, n, dk, dv = FLAGS.batch, FLAGS.num_heads, FLAGS.depth_k, FLAGS.depth_v
    q = rng.normal(size=(b, size, size, n, dk)) * dk**-0.5
    k = rng.normal(size=(b, size, size, n, dk))
    v = rng.normal(size=(b, size, size, n, dv))
    tables = [rng.normal(size=(2 * size - 1, dk)) * dk**-0.5 for _ in range(2)]
    cotangent = rng.normal(size=(b, size, size, n, dv))
    return [np.asarray(t, "float32") for t in (q, k, v, *tables)], np.asarray(cotangent, "float32")


def _train_step(attend, cotangent):
    """Jitted (loss, gradients w.r.t. q, k, v and both tables) of sum(attend(...) * cotangent)."""

    def loss(*arguments):
        return ops.sum(attend(*arguments) * cotangent)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))


def _plain(q, k, v, rel_height, rel_width):
    return attention_ops.multi_head_attention_2d(q, k, v, rel_height, rel_width)


def measure(size):
    arguments, cotangent = _inputs(size)
    steps = {"plain": _train_step(_plain, cotangent), "fold": _train_step(folded_attention, cotangent)}
    outputs = {name: np.asarray(attend(*arguments)) for name, attend in (("plain", _plain), ("fold", folded_attention))}
    results = {name: step(*arguments) for name, step in steps.items()}  # also the untimed (compiling) round
    gradient_difference = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(results["plain"][1], results["fold"][1])
    )
    times = {name: [] for name in steps}
    for _ in range(FLAGS.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(*arguments))
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "size": size,
        "output_max_abs_difference": float(np.max(np.abs(outputs["plain"] - outputs["fold"]))),
        "gradient_max_abs_difference": gradient_difference,
        "train_step_seconds": medians,
        "fold_over_plain": medians["fold"] / medians["plain"],
    }


def main(argv):
    del argv
    if keras.backend.backend() != "jax":
        raise SystemExit(f"fold_attention runs on JAX: set KERAS_BACKEND=jax (now {keras.backend.backend()!r}).")
    rows = []
    for size in map(int, FLAGS.sizes):
        row = measure(size)
        rows.append(row)
        print(
            f"{size:>3}x{size:<3} fold/plain train step {row['fold_over_plain']:.2f} "
            f"({row['train_step_seconds']['fold'] * 1e3:.1f} / {row['train_step_seconds']['plain'] * 1e3:.1f} ms), "
            f"max |diff| output {row['output_max_abs_difference']:.1e}, gradients {row['gradient_max_abs_difference']:.1e}",
            flush=True,
        )
    settings = {name: getattr(FLAGS, name) for name in ("batch", "num_heads", "depth_k", "depth_v", "rounds")}
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "jax": jax.__version__, "keras": keras.__version__},
        "devices": [str(device) for device in jax.devices()],
        "settings": settings,
        "rows": rows,
    }
    with open(FLAGS.output, "w") as file:
        json.dump(report, file, indent=2)
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
