"""An empty batch (B = 0): empty outputs and zero gradients on every attention path.

TensorFlow's oneDNN CPU convolution (TF 2.20) returns a tensor shaped like its input when the
batch is empty, which broke the layer's projections (`AttentionAugmentation2D._convolve`). An
empty batch reaches a replica whenever a MirroredStrategy splits a last, short batch.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from aa_keras.layers import AttentionAugmentation2D
from aa_keras.layers.attention import multi_head_attention_2d
from aa_keras.ops import fused_attention

CONFIG = dict(filters=16, kernel_size=3, depth_k=8, depth_v=8, num_heads=2)
SHAPE = (8, 7, 16)  # (H, W, C) of the input

VARIANTS = {
    "default": dict(),
    "blocked": dict(query_block_size=5),
    "stride_2": dict(strides=2),
    "valid_downsampled": dict(padding="valid", downsample_attention=True),
    "none": dict(position_encoding="none"),
    "sine": dict(position_encoding="sine"),
    "coordconv": dict(position_encoding="coordconv"),
    "fully_attentional": dict(depth_v=16),
    "max_size": dict(max_size=(9, 9)),
}


def _layer(implementation, **kwargs):
    layer = AttentionAugmentation2D(**{**CONFIG, "attention_implementation": implementation, **kwargs})
    layer.build((None, *SHAPE))
    return layer


def _output_and_gradients(layer, x, return_attention_scores=False):
    """The layer's output (and scores) on x and the gradients of a loss of them with respect to x
    and every trainable weight."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        result = layer(x, return_attention_scores=return_attention_scores)
        outputs = result if return_attention_scores else (result,)
        loss = sum(tf.reduce_sum(tf.cast(t, tf.float32) ** 2) for t in outputs)
    return outputs, tape.gradient(loss, [x, *layer.trainable_weights])


def _check_empty(layer, outputs, grads, x):
    assert outputs[0].shape == layer.compute_output_shape(x.shape)
    assert grads[0].shape == x.shape
    for weight, grad in zip(layer.trainable_weights, grads[1:]):
        assert grad is not None, weight.path
        grad = tf.convert_to_tensor(grad)
        assert grad.shape == weight.shape, weight.path
        assert not np.any(grad.numpy()), weight.path


def _runner(layer, mode, **kwargs):
    """x -> `_output_and_gradients(layer, x, **kwargs)`: eagerly, in a function traced for each
    input shape, or in one traced once for any batch size."""
    run = lambda x: _output_and_gradients(layer, x, **kwargs)  # noqa: E731
    if mode == "function":
        return tf.function(run)
    if mode == "function_any_batch":
        return tf.function(run, input_signature=[tf.TensorSpec((None, *SHAPE))])
    return run


MODES = ["eager", "function", "function_any_batch"]


@pytest.mark.parametrize("implementation", ["fused", "tf_ops"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_forward_and_backward(implementation, variant, mode):
    """Zero-size outputs, an empty input gradient and zero weight gradients (not None, as for a
    non-empty batch); the same function computes a non-empty batch as the eager layer does."""
    layer = _layer(implementation, **VARIANTS[variant])
    run = _runner(layer, mode)
    x = tf.zeros((0, *SHAPE))
    outputs, grads = run(x)
    _check_empty(layer, outputs, grads, x)
    full = tf.random.stateless_normal((2, *SHAPE), seed=(1, 2))
    np.testing.assert_allclose(run(full)[0][0].numpy(), layer(full).numpy(), atol=1e-5)


def test_a_batch_known_to_be_non_empty_traces_no_padding():
    """Only a batch that may be empty is padded: graphs of a static batch (TFLite's) are as before."""
    layer = _layer("tf_ops")

    def op_types(batch):
        graph = tf.function(layer).get_concrete_function(tf.TensorSpec((batch, *SHAPE))).graph
        return {op.type for op in graph.get_operations()}

    assert "Pad" not in op_types(2)
    assert "Pad" in op_types(None)


def test_a_function_of_any_batch_converts_to_tflite_builtins():
    """The padding of a batch that may be empty keeps the static (H, W, C) that TFLite's
    convolution needs: a model traced for any batch converts to builtin ops and computes."""
    layer = _layer("tf_ops", strides=2)
    function = tf.function(layer, input_signature=[tf.TensorSpec((None, *SHAPE))])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    x = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype("float32")
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, layer(x).numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", ["default", "stride_2", "valid_downsampled"])
@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_with_attention_scores(variant, mode):
    layer = _layer("auto", **VARIANTS[variant])
    x = tf.zeros((0, *SHAPE))
    (outputs, scores), grads = _runner(layer, mode, return_attention_scores=True)(x)
    _check_empty(layer, (outputs,), grads, x)
    expected = layer.compute_output_spec(keras.KerasTensor(x.shape), return_attention_scores=True)[1]
    assert scores.shape == expected.shape


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16", "float64"])
def test_empty_batch_under_other_dtypes(policy):
    """mixed_bfloat16 runs its convolutions on oneDNN too; float16 and float64 do not."""
    layer = AttentionAugmentation2D(**CONFIG, dtype=policy)
    layer.build((None, *SHAPE))
    x = tf.zeros((0, *SHAPE))
    outputs, grads = _output_and_gradients(layer, x)
    assert outputs[0].dtype == layer.compute_dtype
    _check_empty(layer, outputs, grads, x)


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "none"])
@pytest.mark.parametrize(
    "attend",
    [
        fused_attention.fused_attention,
        multi_head_attention_2d,
        lambda *args: multi_head_attention_2d(*args, query_block_size=7),
    ],
    ids=["fused", "tf_ops", "tf_ops_blocked"],
)
def test_attention_of_an_empty_batch(attend, relative):
    """The attention itself (below the layer's convolutions) on empty q, k, v: an empty output and
    zero table gradients."""
    q = k = tf.zeros((0, 5, 6, 2, 4))
    v = tf.zeros((0, 5, 6, 2, 3))
    tables = [tf.ones((9, 4)), tf.ones((11, 4))] if relative else []
    with tf.GradientTape() as tape:
        tape.watch([q, k, v, *tables])
        out = attend(q, k, v, *tables)
        loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, [q, k, v, *tables])
    assert out.shape == v.shape
    assert [g.shape for g in grads] == [t.shape for t in [q, k, v, *tables]]
    assert not any(np.any(tf.convert_to_tensor(g).numpy()) for g in grads[3:])


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2, bias_initializer="random_normal")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = AttentionAugmentation2D(8, 3, strides=2, depth_k=4, depth_v=4, num_heads=2, position_encoding="sine")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_mirrored_strategy_predicts_a_batch_that_leaves_a_replica_empty(mirrored_strategy):
    """5 images in batches of 4 on two replicas: the last batch of 1 leaves one replica empty."""
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(5, 2)).astype("float32")
    single = _model()
    single.compile(loss="mse", jit_compile=False)
    with mirrored_strategy.scope():
        mirrored = _model()
        mirrored.compile(loss="mse", jit_compile=False)
    mirrored.set_weights(single.get_weights())

    expected = single.predict(x, batch_size=4, verbose=0)
    np.testing.assert_allclose(mirrored.predict(x, batch_size=4, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(
        mirrored.evaluate(x, y, batch_size=4, verbose=0), single.evaluate(x, y, batch_size=4, verbose=0), rtol=1e-5
    )
