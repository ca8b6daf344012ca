"""Pretrained keras.applications networks with attention added (`keras_classifier`), their
backbone freezing, and `--model=keras:<Name>` in the trainer. Nothing is downloaded: weights
files are saved here from randomly initialised networks, and the networks are built at 32x32
or 64x64."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.utils import file_utils

from aa_keras.applications import ChannelAffine, keras_classifier, set_backbone_trainable
from aa_keras.applications.keras_classifier import preprocessing_layer
from aa_keras.layers import AttentionAugmentation2D
from aa_keras.programs import files
from aa_keras.programs.run_folder import RunFolder
from aa_keras.training import classification, recipes, train
from aa_keras.training.loop import start_run
from aa_keras.training.settings import settings_for


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Makes any attempt to fetch keras's ImageNet weights fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download {args} {kwargs}")

    monkeypatch.setattr(file_utils, "get_file", refuse)


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(size=shape).astype("float32")


def _augmented(model):
    return {layer.name: layer for layer in model.get_layer("backbone").layers if isinstance(layer, AttentionAugmentation2D)}


def _saved_backbone(tmp_path, name, input_shape):
    """A randomly initialised `keras.applications.<name>` without its top and its .weights.h5 file."""
    keras.utils.set_random_seed(7)
    network = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=input_shape)
    path = str(tmp_path / f"{name}.weights.h5")
    network.save_weights(path)
    return network, path


def test_resnet50_from_a_weights_file_keeps_every_weight_and_augments_the_last_three_stages(tmp_path):
    source, path = _saved_backbone(tmp_path, "ResNet50", (64, 64, 3))
    keras.utils.set_random_seed(8)  # other initial values than the file's
    model, summary = keras_classifier("ResNet50", classes=5, input_shape=(64, 64, 3), weights=path, return_summary=True)
    assert model.output.shape == (None, 5) and model.get_layer("logits").dtype_policy.name == "float32"
    # At 64x64 the stages conv3, conv4, conv5 are 8x8, 4x4, 2x2: the paper's preset replaces their 3x3 convs.
    expected = {f"conv{stage}_block{b}_2_conv" for stage, blocks in ((3, 4), (4, 6), (5, 3)) for b in range(1, blocks + 1)}
    augmented = _augmented(model)
    assert set(augmented) == expected == {r.name for r in summary.replaced} and not summary.skipped
    # Every weight of the file is in the model: whole layers, and each replaced conv's first filters.
    backbone = model.get_layer("backbone")
    for layer in source.layers[1:]:  # after the input layer, which the augmented copy renames
        if layer.name in augmented:
            branch = augmented[layer.name].conv
            np.testing.assert_array_equal(branch.kernel.numpy(), layer.kernel.numpy()[..., : branch.filters])
        else:
            for ours, theirs in zip(backbone.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(ours, theirs)
    assert np.array_equal(backbone.get_layer("conv1_conv").kernel.numpy(), source.get_layer("conv1_conv").kernel.numpy())


def test_mobilenetv2_all_with_skip_unfit_augments_the_convs_that_fit():
    model, summary = keras_classifier("MobileNetV2", classes=3, input_shape=(32, 32, 3), weights=None, augment="all", skip_unfit=True, return_summary=True)
    assert model.output.shape == (None, 3)
    convs = [l.name for l in keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).layers
             if type(l) is keras.layers.Conv2D]  # fmt: skip
    skipped = {name for name, _ in summary.skipped}
    # The 1x1 projections with 16..32 filters and the 32-filter stem give dv < one channel per head.
    assert "Conv1" in skipped and "block_1_project" in skipped and len(skipped) == 7
    assert set(_augmented(model)) == set(convs) - skipped and len(convs) - len(skipped) == 28
    assert np.all(np.isfinite(model(_images((2, 32, 32, 3)))))
    # Its 3x3 convolutions are depthwise: the paper's preset finds nothing to replace, and says what to do.
    with pytest.raises(ValueError, match="no 3x3 Conv2D.*depthwise.*augment='all'.*skip_unfit=True"):
        keras_classifier("MobileNetV2", classes=3, input_shape=(32, 32, 3), weights=None)


@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "DenseNet121", "EfficientNetB0"])
def test_the_preprocessing_layer_is_preprocess_input_on_255_x(name):
    # "caffe" (BGR, ImageNet mean), "tf" ([-1, 1]), "torch" (mean and std), none (inside the network).
    images = _images((2, 8, 8, 3))
    preprocess_input = sys.modules[getattr(keras.applications, name).__module__].preprocess_input
    expected = np.asarray(preprocess_input(255.0 * images))
    np.testing.assert_allclose(np.asarray(preprocessing_layer(name)(images)), expected, rtol=1e-6, atol=1e-4)


def test_the_model_preprocesses_its_input_and_reloads_exactly(tmp_path):
    model = keras_classifier("MobileNetV2", classes=2, input_shape=(32, 32, 3), weights=None, augment="all", skip_unfit=True)
    images = _images((2, 32, 32, 3), seed=1)
    inside = keras.Model(model.input, model.get_layer("preprocess").output)(images)
    np.testing.assert_allclose(inside, images * 2.0 - 1.0, atol=1e-6)  # MobileNetV2's x / 127.5 - 1 on x * 255
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded.get_layer("preprocess"), ChannelAffine)
    np.testing.assert_array_equal(reloaded(images), model(images))


def test_bad_arguments_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="name='ResNet5'.*did you mean ResNet50.*EfficientNetB0, MobileNetV2"):
        keras_classifier("ResNet5", classes=2)
    with pytest.raises(ValueError, match="keras.applications.ResNet50 refuses input_shape=.16, 16, 3. with weights='imagenet'.*at least 32"):
        keras_classifier("ResNet50", classes=2, input_shape=(16, 16, 3))  # refused before any download
    with pytest.raises(ValueError, match="Invalid `weights`.*'missing.weights.h5'"):
        keras_classifier("MobileNetV2", classes=2, input_shape=(32, 32, 3), weights="missing.weights.h5")
    with pytest.raises(ValueError, match="Invalid `augment`: received augment='some'"):
        keras_classifier("MobileNetV2", classes=2, input_shape=(32, 32, 3), weights=None, augment="some")
    _, path = _saved_backbone(tmp_path, "MobileNetV2", (32, 32, 3))
    with pytest.raises(ValueError, match=r"MobileNetV2.weights.h5' does not fit keras.applications.MobileNetV3Small\(include_top=False"):
        keras_classifier("MobileNetV3Small", classes=2, input_shape=(32, 32, 3), weights=path)


def test_freezing_leaves_only_head_and_attention_trainable_and_keeps_batchnorm_statistics():
    model = keras_classifier("MobileNetV2", classes=2, input_shape=(32, 32, 3), weights=None, augment=["block_12_expand"])
    everything = len(model.trainable_weights)
    set_backbone_trainable(model, False)
    attention = model.get_layer("backbone").get_layer("block_12_expand")
    head = model.get_layer("logits")
    trained = {id(w) for w in model.trainable_weights}
    assert trained == {id(w) for w in [*head.trainable_weights, *attention.trainable_weights]}
    assert attention.conv.kernel.path not in {w.path for w in model.trainable_weights}  # pretrained filters
    before = [w.numpy() for w in model.get_layer("backbone").weights]
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(_images((4, 32, 32, 3)), training=True) ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
    for w, w0 in zip(model.get_layer("backbone").weights, before):
        if id(w) not in trained:  # BatchNormalization statistics included: frozen ones run in inference mode
            np.testing.assert_array_equal(w.numpy(), w0, err_msg=w.path)
    # (The attention branch's gradients vanish through this random backbone; the trainer's tests see it train.)
    assert not np.array_equal(head.bias.numpy(), np.zeros(2))
    set_backbone_trainable(model, True)
    assert len(model.trainable_weights) == everything
    with pytest.raises(ValueError, match="no nested model named 'backbone'"):
        set_backbone_trainable(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]), False)


# The trainer. VGG16 is the cheapest keras.applications network to trace; one augmented conv.


def _vgg16(name, input_shape, classes, **options):
    assert name == "keras:VGG16" and not options
    return keras_classifier("VGG16", classes, input_shape, weights=None, augment=["block5_conv3"])


def _watched(model):
    """Copies of a frozen backbone kernel, the augmented conv's pretrained branch and attention
    projection, and the head's kernel."""
    backbone = model.get_layer("backbone")
    return {
        "backbone": backbone.get_layer("block1_conv1").kernel.numpy(),
        "conv_branch": backbone.get_layer("block5_conv3").conv.kernel.numpy(),
        "qkv": backbone.get_layer("block5_conv3").qkv.kernel.numpy(),
        "head": model.get_layer("logits").kernel.numpy(),
    }


