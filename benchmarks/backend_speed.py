"""The layer's training step against its backend's own Conv2D, on TensorFlow, JAX and PyTorch.

    python -m benchmarks.backend_speed                     # every installed backend, 14, 28, 56
    python -m benchmarks.backend_speed --backends=jax,torch --sizes=14 --min_seconds=2

The shapes and the timing are `benchmarks/bench_layer.py`'s (its flags: batch 8, 256 channels
in and out, 3x3, 8 heads, dk = dv = 0.2 x 256; interleaved rounds, the median of each): at each
size one fresh process per backend (`--backend`, which sets KERAS_BACKEND before Keras is
imported) times, in interleaved rounds, one training step (forward, then the gradients with
respect to the input and every weight of sum(outputs * upstream)) of the layer (`aa`) and of
`keras.layers.Conv2D(256, 3)` (`conv`). On TensorFlow the steps are `tf.function`s (no XLA) as
in bench_layer, `aa` on the fused CPU kernel and `aa_tf_ops` on TensorFlow ops; on JAX a jitted
`jax.grad` of the layer's stateless call (the `keras.ops` path); on PyTorch eager autograd (the
`keras.ops` path). A backend that is not installed is left out. Ratios to the same process's
conv are the figures to compare; the machine may be shared. Writes
benchmarks/results/backend_speed.json.
"""

import importlib.util
import json
import os
import platform
import subprocess
import sys

from absl import app, flags

from benchmarks import bench_layer

FLAGS = flags.FLAGS
flags.DEFINE_list("backends", ["tensorflow", "jax", "torch"], "Keras backends, each in its own processes.")
flags.DEFINE_enum("backend", None, ["tensorflow", "jax", "torch"], "Internal: time this backend and print JSON.")
FLAGS.set_default("sizes", ["14", "28", "56"])
FLAGS.set_default("output", "benchmarks/results/backend_speed.json")
IMPLS = {"tensorflow": ("aa", "aa_tf_ops", "conv"), "jax": ("aa", "conv"), "torch": ("aa", "conv")}
_WORKER_FLAGS = ("batch", "filters", "kernel_size", "num_heads", "depth", "query_block_size", "repeats",
                 "min_seconds", "warmup")


def _train_step(impl, size):
    """One training step of `impl` at `size` on the current backend, as a function of nothing."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return bench_layer.tf_functions(impl, size)["train_step"]
    layer = bench_layer.make_layer(impl)
    shape = (FLAGS.batch, size, size, FLAGS.filters)
    layer.build(shape)
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype("float32")
    upstream = rng.normal(size=layer.compute_output_shape(shape)).astype("float32")
    if backend == "jax":
        import jax

        def loss(trainable, x):
            outputs, _ = layer.stateless_call(trainable, [v.value for v in layer.non_trainable_variables], x)
            return keras.ops.sum(outputs * upstream)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        trainable = [v.value for v in layer.trainable_variables]
        return lambda: jax.block_until_ready(grad(trainable, x))
    import torch

    x, upstream = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(upstream)
    wrt = [x] + [v.value for v in layer.trainable_variables]
    return lambda: torch.autograd.grad(torch.sum(layer(x) * upstream), wrt)


def _worker(size):
    """{impl: {"train_step_s": median}} of this backend's implementations at `size`."""
    import keras

    impls = IMPLS[keras.backend.backend()]
    return bench_layer.time_rounds({impl: {"train_step": _train_step(impl, size)} for impl in impls})


def _run_worker(backend, size):
    """Times `backend` at `size` in a fresh process; its JSON result, or {"error": ...}."""
    command = [sys.executable, "-m", "benchmarks.backend_speed", f"--backend={backend}", f"--sizes={size}"]
    command += [FLAGS[name].serialize() for name in _WORKER_FLAGS]
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    result = subprocess.run([c for c in command if c], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        return {"error": f"exit code {result.returncode}: {tail[0][:200]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _table(results):
    lines = ["| backend | size | impl | train step ms | / conv |", "|---|---|---|---|---|"]
    for backend, sizes in results["time"].items():
        for size, timing in sizes.items():
            if "error" in timing:
                lines.append(f"| {backend} | {size} | error: {timing['error'][:60]} | | |")
                continue
            conv = timing["conv"]["train_step_s"]
            for impl, times in timing.items():
                seconds = times["train_step_s"]
                lines.append(f"| {backend} | {size} | {impl} | {seconds * 1e3:.1f} | {seconds / conv:.2f} |")
    return "\n".join(lines)


def _versions(backends):
    """The installed versions of keras and of each timed backend."""
    from importlib import metadata

    return {name: metadata.version(name) for name in ["keras", *backends]}


def main(argv):
    del argv
    if FLAGS.backend:
        os.environ["KERAS_BACKEND"] = FLAGS.backend  # before keras is first imported, in _worker
        (size,) = FLAGS.sizes
        print(json.dumps(_worker(int(size))))
        return
    backends = [backend for backend in FLAGS.backends if importlib.util.find_spec(backend) is not None]
    results = {
        "config": {name: FLAGS[name].value for name in _WORKER_FLAGS},
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": os.getloadavg(),
        },
        "not_installed": sorted(set(FLAGS.backends) - set(backends)),
        "time": {backend: {} for backend in backends},
    }
    for size in FLAGS.sizes:
        for backend in backends:
            results["time"][backend][size] = _run_worker(backend, size)
    results["versions"] = _versions(backends)
    results["table"] = _table(results)
    print(results["table"])
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
