"""The fused CPU attention kernel: where it is used, and that it computes what the TensorFlow-op
path computes (outputs and every gradient)."""

import os
import pathlib
import platform
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from aa_keras.layers import AttentionAugmentation2D, attention_layers, use_attention_implementation
from aa_keras.layers.attention import multi_head_attention_2d
from aa_keras.ops import fused_attention
from benchmarks import machine


def test_kernel_builds_and_applies_on_this_cpu():
    assert fused_attention.library() is not None
    assert fused_attention.library_path().exists()
    assert fused_attention.applies()


def _op_types(function, spec):
    return {op.type for op in function.get_concrete_function(spec).graph.get_operations()}


def test_layer_uses_the_kernel_only_where_it_applies():
    layer = AttentionAugmentation2D(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2)
    spec = tf.TensorSpec((1, 6, 5, 3))
    assert "AaFusedAttention" in _op_types(tf.function(layer), spec)
    with use_attention_implementation(layer, "tf_ops"):
        assert "AaFusedAttention" not in _op_types(tf.function(layer), spec)
    assert "AaFusedAttention" in _op_types(tf.function(layer), spec)
    assert "AaFusedAttention" not in _op_types(tf.function(layer, jit_compile=True), spec)


def test_attention_implementation_chooses_the_path():
    """"fused" always traces the kernel (an error where it cannot run), "tf_ops" never does."""
    spec = tf.TensorSpec((1, 6, 5, 3))

    def layer(implementation):
        return AttentionAugmentation2D(
            filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, attention_implementation=implementation
        )

    fused, tf_ops = layer("fused"), layer("tf_ops")
    assert fused.get_config()["attention_implementation"] == "fused"
    assert AttentionAugmentation2D.from_config(tf_ops.get_config()).attention_implementation == "tf_ops"
    assert "AaFusedAttention" in _op_types(tf.function(fused), spec)
    assert "AaFusedAttention" not in _op_types(tf.function(tf_ops), spec)
    with pytest.raises(RuntimeError, match="attention_implementation='fused'.*XLA"):
        _op_types(tf.function(fused, jit_compile=True), spec)
    with pytest.raises(ValueError, match="Invalid `attention_implementation`"):
        layer("flash")


def test_float64_runs_on_tensorflow_ops_and_fused_refuses_it():
    """The kernel is float32: "auto" runs a float64 layer on TensorFlow ops, "fused" is refused
    with a ValueError naming the dtype, when constructed and when switched to afterwards."""
    spec = tf.TensorSpec((1, 6, 5, 3), tf.float64)
    config = dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, dtype="float64")
    layer = AttentionAugmentation2D(**config)
    assert "AaFusedAttention" not in _op_types(tf.function(layer), spec)
    message = "attention_implementation='fused' and dtype 'float64'.*use attention_implementation='auto' or 'tf_ops'"
    with pytest.raises(ValueError, match=message):
        AttentionAugmentation2D(**config, attention_implementation="fused")
    with use_attention_implementation(layer, "fused"):
        with pytest.raises(ValueError, match=message):
            _op_types(tf.function(layer), spec)


def test_use_attention_implementation_reaches_nested_layers_and_restores():
    inner = keras.Sequential([keras.Input((6, 5, 3)), AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2)])
    model = keras.Sequential([keras.Input((6, 5, 3)), inner, AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2)])
    model.layers[-1].attention_implementation = "fused"
    assert len(attention_layers(model)) == 2
    spec = tf.TensorSpec((1, 6, 5, 3))
    assert "AaFusedAttention" in _op_types(tf.function(model), spec)
    with use_attention_implementation(model, "tf_ops"):
        assert "AaFusedAttention" not in _op_types(tf.function(model), spec)
    assert [layer.attention_implementation for layer in attention_layers(model)] == ["auto", "fused"]
    with pytest.raises(ValueError, match="Invalid `implementation`"):
        with use_attention_implementation(model, "fast"):
            pass


def _inputs(batch, heads, height, width, depth_k, depth_v, scale, seed):
    rng = np.random.default_rng(seed)

    def normal(*shape, s=1.0):
        return tf.constant(rng.normal(scale=s, size=shape).astype("float32"))

    q = normal(batch, height, width, heads, depth_k, s=scale)
    k = normal(batch, height, width, heads, depth_k)
    v = normal(batch, height, width, heads, depth_v)
    # Tables built for a larger size than used, as after `max_size`.
    rel_height = normal(2 * height + 1, depth_k, s=scale)
    rel_width = normal(2 * width + 3, depth_k, s=scale)
    return q, k, v, rel_height, rel_width