class Killed(BaseException):
    """Stands for a kill -9 between a step and its checkpoint."""


def test_frozen_epochs_follow_the_epoch_after_a_kill_mid_freeze(tmp_path, data_dir, monkeypatch):
    recipe = recipes.get_recipe("quick", epochs=2, global_batch_size=16, freeze_backbone_epochs=1, eval_split="test[:32]")
    models, initial, steps, kill_after = [], [], [], [2]

    def build(*args, **kwargs):
        models.append(_vgg16(*args, **kwargs))
        initial.append(_watched(models[-1]))
        return models[-1]

    update = keras.utils.Progbar.update

    def after_step(progbar, current, values=None, **kwargs):  # called once after each training step
        update(progbar, current, values, **kwargs)
        steps.append(_watched(models[-1]))
        if len(steps) in kill_after:
            raise Killed()

    monkeypatch.setattr(keras.utils.Progbar, "update", after_step)
    run = dict(data_dir=data_dir, steps_per_epoch=2, checkpoint_steps=1, verbose=False, model_fn=build)
    with pytest.raises(Killed):  # after step 2, in the frozen epoch, before its checkpoint
        classification.train(tf.distribute.get_strategy(), settings_for("classification", "keras:VGG16", str(tmp_path), recipe, **run))
    kill_after.clear()
    model, metrics = classification.train(tf.distribute.get_strategy(), settings_for("classification", "keras:VGG16", str(tmp_path), recipe, **run))
    assert metrics["resumed_at_steps"] == [1] and metrics["steps"] == 4
    # Steps 1, 2 (lost to the kill), then from checkpoint 1: step 2 of the frozen epoch, steps 3, 4.
    assert len(steps) == 5
    for frozen in steps[:3]:
        for name in ("backbone", "conv_branch"):
            np.testing.assert_array_equal(frozen[name], initial[0][name])
        for name in ("head", "qkv"):
            assert not np.array_equal(frozen[name], initial[0][name]), name
    for trained in steps[3:]:  # the second epoch trains everything
        for name in ("backbone", "conv_branch"):
            assert not np.array_equal(trained[name], initial[0][name]), name
    assert all(layer.trainable for layer in model.get_layer("backbone").layers)  # saved unfrozen


