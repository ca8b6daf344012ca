"""The guard that keeps one model_dir to one run: the folder must be writable, and a run found
there is resumed only with the same settings (the run folder's layout: `aa_keras.programs.run_folder`)."""

import json
import os
import tempfile

from aa_keras.programs.run_folder import RunFolder

# Fields that make a checkpoint incompatible with another run when they change.
IDENTITY_FIELDS = (
    "model", "dataset", "image_size", "optimizer", "mixed_precision",
    # The network and fine-tuning settings of a "keras:<Name>" model.
    "weights", "augment", "augment_skip_unfit", "freeze_backbone_epochs",
)
# Fields that a resumed run may change without `allow_changed_settings`: a longer run, and the
# images of the end-of-run BatchNormalization re-estimation (which training does not depend on).
FREE_FIELDS = ("epochs", "batch_norm_images")


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
        (the run_config.json stored there, or None for a new run; {field: (stored value, new
        value)} of the fields that changed).

    Raises:
        ValueError: an identity field differs (the checkpoints do not fit this run), or another
            field differs and `allow_changed_settings` is False; nothing was written.
    """
    stored = RunFolder(model_dir).read_run_config()
    if stored is None:
        return None, {}
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
            f"{RunFolder.RUN_CONFIG}), or pass a new --model_dir; nothing was written."
        )
    return stored, changed
