"""Atomic writes of a run's outputs, and the guard that keeps one model_dir to one run."""

import json
import os
import tempfile

RUN_CONFIG = "run_config.json"
# Fields that make a checkpoint incompatible with another run when they change.
IDENTITY_FIELDS = ("model", "dataset", "image_size", "optimizer", "mixed_precision")


def write_json(path, obj):
    """Writes `obj` as JSON to `path` atomically: a reader sees the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def save_model(model, path):
    """`model.save(path)` atomically (`path` ends with .keras)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_run_config(model_dir, config):
    """Raises a ValueError when `model_dir` already holds a run whose identity differs from
    `config`; returns True when it holds a run at all (so training resumes)."""
    stored = read_json(os.path.join(model_dir, RUN_CONFIG))
    if stored is None:
        return False
    for field in IDENTITY_FIELDS:
        if stored.get(field) != config.get(field):
            raise ValueError(
                f"model_dir {model_dir!r} holds a run with {field}={stored.get(field)!r}, but this run has "
                f"{field}={config.get(field)!r}. Re-run with the same flags to resume it, or pass a new "
                "--model_dir for a new run; nothing was written."
            )
    return True