def test_frozen_epochs_under_mirrored_strategy(tmp_path, data_dir, mirrored_strategy):
    initial = []

    def build(*args, **kwargs):
        model = _vgg16(*args, **kwargs)
        initial.append(_watched(model))
        return model

    recipe = recipes.get_recipe("quick", epochs=1, global_batch_size=16, freeze_backbone_epochs=1, eval_split="test[:32]")
    run = dict(data_dir=data_dir, steps_per_epoch=1, verbose=False, model_fn=build)
    model, metrics = classification.train(mirrored_strategy, settings_for("classification", "keras:VGG16", str(tmp_path), recipe, **run))
    frozen = _watched(model)
    assert metrics["steps"] == 1 and not np.array_equal(frozen["head"], initial[0]["head"])
    np.testing.assert_array_equal(frozen["backbone"], initial[0]["backbone"])
    # A longer run resumes there and trains everything in its second epoch.
    model, metrics = classification.train(
        mirrored_strategy, settings_for("classification", "keras:VGG16", str(tmp_path), recipes.override(recipe, epochs=2), **run)
    )
    assert metrics["steps"] == 2 and metrics["resumed_at_steps"] == [1]
    assert not np.array_equal(_watched(model)["backbone"], initial[0]["backbone"])


def _cli(argv):
    train.FLAGS(["train", *argv])
    try:
        return train.run(["train"])
    finally:
        train.FLAGS.unparse_flags()


