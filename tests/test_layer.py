"""Behaviour of `AttentionAugmentation2D`: symmetry, gradients, training, serialization, mixed
precision, XLA, MirroredStrategy and argument/input validation.

The exact arithmetic is checked against the NumPy reference in `test_layer_reference.py`.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from aa_keras.layers import AttentionAugmentation2D
from aa_keras.layers.attention_augmentation import use_attention_implementation
from aa_keras.ops import fused_attention

SMALL = dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2)


def _inputs(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype("float32")


def _built(input_shape, **kwargs):
    layer = AttentionAugmentation2D(**{**SMALL, "bias_initializer": "random_normal", **kwargs})
    layer.build(input_shape)
    return layer


@pytest.fixture
def global_policy():
    """Sets the global dtype policy for one test and restores float32 afterwards."""
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def channels_first():
    keras.config.set_image_data_format("channels_first")
    yield
    keras.config.set_image_data_format("channels_last")


# --- Position enters only through the encoding ------------------------------------------------


@pytest.mark.parametrize("query_block_size", [None, 7])
def test_no_position_encoding_is_permutation_equivariant(query_block_size):
    batch, height, width, channels = 2, 5, 6, 3
    layer = _built(
        (None, height, width, channels),
        depth_v=8,
        position_encoding="none",
        query_block_size=query_block_size,
    )
    x = _inputs((batch, height, width, channels))
    perm = np.random.default_rng(1).permutation(height * width)
    permute = lambda t: np.reshape(
        np.reshape(t, (batch, height * width, -1))[:, perm], (batch, height, width, -1)
    )

    np.testing.assert_allclose(layer(permute(x)).numpy(), permute(layer(x).numpy()), rtol=0, atol=1e-5)


def test_relative_encoding_is_not_permutation_equivariant():
    batch, height, width, channels = 2, 5, 6, 3
    layer = _built((None, height, width, channels), depth_v=8, position_encoding="relative")
    x = _inputs((batch, height, width, channels))
    perm = np.random.default_rng(1).permutation(height * width)
    permute = lambda t: np.reshape(
        np.reshape(t, (batch, height * width, -1))[:, perm], (batch, height, width, -1)
    )

    assert np.max(np.abs(layer(permute(x)).numpy() - permute(layer(x).numpy()))) > 1e-3


# --- Gradients and training -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(query_block_size=5),
        dict(strides=2, downsample_attention=True),
        dict(position_encoding="sine", depth_k=8),
    ],
    ids=["unblocked", "blocked", "stride_2_downsampled", "sine"],
)
def test_gradients_reach_every_weight(kwargs):
    layer = _built((None, 6, 7, 3), **kwargs)
    x = tf.constant(_inputs((2, 6, 7, 3)))
    with tf.GradientTape() as tape:
        out = layer(x)
        loss = tf.reduce_sum(out * _inputs(out.shape, seed=2))
    grads = tape.gradient(loss, layer.trainable_weights)

    names = [w.path for w in layer.trainable_weights]
    expected = 6 + (2 if kwargs.get("position_encoding", "relative") == "relative" else 0)
    assert len(names) == expected, names
    for name, grad in zip(names, grads):
        assert grad is not None, name
        assert np.any(np.asarray(tf.convert_to_tensor(grad)) != 0), name


def test_blocked_gradients_equal_unblocked():
    unblocked = _built((None, 6, 6, 3))
    blocked = _built((None, 6, 6, 3), query_block_size=5)
    blocked.set_weights(unblocked.get_weights())
    x = tf.constant(_inputs((2, 6, 6, 3)))
    target = _inputs((2, 6, 6, 8), seed=2)

    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * target)
        return tape.gradient(loss, [x, *layer.trainable_weights])

    for a, b in zip(grads(unblocked), grads(blocked)):
        np.testing.assert_allclose(
            tf.convert_to_tensor(b).numpy(), tf.convert_to_tensor(a).numpy(), atol=1e-5
        )


def _classifier(**kwargs):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            AttentionAugmentation2D(**{**SMALL, **kwargs}),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )


def test_training_lowers_the_loss():
    model = _classifier()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=False)
    x, y = _inputs((16, 6, 6, 3)), _inputs((16, 2), seed=1)
    history = model.fit(x, y, batch_size=16, epochs=20, shuffle=False, verbose=0).history["loss"]
    assert history[-1] < 0.85 * history[0], history


# --- Serialization ----------------------------------------------------------------------------


def test_registered_serializable():
    assert keras.saving.get_registered_name(AttentionAugmentation2D) == "aa_keras>AttentionAugmentation2D"
    assert keras.saving.get_registered_object("aa_keras>AttentionAugmentation2D") is AttentionAugmentation2D


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(
            kernel_size=(3, 1),
            strides=(2, 1),
            depth_k=0.5,
            depth_v=0.25,
            position_encoding="coordconv",
            padding="valid",
            activation="relu",
            use_bias=False,
            kernel_initializer=keras.initializers.HeNormal(seed=3),
            kernel_regularizer=keras.regularizers.L2(1e-4),
            max_size=(9, 8),
            query_block_size=4,
            downsample_attention=True,
        ),
    ],
    ids=["defaults", "everything_set"],
)
def test_get_config_round_trip(kwargs):
    layer = _built((None, 9, 8, 3), **kwargs)
    config = layer.get_config()
    clone = AttentionAugmentation2D.from_config(config)
    clone.build((None, 9, 8, 3))
    clone.set_weights(layer.get_weights())
    x = _inputs((2, 9, 8, 3))

    assert clone.get_config() == config
    # The config survives a JSON round trip (tuples come back as lists).
    json_clone = keras.layers.deserialize(keras.saving.serialize_keras_object(layer))
    assert json_clone.get_config() == config
    np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


def _functional(**kwargs):
    inputs = keras.Input((6, 7, 3))
    x = AttentionAugmentation2D(**{**SMALL, **kwargs})(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = AttentionAugmentation2D(**{**SMALL, "strides": 2, "position_encoding": "sine", **kwargs})(x)
    return keras.Model(inputs, x)


def _sequential(**kwargs):
    return keras.Sequential(
        [
            keras.Input((6, 7, 3)),
            AttentionAugmentation2D(**{**SMALL, "query_block_size": 5, **kwargs}),
            AttentionAugmentation2D(**{**SMALL, "downsample_attention": True, **kwargs}),
        ]
    )


def _dynamic_size(**kwargs):
    inputs = keras.Input((None, None, 3))
    x = AttentionAugmentation2D(**{**SMALL, "max_size": (8, 8), **kwargs})(inputs)
    x = AttentionAugmentation2D(**{**SMALL, "max_size": (8, 8), "strides": 2, **kwargs})(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize(
    "build", [_functional, _sequential, _dynamic_size], ids=["functional", "sequential", "dynamic_size"]
)
def test_keras_save_and_load_reproduce_outputs(build, tmp_path):
    model = build(bias_initializer="random_normal")
    x = _inputs((2, 6, 7, 3))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


# --- Mixed precision --------------------------------------------------------------------------


@pytest.mark.parametrize("policy, atol", [("mixed_float16", 5e-3), ("mixed_bfloat16", 3e-2)])
def test_mixed_precision_is_close_to_float32(global_policy, policy, atol):
    reference = _built((None, 6, 7, 3), query_block_size=9)
    global_policy(policy)
    layer = _built((None, 6, 7, 3), query_block_size=9)
    layer.set_weights(reference.get_weights())
    x = _inputs((2, 6, 7, 3))

    out = layer(x)
    compute_dtype = keras.mixed_precision.Policy(policy).compute_dtype
    assert out.dtype == compute_dtype
    assert layer.rel_height.dtype == layer.rel_width.dtype == "float32"
    assert all(w.dtype == "float32" for w in layer.weights)
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), reference(x).numpy(), rtol=0, atol=atol)


@pytest.mark.parametrize("policy, rtol", [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)])
@pytest.mark.parametrize("query_block_size", [None, 7])
def test_mixed_precision_gradients_are_close_to_float32(global_policy, policy, rtol, query_block_size):
    """Relative to each weight's largest float32 gradient."""
    x = tf.constant(_inputs((2, 6, 7, 3)))
    target = _inputs((2, 6, 7, 8), seed=1)

    def grads(layer):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(x), tf.float32) * target)
        return [
            tf.cast(tf.convert_to_tensor(g), tf.float32).numpy()
            for g in tape.gradient(loss, layer.trainable_weights)
        ]

    reference_layer = _built((None, 6, 7, 3), query_block_size=query_block_size)
    global_policy(policy)
    layer = _built((None, 6, 7, 3), query_block_size=query_block_size)
    layer.set_weights(reference_layer.get_weights())
    for want, got, weight in zip(grads(reference_layer), grads(layer), layer.trainable_weights):
        assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want)), weight.path


