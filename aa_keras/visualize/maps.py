"""Where each head looks: the attention weights of chosen query pixels, for any model.

`attention_maps` runs the model up to the input of each `AttentionAugmentation2D` layer, takes
that layer's queries and keys (its own projection, head split and position encoding) and
recomputes the softmax rows of the chosen queries only
(`aa_keras.layers.attention.query_attention_weights`): memory O(Nh * H * W) per query, whatever
the map's size, and whichever attention path (fused kernel or TensorFlow ops) runs the model.
"""

import keras
import numpy as np
import tensorflow as tf

from aa_keras.layers import AttentionAugmentation2D
from aa_keras.layers.attention import query_attention_weights


def attention_layers(model, names=None):
    """The `AttentionAugmentation2D` layers of `model`'s own graph, in order, or those named.

    Raises:
        ValueError: `model` has none, or a name is not one of them.
    """
    found = [layer for layer in model.layers if isinstance(layer, AttentionAugmentation2D)]
    if not found:
        raise ValueError(
            f"Invalid `model`: {model.name!r} has no AttentionAugmentation2D layers in its own graph "
            "(layers inside a nested model are not searched: pass that nested model instead)."
        )
    if names is None:
        return found
    names = [names] if isinstance(names, str) else list(names)
    by_name = {layer.name: layer for layer in found}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(
            f"Invalid `layers`: received layers={names!r}; {unknown} are not AttentionAugmentation2D "
            f"layers of {model.name!r}, expected names among {list(by_name)}."
        )
    return [by_name[name] for name in names]


def check_queries(queries, image_size, batch=None):
    """`queries` as an int array of (y, x) pixels, (Q, 2) for every image or (B, Q, 2) per image.

    Raises:
        ValueError: not integer pairs, or a pixel outside the (height, width) `image_size`.
    """
    array = np.asarray(queries)
    valid_shape = array.ndim in (2, 3) and array.shape[-1] == 2 and array.shape[-2] > 0
    if array.ndim == 3 and batch is not None:
        valid_shape = valid_shape and array.shape[0] == batch
    if not valid_shape or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"Invalid `queries`: received queries={queries!r}, expected integer (y, x) pixel pairs of "
            "shape (Q, 2), or (B, Q, 2) with one set per image."
        )
    array = array.astype(np.int64)
    height, width = image_size
    outside = (array[..., 0] < 0) | (array[..., 0] >= height) | (array[..., 1] < 0) | (array[..., 1] >= width)
    if outside.any():
        raise ValueError(
            f"Invalid `queries`: (y, x) = {tuple(int(v) for v in array[outside][0])} lies outside the "
            f"{height}x{width} image; expected 0 <= y < {height} and 0 <= x < {width}."
        )
    return array


def query_cells(queries, image_size, grid_size):
    """The attention-grid cell of each query pixel.

    A pixel (y, x) of an (H, W) image maps to the cell of an (Ha, Wa) grid whose share of the
    image holds the pixel's centre: (floor((y + 0.5) * Ha / H), floor((x + 0.5) * Wa / W)).
    Through 'same' convolutions and poolings whose strides divide the size this is the cell
    computed from the pixel; otherwise it is the cell at the same relative position.

    Args:
        queries: int array (..., 2) of (y, x) pixels.
        image_size, grid_size: (height, width) of the image and of the grid.

    Returns:
        int array (..., 2) of (row, column) cells.
    """
    queries = np.asarray(queries, np.int64)
    image = np.asarray(image_size, np.int64)
    grid = np.asarray(grid_size, np.int64)
    return (2 * queries + 1) * grid // (2 * image)


def attention_maps(model, images, queries, layers=None):
    """The attention of every head of `model`'s attention-augmented layers at chosen pixels.

    Args:
        model: a Keras model with one (B, H, W, C) image input whose `AttentionAugmentation2D`
            layers are in its own graph (not inside a nested model).
        images: (B, H, W, C) array, as the model takes them.
        queries: (y, x) pixels of the images, int array (Q, 2) for every image or (B, Q, 2)
            per image; each maps to a cell of each layer's attention grid (`query_cells`), so
            strides, pooling and `downsample_attention` are taken into account.
        layers: None for every AA layer, or a name or list of names.

    Returns:
        {layer name: float32 array (B, Q, Nh, Ha, Wa)}: each head's softmax weights over the
        layer's (Ha, Wa) attention grid; each map sums to 1 and equals the corresponding row of
        the layer's `return_attention_scores`.

    Raises:
        ValueError: a model without AA layers, an unknown layer name, images that do not fit the
            model, or queries outside the images.
    """
    chosen = attention_layers(model, layers)
    if len(model.inputs) != 1:
        raise ValueError(f"Invalid `model`: expected one image input, {model.name!r} has {len(model.inputs)}.")
    images = np.asarray(images)
    expected = model.inputs[0].shape[1:]
    if images.ndim != 4 or any(e is not None and e != d for e, d in zip(expected, images.shape[1:])):
        raise ValueError(
            f"Invalid `images`: received shape {images.shape}, expected (B, *{tuple(expected)}) images for "
            f"{model.name!r}."
        )
    queries = check_queries(queries, images.shape[1:3], batch=images.shape[0])
    if queries.ndim == 2:
        queries = np.broadcast_to(queries, (images.shape[0], *queries.shape))
    features = keras.Model(model.inputs[0], [layer.input for layer in chosen])(images, training=False)
    features = features if isinstance(features, (list, tuple)) else [features]
    maps = {}
    for layer, x in zip(chosen, features):
        q, k, _, _ = layer._attention_inputs(x)
        cells = query_cells(queries, images.shape[1:3], q.shape[1:3])
        weights = query_attention_weights(
            q, k, tf.constant(cells[..., 0]), tf.constant(cells[..., 1]), layer.rel_height, layer.rel_width
        )
        maps[layer.name] = np.transpose(weights.numpy(), [0, 2, 1, 3, 4])
    return maps
