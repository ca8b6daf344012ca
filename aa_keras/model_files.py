"""Loading a saved `.keras` model with errors that say what is wrong with the file."""

import os
import re
import zipfile

import keras


def load_keras_file(path, flag="--model", safe_mode=True):
    """The model in the Keras 3 `.keras` archive `path`, uncompiled.

    Args:
        path: the `.keras` file.
        flag: the argument or flag that named the file, for the error messages.
        safe_mode: Keras's safe mode; False lets Keras load Lambda layers (code in the file).

    Raises:
        ValueError naming `flag`: the file is missing, is not a `.keras` archive, holds a Lambda
        layer (in safe mode) or an unregistered custom object, or does not load.
    """
    import aa_keras.applications  # noqa: F401  (registers the aa_keras models and layers for loading)

    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(f"Invalid `{flag}`: {path!r} does not exist or is not a file.")
    path = os.fspath(path)
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(
            f"Invalid `{flag}`: {path!r} is not a Keras 3 `.keras` archive, so Keras cannot load it; save the model with "
            "`model.save('name.keras')` or pass a builder name such as 'aa_small'."
        )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
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
        raise ValueError(f"Invalid `{flag}`: {path!r} {reason}.") from None