def test_float16_logits_do_not_overflow(global_policy):
    """q . k above the float16 maximum (65504) must not become inf: the logits are float32."""
    global_policy("mixed_float16")
    layer = AttentionAugmentation2D(
        filters=4, kernel_size=1, depth_k=4, depth_v=4, num_heads=1, position_encoding="none",
        use_bias=False, kernel_initializer="ones",
    )  # fmt: skip
    # Integer inputs: exact in float16, so float16 and float32 see the same q, k and v.
    x = np.random.default_rng(0).integers(180, 200, size=(1, 3, 3, 1)).astype("float32")
    out = layer(x)
    # With all-ones kernels q = k = v = x in every channel, so the largest logit is
    # 4 * 200 ** 2 * 4 ** -0.5 = 80000: it overflows in float16.
    q = x.reshape(-1)
    assert np.max(4 * np.outer(q, q) * 0.5) > np.finfo(np.float16).max

    global_policy("float32")
    reference = AttentionAugmentation2D.from_config({**layer.get_config(), "dtype": "float32"})
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    assert out.dtype == "float16"
    assert np.all(np.isfinite(out.numpy()))
    np.testing.assert_allclose(out.numpy().astype("float32"), reference(x).numpy(), rtol=2e-3)


# --- float64 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, atol",
    [
        (dict(), 1e-12),
        (dict(query_block_size=5), 1e-12),
        (dict(strides=2, position_encoding="sine"), 1e-12),
        # TensorFlow's bilinear resize (ResizeBilinear) computes in float32 for every dtype.
        (dict(downsample_attention=True, position_encoding="coordconv"), 1e-6),
    ],
    ids=["unblocked", "blocked", "stride_2_sine", "downsampled_coordconv"],
)
@pytest.mark.parametrize("how", ["dtype_argument", "global_policy"])
def test_float64_matches_the_float64_reference(global_policy, kwargs, atol, how):
    """A float64 layer computes its attention in float64 (on TensorFlow ops, also under "auto"):
    it matches the float64 NumPy reference far below float32's rounding (~1e-7)."""
    if how == "global_policy":
        global_policy("float64")
    layer = _built((None, 7, 6, 3), **kwargs, **({"dtype": "float64"} if how == "dtype_argument" else {}))
    x = _inputs((2, 7, 6, 3)).astype("float64")

    out = layer(x)
    assert out.dtype == "float64"
    assert all(w.dtype == "float64" for w in layer.weights)
    np.testing.assert_allclose(out.numpy(), reference.attention_augmentation(layer, x), rtol=0, atol=atol)


