"""Importing this module makes TensorFlow unimportable in this process, as if it were not
installed: `import tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec` finds
nothing (torch asks it which packages are installed). The backend scripts (backend_script.py,
backend_models_script.py) import it first, so that everything they run on JAX or PyTorch is shown
to need no TensorFlow."""

import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tf_keras")

if any(name.split(".")[0] in BLOCKED for name in sys.modules):
    raise RuntimeError(f"{__name__} must be imported before TensorFlow is.")
for name in BLOCKED:
    sys.modules[name] = None  # the import system's mark of a module that cannot be imported
