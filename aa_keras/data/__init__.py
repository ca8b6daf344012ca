"""Input pipelines shared by the trainer, the evaluator and the exporter.

`aa_keras.data.classification` gives (float32 images in [0, 1], int labels) from TFDS datasets,
the embedded `glyph_pairs` and `image_folder:PATH`; `aa_keras.data.detection` gives images and
box targets from TFDS detection datasets, the embedded `glyph_boxes` and `coco_json:PATH`. They
need TensorFlow Datasets and tf-models-official (the `[datasets]` and `[train]` extras), which
`import aa_keras` does not load.
"""

# The tasks of the trainer, the evaluator and the exporter; each has one pipeline module here.
TASKS = ("classification", "detection")