def test_float64_of_unknown_size_and_attention_scores():
    """The run-time size check of the relative tables and the attention scores in float64."""
    layer = _built((None, None, None, 3), max_size=(8, 8), dtype="float64")
    x = _inputs((2, 5, 6, 3)).astype("float64")
    any_size = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float64)])
    np.testing.assert_allclose(any_size(x).numpy(), reference.attention_augmentation(layer, x), rtol=0, atol=1e-12)

    _, scores = layer(x, return_attention_scores=True)
    assert scores.dtype == layer.compute_output_spec(keras.KerasTensor(x.shape), return_attention_scores=True)[1].dtype
    np.testing.assert_allclose(scores.numpy(), reference.attention_weights(x, layer), rtol=0, atol=1e-12)


@pytest.mark.parametrize("query_block_size", [None, 7])
def test_float64_gradients_are_close_to_float32(query_block_size):
    """The hand-written gradient in float64, unblocked and blocked; relative to each weight's
    largest float32 gradient."""
    x = _inputs((2, 6, 7, 3))
    target = _inputs((2, 6, 7, 8), seed=1)

    def grads(layer, dtype):
        inputs = tf.constant(x, dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs) * target.astype(dtype))
        return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [inputs, *layer.trainable_weights])]

    float32 = _built((None, 6, 7, 3), query_block_size=query_block_size)
    float64 = _built((None, 6, 7, 3), query_block_size=query_block_size, dtype="float64")
    float64.set_weights(float32.get_weights())
    for want, got in zip(grads(float32, "float32"), grads(float64, "float64")):
        assert got.dtype == np.float64
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


