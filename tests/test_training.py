"""The trainer: recipes, schedule, input pipelines, the loop (resume, NaN, distribution,
mixed precision) and the CLI."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.applications import small_nets
from aa_keras.data import classification as data
from aa_keras.programs.run_folder import RunFolder
from aa_keras.training import classification, distribute, recipes, train
from aa_keras.training.checkpoints import checkpoint_files
from aa_keras.training.schedules import WarmupDecay
from aa_keras.training.settings import settings_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(name, input_shape, classes):
    return {"aa_small": small_nets.aa_small_net, "conv_small": small_nets.conv_small_net}[name](input_shape, classes)


def _tiny_recipe(**overrides):
    return recipes.get_recipe("quick", **{"epochs": 1, "global_batch_size": 16, **overrides})


def _train(model_dir, data_dir, model="conv_small", strategy=None, steps=3, **kwargs):
    recipe = kwargs.pop("recipe", _tiny_recipe())
    return classification.train(
        strategy or tf.distribute.get_strategy(),
        settings_for(
            "classification", model, str(model_dir), recipe, data_dir=data_dir, steps_per_epoch=steps, verbose=False,
            model_fn=_small, **kwargs,
        ),
    )


# Recipes and schedule.


def test_paper_recipes_hold_the_papers_settings():
    imagenet = recipes.get_recipe("paper_imagenet")
    assert (imagenet.epochs, imagenet.optimizer, imagenet.momentum, imagenet.weight_decay) == (100, "sgd", 0.9, 1e-4)
    assert imagenet.peak_learning_rate == pytest.approx(0.128 * imagenet.global_batch_size / 256)
    assert (imagenet.schedule, imagenet.decay_epochs, imagenet.warmup_fraction) == ("step", (30, 60, 80, 90), 0.05)
    assert (imagenet.image_size, imagenet.preprocessing) == (224, "inception")
    cifar = recipes.get_recipe("paper_cifar100", global_batch_size=512)
    assert (cifar.epochs, cifar.schedule, cifar.preprocessing, cifar.dataset) == (500, "cosine", "cifar", "cifar100")
    assert cifar.peak_learning_rate == pytest.approx(0.2 * 2)


def test_recipe_overrides_are_validated():
    assert recipes.get_recipe("quick", epochs=7, optimizer=None).epochs == 7
    with pytest.raises(ValueError, match="recipe=.nope."):
        recipes.get_recipe("nope")
    with pytest.raises(ValueError, match="Unknown recipe fields"):
        recipes.get_recipe("quick", epoch=3)
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        recipes.get_recipe("quick", optimizer="rmsprop")
    with pytest.raises(ValueError, match="decay_epochs"):
        recipes.get_recipe("paper_imagenet", epochs=50)


def test_warmup_then_step_and_cosine():
    step = WarmupDecay(peak=2.0, total_steps=100, warmup_steps=10, decay="step", boundaries=(30, 60), decay_factor=0.1)
    assert float(step(0)) == pytest.approx(2.0 / 10)
    assert float(step(4)) == pytest.approx(2.0 * 5 / 10)
    assert float(step(10)) == pytest.approx(2.0)
    assert float(step(29)) == pytest.approx(2.0)
    assert float(step(30)) == pytest.approx(2.0 * 0.1)
    assert float(step(99)) == pytest.approx(2.0 * 0.1**2)
    cosine = WarmupDecay(peak=1.0, total_steps=110, warmup_steps=10, decay="cosine")
    assert float(cosine(10)) == pytest.approx(1.0)
    assert float(cosine(60)) == pytest.approx(0.5)
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-7)
    assert WarmupDecay.from_config(cosine.get_config()).get_config() == cosine.get_config()
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupDecay(peak=1.0, total_steps=10, warmup_steps=10)


# Input pipelines.


@pytest.mark.parametrize("preprocessing, size, randaugment", [("cifar", 32, 0), ("inception", 48, 5), ("none", 24, 0)])
def test_tfds_pipelines_on_mock_cifar10(preprocessing, size, randaugment):
    with tfds.testing.mock_data(num_examples=12):
        dataset = data.build_dataset(
            "cifar10",
            "train",
            size,
            global_batch_size=4,
            training=True,
            preprocessing=preprocessing,
            randaugment_magnitude=randaugment,
        )
        batches = list(dataset)
    assert len(batches) == 3
    for images, labels in batches:
        assert images.shape == (4, size, size, 3) and images.dtype == tf.float32
        assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
        assert labels.dtype == tf.int32 and bool(tf.reduce_all((labels >= 0) & (labels < 10)))


def test_input_context_shards_and_splits_the_batch():
    with tfds.testing.mock_data(num_examples=16):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
        images, _ = next(iter(data.build_dataset("cifar10", "train", 32, global_batch_size=8, input_context=context)))
        assert images.shape[0] == 2
        with pytest.raises(ValueError, match="global_batch_size=6.*4 replicas"):
            data.build_dataset("cifar10", "train", 32, global_batch_size=6, input_context=context)


def test_missing_datasets_say_how_to_get_them(tmp_path):
    with pytest.raises(ValueError, match=f"tfds build cifar10 --data_dir={tmp_path}"):
        data.build_dataset("cifar10", "train", 32, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="manual_dir"):
        data.build_dataset("imagenet2012", "train", 224, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not_a_dataset"):
        data.build_dataset("not_a_dataset", "train", 32)


# Networks.


def test_small_networks_match_in_parameters():
    aa, conv = small_nets.aa_small_net((32, 32, 3), 2), small_nets.conv_small_net((32, 32, 3), 2)
    assert abs(aa.count_params() - conv.count_params()) / aa.count_params() < 0.02
    assert any(type(layer).__name__ == "AttentionAugmentation2D" for layer in aa.layers)
    assert not any(type(layer).__name__ == "AttentionAugmentation2D" for layer in conv.layers)
    assert aa(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 2)
    with pytest.raises(ValueError, match="classes=1"):
        small_nets.aa_small_net((32, 32, 3), 1)


# The loop.


def test_run_writes_artifacts_that_reload(tmp_path, data_dir):
    # 2000 test images in batches of 48: the last evaluation batch is padded with zero weights.
    model, metrics = _train(tmp_path, data_dir, model="aa_small", checkpoint_steps=2, recipe=_tiny_recipe(global_batch_size=48))
    assert metrics["steps"] == 3 and metrics["finished"] and metrics["params"] == model.count_params()
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["eval", "train"]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-3")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    reloaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    test = data.build_dataset("glyph_pairs", "test", 32, global_batch_size=100, data_dir=data_dir)
    correct = sum(int(np.sum(np.argmax(reloaded.predict_on_batch(x), -1) == y.numpy())) for x, y in test)
    assert metrics["test_accuracy"] == pytest.approx(correct / 2000, abs=1e-9)
    images = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(reloaded(images), model(images), atol=1e-5)


def test_weight_decay_adds_half_l2_of_the_kernels_to_the_loss(tmp_path, data_dir):
    losses = {}
    for decay in (0.0, 0.1):
        keras.utils.set_random_seed(3)
        _, metrics = _train(tmp_path / str(decay), data_dir, steps=1, recipe=_tiny_recipe(optimizer="sgd", weight_decay=decay))
        losses[decay] = metrics["history"][0]["train_loss"]
    keras.utils.set_random_seed(3)
    initial = _small("conv_small", (32, 32, 3), 2)
    l2 = sum(float(np.sum(np.square(v.numpy()))) for v in initial.trainable_variables if v.name == "kernel")
    assert losses[0.1] - losses[0.0] == pytest.approx(0.5 * 0.1 * l2, rel=1e-4)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    _train(tmp_path, data_dir, steps=2, recipe=_tiny_recipe(optimizer="adam", epochs=1))
    metrics_before = (tmp_path / "metrics.json").read_text()
    diverging = _tiny_recipe(optimizer="adam", epochs=3, learning_rate=1e30, warmup_fraction=0.0)
    with pytest.raises(FloatingPointError, match=r"(non-finite before|loss is \S+ at) step (\d+)") as error:
        _train(tmp_path, data_dir, steps=2, recipe=diverging, checkpoint_steps=1, allow_changed_settings=True)
    bad_step = int(re.search(r"step (\d+)", str(error.value)).group(1))
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest in str(error.value) and 2 <= int(latest.rsplit("-", 1)[1]) < bad_step
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name
    assert (tmp_path / "metrics.json").read_text() == metrics_before


def test_a_different_run_in_the_same_model_dir_is_refused(tmp_path, data_dir):
    _train(tmp_path, data_dir, steps=1)
    config = (tmp_path / RunFolder.RUN_CONFIG).read_text()
    with pytest.raises(ValueError, match="model='conv_small'.*model='aa_small'"):
        _train(tmp_path, data_dir, model="aa_small", steps=1)
    assert (tmp_path / RunFolder.RUN_CONFIG).read_text() == config


def test_kill_9_then_rerun_resumes_from_the_last_checkpoint(tmp_path, data_dir):
    command = [
        sys.executable, "-m", "aa_keras.training.train", "--model=conv_small", f"--data_dir={data_dir}",
        f"--model_dir={tmp_path}", "--epochs=2", "--batch_size=16", "--steps_per_epoch=40",
        "--checkpoint_steps=2",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "conv_small" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        latest = tf.train.latest_checkpoint(str(checkpoints))
        if latest and int(latest.rsplit("-", 1)[1]) >= 4:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The state file may lag the files: a kill between writing ckpt-N and listing it leaves ckpt-N
    # intact but unlisted, and the rerun resumes from the newest intact files, not from the list.
    listed = int(tf.train.latest_checkpoint(str(checkpoints)).rsplit("-", 1)[1])
    killed_at = max(step for step, names in checkpoint_files(str(checkpoints)).items()
                    if any(name.endswith(".index") for name in names))  # fmt: skip
    assert killed_at >= listed
    assert not (tmp_path / "conv_small" / "metrics.json").exists() or killed_at >= 40
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "conv_small" / "metrics.json").read_text())
    assert metrics["resumed_at_steps"] == [killed_at] and metrics["steps"] == 80
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert "conv_small" in result.stdout and "test accuracy" in result.stdout


def test_mirrored_over_two_cpus_matches_one_device(tmp_path, data_dir, mirrored_strategy):
    mirrored = mirrored_strategy
    keras.utils.set_random_seed(1)
    initial = [w.numpy() for w in _small("conv_small", (32, 32, 3), 2).trainable_weights]
    keras.utils.set_random_seed(1)
    two, metrics = _train(tmp_path / "two", data_dir, strategy=mirrored, steps=2)
    keras.utils.set_random_seed(1)
    one, _ = _train(tmp_path / "one", data_dir, steps=2)
    assert metrics["steps"] == 2
    assert not all(np.allclose(w.numpy(), w0) for w, w0 in zip(one.trainable_weights, initial))
    # The same global batches, split over two replicas, give the same update as on one device
    # (BatchNormalization normalises each replica's half-batch, so the match is approximate).
    for w2, w1 in zip(two.trainable_weights, one.trainable_weights):
        np.testing.assert_allclose(w2.numpy(), w1.numpy(), atol=5e-3)
    with pytest.raises(ValueError, match="global_batch_size=15.*2 replicas"):
        _train(tmp_path / "odd", data_dir, strategy=mirrored, recipe=_tiny_recipe(global_batch_size=15))


@pytest.mark.parametrize("policy", ["bfloat16", "float16"])
def test_mixed_precision_trains(tmp_path, data_dir, policy):
    model, metrics = _train(tmp_path, data_dir, steps=2, mixed_precision=policy)
    assert model.layers[1].compute_dtype == policy and model.layers[-1].compute_dtype == "float32"
    assert metrics["steps"] == 2 and np.isfinite(metrics["test_loss"])
    assert keras.config.dtype_policy().name == "float32"


def test_cli_trains_and_prints_the_comparison(tmp_path, data_dir, capsys):
    train.FLAGS(["train", "--model=conv_small,aa_small", f"--data_dir={data_dir}", f"--model_dir={tmp_path}",
                 "--epochs=1", "--batch_size=16", "--steps_per_epoch=1"])  # fmt: skip
    try:
        rows = train.run(["train"])
    finally:
        train.FLAGS.unparse_flags()
    assert [row["model"] for row in rows] == ["conv_small", "aa_small"]
    table = capsys.readouterr().out.splitlines()[-3:]
    assert table[0].split() == ["model", "params", "test", "accuracy", "train", "time"]
    assert table[1].split()[:2] == ["conv_small", f"{rows[0]['params']:,}"]
    assert (tmp_path / "aa_small" / "model.keras").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="horovod"), "strategy='horovod'"),
        (dict(name="mirrored", num_gpus=-1), "num_gpus=-1"),
        (dict(name="tpu"), "strategy='tpu' needs a TPU address"),
        (dict(name="default", devices=["CPU:0"]), "only valid with strategy='mirrored'"),
        (dict(name="mirrored", devices=["CPU:0", "/cpu:0"]), "names a device twice"),
    ],
)
def test_strategy_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        distribute.create_strategy(**kwargs)