def _output_and_gradients(relative, fused, q, k, v, rel_height, rel_width):
    """The output and gradients of the fused kernel (`fused`) or of the TensorFlow-op path."""
    tables = (rel_height, rel_width) if relative else (None, None)
    attend = fused_attention.fused_attention if fused else multi_head_attention_2d
    with tf.GradientTape() as tape:
        tape.watch([q, k, v, rel_height, rel_width])
        out = attend(q, k, v, *tables)
        upstream = tf.random.stateless_normal(out.shape, seed=(1, 2))
        loss = tf.reduce_sum(out * upstream)
    sources = [q, k, v] + ([rel_height, rel_width] if relative else [])
    return [out] + [tf.convert_to_tensor(g) for g in tape.gradient(loss, sources)]


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "none"])
@pytest.mark.parametrize(
    "size",
    [(2, 2, 6, 7, 3, 5), (1, 3, 1, 1, 2, 2), (2, 1, 4, 8, 4, 4), (1, 2, 9, 9, 8, 6), (1, 1, 3, 17, 1, 3),
     (1, 2, 5, 6, 7, 13)],
    ids=lambda size: "x".join(map(str, size)),
)
@pytest.mark.parametrize("scale", [1.0, 4.0], ids=["logits~1", "logits~100"])
def test_kernel_matches_tensorflow_ops(relative, size, scale):
    """Sizes below, at and above a multiple of the kernel's 8 or 16 lanes, one position, depth 1,
    depths above the kernel's 6-channel chunks (value depth 13: three chunks, the weights stored
    between them); logits ~100 (exp overflows float32 above 88) test the max subtraction."""
    inputs = _inputs(*size, scale=scale, seed=sum(size))
    fused = tf.function(_output_and_gradients)(relative, True, *inputs)
    expected = tf.function(_output_and_gradients)(relative, False, *inputs)
    assert len(fused) == len(expected)
    assert np.abs(expected[0].numpy()).max() > 0
    for actual, wanted in zip(fused, expected):
        # Relative to the largest value; absolute where it is 0 (one position: no gradient to q, k).
        tolerance = 1e-5 * np.abs(wanted.numpy()).max() + 1e-6
        assert np.abs(actual.numpy() - wanted.numpy()).max() < tolerance


def _poisoned(value, target, seed):
    """Inputs of `_inputs` with `value` written into one entry of input `target`."""
    inputs = [t.numpy() for t in _inputs(1, 2, 5, 6, 4, 3, scale=1.0, seed=seed)]
    index = (0, 2, 3, 1, 2) if target < 3 else (4, 1)
    inputs[target][index] = value
    return [tf.constant(t) for t in inputs]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("target", range(5), ids=["q", "k", "v", "rel_height", "rel_width"])
def test_kernel_propagates_nan_and_inf_as_tensorflow_ops_do(value, target):
    """The output is NaN, +inf and -inf in exactly the places where the TensorFlow-op path has
    them (a row with a NaN logit is NaN, not a finite answer), with the same finite values.

    The gradients are non-finite wherever the TensorFlow-op path's are, and agree where both are
    finite. They may be NaN in more places: for a row with a NaN logit TensorFlow's CPU softmax
    returns weights that are NaN at that key and 0 elsewhere, the kernel NaN everywhere (the sum
    of the row is NaN), so gradients through that row's other weights differ in kind, not in
    whether a NaN is hidden."""
    inputs = _poisoned(value, target, seed=target)
    fused = tf.function(_output_and_gradients)(True, True, *inputs)
    expected = tf.function(_output_and_gradients)(True, False, *inputs)
    out, wanted_out = fused[0].numpy(), expected[0].numpy()
    assert not np.isfinite(wanted_out).all()  # the case is not trivial
    for kind in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(kind(out), kind(wanted_out), err_msg=kind.__name__)
    for name, actual, wanted in zip(["out", "d_q", "d_k", "d_v", "d_rel_height", "d_rel_width"], fused, expected):
        actual, wanted = actual.numpy(), wanted.numpy()
        assert not np.isfinite(actual[~np.isfinite(wanted)]).any(), f"{name}: a non-finite value became finite"
        both = np.isfinite(actual) & np.isfinite(wanted)
        np.testing.assert_allclose(actual[both], wanted[both], rtol=1e-4, atol=1e-5, err_msg=name)


