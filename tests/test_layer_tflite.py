"""`AttentionAugmentation2D` converts to TFLite builtin ops only, and LiteRT reproduces Keras."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from aa_keras.layers import AttentionAugmentation2D, use_attention_implementation

INPUT_SHAPE = (1, 8, 7, 3)
SMALL = dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, bias_initializer="random_normal")


def _model(**kwargs):
    """Two augmented convolutions around a BatchNorm, the second with `kwargs`."""
    inputs = keras.Input(INPUT_SHAPE[1:], batch_size=INPUT_SHAPE[0])
    x = AttentionAugmentation2D(**SMALL)(inputs)
    # Positive variances other than 1 (Keras's "random_uniform" draws from [-0.05, 0.05]: NaN outputs).
    x = keras.layers.BatchNormalization(moving_variance_initializer=keras.initializers.RandomUniform(0.5, 1.5))(x)
    x = AttentionAugmentation2D(**{**SMALL, **kwargs})(x)
    return keras.Model(inputs, x)


def _convert_builtins_only(model, input_shape):
    """TFLite flatbuffer of `model` (a model or layer) in inference, the converter restricted to
    TFLite builtin ops."""
    function = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec(input_shape)])
    with use_attention_implementation(model, "tf_ops"):  # the fused kernel is a TensorFlow custom op
        concrete = function.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _interpreter(flatbuffer):
    """A LiteRT interpreter without default delegates, so that its op list is the model's own
    ops and not "DELEGATE" nodes."""
    return Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )


def _non_builtin_ops(interpreter):
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    return [name for name in names if name.startswith("Flex") or name == "CUSTOM"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(strides=2),
        dict(downsample_attention=True),
        dict(strides=2, downsample_attention=True, padding="valid"),
        dict(query_block_size=10),
        dict(position_encoding="sine"),
        dict(position_encoding="coordconv", depth_v=8),
    ],
    ids=[
        "relative",
        "stride_2",
        "downsample",
        "valid_stride_2_downsample",
        "blocked",
        "sine",
        "coordconv_full",
    ],
)
def test_converts_to_builtin_ops_and_matches_keras(kwargs):
    model = _model(**kwargs)
    interpreter = _interpreter(_convert_builtins_only(model, INPUT_SHAPE))
    interpreter.allocate_tensors()
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "BATCH_MATMUL" in ops and "SOFTMAX" in ops, ops
    assert not _non_builtin_ops(interpreter)

    x = np.random.default_rng(0).normal(size=INPUT_SHAPE).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    want = model(x, training=False).numpy()
    assert got.shape == want.shape and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_dynamic_spatial_size_converts_to_builtin_ops():
    """A layer built with max_size converts with unknown (H, W) and runs on a smaller input."""
    layer = AttentionAugmentation2D(**SMALL, max_size=(8, 8))
    layer.build((None, None, None, 3))
    interpreter = _interpreter(_convert_builtins_only(layer, (1, None, None, 3)))
    x = np.random.default_rng(0).normal(size=(1, 5, 6, 3)).astype("float32")
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    assert not _non_builtin_ops(interpreter)

    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, layer(x).numpy(), rtol=0, atol=1e-4)
