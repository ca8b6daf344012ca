"""The trainer's end of run: BatchNormalization statistics re-estimated before the final
evaluation and model.keras, the warning on a test accuracy far below training, and the run's
faults that end in one line (Ctrl-C, a failed checkpoint save, --epochs below a finished run)."""

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

from aa_keras.applications import recalibrate_batch_norm
from aa_keras.data import classification as data
from aa_keras.programs.files import load_keras_file
from aa_keras.programs.run_folder import RunFolder
from aa_keras.training import classification, recipes, trainer
from aa_keras.training.settings import settings_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
    """Three classes of noisy 32x32 images, told apart by their brighter channel: 100 training
    and 33 test images each. A few steps learn them; the moving statistics lag far behind."""
    root = tmp_path_factory.mktemp("colors")
    rng = np.random.RandomState(0)
    for split, count in (("train", 100), ("test", 33)):
        for label in range(3):
            for index in range(count):
                image = rng.uniform(0, 120, (32, 32, 3))
                image[..., label] += 110
                path = root / split / f"class{label}" / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                tf.io.write_file(str(path), tf.io.encode_png(image.astype(np.uint8)))
    return f"image_folder:{root}"


def _recipe(dataset, **overrides):
    return recipes.get_recipe("quick", **{"dataset": dataset, "epochs": 2, "global_batch_size": 16, **overrides})


def _train(model_dir, recipe, **kwargs):
    keras.utils.set_random_seed(0)
    return classification.train(
        tf.distribute.get_strategy(),
        settings_for("classification", "conv_small", str(model_dir), recipe, verbose=False, **kwargs),
    )


