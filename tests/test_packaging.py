"""The package as a user installs it: a wheel that compiles the fused kernel where it is
installed, and an import of the layer that loads none of the heavy optional parts."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, cwd, **environment):
    """Runs `code` in a fresh interpreter (this one's environment plus `environment`); its stdout."""
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, **environment},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The package's wheel, built from a copy of the repository (so that the build leaves
    nothing, build/ or *.egg-info, in the repository), and its install into its own folder
    (the environment's dependencies, no download): (wheel path, install folder)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "runs", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), source],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = tmp_path.glob("aa_keras-*.whl")
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(built)],
        check=True, capture_output=True, timeout=300,
    )
    return built, target


def test_wheel_ships_the_kernel_and_it_compiles_and_applies_where_installed(wheel, tmp_path):
    """Before, a wheel had no fused_attention.cc and an installed package silently ran the slower
    TensorFlow-op path. The installed wheel is imported from outside the repository."""
    wheel, target = wheel
    assert "aa_keras/ops/fused_attention.cc" in zipfile.ZipFile(wheel).namelist()
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


def test_the_core_requires_no_tensorflow_and_the_programs_extras_do(wheel):
    """`pip install aa_keras[jax]` installs the library without TensorFlow; the TensorFlow
    programs' extras (train, export, datasets, detection) bring it."""
    wheel, _ = wheel
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(name).decode() for name in archive.namelist() if name.endswith("METADATA"))
    requirements = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    names = [(re.match(r"[A-Za-z0-9_.-]+", r).group(), r.partition(";")[2].strip()) for r in requirements]
    core = [name for name, marker in names if "extra ==" not in marker]
    assert "keras" in core and "tensorflow" not in core, core
    for extra in ("tensorflow", "train", "export", "datasets", "detection"):
        assert ("tensorflow", f'extra == "{extra}"') in names, extra
    assert ("jax", 'extra == "jax"') in names


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


def test_wheel_installs_the_trainer_and_exporter_under_aa_keras(wheel, tmp_path):
    """The wheel's only top-level package is aa_keras: the trainer and the exporter are
    aa_keras.training and aa_keras.export, and the console scripts name them. A user's own
    `training` and `export` packages, first on the path, neither shadow them nor are shadowed."""
    wheel, target = wheel
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(name).decode() for name in names if name.endswith("entry_points.txt"))
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"aa_keras"}
    assert {"aa_keras/training/train.py", "aa_keras/export/export.py", "aa_keras/data/classification.py"} <= set(names)
    assert "aa-train = aa_keras.training.train:run_main" in entry_points
    assert "aa-export = aa_keras.export.export:run_main" in entry_points
    user = tmp_path / "user_project"
    for package in ("training", "export"):
        (user / package).mkdir(parents=True)
        (user / package / "__init__.py").write_text(f"NAME = {'the user project ' + package!r}\n")
    printed = _python(
        "import training, export\n"
        "from aa_keras.training import train\n"
        "from aa_keras.export import export as exporter, predict\n"
        "print(training.NAME, '|', export.NAME)\n"
        "print(train.__file__, exporter.__file__, predict.__file__)\n",
        cwd=user, PYTHONPATH=f"{user}{os.pathsep}{target}",
    )
    names_line, files_line = printed.splitlines()[-2:]
    assert names_line == "the user project training | the user project export"
    assert all(path.startswith(str(target / "aa_keras")) for path in files_line.split())
