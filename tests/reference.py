"""A deliberately naive NumPy reference of `AttentionAugmentation2D`, for the equivalence tests.

Written from DESIGN.md and the layer's docstring, not from the layer's code: explicit loops over
batch, heads and positions, in float64, reading the layer's weights by name (`conv`, `qkv`,
`attn_out`, `rel_height`, `rel_width`). Nothing here calls TensorFlow.
"""

import math

import numpy as np

_ACTIVATIONS = {"linear": lambda x: x, "relu": lambda x: np.maximum(x, 0.0)}


def _same_padding(length, kernel, stride):
    """TensorFlow's "SAME" rule: (output length, padding before)."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return out, total // 2


def _windows(length, kernel, stride, padding):
    """For each output index, the (kernel tap, input index) pairs of its window that lie
    inside the input (padding left out)."""
    if padding == "same":
        out, before = _same_padding(length, kernel, stride)
    else:
        out, before = (length - kernel) // stride + 1, 0
    return [
        [(t, o * stride - before + t) for t in range(kernel) if 0 <= o * stride - before + t < length]
        for o in range(out)
    ]


def conv2d(x, kernel, bias, strides, padding):
    """(B, H, W, C) x (kh, kw, C, F) convolution, zero padding, as `keras.layers.Conv2D`."""
    kh, kw = kernel.shape[:2]
    rows = _windows(x.shape[1], kh, strides[0], padding)
    cols = _windows(x.shape[2], kw, strides[1], padding)
    out = np.zeros((x.shape[0], len(rows), len(cols), kernel.shape[-1]))
    for b in range(x.shape[0]):
        for oi, row_taps in enumerate(rows):
            for oj, col_taps in enumerate(cols):
                for ti, i in row_taps:
                    for tj, j in col_taps:
                        out[b, oi, oj] += x[b, i, j] @ kernel[ti, tj]
    return out if bias is None else out + bias


def avg_pool(x, size, strides, padding):
    """Average pooling; with "same" the padded cells are left out of the average."""
    rows = _windows(x.shape[1], size[0], strides[0], padding)
    cols = _windows(x.shape[2], size[1], strides[1], padding)
    out = np.zeros((x.shape[0], len(rows), len(cols), x.shape[3]))
    for oi, row in enumerate(rows):
        for oj, col in enumerate(cols):
            out[:, oi, oj] = np.mean([x[:, i, j] for _, i in row for _, j in col], axis=0)
    return out


def _bilinear_taps(out_length, in_length):
    """Half-pixel-centre sampling: for each output index, (lower, upper, weight of upper)."""
    taps = []
    for o in range(out_length):
        source = (o + 0.5) * in_length / out_length - 0.5
        lower = math.floor(source)
        fraction = source - lower
        taps.append((min(max(lower, 0), in_length - 1), min(max(lower + 1, 0), in_length - 1), fraction))
    return taps


def bilinear_resize(x, height, width):
    """Bilinear resize with half-pixel centres and edge clamping, as `tf.image.resize`."""
    rows = _bilinear_taps(height, x.shape[1])
    cols = _bilinear_taps(width, x.shape[2])
    out = np.zeros((x.shape[0], height, width, x.shape[3]))
    for oi, (i0, i1, fy) in enumerate(rows):
        for oj, (j0, j1, fx) in enumerate(cols):
            top = (1 - fx) * x[:, i0, j0] + fx * x[:, i0, j1]
            bottom = (1 - fx) * x[:, i1, j0] + fx * x[:, i1, j1]
            out[:, oi, oj] = (1 - fy) * top + fy * bottom
    return out


def sine_encoding(height, width, depth_k):
    """[sin(y f), cos(y f), sin(x f), cos(x f)], F = ceil(dk / 4) frequencies 10000^(-i/F)."""
    num_freqs = math.ceil(depth_k / 4)
    out = np.zeros((height, width, 4 * num_freqs))
    for y in range(height):
        for x in range(width):
            for i in range(num_freqs):
                f = 10000.0 ** (-i / num_freqs)
                out[y, x, i] = math.sin(y * f)
                out[y, x, num_freqs + i] = math.cos(y * f)
                out[y, x, 2 * num_freqs + i] = math.sin(x * f)
                out[y, x, 3 * num_freqs + i] = math.cos(x * f)
    return out


def coordconv_encoding(height, width):
    """(y, x) mapped linearly onto [-1, 1]; 0 along an axis of length 1."""

    def normalised(p, length):
        return 0.0 if length == 1 else 2.0 * p / (length - 1) - 1.0

    out = np.zeros((height, width, 2))
    for y in range(height):
        for x in range(width):
            out[y, x] = normalised(y, height), normalised(x, width)
    return out


def _weight(variable):
    return None if variable is None else np.asarray(variable.numpy(), dtype=np.float64)


def _softmax(logits):
    e = np.exp(logits - np.max(logits))
    return e / np.sum(e)


def _qkv(x, layer):
    """The [q | k | v] projection of `layer` on its (already pooled) input x, with its
    position encoding: (B, H, W, 2 dk + dv)."""
    batch, height, width, _ = x.shape
    config = layer.get_config()
    if config["position_encoding"] == "sine":
        encoding = sine_encoding(height, width, layer.dk)
    elif config["position_encoding"] == "coordconv":
        encoding = coordconv_encoding(height, width)
    else:
        encoding = np.zeros((height, width, 0))
    x = np.concatenate([x, np.broadcast_to(encoding, (batch, *encoding.shape))], axis=-1)
    return conv2d(x, _weight(layer.qkv.kernel), _weight(layer.qkv.bias), (1, 1), "same")


def attention_weights(x, layer):
    """The softmax weights of `layer`'s attention on its (already pooled) input x:
    (B, Nh, H, W, H, W), query position first."""
    batch, height, width, _ = x.shape
    heads, dk = layer.get_config()["num_heads"], layer.dk
    dkh = dk // heads
    qkv = _qkv(x, layer)
    rel_h, rel_w = _weight(layer.rel_height), _weight(layer.rel_width)
    positions = [(i, j) for i in range(height) for j in range(width)]
    weights = np.zeros((batch, heads, height, width, height, width))
    for b in range(batch):
        for n in range(heads):
            q_channels = slice(n * dkh, (n + 1) * dkh)
            k_channels = slice(dk + n * dkh, dk + (n + 1) * dkh)
            for hi, wi in positions:
                q = qkv[b, hi, wi, q_channels] * dkh**-0.5
                logits = []
                for hj, wj in positions:
                    logit = q @ qkv[b, hj, wj, k_channels]
                    if rel_h is not None:
                        max_h, max_w = (rel_h.shape[0] + 1) // 2, (rel_w.shape[0] + 1) // 2
                        logit += q @ rel_w[wj - wi + max_w - 1] + q @ rel_h[hj - hi + max_h - 1]
                    logits.append(logit)
                weights[b, n, hi, wi] = _softmax(np.array(logits)).reshape(height, width)
    return weights


def self_attention(x, layer):
    """The attention branch of `layer` on its (already pooled) input x: (B, H, W, dv)."""
    batch, height, width, _ = x.shape
    heads, dk, dv = layer.get_config()["num_heads"], layer.dk, layer.dv
    dvh = dv // heads
    qkv = _qkv(x, layer)
    weights = attention_weights(x, layer)
    positions = [(i, j) for i in range(height) for j in range(width)]
    out = np.zeros((batch, height, width, dv))
    for b in range(batch):
        for n in range(heads):
            v_channels = slice(2 * dk + n * dvh, 2 * dk + (n + 1) * dvh)
            for hi, wi in positions:
                values = [qkv[b, hj, wj, v_channels] for hj, wj in positions]
                row = weights[b, n, hi, wi].reshape(-1)
                out[b, hi, wi, n * dvh : (n + 1) * dvh] = sum(w * v for w, v in zip(row, values))
    return conv2d(out, _weight(layer.attn_out.kernel), _weight(layer.attn_out.bias), (1, 1), "same")


def attention_augmentation(layer, x):
    """`layer(x)` computed naively in float64, from the layer's weights: (B, H', W', filters)."""
    config = layer.get_config()
    x = np.asarray(x, dtype=np.float64)
    kernel_size, strides, padding = tuple(config["kernel_size"]), tuple(config["strides"]), config["padding"]
    # The attention input: x pooled to the convolution's output size.
    if padding == "same" and strides != (1, 1):
        pooled = avg_pool(x, strides, strides, "same")
    elif padding == "valid" and (kernel_size != (1, 1) or strides != (1, 1)):
        pooled = avg_pool(x, kernel_size, strides, "valid")
    else:
        pooled = x
    if config["downsample_attention"]:
        attn = self_attention(avg_pool(pooled, (3, 3), (2, 2), "same"), layer)
        attn = bilinear_resize(attn, pooled.shape[1], pooled.shape[2])
    else:
        attn = self_attention(pooled, layer)
    branches = [attn]
    if layer.conv is not None:
        conv = conv2d(x, _weight(layer.conv.kernel), _weight(layer.conv.bias), strides, padding)
        branches.insert(0, conv)
    activation = config["activation"]
    name = activation if isinstance(activation, str) else activation["config"]["name"]
    return _ACTIVATIONS[name](np.concatenate(branches, axis=-1))