def test_a_short_run_evaluates_as_it_trained(color_folder, tmp_path):
    _, metrics = _train(tmp_path / "on", _recipe(color_folder))
    assert metrics["steps"] == 36
    assert metrics["history"][-1]["train_accuracy"] > 0.9
    assert metrics["test_accuracy"] > 0.9  # Chance is 1/3.
    assert metrics["batch_norm"]["images"] == 300 and metrics["batch_norm"]["layers"] == 5
    assert set(metrics["batch_norm"]["before"]) == {"test_loss", "test_accuracy"}
    log = open(RunFolder(str(tmp_path / "on")).file("train.log")).read()
    assert "re-estimating the BatchNormalization statistics over the first 300 training images" in log
    assert "Re-estimated 5 BatchNormalization layers over 300 images" in log

    # Off: the moving statistics of training stay; re-estimating them as the trainer does gives
    # its model.keras.
    _, off = _train(tmp_path / "off", _recipe(color_folder, batch_norm_images=0))
    assert "batch_norm" not in off
    assert off["test_accuracy"] == metrics["batch_norm"]["before"]["test_accuracy"]
    model = load_keras_file(str(tmp_path / "off" / "model.keras"))
    recalibrate_batch_norm(model, data.build_dataset(color_folder, "train", 32, global_batch_size=16))
    trained = load_keras_file(str(tmp_path / "on" / "model.keras"))
    for got, want in zip(model.get_weights(), trained.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # Re-running the finished run changes nothing: the same statistics again.
    _, again = _train(tmp_path / "on", _recipe(color_folder))
    assert again["test_accuracy"] == metrics["test_accuracy"]
    rerun = load_keras_file(str(tmp_path / "on" / "model.keras"))
    for got, want in zip(rerun.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(got, want)

    # --epochs below the finished run's is refused, and nothing is written.
    before = {name: os.path.getmtime(tmp_path / "on" / name) for name in ("model.keras", "metrics.json", "run_config.json")}
    with pytest.raises(ValueError, match=r"past --epochs=1: it reached step 36 .*Pass --epochs=2 or more.*nothing was written"):
        _train(tmp_path / "on", _recipe(color_folder, epochs=1))
    assert before == {name: os.path.getmtime(tmp_path / "on" / name) for name in before}
    assert json.load(open(tmp_path / "on" / "metrics.json"))["epochs"] == 2


def test_a_test_accuracy_far_below_training_is_warned_of():
    warnings = []
    trainer._warn_far_below_training(0.95, 0.12, warnings.append, "aa_small")
    assert len(warnings) == 1
    assert "test accuracy 12.0% is far below the last training accuracy 95.0%" in warnings[0]
    assert "BatchNormalization" in warnings[0] and "preprocessing" in warnings[0]
    for train_accuracy, test_accuracy in ((0.95, 0.70), (0.75, 0.10), (None, 0.1)):
        trainer._warn_far_below_training(train_accuracy, test_accuracy, warnings.append, "aa_small")
    assert len(warnings) == 1


def test_ctrl_c_says_where_a_rerun_resumes(color_folder, tmp_path, monkeypatch):
    calls = []
    update = keras.utils.Progbar.update

    def interrupt_at_the_fifth_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return update(self, *args, **kwargs)

    monkeypatch.setattr(keras.utils.Progbar, "update", interrupt_at_the_fifth_step)
    with pytest.raises(trainer.Interrupted, match=r"conv_small interrupted at step 5; re-run the same command to resume "
                                               r"from .*checkpoints/ckpt-3\."):
        _train(tmp_path, _recipe(color_folder), checkpoint_steps=3)
    monkeypatch.setattr(keras.utils.Progbar, "update", update)
    _, metrics = _train(tmp_path, _recipe(color_folder, epochs=1), checkpoint_steps=3)
    assert metrics["resumed_at_steps"] == [3] and metrics["steps"] == 18


def test_a_failed_checkpoint_save_leaves_no_partial_files(color_folder, tmp_path, monkeypatch):
    save = tf.train.CheckpointManager.save

    def full_disk_at_step_4(self, checkpoint_number=None, **kwargs):
        if checkpoint_number == 4:
            os.makedirs(os.path.join(self.directory, "ckpt-4_temp"))
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{self.directory}/ckpt-4_temp/part-00000; No space left on device [Op:SaveV2]"
            )
        return save(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk_at_step_4)
    with pytest.raises(OSError, match=r"Could not write the checkpoint of step 4 of conv_small into .*checkpoints "
                                      r"\(No space left on device\); the partial files were removed\..* resumes from "
                                      r".*ckpt-2\.$"):
        _train(tmp_path, _recipe(color_folder), checkpoint_steps=2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"
    ]


def test_ctrl_c_on_the_command_line_is_one_line(color_folder, tmp_path):
    arguments = [
        "--model=conv_small", f"--dataset={color_folder}", f"--model_dir={tmp_path}", "--epochs=50",
        "--batch_size=16", "--checkpoint_steps=2",
    ]  # fmt: skip
    # The run starts as from a shell: Ctrl-C unblocked and handled by Python, whatever this test
    # process inherited or was left with (a child keeps an ignored or blocked SIGINT across exec).
    # PYTHONFAULTHANDLER: a run still going 120 s after Ctrl-C is stopped with SIGABRT, which makes
    # it print every thread's Python stack; the failure then shows where it was.
    start = (
        "import runpy, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
        "signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv = ['train'] + {arguments!r}; runpy.run_module('aa_keras.training.train', run_name='__main__')"
    )
    environment = dict(os.environ, PYTHONFAULTHANDLER="1")
    process = subprocess.Popen([sys.executable, "-c", start], cwd=REPO, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    checkpoints = tmp_path / "conv_small" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not tf.train.latest_checkpoint(str(checkpoints)):
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        with open(f"/proc/{process.pid}/status") as status:
            signals = [line.strip() for line in status if line.startswith("Sig")]
        process.send_signal(signal.SIGABRT)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"the run went on for 120 s after Ctrl-C; its signal state {signals}, the end of its output "
                    f"{stdout[-1500:]!r}, its stacks and stderr:\n{stderr[:3000]}\n...\n{stderr[-6000:]}")  # fmt: skip
    assert process.returncode == 1
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"training\.train: conv_small interrupted at step \d+; re-run the same command to resume "
                        r"from .*/conv_small/checkpoints/ckpt-\d+\.", last), last  # fmt: skip
