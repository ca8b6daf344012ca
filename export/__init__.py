"""Exporter: a Keras model to SavedModel, TFLite and ONNX, each checked against Keras.

`python -m export.export --model model.keras --output_dir out` (see `export.export`).
"""
