"""Exporter: a Keras model to SavedModel, TFLite and ONNX, each checked against Keras.

`python -m aa_keras.export.export --model model.keras --output_dir out` (see `export.export`).
"""
