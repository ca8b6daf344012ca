"""A run folder's records: atomic writes, the run's log, and the guard that keeps one model_dir
to one run."""

import json
import os
import tempfile
import time

from absl import logging

RUN_CONFIG = "run_config.json"
RUN_LOG = "train.log"
# The dataset's class names, one a line in index order, in a run folder and an export folder.
LABELS = "labels.txt"
# Fields that make a checkpoint incompatible with another run when they change.
IDENTITY_FIELDS = (
    "model", "dataset", "image_size", "optimizer", "mixed_precision",
    # The network and fine-tuning settings of a "keras:<Name>" model.
    "weights", "augment", "augment_skip_unfit", "freeze_backbone_epochs",
)
# Fields that a resumed run may change without `allow_changed_settings` (a longer run).
FREE_FIELDS = ("epochs",)


def _publish(tmp, path):
    """Gives `tmp` the mode of a file created under the umask, then renames it to `path`
    (`mkstemp` makes files private, but a run's outputs are read by TensorBoard or a server)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_text(path, text):
    """Writes the string `text` to `path` atomically: a reader sees the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    """Writes `obj` as JSON to `path` atomically: a reader sees the old file or the new one."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def write_labels(path, names):
    """Writes the class names `names` to `path` atomically, one a line in index order."""
    names = [str(name) for name in names]
    bad = [name for name in names if not name or "\n" in name or name != name.strip()]
    if not names or bad:
        raise ValueError(
            f"Invalid class names: received {names[:5]}..., expected non-empty names without line breaks or "
            "surrounding spaces, one per class."
        )
    write_text(path, "".join(f"{name}\n" for name in names))


def read_labels(path):
    """The class names in the labels file `path` (see `write_labels`), or None if there is no
    such file; a ValueError naming the file if it holds no names or an empty line."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        names = f.read().splitlines()
    if not names or not all(name.strip() for name in names):
        raise ValueError(f"{path} is damaged: expected one class name per line, no empty lines; it has {names[:5]}.")
    return names


def stored_labels(model_path):
    """The class names stored with the model file or folder `model_path`: the `labels.txt` in
    the folder that holds it (the run folder of `<run>/model.keras`; the export folder of
    `<export>/model_float32.tflite` or `<export>/saved_model`), or None."""
    return read_labels(os.path.join(os.path.dirname(os.path.abspath(model_path.rstrip(os.sep))), LABELS))


def resolve_labels(model_path, stored, classes, dataset=None, dataset_names=None):
    """The class names of a model with `classes` outputs, by the rule of every command: the names
    `stored` with the model (`stored_labels`, or an export's own), else those of the dataset,
    else None (the commands then name classes by index) with a warning.

    Args:
        model_path: the model, for messages.
        stored: names stored with the model, or None.
        classes: the model's number of classes; None when not known (an exported detector).
        dataset, dataset_names: the dataset's name and class names, or None.

    Raises:
        ValueError: the names found are not one per class of the model.
    """
    for names, source in ((stored, f"the {LABELS} stored with {model_path!r}"), (dataset_names, f"dataset {dataset!r}")):
        if names is None:
            continue
        if classes is not None and len(names) != classes:
            raise ValueError(
                f"{source} has {len(names)} class names, but the model {model_path!r} has {classes} classes; "
                "pass the dataset it was trained on."
            )
        return list(names)
    logging.warning(
        f"No class names for {model_path!r}: no {LABELS} is stored with it and no --dataset was given; "
        "classes are named by their index."
    )
    return None


def read_json(path, default=None):
    """The JSON in `path`, or `default` if there is no such file; a ValueError naming the file
    if it is not valid JSON."""
    if not os.path.exists(path):
        return default
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is damaged (not valid JSON: {error}). Move it aside to let the run continue without it, "
            "or restore it from a copy."
        ) from None


def save_model(model, path):
    """`model.save(path)` atomically (`path` ends with .keras)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def log(model_dir, message):
    """Appends `message`, with the time, to the run's log `model_dir/train.log`."""
    with open(os.path.join(model_dir, RUN_LOG), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def check_model_dir(model_dir):
    """Raises a ValueError with one clear line unless `model_dir` is a writable folder or can be
    made one; creates nothing."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"Invalid `--model_dir`: {model_dir!r} exists and is not a folder.")
    existing = os.path.abspath(model_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.TemporaryFile(dir=existing):  # Permissions say little to root; a write says all.
            pass
    except OSError as error:
        raise ValueError(f"Invalid `--model_dir`: {model_dir!r} cannot be written: {error.strerror}.") from None


def changed_fields(stored, config):
    """{field: (stored value, new value)} of the fields of `config` that differ in `stored`;
    fields that `stored` lacks (an older run_config.json) are not compared."""
    return {
        field: (stored[field], value)
        for field, value in config.items()
        if field in stored and field != "changes" and _jsonable(stored[field]) != _jsonable(value)
    }


def _jsonable(value):
    """`value` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def check_run_config(model_dir, config, allow_changed_settings=False):
    """Checks `config` against the run that `model_dir` holds, if any.

    Returns:
        The run_config.json stored there, or None for a new run.

    Raises:
        ValueError: an identity field differs (the checkpoints do not fit this run), or another
            field differs and `allow_changed_settings` is False; nothing was written.
    """
    stored = read_json(os.path.join(model_dir, RUN_CONFIG))
    if stored is None:
        return None
    changed = changed_fields(stored, config)
    for field in IDENTITY_FIELDS:
        if field in changed:
            raise ValueError(
                f"model_dir {model_dir!r} holds a run with {field}={stored.get(field)!r}, but this run has "
                f"{field}={config.get(field)!r}. Re-run with the same flags to resume it, or pass a new "
                "--model_dir for a new run; nothing was written."
            )
    settings = {field: values for field, values in changed.items() if field not in FREE_FIELDS}
    if settings and not allow_changed_settings:
        listing = ", ".join(f"{field}: {old!r} -> {new!r}" for field, (old, new) in settings.items())
        raise ValueError(
            f"model_dir {model_dir!r} holds a run with other settings ({listing}). Re-run with the run's settings "
            "to resume it, pass --allow_changed_settings to continue it with the new ones (recorded in "
            f"{RUN_CONFIG}), or pass a new --model_dir; nothing was written."
        )
    return stored
