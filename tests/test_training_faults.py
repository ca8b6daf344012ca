"""The trainer under faults: damaged checkpoints, a second trainer, missing devices, changed
settings on resume, damaged records and unusable run folders. Each fault is made in a
temporary folder; each test failed before the fix it names."""

import glob
import json
import os
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_training import REPO, _tiny_recipe, _train

from aa_keras.applications import build_model, small_nets
from aa_keras.programs import files
from aa_keras.programs.run_folder import RunFolder
from aa_keras.training import checkpoints, classification, distribute, recipes, run_lock, train
from aa_keras.training.loop import start_run
from aa_keras.training.settings import settings_for


def _saved_checkpoints(directory, count=5):
    """A tf.train.Checkpoint of one variable saved as ckpt-1 .. ckpt-`count` (value = step)."""
    variable = tf.Variable(np.zeros(1000, np.float32))
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=None)
    for step in range(1, count + 1):
        variable.assign(np.full(1000, step, np.float32))
        manager.save(checkpoint_number=step)
    variable.assign(np.zeros(1000, np.float32))
    return checkpoint, variable


def _data_file(directory, step):
    return glob.glob(str(directory / f"ckpt-{step}.data-*"))[0]


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _scribble(path):
    data = bytearray(open(path, "rb").read())
    data[64:192] = np.random.default_rng(0).integers(0, 256, 128, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize(
    "fault, restored_step, damaged_steps",
    [
        ("garbage state file", 5, []),
        ("missing index", 4, [5]),
        ("truncated data", 4, [5]),
        ("random bytes in data", 4, [5]),
        ("two newest damaged", 3, [5, 4]),
    ],
)
def test_restore_newest_skips_damaged_checkpoints_and_moves_them_aside(tmp_path, fault, restored_step, damaged_steps):
    checkpoint, variable = _saved_checkpoints(tmp_path)
    if fault == "garbage state file":
        (tmp_path / checkpoints.STATE_FILE).write_bytes(b"garbage\x00\xff")
    elif fault == "missing index":
        (tmp_path / "ckpt-5.index").unlink()
    elif fault == "truncated data":
        _truncate(_data_file(tmp_path, 5))
    elif fault == "random bytes in data":
        _scribble(_data_file(tmp_path, 5))
    else:
        _truncate(_data_file(tmp_path, 5))
        (tmp_path / "ckpt-4.index").write_bytes(b"not an index")
    restored = checkpoints.restore_newest(checkpoint, str(tmp_path))
    assert restored.path == str(tmp_path / f"ckpt-{restored_step}")
    assert float(variable[0]) == restored_step
    assert [int(p.rsplit("-", 1)[1]) for p in restored.damaged] == damaged_steps
    moved = sorted(os.listdir(restored.moved_to))
    assert all(any(name.startswith(f"ckpt-{step}.") for name in moved) for step in damaged_steps)
    if fault == "garbage state file":
        assert restored.stale_state and moved == [checkpoints.STATE_FILE]
    # The damaged files are out of the way of the next saves, and the state file is sound again.
    assert sorted(checkpoints.checkpoint_files(str(tmp_path))) == list(range(1, restored_step + 1))
    assert tf.train.latest_checkpoint(str(tmp_path)) == restored.path


def test_restore_newest_refuses_when_no_checkpoint_is_intact(tmp_path):
    checkpoint, _ = _saved_checkpoints(tmp_path, count=2)
    for step in (1, 2):
        _truncate(_data_file(tmp_path, step))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match="No intact checkpoint.*ckpt-2: .*ckpt-1: .*Nothing was written or moved"):
        checkpoints.restore_newest(checkpoint, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == before


def test_restore_newest_reads_only_outside_the_chief(tmp_path):
    checkpoint, variable = _saved_checkpoints(tmp_path)
    (tmp_path / "ckpt-5.index").unlink()
    before = sorted(os.listdir(tmp_path))
    restored = checkpoints.restore_newest(checkpoint, str(tmp_path), move_damaged=False)
    assert float(variable[0]) == 4 and restored.moved_to is None
    assert sorted(os.listdir(tmp_path)) == before


def test_trainer_resumes_from_the_newest_intact_checkpoint_and_says_so(tmp_path, data_dir, capsys, caplog):
    """Before: a garbage state file made the trainer start from step 0 over the checkpoints
    (resumed_at_steps [], ckpt-4 and ckpt-5 overwritten), and a corrupt latest data file gave a
    48-line traceback. Now it resumes from the newest intact checkpoint, warns naming the
    damaged files, moves them aside, and says where it resumes (also in train.log)."""
    _train(tmp_path, data_dir, steps=5, checkpoint_steps=1)
    directory = tmp_path / "checkpoints"
    (directory / checkpoints.STATE_FILE).write_bytes(b"garbage")
    _truncate(_data_file(directory, 5))
    capsys.readouterr()
    _, metrics = _train(tmp_path, data_dir, steps=5, checkpoint_steps=1, recipe=_tiny_recipe(epochs=2))
    assert metrics["resumed_at_steps"] == [4] and metrics["steps"] == 10
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    resumed = f"Resuming conv_small from {directory / 'ckpt-4'} (step 4, epoch 1 of 2)"
    assert resumed in capsys.readouterr().out
    assert "ckpt-5" in caplog.text and "Damaged checkpoint files" in caplog.text
    log = (tmp_path / RunFolder.LOG).read_text()
    assert resumed in log and "Damaged checkpoint files" in log
    (moved,) = glob.glob(str(directory / checkpoints.DAMAGED / "*"))
    names = sorted(os.listdir(moved))
    assert names[:2] == [checkpoints.STATE_FILE, "ckpt-5.data-00000-of-00001"] and names[2:] == ["ckpt-5.index"]


def test_trainer_refuses_to_start_over_damaged_checkpoints(tmp_path, data_dir):
    _train(tmp_path, data_dir, steps=2, checkpoint_steps=1)
    for step in (1, 2):
        _truncate(_data_file(tmp_path / "checkpoints", step))
    before = {name: (tmp_path / name).read_bytes() for name in ("run_config.json", "metrics.json")}
    with pytest.raises(ValueError, match="No intact checkpoint"):
        _train(tmp_path, data_dir, steps=2, checkpoint_steps=1, recipe=_tiny_recipe(epochs=2))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not os.path.exists(tmp_path / RunFolder.LOCK)


def _start(model_dir, recipe=None, steps_per_epoch=2, seed=0):
    """`start_run` of a `_train` run (the checks before any training)."""
    return start_run(settings_for(
        "classification", "conv_small", str(model_dir), recipe or _tiny_recipe(), checkpoint_steps=200,
        steps_per_epoch=steps_per_epoch, mixed_precision=None, seed=seed,
    )).config  # fmt: skip


@pytest.mark.parametrize(
    "field, override",
    [
        ("global_batch_size", dict(recipe=_tiny_recipe(global_batch_size=8))),
        ("learning_rate", dict(recipe=_tiny_recipe(learning_rate=0.5))),
        ("seed", dict(seed=7)),
        ("steps_per_epoch", dict(steps_per_epoch=3)),
    ],
)
def test_changed_settings_on_resume_are_refused(tmp_path, field, override):
    """Before: resuming with another --batch_size, --learning_rate, --seed or --steps_per_epoch ran
    on and overwrote run_config.json. (The whole trainer, with the flag, in the next test.)"""
    files.write_json(str(tmp_path / RunFolder.RUN_CONFIG), _start(tmp_path))
    config = (tmp_path / RunFolder.RUN_CONFIG).read_text()
    with pytest.raises(ValueError, match=f"other settings \\({field}: .*--allow_changed_settings"):
        _start(tmp_path, **override)
    assert (tmp_path / RunFolder.RUN_CONFIG).read_text() == config


def test_allowed_changed_settings_are_recorded_and_the_history_stays_whole(tmp_path, data_dir):
    """Before: a new --steps_per_epoch on resume left a gap in the history (epochs [0, 2])."""
    _train(tmp_path, data_dir, steps=4, recipe=_tiny_recipe(epochs=1))
    _, metrics = _train(tmp_path, data_dir, steps=2, recipe=_tiny_recipe(epochs=3), allow_changed_settings=True)
    assert [(h["epoch"], h["end_step"]) for h in metrics["history"]] == [(0, 4), (1, 6), (2, 8)]
    config = json.loads((tmp_path / RunFolder.RUN_CONFIG).read_text())
    assert config["steps_per_epoch"] == 2 and config["epochs"] == 3
    assert config["changes"] == [
        {"step": 4, "fields": {"epochs": {"from": 1, "to": 3}, "steps_per_epoch": {"from": 4, "to": 2}}}
    ]


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path, data_dir, caplog):
    import socket

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "earlier"}
        (tmp_path / RunFolder.LOCK).write_text(json.dumps(lock))
        with pytest.raises(ValueError, match=f"in use by another trainer: process {holder.pid} on host"):
            _train(tmp_path, data_dir, steps=1)
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and taken over.
    _, metrics = _train(tmp_path, data_dir, steps=1)
    assert metrics["steps"] == 1
    assert f"Took over the stale lock of process {holder.pid}" in caplog.text
    assert not (tmp_path / RunFolder.LOCK).exists()


