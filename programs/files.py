"""Reading and writing the files of runs and exports: atomic writes, JSON and class-name files
whose errors name the file, and `.keras` models whose errors say what is wrong with them."""

import json
import os
import re
import zipfile
import zlib

import keras
from absl import logging

from aa_keras.atomic_file import write_atomically
from aa_keras.validation import unfit_class_names

# The dataset's class names, one a line in index order, in a run folder and an export folder.
LABELS = "labels.txt"
# The first bytes of a zip archive, such as a `.keras` file.
ZIP_SIGNATURE = b"PK\x03\x04"

def write_text(path, text):
    """Writes the string `text` to `path` atomically: a reader sees the old file or the new one."""

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)

def write_json(path, obj):
    """Writes `obj` as JSON to `path` atomically: a reader sees the old file or the new one."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))

def write_labels(path, names):
    """Writes the class names `names` to `path` atomically, one a line in index order."""
    names = [str(name) for name in names]
    if not names or unfit_class_names(names):
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
    write_atomically(path, model.save)


def load_keras_file(path, name="path", safe_mode=True):
    """The model in the Keras 3 `.keras` archive `path`, uncompiled.

    Args:
        path: the `.keras` file.
        name: the argument that named the file, for the error messages (a program passes its
            flag, such as "--model").
        safe_mode: Keras's safe mode; False lets Keras load Lambda layers (code in the file).

    Raises:
        ValueError naming `name`: the file is missing, is not a `.keras` archive, is damaged (a
        truncated or corrupted archive), holds a Lambda layer (in safe mode) or an unregistered
        custom object, or does not load.
    """
    import aa_keras.applications  # noqa: F401  (registers the aa_keras models and layers for loading)

    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(f"Invalid `{name}`: {path!r} does not exist or is not a file.")
    path = os.fspath(path)
    damaged = (
        f"Invalid `{name}`: {path!r} is damaged: a truncated or corrupted `.keras` archive ({{}}). Save the model "
        "again, or restore the file from a copy."
    )
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as f:
        zip_start = f.read(len(ZIP_SIGNATURE)) == ZIP_SIGNATURE
    if path.endswith(".keras") and zip_start and not is_zip:
        raise ValueError(damaged.format("it starts as a zip archive but its end, the zip directory, is missing"))
    if not path.endswith(".keras") or not is_zip:
        raise ValueError(
            f"Invalid `{name}`: {path!r} is not a Keras 3 `.keras` archive, so Keras cannot load it; save the model with "
            "`model.save('name.keras')`."
        )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except (zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(damaged.format(error)) from None
    except (ValueError, TypeError, KeyError, OSError) as error:
        message = str(error)
        if isinstance(error, ValueError) and "safe_mode" in message:
            reason = (
                "holds a Lambda layer, whose Python code Keras does not load in safe mode. If you trust the file, "
                "pass --nosafe_mode; better, replace the Lambda by a registered layer"
            )
        elif unknown := re.search(r"Could not locate (?:class|function) '([^']+)'", message):
            reason = (
                f"uses the custom object {unknown.group(1)!r}, which is not registered. Only aa_keras and built-in "
                "Keras objects can be loaded; register the object with `keras.saving.register_keras_serializable` "
                "in an imported module"
            )
        else:
            reason = f"is a `.keras` archive that Keras cannot load as a model ({type(error).__name__}: {' '.join(message.split())[:300]})"
        raise ValueError(f"Invalid `{name}`: {path!r} {reason}.") from None
