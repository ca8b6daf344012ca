"""Where each head looks: the attention weights of chosen query pixels, for any model.

`attention_maps` runs the model up to the input of each `AttentionAugmentation2D` layer, takes
that layer's queries and keys (its own projection, head split and position encoding) and
recomputes the softmax rows of the chosen queries only
(`aa_keras.layers.attention.query_attention_weights` on TensorFlow, its `keras.ops` twin in
`aa_keras.layers.attention_ops` on other backends): memory O(Nh * H * W) per query, whatever
the map's size, and whichever attention path (fused kernel or TensorFlow ops) runs the model.
The layers may sit in functional models nested in the model, at any depth (a `keras_classifier`
model's "backbone", a RetinaNet detector's backbone); such a layer is named by its path,
"backbone/conv5_block1_2_conv".
"""

import keras
import numpy as np
from keras import ops

from aa_keras.applications.augment import is_functional
from aa_keras.layers import AttentionAugmentation2D, attention_ops


def _query_attention_weights():
    """The backend's `query_attention_weights`: TensorFlow's ops on TensorFlow, keras.ops elsewhere."""
    if keras.backend.backend() == "tensorflow":
        from aa_keras.layers.attention import query_attention_weights

        return query_attention_weights
    return attention_ops.query_attention_weights


def _graph(model):
    """The functional graph of `model` (a `Sequential` keeps one inside), or None (a subclassed model)."""
    graph = model._functional if isinstance(model, keras.Sequential) else model
    return graph if is_functional(graph) else None


def _attention_calls(model, prefix=""):
    """[(name, calls)] of the `AttentionAugmentation2D` layers in `model`'s graph and in the graphs
    of the functional and `Sequential` models nested in it, any depth, in graph order. `calls`
    holds the graph nodes from `model` down to the layer: each nested model's call in the graph
    that holds it, then the layer's. A nested layer is named by its path, e.g.
    "backbone/conv5_block1_2_conv"; a layer or model called more than once counts its first call."""
    graph = _graph(model)
    if graph is None:
        return []
    nodes = {}
    for depth in sorted(graph._nodes_by_depth, reverse=True):  # the inputs have the largest depth
        for node in graph._nodes_by_depth[depth]:
            nodes.setdefault(id(node.operation), node)
    found = []
    for layer in model.layers:
        node = nodes.get(id(layer))
        if node is None:
            continue
        if isinstance(layer, AttentionAugmentation2D):
            found.append((prefix + layer.name, (node,)))
        else:
            found += [(name, (node, *calls)) for name, calls in _attention_calls(layer, f"{prefix}{layer.name}/")]
    return found


def _chosen_calls(model, names):
    """The `_attention_calls` of `model`, all or those named; a ValueError names what is wrong."""
    found = _attention_calls(model)
    if not found:
        raise ValueError(
            f"Invalid `model`: {model.name!r} has no AttentionAugmentation2D layers in its graph or in the graphs of "
            "the functional models nested in it."
        )
    if names is None:
        return found
    names = [names] if isinstance(names, str) else list(names)
    by_name = dict(found)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(
            f"Invalid `layers`: received layers={names!r}; {unknown} are not AttentionAugmentation2D "
            f"layers of {model.name!r}, expected names among {list(by_name)} (a nested layer is named by its "
            "path: the nested models' names, then its own, joined by '/')."
        )
    return [(name, by_name[name]) for name in names]


def attention_layers(model, names=None):
    """The `AttentionAugmentation2D` layers of `model`, in graph order, or those named.

    The layers of `model`'s graph and of the functional (or `Sequential`) models nested in it, at
    any depth, are searched. A layer of `model`'s own graph is named by its name; a nested one by
    its path, the names of the models that hold it and its own joined by "/" (e.g.
    "backbone/conv5_block1_2_conv" in a `keras_classifier` model).

    Raises:
        ValueError: `model` has none, or a name is not one of them.
    """
    return [calls[-1].operation for _, calls in _chosen_calls(model, names)]


def _layer_inputs(model, inputs, calls):
    """{chain: input of the layer at its end} for each chain of `calls` (as `_attention_calls`
    gives them, from `model` down) when `model` runs on `inputs`. Each graph runs once, up to the
    inputs of its chosen layers and nested models."""
    own = [chain for chain in calls if len(chain) == 1]
    nested = {}
    for chain in calls:
        if len(chain) > 1:
            nested.setdefault(chain[0], []).append(chain)
    # A layer's input tensor; a nested model's whole input structure.
    wanted = [chain[0].input_tensors[0] for chain in own] + [node.arguments.args[0] for node in nested]
    # Inputs flat, as the graph lists them (a model built on a list of one input may be called on
    # the tensor alone); outputs by key (a one-element list of outputs gives the element alone).
    features = keras.Model(_graph(model).inputs, {str(i): x for i, x in enumerate(wanted)})
    outputs = features(keras.tree.flatten(inputs), training=False)
    values = [outputs[str(i)] for i in range(len(wanted))]
    found = dict(zip(own, values))
    for (node, group), value in zip(nested.items(), values[len(own) :]):
        inner = _layer_inputs(node.operation, value, [chain[1:] for chain in group])
        found.update({chain: inner[chain[1:]] for chain in group})
    return found


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
        image_size: (height, width) of the image.
        grid_size: (height, width) of the grid.

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
        model: a Keras model with one (B, H, W, C) image input and `AttentionAugmentation2D`
            layers in its graph or in the graphs of functional models nested in it, any depth
            (a `keras_classifier` model, a detector's backbone).
        images: (B, H, W, C) array, as the model takes them.
        queries: (y, x) pixels of the images, int array (Q, 2) for every image or (B, Q, 2)
            per image; each maps to a cell of each layer's attention grid (`query_cells`), so
            strides, pooling and `downsample_attention` are taken into account.
        layers: None for every AA layer, or a name or list of names; a nested layer's name is
            its path, e.g. "backbone/conv5_block1_2_conv" (see `attention_layers`).

    Returns:
        {layer name (or path): float32 array (B, Q, Nh, Ha, Wa)}: each head's softmax weights over the
        layer's (Ha, Wa) attention grid; each map sums to 1 and equals the corresponding row of
        the layer's `return_attention_scores`.

    Raises:
        ValueError: a model without AA layers, an unknown layer name, images that do not fit the
            model, or queries outside the images.

    Example:
        ```python
        from aa_keras.visualize import attention_maps

        maps = attention_maps(model, images, queries=[(9, 2), (16, 16)])  # (y, x) pixels
        maps["block3_aa"].shape   # (B, 2 queries, Nh, Ha, Wa): that layer's attention grid
        ```
    """
    chosen = _chosen_calls(model, layers)
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
    features = _layer_inputs(model, images, [calls for _, calls in chosen])
    maps = {}
    for name, calls in chosen:
        layer = calls[-1].operation
        q, k, _, _ = layer._attention_inputs(features[calls])
        cells = query_cells(queries, images.shape[1:3], q.shape[1:3])
        weights = _query_attention_weights()(
            q, k, ops.convert_to_tensor(cells[..., 0]), ops.convert_to_tensor(cells[..., 1]), layer.rel_height,
            layer.rel_width,
        )
        maps[name] = np.transpose(ops.convert_to_numpy(weights), [0, 2, 1, 3, 4])
    return maps
