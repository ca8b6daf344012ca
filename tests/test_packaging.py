"""The package as a user installs it: a wheel that compiles the fused kernel where it is
installed, and an import of the layer that loads none of the heavy optional parts."""

import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, cwd, **environment):
    """Runs `code` in a fresh interpreter (this one's environment plus `environment`); its stdout."""
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, **environment},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_wheel_ships_the_kernel_and_it_compiles_and_applies_where_installed(tmp_path):
    """Before, a wheel had no fused_attention.cc and an installed package silently ran the slower
    TensorFlow-op path. The wheel is installed into its own folder (the environment's
    dependencies, no download) and imported from outside the repository."""
    # Built from a copy, so that the build leaves nothing (build/, *.egg-info) in the repository.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "runs", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), source],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("aa_keras-*.whl")
    assert "aa_keras/ops/fused_attention.cc" in zipfile.ZipFile(wheel).namelist()
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    printed = _python(
        "import aa_keras, tensorflow as tf\n"
        "from aa_keras.ops import fused_attention\n"
        "layer = aa_keras.AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2)\n"
        "graph = tf.function(layer).get_concrete_function(tf.TensorSpec((1, 6, 6, 3))).graph\n"
        "print(aa_keras.__file__)\n"
        "print(fused_attention.library_path())\n"
        "print(fused_attention.applies(), 'AaFusedAttention' in {op.type for op in graph.get_operations()})\n",
        cwd=tmp_path, PYTHONPATH=str(target), AA_KERAS_CACHE_DIR=str(tmp_path / "cache"),
    )
    module, library, used = printed.splitlines()[-3:]
    assert module.startswith(str(target)) and library.startswith(str(tmp_path / "cache"))
    assert used == "True True"


def test_importing_the_layer_loads_no_optional_dependency():
    printed = _python(
        "import sys, aa_keras\n"
        "from aa_keras.layers import AttentionAugmentation2D\n"
        "from aa_keras.applications import augment, build_model\n"
        "print(sorted(m for m in ('keras_hub', 'official', 'tf2onnx', 'onnxruntime', 'ai_edge_litert',"
        " 'tensorflow_datasets') if m in sys.modules))\n",
        cwd=REPO,
    )
    assert printed.splitlines()[-1] == "[]"
