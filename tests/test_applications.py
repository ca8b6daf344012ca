"""aa_keras.applications: the paper's networks (parameter table, placement of the augmented
layers, training step, features, arguments), `augment` on keras.applications and user models,
the `build_model` registry and the FLOP counter of `benchmarks/param_table.py`."""

import logging
import subprocess
import sys

import keras
import numpy as np
import pytest

from aa_keras.applications import (
    MODEL_NAMES,
    AAResNet,
    AAWideResNet,
    LastStages,
    ResNet,
    WideResNet,
    augment,
    build_model,
    feature_extractor,
)
from aa_keras.layers import AttentionAugmentation2D
from benchmarks.param_table import analytic_flops, profiler_flops

# Bello et al., 2019, tables 1 and 3: parameters in millions.
PAPER_PARAMS = {
    "resnet34": 21.8, "aa_resnet34": 20.7, "resnet50": 25.6, "aa_resnet50": 25.8,
    "resnet101": 44.5, "aa_resnet101": 45.4, "resnet152": 60.2, "aa_resnet152": 61.6,
    "wrn28_10": 36.3, "aa_wrn28_10": 36.2,
}


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(size=shape).astype("float32")


def _augmented_names(model):
    return sorted(layer.name for layer in model.layers if isinstance(layer, AttentionAugmentation2D))


def _check_params(name):
    model = build_model(name, classes=100 if "wrn" in name else None)
    params = model.count_params() / 1e6
    assert abs(params - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.02, (name, params)


# --- the paper's networks -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet34", "aa_resnet34", "resnet50", "aa_resnet50", "wrn28_10", "aa_wrn28_10"])
def test_parameter_counts_match_the_paper(name):
    _check_params(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet101", "aa_resnet101", "resnet152", "aa_resnet152"])
def test_parameter_counts_match_the_paper_deep(name):
    _check_params(name)


@pytest.mark.parametrize(
    "depth, conv, blocks", [(18, "1", (2, 2, 2)), (34, "1", (4, 6, 3)), (50, "2", (4, 6, 3))]
)
def test_aa_resnet_augments_one_conv_per_block_of_the_last_three_stages(depth, conv, blocks):
    aa = AAResNet(depth, input_shape=(64, 64, 3), classes=10)
    plain = ResNet(depth, input_shape=(64, 64, 3), classes=10)
    expected = sorted(
        f"conv{stage}_block{b}_{conv}_conv" for stage, n in zip((3, 4, 5), blocks) for b in range(1, n + 1)
    )
    assert _augmented_names(aa) == expected
    # The twin has the same layers under the same names: Conv2D where AA has the augmented convs.
    assert [layer.name for layer in aa.layers] == [layer.name for layer in plain.layers]
    assert all(type(plain.get_layer(name)) is keras.layers.Conv2D for name in expected)
    # Each augmented conv is followed by a BatchNorm; the first augmented stage attends at half resolution.
    for name in expected:
        assert isinstance(aa.get_layer(name.replace("_conv", "_bn")), keras.layers.BatchNormalization)
        assert aa.get_layer(name).downsample_attention == name.startswith("conv3")
    dk = {aa.get_layer(name).dk for name in expected}
    assert min(dk) == 160  # at least 20 key dimensions for each of the 8 heads


def test_aa_wide_resnet_augments_the_first_conv_of_every_block():
    model = AAWideResNet(depth=16, width=4)
    assert _augmented_names(model) == sorted(f"group{g}_block{b}_1_conv" for g in (1, 2, 3) for b in (1, 2))
    layer = model.get_layer("group3_block1_1_conv")
    assert (layer.filters, layer.strides, layer.dk, layer.dv, layer.num_heads) == (256, (2, 2), 160, 24, 8)  # dv: 25.6 rounded to a multiple of 8
    assert [layer.name for layer in model.layers] == [layer.name for layer in WideResNet(depth=16, width=4).layers]


@pytest.mark.parametrize(
    "builder, shape",
    [(lambda: AAResNet(18, input_shape=(32, 32, 3), classes=5), (32, 32, 3)),
     (lambda: AAWideResNet(depth=10, width=4, classes=5), (32, 32, 3))],
)
def test_forward_and_one_training_step(builder, shape):
    model = builder()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x, y = _images((4, *shape)), np.arange(4) % 5
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, 5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    layer = next(l for l in model.layers if isinstance(l, AttentionAugmentation2D))
    before = [w.numpy().copy() for w in (layer.qkv.kernel, layer.rel_width, layer.conv.kernel)]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = [w.numpy() for w in (layer.qkv.kernel, layer.rel_width, layer.conv.kernel)]
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_feature_extractor_gives_strides_8_16_32():
    model = AAResNet(18, include_top=False, input_shape=(64, 96, 3))
    features = feature_extractor(model, ["C3", "C4", "C5"])(_images((1, 64, 96, 3)))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "C3": (1, 8, 12, 128), "C4": (1, 4, 6, 256), "C5": (1, 2, 3, 512)
    }
    wrn = feature_extractor(WideResNet(depth=10, width=1))
    assert list(wrn.output) == ["C0", "C1", "C2"]
    with pytest.raises(ValueError, match=r"\['C6'\].*C2.*C5"):
        feature_extractor(model, ["C6"])


def test_builder_head_arguments():
    assert ResNet(18, include_top=False, pooling="avg", input_shape=(32, 32, 3)).output_shape == (None, 512)
    assert ResNet(18, include_top=False, input_shape=(None, None, 3)).output_shape == (None, None, None, 512)
    assert WideResNet(10, 2, include_top=False, pooling="max").output_shape == (None, 128)
    assert AAResNet(18, input_shape=(32, 32, 1), classes=3, classifier_activation=None).output_shape == (None, 3)


def test_builder_loads_weights_file(tmp_path):
    source = AAWideResNet(depth=10, width=4, classes=3)
    path = str(tmp_path / "wrn.weights.h5")
    source.save_weights(path)
    loaded = AAWideResNet(depth=10, width=4, classes=3, weights=path)
    x = _images((2, 32, 32, 3))
    np.testing.assert_allclose(loaded(x, training=False), source(x, training=False), rtol=1e-5, atol=1e-6)


def test_aa_network_round_trips_through_keras_file(tmp_path):
    model = AAWideResNet(depth=10, width=4, classes=3)
    path = str(tmp_path / "aa_wrn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _images((2, 32, 32, 3))
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)
    assert _augmented_names(loaded) == _augmented_names(model)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ResNet(20), r"`depth`.*\(18, 34, 50, 101, 152\).*depth=20"),
        (lambda: WideResNet(depth=27), r"`depth`.*6n \+ 4.*depth=27"),
        (lambda: WideResNet(width=0), r"`width`.*width=0"),
        (lambda: ResNet(18, weights="imagenet"), r"`weights`.*weights='imagenet'"),
        (lambda: ResNet(18, weights="missing.weights.h5"), r"`weights`.*does not exist"),
        (lambda: ResNet(18, include_top=False, pooling="mean"), r"`pooling`.*'mean'"),
        (lambda: ResNet(18, classes=0), r"`classes`.*classes=0"),
        (lambda: ResNet(18, input_shape=(16, 16, 3)), r"`input_shape`.*at least 32"),
        (lambda: ResNet(18, input_shape=(32, 32)), r"`input_shape`.*\(32, 32\)"),
        (lambda: AAResNet(18, input_shape=(None, None, 3)), r"`input_shape`.*fixed height and width"),
        (lambda: AAResNet(18, depth_k=2), r"`depth_k`.*depth_k=2"),
        (lambda: AAResNet(18, position_encoding="rope"), r"`position_encoding`.*'rope'"),
        (lambda: AAResNet(18, augmented_stages=5), r"`augmented_stages`.*5"),
        (lambda: AAWideResNet(num_heads=0), r"`num_heads`.*num_heads=0"),
    ],
)
def test_builder_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- augment ---------------------------------------------------------------------------------


