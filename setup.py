"""Installs aa_keras, the trainer and the exporter: `pip install -e .`."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [l for l in lines if l and not l.startswith("#") and not l.startswith("pytest")]


setuptools.setup(
    name="aa_keras",
    version="0.1.0",
    description="Attention-augmented convolutional networks (Bello et al., ICCV 2019) for Keras 3.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["aa_keras*", "training*", "export*"]),
    install_requires=_requirements(),
    extras_require={"test": ["pytest==9.2.0"]},
    entry_points={
        "console_scripts": [
            "aa-train=training.train:run_main",
            "aa-export=export.export:run_main",
            "aa-visualize=aa_keras.visualize.cli:run_main",
        ]
    },
)