def test_a_lock_held_from_another_host_is_refused(tmp_path):
    (tmp_path / RunFolder.LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "earlier"}))
    with pytest.raises(run_lock.RunLocked, match="host 'elsewhere'.*delete the lock file"):
        with run_lock.run_lock(str(tmp_path)):
            pass


def test_missing_devices_are_an_error_that_lists_the_present_ones():
    with pytest.raises(ValueError, match=r"\['CPU:7'\] do not exist.*present are CPU:0, CPU:1"):
        distribute.create_strategy("mirrored", devices=["CPU:0", "CPU:7"])
    with pytest.raises(ValueError, match="num_gpus=1 but TensorFlow sees 0 GPUs"):
        distribute.create_strategy("one_device", num_gpus=1)


def test_cli_with_gpus_that_do_not_exist_fails_fast(tmp_path):
    """Before: `--strategy=mirrored --num_gpus=2` on a machine without GPUs printed `epoch 1/1`
    and hung."""
    completed = subprocess.run(
        [sys.executable, "-m", "aa_keras.training.train", "--strategy=mirrored", "--num_gpus=2", f"--model_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode != 0
    assert "training.train: Invalid `num_gpus`: num_gpus=2 but TensorFlow sees 0 GPUs" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("record", [RunFolder.RUN_CONFIG, "metrics.json"])
def test_damaged_records_are_named(tmp_path, data_dir, record):
    files.write_json(str(tmp_path / RunFolder.RUN_CONFIG), _start(tmp_path, steps_per_epoch=1))
    (tmp_path / record).write_text('{"model": "conv_sm')
    with pytest.raises(ValueError, match=f"{tmp_path / record} is damaged \\(not valid JSON"):
        _train(tmp_path, data_dir, steps=1)


def test_unusable_model_dir_is_one_clear_line(tmp_path, data_dir):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="`--model_dir`: .* exists and is not a folder"):
        _train(a_file, data_dir, steps=1)
    with pytest.raises(ValueError, match="`--model_dir`: .* cannot be written: Not a directory"):
        _train(a_file / "run", data_dir, steps=1)


def test_written_files_follow_the_umask(tmp_path, data_dir):
    """Before: model.keras, metrics.json and run_config.json were 0600 (mkstemp's mode)."""
    previous = os.umask(0o022)
    try:
        _train(tmp_path, data_dir, steps=1)
    finally:
        os.umask(previous)
    for name in ("model.keras", "metrics.json", RunFolder.RUN_CONFIG):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


# --- `--init_from` faults (refused before a run folder exists) --------------------------------


def test_a_damaged_init_from_file_is_named_and_leaves_no_run_folder(tmp_path, data_dir):
    """Before: a truncated `--init_from` file was "not a Keras 3 `.keras` archive ... or pass a
    builder name such as 'aa_small'", and the run folder was made before the file was read."""
    path = tmp_path / "model.keras"
    small_nets.aa_small_net((32, 32, 3), 2).save(path)
    path.write_bytes(path.read_bytes()[:-100])
    argv = ["train", f"--model_dir={tmp_path / 'runs'}", f"--data_dir={data_dir}", "--model=aa_small", f"--init_from={path}"]
    train.FLAGS(argv)
    try:
        with pytest.raises(ValueError, match=r"^Invalid `init_from`: .*model\.keras' is damaged: a truncated or corrupted") as error:
            train.run(argv[:1])
    finally:
        train.FLAGS.unparse_flags()
    assert "builder" not in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_an_init_from_of_another_network_and_a_too_large_batch_leave_no_run_folder(tmp_path, data_dir):
    """Before: the source was checked against the built network inside the run lock, which had
    already created `<model_dir>/<network>/` (an empty folder was left behind); so was the batch."""
    source = tmp_path / "resnet.keras"
    keras.saving.save_model(build_model("resnet18", (32, 32, 3), 2), source)
    recipe = recipes.get_recipe("quick", epochs=1, global_batch_size=16, train_split="train[:32]")
    with pytest.raises(ValueError, match=r"is another network than 'aa_small'"):
        classification.train(tf.distribute.get_strategy(), settings_for(
            "classification", "aa_small", str(tmp_path / "run"), recipe, data_dir=data_dir, verbose=False,
            init_from=str(source),
        ))  # fmt: skip
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"global_batch_size=64 is larger than the 'train\[:32\]' split"):
        classification.train(tf.distribute.get_strategy(), settings_for(
            "classification", "aa_small", str(tmp_path / "run"), recipes.override(recipe, global_batch_size=64),
            data_dir=data_dir, verbose=False,
        ))  # fmt: skip
    assert not (tmp_path / "run").exists()