def test_augment_keras_resnet50_transfers_weights_and_keeps_the_graph():
    base = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    base_weights = [w.numpy().copy() for w in base.weights]
    model, summary = augment(base, return_summary=True)

    expected = sorted(
        f"conv{stage}_block{b}_2_conv" for stage, n in zip((3, 4, 5), (4, 6, 3)) for b in range(1, n + 1)
    )
    assert _augmented_names(model) == expected
    assert sorted(r.name for r in summary.replaced) == expected
    assert [layer.name for layer in model.layers[1:]] == [layer.name for layer in base.layers[1:]]
    assert summary.params_before == base.count_params()
    assert summary.params_after == model.count_params()
    assert summary.params_after - summary.params_before == sum(r.params_after - r.params_before for r in summary.replaced)
    assert "conv4_block1_2_conv" in str(summary)
    # The original is untouched.
    assert not any(isinstance(layer, AttentionAugmentation2D) for layer in base.layers)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(base_weights, base.weights))

    for old in base.layers[1:]:
        new = model.get_layer(old.name)
        if old.name in expected:
            keep = new.conv.filters
            assert keep == old.filters - new.dv
            np.testing.assert_array_equal(new.conv.kernel.numpy(), old.kernel.numpy()[..., :keep])
            np.testing.assert_array_equal(new.conv.bias.numpy(), old.bias.numpy()[:keep])
            assert (new.filters, new.kernel_size, new.strides, new.padding) == (
                old.filters, old.kernel_size, old.strides, old.padding)
        else:
            assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(old.weights, new.weights))

    # Up to the first augmented layer the networks agree exactly, so its conv channels do too.
    first = "conv3_block1_2_conv"
    x = _images((2, 64, 64, 3))
    old_out = keras.Model(base.input, base.get_layer(first).output)(x).numpy()
    new_out = keras.Model(model.input, model.get_layer(first).output)(x).numpy()
    keep = model.get_layer(first).conv.filters
    np.testing.assert_allclose(new_out[..., :keep], old_out[..., :keep], rtol=1e-5, atol=1e-5)
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize(
    "application, kwargs",
    [
        (keras.applications.ResNet50V2, {}),
        (keras.applications.MobileNetV2, dict(select=LastStages(2, kernel_size=1))),
        (keras.applications.EfficientNetB0, dict(select=LastStages(1, kernel_size=None), skip_unfit=True)),
    ],
)
def test_augment_keras_applications(application, kwargs):
    base = application(weights=None, input_shape=(64, 64, 3), classes=7)
    model, summary = augment(base, return_summary=True, **kwargs)
    assert len(summary.replaced) > 0
    assert _augmented_names(model) == sorted(r.name for r in summary.replaced)
    # Every replaced layer lies in the lowest-resolution stages selected (never on 1x1 maps).
    assert all(r.output_shape[1] * r.output_shape[2] > 1 for r in summary.replaced)
    assert model(_images((2, 64, 64, 3))).shape == (2, 7)