# --- XLA and MirroredStrategy -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(query_block_size=5),
        dict(strides=2, downsample_attention=True, position_encoding="coordconv"),
    ],
    ids=["unblocked", "blocked", "stride_2_downsampled"],
)
def test_xla_matches_eager(kwargs):
    layer = _built((None, 6, 7, 3), **kwargs)
    x = tf.constant(_inputs((2, 6, 7, 3)))
    compiled = tf.function(layer, jit_compile=True)
    np.testing.assert_allclose(compiled(x).numpy(), layer(x).numpy(), rtol=0, atol=1e-5)


def test_mirrored_strategy_training_step_matches_single_device(mirrored_strategy):
    strategy = mirrored_strategy
    assert strategy.num_replicas_in_sync == 2
    x, y = _inputs((8, 6, 6, 3)), _inputs((8, 2), seed=1)

    single = _classifier(query_block_size=10)
    single.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", jit_compile=False)
    with strategy.scope():
        mirrored = _classifier(query_block_size=10)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", jit_compile=False)
    initial = single.get_weights()
    mirrored.set_weights(initial)
    for model in (single, mirrored):
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)

    assert any(np.max(np.abs(w - w0)) > 1e-4 for w, w0 in zip(single.get_weights(), initial))
    for a, b in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(mirrored.predict(x, verbose=0), single.predict(x, verbose=0), atol=1e-5)


