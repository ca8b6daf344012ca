"""Resuming from the newest intact checkpoint of a run, whatever damage the others have.

The trainer's checkpoints are `ckpt-<step>.index` and `ckpt-<step>.data-*` files in
`<model_dir>/checkpoints`, listed by TensorFlow's state file `checkpoint`. A kill, a full disk or
a bad copy can leave the state file unreadable, an index missing or a data file truncated or
overwritten. `restore_newest` does not trust the state file: it scans the files, restores the
newest checkpoint that restores completely, and moves the damaged ones (and a state file that
does not name the restored checkpoint) aside into `checkpoints/damaged/<time>/`, never deleting
them, so that later saves cannot overwrite them and they stay for inspection.
"""

import contextlib
import dataclasses
import glob
import os
import re
import shutil
import time

import tensorflow as tf

STATE_FILE = "checkpoint"
DAMAGED = "damaged"
_CHECKPOINT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")


class IncompatibleCheckpoint(ValueError):
    """A checkpoint that restores, but not into this model and optimizer."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """What `restore_newest` found.

    Attributes:
        path: the restored checkpoint's prefix, or None when the folder had none (a new run).
        damaged: {prefix: reason} of the newer checkpoints that did not restore.
        stale_state: the state file was unreadable or did not name the restored checkpoint.
        moved_to: the folder the damaged files (and a stale state file) were moved into, or None.
    """

    path: str = None
    damaged: dict = dataclasses.field(default_factory=dict)
    stale_state: bool = False
    moved_to: str = None


def checkpoint_files(directory):
    """{step: [file names]} of the `ckpt-<step>.*` files in `directory`."""
    files = {}
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        match = _CHECKPOINT_FILE.match(name)
        if match:
            files.setdefault(int(match.group(1)), []).append(name)
    return files


def remove_partial(directory, step):
    """Removes what a failed save of the checkpoint of `step` left in `directory` (a full disk, a
    folder made read-only): its `ckpt-<step>_temp*` folders and its `ckpt-<step>.*` files. Older
    checkpoints and the state file are untouched."""
    for path in glob.glob(os.path.join(glob.escape(directory), f"ckpt-{step}_temp*")):
        shutil.rmtree(path, ignore_errors=True)
    for name in checkpoint_files(directory).get(step, ()):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, name))


def _missing_part(names):
    """Why a checkpoint's files are incomplete, or None."""
    if not any(name.endswith(".index") for name in names):
        return "its .index file is missing"
    data = [name for name in names if ".data-" in name]
    if not data:
        return "its .data file is missing"
    shards = int(data[0].rsplit("-of-", 1)[1])
    if len(data) != shards:
        return f"{shards - len(data)} of its {shards} .data files are missing"
    return None


def _state_names(directory):
    """The checkpoint the state file names as the latest, or None if it names none or is unreadable."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 - an unreadable state file is what this module recovers from
        return None
    return os.path.basename(state.model_checkpoint_path) if state and state.model_checkpoint_path else None


def restore_newest(checkpoint, directory, move_damaged=True):
    """Restores `checkpoint` from the newest intact `ckpt-<step>` in `directory`.

    Args:
        checkpoint: a `tf.train.Checkpoint` whose objects (model, optimizer) are built.
        directory: the run's checkpoint folder (may be absent).
        move_damaged: move damaged files aside and rewrite the state file to list the intact
            checkpoints (the chief); False only reads (the other workers of a cluster).

    Returns:
        A `Restored`.

    Raises:
        ValueError: checkpoint files exist but none restores (nothing is moved), or
            `IncompatibleCheckpoint`: the newest intact one belongs to another model.
    """
    files = checkpoint_files(directory)
    damaged, restored = {}, None
    for step in sorted(files, reverse=True):
        prefix = os.path.join(directory, f"ckpt-{step}")
        reason = _missing_part(files[step])
        if reason is None:
            try:
                checkpoint.restore(prefix).assert_existing_objects_matched()
                restored = prefix
                break
            except AssertionError as error:
                raise IncompatibleCheckpoint(
                    f"The checkpoint {prefix} does not match this model and optimizer ({str(error)[:300]}). "
                    "Train into a new --model_dir, or use the code that wrote it."
                ) from None
            except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as error:
                reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        damaged[prefix] = reason
    if restored is None and damaged:
        listing = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in damaged.items())
        raise ValueError(
            f"No intact checkpoint in {directory} ({listing}). Nothing was written or moved. To start a new "
            "run, move that folder's run elsewhere or pass a new --model_dir."
        )
    moved_to = None
    stale_state = restored is not None and _state_names(directory) != os.path.basename(restored)
    if move_damaged and (damaged or stale_state):
        moved_to = _move_aside(directory, list(damaged), stale_state)
        # The state file lists the checkpoints up to the restored one, for the manager's rotation.
        kept = [os.path.join(directory, f"ckpt-{step}") for step in sorted(files) if step <= restored_step(restored)]
        tf.compat.v1.train.update_checkpoint_state(directory, restored, all_model_checkpoint_paths=kept)
    return Restored(path=restored, damaged=damaged, stale_state=stale_state, moved_to=moved_to)


def restored_step(prefix):
    """The step of a `.../ckpt-<step>` prefix."""
    return int(prefix.rsplit("-", 1)[1])


def _move_aside(directory, prefixes, state_file):
    """Moves the files of `prefixes` (and the state file) into a new `damaged/<time>` folder."""
    target = os.path.join(directory, DAMAGED, time.strftime("%Y%m%d-%H%M%S"))
    while os.path.exists(target):
        target += "+"
    os.makedirs(target)
    for prefix in prefixes:
        for path in glob.glob(glob.escape(prefix) + ".*"):
            shutil.move(path, target)
    if state_file and os.path.exists(os.path.join(directory, STATE_FILE)):
        shutil.move(os.path.join(directory, STATE_FILE), target)
    return target


def error_reason(error):
    """What went wrong, in a few words, from an OS or TensorFlow error: "No space left on
    device", "Permission denied"... (TensorFlow puts it after the file name and a "; ")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    message = str(getattr(error, "message", error)).strip()
    message = message.splitlines()[0] if message else type(error).__name__
    return re.sub(r"\s*\[Op:\w+\]$", "", message.rsplit("; ", 1)[-1])