@pytest.mark.slow
@pytest.mark.parametrize("application", [keras.applications.ResNet101, keras.applications.ResNet152])
def test_augment_deep_keras_resnets(application):
    base = application(weights=None, input_shape=(64, 64, 3), classes=7)
    model, summary = augment(base, return_summary=True)
    assert len(summary.replaced) == len([l for l in base.layers if l.name.endswith("_2_conv") and l.name[4] in "345"])
    assert model(_images((1, 64, 64, 3))).shape == (1, 7)


def _user_layers():
    return [
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(32, 3, strides=2, padding="valid", kernel_regularizer="l2", name="c2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(3, name="head"),
    ]


def test_augment_sequential_model_trains_and_keeps_conv_arguments():
    base = keras.Sequential([keras.Input((12, 12, 4)), *_user_layers()])
    model, summary = augment(base, select=["c1", "c2"], depth_k=8, depth_v=8, num_heads=2, return_summary=True)
    assert isinstance(model, keras.Sequential)
    c1, c2 = model.get_layer("c1"), model.get_layer("c2")
    assert (c1.activation, c2.padding, c2.strides) == (keras.activations.relu, "valid", (2, 2))
    assert c2.kernel_regularizer is not None and len(model.losses) == 3  # conv, qkv, attn_out kernels
    assert [r.output_shape for r in summary.replaced] == [(None, 12, 12, 16), (None, 5, 5, 32)]
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), base.get_layer("head").kernel.numpy())
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert np.isfinite(model.train_on_batch(_images((2, 12, 12, 4)), np.array([0, 2])))


def test_augment_predicate_on_nested_functional_model_without_weight_transfer():
    inner = keras.Sequential([keras.Input((12, 12, 4)), *_user_layers()[:2]], name="inner")
    inputs = keras.Input((12, 12, 4))
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(inner(inputs)))
    base = keras.Model(inputs, outputs)
    model, summary = augment(
        base,
        select=lambda layer: layer.strides == (2, 2),
        depth_k=8,
        depth_v=8,
        num_heads=2,
        transfer_weights=False,
        return_summary=True,
    )
    assert [r.name for r in summary.replaced] == ["c2"]
    assert isinstance(model.get_layer("inner").get_layer("c2"), AttentionAugmentation2D)
    assert type(model.get_layer("inner").get_layer("c1")) is keras.layers.Conv2D
    assert not np.array_equal(model.get_layer("head").kernel.numpy(), base.get_layer("head").kernel.numpy())
    assert model(_images((2, 12, 12, 4))).shape == (2, 3)


def _unfit_model():
    inputs = keras.Input((16, 16, 8))
    x = keras.layers.Conv2D(16, 3, padding="same", dilation_rate=2, name="dilated")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", groups=2, name="grouped")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="narrow")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="fits")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


@pytest.mark.parametrize("name, reason", [("dilated", "dilation_rate"), ("grouped", "groups=2"), ("narrow", "depth_")])
def test_augment_names_a_layer_that_cannot_be_augmented(name, reason):
    with pytest.raises(ValueError, match=rf"'{name}': .*{reason}"):
        augment(_unfit_model(), select=[name, "fits"], depth_k=8, depth_v=8)