def test_kernel_rejects_mismatched_shapes():
    kernels = fused_attention.library()
    q = tf.zeros([1, 3, 4, 2, 5])
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger max_size"):
        kernels.aa_fused_attention(q, q, q, tf.zeros([3, 5]), tf.zeros([7, 5]), relative=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="depth of q"):
        kernels.aa_fused_attention(q, q, q, tf.zeros([5, 4]), tf.zeros([7, 5]), relative=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same depth"):
        kernels.aa_fused_attention(q, tf.zeros([1, 3, 4, 2, 3]), q, q, q, relative=False)


def test_failed_build_is_a_clear_error_and_the_layer_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(fused_attention.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="No C\\+\\+ compiler"):
        fused_attention.build()
    assert list(tmp_path.iterdir()) == []  # nothing half-written in the cache
    monkeypatch.setattr(fused_attention, "_loaded", {})
    assert fused_attention.library() is None
    assert "unavailable" in caplog.text
    assert not fused_attention.applies()
    layer = AttentionAugmentation2D(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2)
    assert layer(tf.ones([1, 5, 5, 3])).shape == (1, 5, 5, 8)


def test_kernel_compiles_without_warnings(monkeypatch, tmp_path, caplog):
    """Built with -Wall -Wextra (TensorFlow's headers as system headers); any warning is logged."""
    monkeypatch.setenv(fused_attention.CACHE_VARIABLE, str(tmp_path))
    command = fused_attention._compile_command("out")
    assert {"-Wall", "-Wextra"} <= set(command) and "-w" not in command
    assert fused_attention.build().exists()
    assert "warned" not in caplog.text


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"), reason="x86-64 Linux")
def test_kernel_at_the_other_vector_width(monkeypatch, tmp_path, caplog):
    """The kernel's vectors are 16 floats with AVX-512 and 8 without (AVX2): the build this CPU does
    not make compiles without warnings too, and where this CPU can run it (an AVX-512 CPU, the
    8-float build) it passes the small-depth parity tests in a process of its own."""
    avx512 = "avx512f" in machine.cpu()[1]
    flag = "-mno-avx512f" if avx512 else "-mavx512f"
    monkeypatch.setenv(fused_attention.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.setenv(fused_attention.FLAGS_VARIABLE, flag)
    assert fused_attention.build().exists()
    assert "warned" not in caplog.text
    if avx512:
        tests = str(pathlib.Path(__file__).with_name("test_kernel_depths.py"))
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", tests], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kernel_takes_half_precision_values(dtype):
    """Under mixed precision v comes in float16 / bfloat16: the kernel computes in float32 and
    returns v's dtype, as the TensorFlow-op path does."""
    q, k, v, rel_height, rel_width = _inputs(2, 2, 5, 7, 4, 12, scale=1.0, seed=4)
    v = tf.cast(v, dtype)
    fused = fused_attention.fused_attention(q, k, v, rel_height, rel_width)
    expected = multi_head_attention_2d(q, k, v, rel_height, rel_width)
    assert fused.dtype == expected.dtype == v.dtype
    np.testing.assert_allclose(
        tf.cast(fused, tf.float32).numpy(), tf.cast(expected, tf.float32).numpy(), atol=2e-2 if dtype == "bfloat16" else 2e-3
    )


def test_kernel_is_deterministic():
    """Each (batch, head) unit is computed by one thread and the table gradients are summed over
    units in order, so repeated runs agree to the bit."""
    inputs = _inputs(2, 4, 7, 9, 6, 6, scale=1.0, seed=3)
    first = tf.function(_output_and_gradients)(True, True, *inputs)
    again = tf.function(_output_and_gradients)(True, True, *inputs)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bench_kernel_times_what_it_names():
    """`benchmarks/bench_kernel.py`'s functions run, and its two paths agree (tiny shapes)."""
    from benchmarks import bench_kernel

    functions = bench_kernel._functions(size=5, batch=1, heads=2, depth=3)
    assert set(functions) == {"fused forward", "fused backward", "tf ops forward", "tf ops training step"}
    fused_out, _ = functions["fused forward"]()
    np.testing.assert_allclose(fused_out.numpy(), functions["tf ops forward"]().numpy(), atol=1e-5)
    fused_grads, tf_ops_grads = functions["fused backward"](), functions["tf ops training step"]()
    assert len(fused_grads) == len(tf_ops_grads) == 5
    for fused, expected in zip(fused_grads, tf_ops_grads):
        np.testing.assert_allclose(fused.numpy(), tf.convert_to_tensor(expected).numpy(), atol=1e-4)