# --- Validation -------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(filters=0), "filters=0"),
    (dict(filters=-8), "filters=-8"),
    (dict(filters=8.0), "filters=8.0"),
    (dict(kernel_size=0), "kernel_size=0"),
    (dict(kernel_size=(3, -1)), "kernel_size=(3, -1)"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size=(3, 3, 3)"),
    (dict(strides=0), "strides=0"),
    (dict(strides=(1, -2)), "strides=(1, -2)"),
    (dict(num_heads=0), "num_heads=0"),
    (dict(num_heads=-2), "num_heads=-2"),
    (dict(depth_k=6, num_heads=4), "depth_k=6 is not divisible by num_heads=4"),
    (dict(depth_v=6, num_heads=4), "depth_v=6 is not divisible by num_heads=4"),
    (dict(depth_k=2, num_heads=4), "depth_k=2 gives 2 channels for num_heads=4"),
    (dict(depth_k=0), "depth_k=0"),
    (dict(depth_k=0.1, num_heads=2), "depth_k=0.1 gives 0 channels for num_heads=2"),
    (dict(depth_v=1.5), "depth_v=1.5"),
    (dict(depth_v="half"), "depth_v='half'"),
    (dict(depth_v=16), "depth_v=16 gives 16 value channels, more than filters=8"),
    (dict(position_encoding="learned"), "position_encoding.*'learned'"),
    (dict(padding="causal"), "padding.*'causal'"),
    (dict(data_format="channels_first"), "data_format.*'channels_first'"),
    (dict(max_size=(6, 0)), "max_size=(6, 0)"),
    (dict(query_block_size=0), "query_block_size=0"),
    (dict(use_bias="no"), "use_bias='no'"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS, ids=[m for _, m in BAD_ARGUMENTS])
def test_bad_arguments_raise(kwargs, message):
    pattern = message if ".*" in message else re.escape(message)
    with pytest.raises(ValueError, match=pattern):
        AttentionAugmentation2D(**{**SMALL, **kwargs})


def test_numpy_ints_and_half_up_rounding_of_fractional_depths():
    layer = AttentionAugmentation2D(np.int64(20), np.int32(3), depth_k=0.2, depth_v=0.2, num_heads=np.int64(8))
    assert (layer.filters, layer.kernel_size, layer.num_heads) == (20, (3, 3), 8)
    assert all(type(v) is int for v in (layer.filters, layer.num_heads, *layer.kernel_size))
    # 0.2 * 20 / 8 = 0.5 heads' worth of channels rounds up to one per head.
    assert (layer.dk, layer.dv) == (8, 8)


def test_global_channels_first_raises(channels_first):
    with pytest.raises(ValueError, match="data_format.*'channels_first'"):
        AttentionAugmentation2D(**SMALL)


@pytest.mark.parametrize("shape, ndim", [((2, 6, 3), 3), ((2, 6, 6, 6, 3), 5)])
def test_input_rank_other_than_4_raises(shape, ndim):
    with pytest.raises(ValueError, match=f"expected ndim=4, found ndim={ndim}"):
        AttentionAugmentation2D(**SMALL)(np.zeros(shape, "float32"))


def test_input_larger_than_built_raises():
    layer = _built((None, 6, 6, 3))
    with pytest.raises(ValueError, match="height 8 exceeds the height 6"):
        layer(np.zeros((1, 8, 6, 3), "float32"))
    with pytest.raises(ValueError, match="width 7 exceeds the width 6"):
        layer(np.zeros((1, 6, 7, 3), "float32"))


def test_input_larger_than_max_size_raises():
    with pytest.raises(ValueError, match=re.escape("(6, 9) exceeds max_size=(6, 8)")):
        AttentionAugmentation2D(**SMALL, max_size=(6, 8))(keras.Input((6, 9, 3)))


def test_unknown_spatial_size_without_max_size_raises():
    with pytest.raises(ValueError, match=re.escape("max_size=(H, W)")):
        AttentionAugmentation2D(**SMALL)(keras.Input((None, None, 3)))


def test_valid_padding_input_smaller_than_kernel_raises():
    with pytest.raises(ValueError, match=re.escape("kernel_size=(3, 3)")):
        AttentionAugmentation2D(**SMALL, padding="valid")(keras.Input((2, 6, 3)))


def test_unknown_spatial_size_with_max_size_runs():
    layer = AttentionAugmentation2D(**SMALL, max_size=(8, 8))
    model = keras.Sequential([keras.Input((None, None, 3)), layer])
    for shape in [(1, 8, 8, 3), (2, 3, 5, 3)]:
        assert model(np.zeros(shape, "float32")).shape == (*shape[:3], 8)


def test_runtime_size_larger_than_max_size_raises():
    """A size known only at run time cannot be checked when the layer is called: the relative
    embedding lookup then raises instead of reading outside its table. (Under XLA the check is
    dropped: XLA ignores Assert ops.)"""
    layer = _built((None, None, None, 3), max_size=(6, 6))
    run = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3))])
    assert run(tf.zeros((1, 6, 5, 3))).shape == (1, 6, 5, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger max_size"):
        run(tf.zeros((1, 6, 7, 3)))


def test_runtime_size_larger_than_max_size_under_xla_is_nan_not_a_wrong_answer():
    """XLA drops the run-time check, so the relative tables are poisoned instead: every attention
    channel is NaN (the conv channels, which do not depend on the tables, stay as they are); a
    size within max_size compiles to the eager answer."""
    layer = _built((None, None, None, 3), max_size=(6, 6))
    compiled = tf.function(layer, jit_compile=True, input_signature=[tf.TensorSpec((None, None, None, 3))])
    inside = _inputs((1, 6, 5, 3))
    np.testing.assert_allclose(compiled(inside).numpy(), layer(inside).numpy(), atol=1e-5)
    too_large = compiled(_inputs((1, 6, 7, 3))).numpy()
    conv_channels = layer.filters - layer.dv
    assert np.isnan(too_large[..., conv_channels:]).all()
    assert np.isfinite(too_large[..., :conv_channels]).all()
    with use_attention_implementation(layer, "tf_ops"):  # The TensorFlow-op path outside XLA keeps the check.
        run = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3))])
        with pytest.raises(tf.errors.InvalidArgumentError, match="larger max_size"):
            run(tf.zeros((1, 6, 7, 3)))


