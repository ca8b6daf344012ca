"""Importing this module makes TensorFlow unimportable in this process, as if it were not
installed: the backend scripts (backend_script.py, backend_models_script.py) import it first, so
that everything they run on JAX is shown to need no TensorFlow."""

import importlib.abc
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tf_keras")


class _NotInstalled(importlib.abc.MetaPathFinder):
    """Finds the blocked packages nowhere."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by {__name__})", name=name)
        return None


if any(name.split(".")[0] in BLOCKED for name in sys.modules):
    raise RuntimeError(f"{__name__} must be imported before TensorFlow is.")
sys.meta_path.insert(0, _NotInstalled())
