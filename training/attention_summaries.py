"""Attention maps of a classifier's AA layers as TensorBoard images, at each evaluation.

For a few fixed images of the evaluation split (its first `NUM_IMAGES`, preprocessed as the
evaluation does) and fixed query pixels (`query_pixels`), the picture of
`aa_keras.visualize.attention_figure` (image with the query, each head's map, the head mean,
one row per AA layer) is written as an image summary `attention/image_<i>/query_<y>_<x>`.
"""

import numpy as np
import tensorflow as tf

from aa_keras.data import classification as data
from aa_keras.layers import AttentionAugmentation2D
from aa_keras.visualize import attention_figure, attention_maps, figure_to_array

NUM_IMAGES = 2


def query_pixels(image_size):
    """The fixed query pixels (y, x): the image centre and the centre of its top-left quarter."""
    return [(image_size // 2, image_size // 2), (image_size // 4, image_size // 4)]


def make_eval_summaries(recipe, data_dir=None):
    """A function `(model) -> None` that writes the attention pictures of `model` to the
    default summary writer; it writes nothing for a model without AttentionAugmentation2D
    layers. The images are read on the first call."""
    images = []
    queries = query_pixels(recipe.image_size)

    def write(model):
        if not any(isinstance(layer, AttentionAugmentation2D) for layer in model.layers):
            return
        if not images:
            dataset = data.build_dataset(
                recipe.dataset, recipe.eval_split, recipe.image_size, data_dir=data_dir,
                preprocessing=recipe.preprocessing,
            )  # fmt: skip
            images.extend(image.numpy() for image, _ in dataset.take(NUM_IMAGES))
        maps = attention_maps(model, np.stack(images), queries)
        for i, image in enumerate(images):
            for j, (y, x) in enumerate(queries):
                figure = attention_figure(image, (y, x), {name: m[i, j] for name, m in maps.items()})
                tf.summary.image(f"attention/image_{i}/query_{y}_{x}", figure_to_array(figure)[None])

    return write