def test_explicit_channels_last_works_under_global_channels_first(channels_first):
    layer = _built((None, 5, 6, 3), data_format="channels_last")
    x = _inputs((2, 5, 6, 3))
    np.testing.assert_allclose(layer(x).numpy(), reference.attention_augmentation(layer, x), atol=1e-5)


def test_saved_layer_loads_under_global_channels_first(tmp_path):
    model = _sequential()
    path = str(tmp_path / "model.keras")
    model.save(path)
    x = _inputs((2, 6, 7, 3))
    keras.config.set_image_data_format("channels_first")
    try:
        loaded = keras.saving.load_model(path)
    finally:
        keras.config.set_image_data_format("channels_last")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


# --- Dropout on the attention weights ---------------------------------------------------------


def _copy_trainable(source, target):
    for a, b in zip(source.trainable_weights, target.trainable_weights, strict=True):
        b.assign(a)
    return target


def _call_and_gradients(layer, x, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, training=training)
        loss = tf.reduce_sum(outputs * tf.cos(outputs))
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return [outputs.numpy()] + [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(attention_implementation="tf_ops"), dict(attention_implementation="fused"), dict(query_block_size=7)],
    ids=["auto", "tf_ops", "fused", "blocked"],
)
@pytest.mark.parametrize("training", [True, False])
def test_dropout_zero_is_identical_to_no_dropout(kwargs, training):
    if kwargs.get("attention_implementation") == "fused" and not fused_attention.applies():
        pytest.skip("the fused kernel does not run here")
    plain = _built((None, 6, 7, 3), **kwargs)
    with_zero = _copy_trainable(plain, _built((None, 6, 7, 3), dropout=0.0, seed=4, **kwargs))
    x = _inputs((2, 6, 7, 3))
    want, got = _call_and_gradients(plain, x, training), _call_and_gradients(with_zero, x, training)
    assert len(got) == len(want)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("kwargs", [dict(), dict(attention_implementation="tf_ops"), dict(query_block_size=7)])
def test_dropout_in_training_only(kwargs):
    plain = _built((None, 6, 7, 3), **kwargs)
    layer = _copy_trainable(plain, _built((None, 6, 7, 3), dropout=0.5, seed=1, **kwargs))
    x = _inputs((2, 6, 7, 3))
    want = plain(x).numpy()
    for training in (None, False):
        np.testing.assert_array_equal(layer(x, training=training).numpy(), want)
    first, second = layer(x, training=True).numpy(), layer(x, training=True).numpy()
    assert np.abs(first - want).max() > 1e-2 and np.abs(first - second).max() > 1e-2
    # Gradients flow through the dropped weights to every weight.
    outputs, d_x, *d_weights = _call_and_gradients(layer, x, True)
    assert np.all(np.isfinite(d_x)) and all(np.abs(g).max() > 0 for g in d_weights)


