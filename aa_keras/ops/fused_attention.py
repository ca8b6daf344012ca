"""The fused CPU attention kernel (`fused_attention.cc`): built on first use, used where it applies.

The kernel computes softmax(q k^T + relative logits) v and its gradients a few query rows at a
time, without ever storing the (HW x HW) logits: one op forward and one backward, where the
TensorFlow-op path makes about 25 passes over the logits. It is a TensorFlow custom op, so it
is used by layers built with `attention_implementation="fused"` (an error where it cannot run)
and, with `"auto"` (the default), where such an op can run and be kept:

- TensorFlow sees no GPU or TPU (the kernel is for CPU);
- the graph is not being compiled by XLA (`jit_compile=True`);
- the library compiles: on first use it is compiled with the C++ compiler (`$CXX`, default
  `g++`) against the installed TensorFlow, for this CPU (`-march=native`: 16-float vectors where
  it has AVX-512, 8-float ones elsewhere), into `$AA_KERAS_CACHE_DIR` (default
  `~/.cache/aa_keras`), keyed by the source, the flags (extra ones from `AA_KERAS_CXXFLAGS`),
  the TensorFlow version and the CPU;
  `python -m aa_keras.ops` builds it ahead. If compiling fails, a warning says why and the
  TensorFlow-op path is used.

Elsewhere, and always with `"tf_ops"` (set per layer, or for a whole model with
`aa_keras.layers.use_attention_implementation`; the exporters trace models so: SavedModel, TFLite and
ONNX files hold only standard ops), the layer runs the TensorFlow-op path of
`aa_keras.layers.attention`, which computes the same function. A graph traced with the fused op (e.g. by `tf.saved_model.save` outside the
exporters) loads only in a process that has called `library()`.
"""

import hashlib
import logging
import os
import pathlib
import platform
import subprocess
import tempfile
import threading

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

_logger = logging.getLogger(__name__)

SOURCE = pathlib.Path(__file__).with_name("fused_attention.cc")
CACHE_VARIABLE = "AA_KERAS_CACHE_DIR"
FLAGS_VARIABLE = "AA_KERAS_CXXFLAGS"

_lock = threading.Lock()
_loaded = {}  # "library": the loaded module, or "error": why it could not be built


def _cpu_description():
    """What -march=native compiles for: the CPU's model and feature flags."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keys = ("model name", "flags")
    return "".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


def _compile_command(output):
    compiler = os.environ.get("CXX", "g++")
    # Warnings on for the kernel; TensorFlow's headers as system headers, whose warnings are theirs.
    tf_flags = [f"-isystem{flag[2:]}" if flag.startswith("-I") else flag for flag in tf.sysconfig.get_compile_flags()]
    extra = os.environ.get(FLAGS_VARIABLE, "").split()  # e.g. a sanitizer build (scripts/kernel_asan.sh)
    flags = ["-shared", "-fPIC", "-O3", "-march=native", "-Wall", "-Wextra", *tf_flags, *extra]
    return [compiler, *flags, str(SOURCE), "-o", str(output), *tf.sysconfig.get_link_flags()]


def library_path():
    """Path of the compiled library for this source, TensorFlow and CPU (it may not exist yet)."""
    cache = pathlib.Path(os.environ.get(CACHE_VARIABLE) or pathlib.Path.home() / ".cache" / "aa_keras")
    identity = repr((_compile_command("OUT"), tf.__version__, _cpu_description())).encode()
    key = hashlib.sha256(SOURCE.read_bytes() + identity).hexdigest()[:16]
    return cache / f"fused_attention-{key}.so"


def build():
    """Compiles the library into the cache if it is not there; returns its path.

    Raises:
        RuntimeError: the compiler is missing or failed (with its output).
    """
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _logger.warning("Compiling the fused attention kernel into %s (once per machine).", path)
    # Written under a temporary name and renamed, so that an interrupted or concurrent build
    # never leaves a partial library under the final name.
    with tempfile.TemporaryDirectory(dir=path.parent) as staging:
        output = pathlib.Path(staging) / path.name
        command = _compile_command(output)
        try:
            completed = subprocess.run(command, check=True, capture_output=True, text=True)
        except FileNotFoundError as error:
            raise RuntimeError(f"No C++ compiler {command[0]!r}: {error}") from None
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"{' '.join(command)} failed:\n{error.stderr[-2000:]}") from None
        if "warning" in completed.stderr:
            _logger.warning("The compiler warned on the fused attention kernel:\n%s", completed.stderr[-4000:])
        os.replace(output, path)
    return path


def library():
    """The loaded op library, built first if needed, or None if it cannot be built or loaded."""
    with _lock:
        if not _loaded:
            try:
                _loaded["library"] = tf.load_op_library(str(build()))
            except (OSError, RuntimeError, tf.errors.OpError) as error:
                _loaded["error"] = error
                _logger.warning("The fused attention kernel is unavailable; using TensorFlow ops. %s", error)
        return _loaded.get("library")


def unavailable_reason():
    """Why attention built here and now cannot run on the fused kernel, or None if it can.

    The kernel is a CPU custom op: it cannot run where TensorFlow places work on a GPU or TPU,
    nor in a graph XLA compiles, nor without a compiled library.
    """
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return "TensorFlow sees a GPU or TPU, and the kernel is for CPUs"
    if control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()):
        return "the graph is compiled by XLA (jit_compile=True), which cannot run a custom op"
    if library() is None:
        return f"the kernel could not be built or loaded ({_loaded.get('error')})"
    return None


def applies():
    """The rule of `attention_implementation="auto"`: whether attention built here and now runs
    on the fused kernel (see the module docstring)."""
    return unavailable_reason() is None


def fused_attention(q, k, v, rel_height=None, rel_width=None):
    """softmax(q k^T + relative logits) v over all positions, on the fused kernel.

    Args:
        q, k: (B, H, W, Nh, dkh) float32 queries (already scaled) and keys.
        v: (B, H, W, Nh, dvh) values, any float dtype.
        rel_height, rel_width: (2 * H_max - 1, dkh) and (2 * W_max - 1, dkh) float32 relative
            embeddings (row m embeds the offset key - query = m - (max - 1); H <= H_max,
            W <= W_max, checked at run time), or None for no relative logits.

    Returns:
        (B, H, W, Nh, dvh) in the dtype of v. Differentiable once (the gradient is the fused
        backward kernel).
    """
    kernels = library()
    if kernels is None:
        raise RuntimeError(f"The fused attention kernel is unavailable: {_loaded.get('error')}")
    relative = rel_height is not None
    if relative:
        # Read here, so that their gradients reach the variables through the reads.
        rel_height, rel_width = tf.convert_to_tensor(rel_height), tf.convert_to_tensor(rel_width)
    else:
        rel_height = rel_width = tf.zeros([0], tf.float32)

    @tf.custom_gradient
    def attend(q, k, v, rel_height, rel_width):
        out, stats = kernels.aa_fused_attention(q, k, v, rel_height, rel_width, relative=relative)

        def grad(d_out):
            return kernels.aa_fused_attention_grad(q, k, v, rel_height, rel_width, out, stats, d_out, relative=relative)

        return out, grad

    return tf.cast(attend(q, k, tf.cast(v, tf.float32), rel_height, rel_width), v.dtype)