def test_augment_all_that_fit_skips_with_a_log_line(caplog):
    with caplog.at_level(logging.WARNING, logger="aa_keras.applications.augment"):
        model, summary = augment(_unfit_model(), select="all", skip_unfit=True, depth_k=8, depth_v=8, return_summary=True)
    assert [r.name for r in summary.replaced] == ["fits"]
    assert [name for name, _ in summary.skipped] == ["dilated", "grouped", "narrow"]
    assert all(name in caplog.text for name in ("dilated", "grouped", "narrow"))
    assert _augmented_names(model) == ["fits"]


def test_augment_rejects_shared_and_channels_first_convolutions(channels_first_conv):
    with pytest.raises(ValueError, match=r"'cf': data_format='channels_first'"):
        augment(channels_first_conv, select=["cf"], depth_k=8, depth_v=8)
    shared = keras.layers.Conv2D(16, 3, padding="same", name="shared")
    inputs = keras.Input((8, 8, 16))
    base = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ValueError, match=r"'shared': it is called 2 times"):
        augment(base, select=["shared"], depth_k=8, depth_v=8)


@pytest.fixture
def channels_first_conv():
    inputs = keras.Input((8, 8, 8))
    x = keras.layers.Conv2D(16, 1, data_format="channels_first", name="cf")(inputs)
    return keras.Model(inputs, x)


@pytest.mark.parametrize(
    "select, message",
    [
        (["c1", "gap", "nope"], r"'gap' \(a GlobalAveragePooling2D, not a Conv2D\), 'nope' \(no such layer\)"),
        ("everything", r"unknown preset 'everything'.*\('paper', 'all'\)"),
        (42, r"`select`.*select=42"),
        (lambda layer: False, r"matched no Conv2D"),
        (LastStages(1, kernel_size=5), r"matched no Conv2D"),
    ],
)
def test_augment_select_errors(select, message):
    base = keras.Sequential([keras.Input((12, 12, 4)), *_user_layers()])
    with pytest.raises(ValueError, match=message):
        augment(base, select=select, depth_k=8, depth_v=8, num_heads=2)


def test_augment_rejects_subclassed_and_unbuilt_models():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(8, 3)

        def call(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match="subclassed"):
        augment(Net())
    with pytest.raises(ValueError, match="not built"):
        augment(keras.Sequential(_user_layers()))


def test_augment_needs_static_sizes_for_stage_presets():
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="fixed input_shape"):
        augment(base, select="paper")


# --- registry and FLOP counter ---------------------------------------------------------------


def test_model_names_and_unknown_name():
    expected = {f"{p}resnet{d}" for p in ("", "aa_") for d in (18, 34, 50, 101, 152)}
    assert set(MODEL_NAMES) == expected | {"wrn28_10", "aa_wrn28_10", "aa_small", "conv_small"}
    with pytest.raises(ValueError, match=r"'resnet20'.*aa_resnet50.*conv_small"):
        build_model("resnet20")
    with pytest.raises(ValueError, match="input_shape"):
        build_model("aa_small")


def test_build_model_passes_arguments():
    model = build_model("aa_resnet18", input_shape=(32, 32, 3), classes=4, num_heads=4)
    assert model.output_shape == (None, 4)
    assert {l.num_heads for l in model.layers if isinstance(l, AttentionAugmentation2D)} == {4}


def test_small_nets_are_imported_lazily():
    code = (
        "import sys, aa_keras.applications as a\n"
        "assert 'aa_keras.applications.small_nets' not in sys.modules\n"
        "m = a.build_model('aa_small', input_shape=(16, 16, 3), classes=3)\n"
        "assert 'aa_keras.applications.small_nets' in sys.modules and m.output_shape == (None, 3)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


MATMUL_OPS = ("Conv2D", "MatMul", "BatchMatMul.*")


def test_analytic_flops_agree_with_the_tensorflow_profiler_on_convolutions():
    inputs = keras.Input((10, 12, 6))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.Conv2D(4, 1)(x)
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    assert analytic_flops(model) == profiler_flops(model, MATMUL_OPS) > 0


@pytest.mark.parametrize("downsample", [False, True])
def test_analytic_flops_of_attention_agree_with_the_tensorflow_profiler(downsample):
    def model(position_encoding, size=8):
        layer = AttentionAugmentation2D(
            16, 3, strides=2, depth_k=8, depth_v=8, num_heads=2, position_encoding=position_encoding,
            downsample_attention=downsample,
        )
        inputs = keras.Input((2 * size, 2 * size, 16))
        return keras.Model(inputs, layer(inputs))

    # Projections, content logits and weighted values run as Conv2D / BatchMatMul ops.
    assert analytic_flops(model("none")) == profiler_flops(model("none"), MATMUL_OPS)
    # The relative logits are two Einsums, which the profiler does not count: H*W queries, each
    # dotted with H + W embeddings of dkh channels in each of the Nh heads.
    side = 4 if downsample else 8
    relative = model("relative")
    assert analytic_flops(relative) - profiler_flops(relative, MATMUL_OPS) == 2 * side * side * 2 * side * 8