def test_same_seed_reproduces_training_outputs():
    x = _inputs((2, 6, 7, 3))
    plain = _built((None, 6, 7, 3))
    runs = []
    for _ in range(2):
        layer = _copy_trainable(plain, _built((None, 6, 7, 3), dropout=0.5, seed=7))
        runs.append([layer(x, training=True).numpy() for _ in range(2)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = _copy_trainable(plain, _built((None, 6, 7, 3), dropout=0.5, seed=8))
    assert np.abs(other(x, training=True).numpy() - runs[0][0]).max() > 1e-2


def _one_hot_attention_layer(dropout, positions=16, **kwargs):
    """A fully attentional layer whose output at query i is its attention weights over the
    positions: uniform weights (q = k = 0), v the one-hot position code of the input, identity
    output projection."""
    layer = AttentionAugmentation2D(
        positions,
        1,
        depth_k=4,
        depth_v=positions,
        num_heads=1,
        position_encoding="none",
        use_bias=False,
        dropout=dropout,
        seed=0,
        **kwargs,
    )
    layer.build((None, 4, 4, positions))
    qkv = np.zeros((1, 1, positions, 8 + positions), "float32")
    qkv[0, 0, :, 8:] = np.eye(positions)
    layer.qkv.kernel.assign(qkv)
    layer.attn_out.kernel.assign(np.eye(positions, dtype="float32")[None, None])
    return layer


@pytest.mark.parametrize("attention_implementation", ["auto", "tf_ops"])
def test_dropped_fraction_is_the_rate_and_scores_are_before_dropout(attention_implementation):
    layer = _one_hot_attention_layer(0.5, attention_implementation=attention_implementation)
    x = np.broadcast_to(np.eye(16, dtype="float32").reshape(1, 4, 4, 16), (8, 4, 4, 16))
    np.testing.assert_allclose(layer(x).numpy(), 1 / 16, rtol=1e-6)
    outputs, scores = layer(x, training=True, return_attention_scores=True)
    outputs = outputs.numpy()
    # Kept weights are scaled by 1 / (1 - rate): 1/16 -> 1/8; 8 * 16 * 16 = 2048 weights.
    assert set(np.round(np.unique(outputs) * 8, 5)) <= {0.0, 1.0}
    assert abs(np.mean(outputs == 0) - 0.5) < 0.05
    # As keras.layers.MultiHeadAttention: the returned scores are the softmax before dropout.
    np.testing.assert_allclose(scores.numpy(), 1 / 16, rtol=1e-6)
    assert abs(np.mean(layer(x, training=True).numpy() == 0) - 0.5) < 0.05


def test_fused_with_dropout_is_refused():
    with pytest.raises(ValueError, match="attention_implementation='fused' and dropout=0.5"):
        AttentionAugmentation2D(**SMALL, dropout=0.5, attention_implementation="fused")
    layer = _built((None, 6, 7, 3), dropout=0.5)
    x = _inputs((2, 6, 7, 3))
    with use_attention_implementation(layer, "fused"):
        with pytest.raises(ValueError, match="cannot drop them"):
            layer(x, training=True)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, "0.5", True, None, float("nan")])
def test_bad_dropout_raises(dropout):
    with pytest.raises(ValueError, match=re.escape(f"dropout={dropout!r}")):
        AttentionAugmentation2D(**SMALL, dropout=dropout)


def test_bad_seed_raises():
    with pytest.raises(ValueError, match=re.escape("seed=1.5")):
        AttentionAugmentation2D(**SMALL, dropout=0.1, seed=1.5)


def test_dropout_config_round_trip_and_keras_file(tmp_path):
    layer = _built((None, 6, 7, 3), dropout=0.25, seed=11)
    config = layer.get_config()
    assert config["dropout"] == 0.25 and config["seed"] == 11
    clone = AttentionAugmentation2D.from_config(config)
    assert clone.get_config() == config
    assert keras.layers.deserialize(keras.saving.serialize_keras_object(layer)).get_config() == config
    defaults = AttentionAugmentation2D(**SMALL).get_config()
    assert defaults["dropout"] == 0.0 and defaults["seed"] is None

    model = _functional(dropout=0.25, seed=11)
    x = _inputs((2, 6, 7, 3))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert [l.get_config()["dropout"] for l in loaded.layers if isinstance(l, AttentionAugmentation2D)] == [0.25] * 2


def test_fit_with_dropout_lowers_the_loss():
    model = _classifier(dropout=0.3, seed=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=False)
    x, y = _inputs((16, 6, 6, 3)), _inputs((16, 2), seed=1)
    history = model.fit(x, y, batch_size=16, epochs=20, shuffle=False, verbose=0).history["loss"]
    assert history[-1] < 0.85 * history[0], history
