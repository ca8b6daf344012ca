"""Installs aa_keras, the trainer and the exporter: `pip install -e .` (or `.[all]`)."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


# What the library needs, as ranges it is tested with (requirements.txt is the exact lock that CI
# and the README install). `import aa_keras`, the layer, the networks, `augment()` and the attention
# maps need only the core and a Keras backend: the `tensorflow` or the `jax` extra. The trainer,
# the exporter and the data pipelines are TensorFlow programs: their extras bring TensorFlow.
CORE = ["keras>=3.15,<4", "numpy>=2.0,<3"]
# 2.20 (the lock, CI) and 2.21 (scripts/check_tf_version.sh) pass; the train and detection extras
# hold it at 2.20 through tf-models-official.
TENSORFLOW = ["tensorflow>=2.20,<2.22"]
EXTRAS = {
    "tensorflow": TENSORFLOW,
    "jax": ["jax>=0.10.2"],
    "datasets": [*TENSORFLOW, "tensorflow-datasets>=4.9.10,<5", "importlib_resources>=6"],
    "train": ["tf-models-official~=2.20.0", "absl-py>=1.4", "pyyaml>=6"],
    "export": ["ai-edge-litert>=2.3,<3", "absl-py>=1.4"],
    "onnx": [*TENSORFLOW, "tf2onnx>=1.17,<2", "onnx>=1.17", "onnxruntime>=1.20"],
    "detection": [*TENSORFLOW, "keras-hub>=0.32,<0.33", "tf-models-official~=2.20.0"],
    "visualize": ["matplotlib>=3.8"],
    "test": ["pytest>=8"],
}
EXTRAS["train"] += EXTRAS["datasets"] + EXTRAS["visualize"]
EXTRAS["export"] += EXTRAS["datasets"]
EXTRAS["all"] = sorted({requirement for extra in EXTRAS.values() for requirement in extra})
# The documentation site (mkdocs.yml; requirements-docs.txt is its exact lock), not part of "all".
EXTRAS["docs"] = ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=1.0,<2", "mkdocstrings-python>=2.0,<3"]


setuptools.setup(
    name="aa_keras",
    version="0.1.0",
    description="Attention-augmented convolutional networks (Bello et al., ICCV 2019) for Keras 3.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The trainer, the exporter and what the programs share live in the repository's training/,
    # export/ and programs/ folders and are installed as aa_keras.training, aa_keras.export and
    # aa_keras.programs, so that no generic top-level name (a user's own `training` package)
    # shadows them or is shadowed.
    packages=[
        *setuptools.find_packages(include=["aa_keras", "aa_keras.*"]),
        "aa_keras.training",
        "aa_keras.export",
        "aa_keras.programs",
    ],
    package_dir={"aa_keras.training": "training", "aa_keras.export": "export", "aa_keras.programs": "programs"},
    # The fused attention kernel is compiled from its source on the user's machine.
    package_data={"aa_keras.ops": ["fused_attention.cc"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "aa-train=aa_keras.training.train:run_main",
            "aa-export=aa_keras.export.export:run_main",
            "aa-evaluate=aa_keras.training.evaluate:run_main",
            "aa-predict=aa_keras.export.predict:run_main",
            "aa-visualize=aa_keras.visualize.cli:run_main",
        ]
    },
)