def test_cli_fine_tunes_a_keras_network_from_a_weights_file(tmp_path, data_dir, monkeypatch):
    # Evaluated on 32 test images: a forward pass of VGG16 over all 2000 would take most of the test's time.
    monkeypatch.setitem(recipes.RECIPES, "quick", recipes.get_recipe("quick", eval_split="test[:32]"))
    source, path = _saved_backbone(tmp_path, "VGG16", (32, 32, 3))
    rows = _cli([
        "--model=keras:VGG16", f"--weights={path}", "--augment=paper", "--freeze_backbone_epochs=1",
        f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'runs'}", "--epochs=1", "--batch_size=16",
        "--steps_per_epoch=2", "--image_size=32",
    ])  # fmt: skip
    assert rows[0]["model"] == "keras:VGG16" and rows[0]["steps"] == 2
    run = tmp_path / "runs" / "keras_VGG16"
    config = files.read_json(str(run / RunFolder.RUN_CONFIG))
    assert (config["weights"], config["augment"], config["augment_skip_unfit"], config["freeze_backbone_epochs"]) == (
        path, "paper", False, 1
    )
    model = keras.models.load_model(str(run / "model.keras"))
    backbone = model.get_layer("backbone")
    # The frozen epoch kept the file's weights; the paper's preset replaced blocks 3-5 (8x8, 4x4, 2x2).
    assert sorted(_augmented(model)) == [f"block{b}_conv{c}" for b in (3, 4, 5) for c in (1, 2, 3)]
    np.testing.assert_array_equal(backbone.get_layer("block1_conv1").kernel.numpy(), source.get_layer("block1_conv1").kernel.numpy())
    branch = backbone.get_layer("block4_conv2").conv
    np.testing.assert_array_equal(branch.kernel.numpy(), source.get_layer("block4_conv2").kernel.numpy()[..., : branch.filters])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model=aa_small", "--weights=none"], "`--weights`: it applies to keras:<Name> models only.*'aa_small'"),
        (["--model=conv_small", "--augment=all"], "`--augment`: it applies to keras:<Name> models only"),
        (["--model=conv_small", "--freeze_backbone_epochs=1"], "freezes a pretrained backbone for 1 epoch"),
        (["--recipe=finetune", "--model=aa_small"], "freezes a pretrained backbone.*--freeze_backbone_epochs=0"),
        (["--model=keras:ResNet5"], r"\['keras:ResNet5'\] name no keras.applications network"),
        (["--model=keras:ResNet50", "--weights=nothing.h5"], "`--weights`: 'nothing.h5' is not 'imagenet', 'none'"),
        (["--task=detection", "--augment=all"], "`--augment`: it applies to --task=classification only"),
    ],
)
def test_cli_errors_for_the_keras_flags(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        _cli([*argv, f"--model_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "field, before, after",
    [("weights", None, "/w.weights.h5"), ("augment", "paper", "all"), ("augment_skip_unfit", False, True)],
)
def test_a_changed_keras_setting_is_refused_on_resume(tmp_path, field, before, after):
    def start(**options):
        return start_run(settings_for(
            "classification", "keras:ResNet50", str(tmp_path), recipes.get_recipe("finetune"), checkpoint_steps=10,
            steps_per_epoch=None, mixed_precision=None, allow_changed_settings=True, seed=0, model_options=options,
        )).config  # fmt: skip

    base = dict(weights="imagenet", augment="paper", augment_skip_unfit=False)
    files.write_json(str(tmp_path / RunFolder.RUN_CONFIG), start(**{**base, field: before}))
    with pytest.raises(ValueError, match=rf"holds a run with {field}=.*this run has {field}="):
        start(**{**base, field: after})
    with pytest.raises(ValueError, match="holds a run with freeze_backbone_epochs=1.*freeze_backbone_epochs=2"):
        start_run(settings_for(
            "classification", "keras:ResNet50", str(tmp_path), recipes.get_recipe("finetune", freeze_backbone_epochs=2),
            checkpoint_steps=10, steps_per_epoch=None, mixed_precision=None, allow_changed_settings=True, seed=0,
            model_options={**base, field: before},
        ))  # fmt: skip
