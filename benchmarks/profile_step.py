"""Where the time of an AA network's train step goes (AA-WRN-28-10 by default): per attention layer and
per part (issue 26).

    python -m benchmarks.profile_step                                    # AA-WRN-28-10, 32x32, batch 32
    python -m benchmarks.profile_step --batch=4 --depth=10 --width=6     # a quick look
    python -m benchmarks.profile_step --pair=aa_resnet50:resnet50 --image_size=224 --batch=4 --paths=fused \
        --rounds=5 --output=benchmarks/results/profile_step_resnet50.json  # AAResNet-50 against ResNet-50
    python -m benchmarks.profile_step --batch=8 --layer_shapes=256:14,256:28,320:16,640:8 --paths=fused \
        --rounds=15 --output=benchmarks/results/profile_layer.json      # the layer alone, no network

Measured side by side in one process, every function once per round, rounds interleaved, the
median reported (milliseconds, graph mode, no XLA):
- the train step (forward in training mode, gradients of sum(output * fixed upstream) with
  respect to every weight) of `AAWideResNet(depth, width)` and of its twin `WideResNet`;
- for each distinct attention layer of the AA network (input shape and configuration; `count`
  layers share it): its train step (gradients with respect to its input and weights) and that of
  the Conv2D it replaces, and the layer's parts in isolation on the same shapes, each forward and
  its gradient (its train step minus its forward):
  `pool` (strided layers), `qkv projection`, `split heads` (split, cast, reshape, q scaled),
  `fused attention` (the kernel's forward op; its gradient is the kernel's backward op, timed
  alone), `attn_out projection` (heads merged, 1x1), `conv branch`, `concatenation`; and
  `layer overhead`, the layer's train step minus its parts' sum. With `--paths` holding
  `tf_ops`, also the TensorFlow-op path's attention (`aa_keras.layers.attention`): the
  position-major <-> head-major `transposes`, `relative logits`, `logits q k^T`, `add relative
  logits`, `softmax`, `weighted sum` (each differentiated by TensorFlow) and the whole
  `tf_ops attention` (with its hand-written gradient), for comparison with the fused op.
- `rest of the network`: the AA step minus its attention layers' train steps (and, to compare, the
  twin's step minus its Conv2D twins').

`--pair=aa_name:twin_name` profiles two networks of `aa_keras.applications.build_model` (at
`--image_size`) instead of AA-WRN-`depth`-`width` and its WRN.
- two comparisons, not parts of the step (`layer overhead` leaves them out): `compare: layer without
  attention op`, the layer's train step with the attention output replaced by v (its projections,
  split, output projection, conv branch and concatenation: what surrounds the kernel), and `compare:
  qkv projection as matmul`, the qkv projection as a matrix product of the same weights instead of
  the 1x1 Conv2D the layer runs.

With `--layer_shapes` (filters:size pairs) there is no network: the layer of bench_layer's
configuration (3x3, 8 heads, dk = dv = 0.2 x filters, batch `--batch`) at each shape against its
Conv2D twin, each row's share given against the twin's step (issue 26's item 3: the cost around
the kernel at small maps).

Floors (what a faster kernel could give at most; with `--paths` holding `fused`): the yardstick
is the cores' float32 multiply-add peak, `benchmarks/kernel_harness.cc peak` (compiled with the
kernel's flags, run once before the rounds) on one core times the cores this process may use. For
each attention layer, `floor: fused attention` is the fused ops' work at that peak (as counted by
`kernel_efficiency.attention_flops`): `products` (their matrix products only: no kernel does less)
and `products and exponentials` (plus the exponentials, one per logit in each op, at the
multiply-add operations the kernel's exponential takes); `floor: whole layer` is the layer's step
with its fused attention's time replaced by that floor, and for a network the AA step with every
layer's so replaced. The relative logits, the softmax's other passes, loads and stores are left
out: no kernel goes below `products`, nor one with this kernel's exponential below `products and
exponentials`. Every round also times a 2048 x 2048 x 2048 float32
`tf.matmul`, reported with its share of the peak: TensorFlow's own rate for a large product.

Budgets: where the profile's shapes are those of a target (`benchmarks/targets.py`: the layer at
its six shapes with `--batch=8`, AA-WRN-28-10 at 32x32 with batch 32, AAResNet-50 at 224 with batch
4), the row `target R: what it leaves the fused attention` is R times the twin's step minus the rest
of the AA step (its fused attention taken out), and a line below the table says how much faster
the fused attention would have to run to meet R, and at what share of the multiply-add peak its
floor's work would then run (now: the floor over its measured time). A share above 100%: out of
reach.

The table gives each row's milliseconds per step for all `count` layers and its share of the AA
step. Isolated parts do not add up exactly to the layer (the runtime overlaps independent ops in
the layer and runs each part alone here): `layer overhead` holds the difference, negative when
the layer overlaps more than its parts do. The machine may be shared: compare within one run.
The JSON goes to `--output`.
"""

import functools
import json
import os
import tempfile
import time

from absl import app, flags, logging

from aa_keras.programs import files
from benchmarks import machine, targets

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 32, "Batch size (the paper's CIFAR shape: 32x32 images).")
flags.DEFINE_integer("image_size", 32, "Image height and width.")
flags.DEFINE_integer("depth", 28, "WRN depth, 6n + 4.")
flags.DEFINE_integer("width", 10, "WRN widening factor.")
flags.DEFINE_string("pair", "", "aa_name:twin_name of build_model, instead of the WRNs (e.g. aa_resnet50:resnet50).")
flags.DEFINE_list("paths", ["fused", "tf_ops"], "Attention paths whose parts are timed: fused, tf_ops.")
flags.DEFINE_integer("rounds", 3, "Timed rounds (median reported).")
flags.DEFINE_integer("warmup", 1, "Untimed rounds first.", lower_bound=1)
flags.DEFINE_list("layer_shapes", [], "filters:size pairs: profile the layer alone at these shapes (no network).")
flags.DEFINE_string("output", "benchmarks/results/profile_step.json", "Where to write the JSON.")
flags.register_validator(
    "layer_shapes",
    lambda shapes: all(len(s.split(":")) == 2 and all(n.isdigit() and int(n) > 0 for n in s.split(":")) for s in shapes),
    "--layer_shapes takes filters:size pairs of positive integers, e.g. 256:14,320:16",
)
flags.register_validator(
    "pair", lambda pair: not pair or len(pair.split(":")) == 2, "--pair takes aa_name:twin_name, e.g. aa_resnet50:resnet50"
)

_RANDOM = {}


def _random(shape, role="input"):
    """A fixed normal tensor of `shape`, one per shape and role (the large ones are shared).

    Upstream gradients have a role of their own: where a layer's output has its input's shape,
    the input must not serve as its upstream gradient too (oneDNN's Conv2D train step took
    26.6 ms instead of 18.8 ms at 256 channels, 14x14, batch 8 when both were one tensor).
    """
    import tensorflow as tf

    key = (tuple(int(d) for d in shape), role)
    if key not in _RANDOM:
        _RANDOM[key] = tf.random.normal(key[0], seed=len(_RANDOM))
    return _RANDOM[key]


def _forward_and_train(fn, inputs, variables=()):
    """tf.functions (forward, train) of fn(*inputs): train adds the gradients of
    sum(fn(*inputs) * fixed upstream) with respect to `inputs` and `variables`."""
    import tensorflow as tf

    upstream = tf.nest.map_structure(lambda t: _random(t.shape, "upstream"), fn(*inputs))

    def train():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = fn(*inputs)
            loss = sum(tf.reduce_sum(o * u) for o, u in zip(tf.nest.flatten(outputs), tf.nest.flatten(upstream)))
        return tape.gradient(loss, list(inputs) + list(variables))

    return tf.function(lambda: fn(*inputs), autograph=False), tf.function(train, autograph=False)


def _fused_parts(layer, q, k, v):
    """{"fused attention": (forward op, backward op)} as tf.functions on q, k, v."""
    import tensorflow as tf

    from aa_keras.ops import fused_attention

    kernels = fused_attention.library()
    relative = layer.rel_height is not None
    tables = (layer.rel_height, layer.rel_width) if relative else (tf.zeros([0]), tf.zeros([0]))
    out, stats = kernels.aa_fused_attention(q, k, v, *tables, relative=relative)
    d_out = _random(out.shape, "upstream")
    forward = tf.function(lambda: kernels.aa_fused_attention(q, k, v, *tables, relative=relative), autograph=False)
    backward = tf.function(
        lambda: kernels.aa_fused_attention_grad(q, k, v, *tables, out, stats, d_out, relative=relative),
        autograph=False,
    )
    return {"fused attention": ("op", forward, backward)}


def _tf_ops_parts(layer, q, k, v):
    """The TensorFlow-op path's attention in parts, each (kind, forward, train) on the shapes of
    q, k (B, H, W, Nh, dkh) and v (B, H, W, Nh, dvh); see `aa_keras.layers.attention`."""
    import tensorflow as tf

    from aa_keras.layers.attention import multi_head_attention_2d
    from aa_keras.layers.query_blocks import auto_query_block_size
    from aa_keras.layers.relative_logits import relative_logits

    batch, height, width, heads, dkh = q.shape
    n = height * width

    def to_heads(t):  # (B, H, W, Nh, d) -> (B, Nh, HW, d) and back
        return tf.reshape(tf.transpose(t, [0, 3, 1, 2, 4]), [batch, heads, n, t.shape[-1]])

    def transposes(q, k, v, out):
        back = tf.transpose(tf.reshape(out, [batch, heads, height, width, out.shape[-1]]), [0, 2, 3, 1, 4])
        return to_heads(q), to_heads(k), to_heads(v), back

    q_heads, k_heads, v_heads = to_heads(q), to_heads(k), to_heads(v)
    logits = _random((batch, heads, n, n))
    block_size = auto_query_block_size(heads, n)
    tables = [] if layer.rel_height is None else [layer.rel_height, layer.rel_width]
    parts = {  # name: (function, inputs, variables)
        "transposes": (transposes, (q, k, v, _random(v_heads.shape)), ()),
        "logits q k^T": (lambda q, k: tf.matmul(q, k, transpose_b=True), (q_heads, k_heads), ()),
        "softmax": (lambda x: tf.nn.softmax(x, axis=-1), (logits,), ()),
        "weighted sum": (tf.matmul, (logits, v_heads), ()),
        "tf_ops attention": (
            lambda q, k, v: multi_head_attention_2d(q, k, v, layer.rel_height, layer.rel_width, block_size),
            (q, k, v),
            tables,
        ),
    }
    if tables:
        q_grid = tf.reshape(q_heads, [batch, heads, height, width, dkh])
        rel_h, rel_w = relative_logits(q_grid, *tables)
        parts["relative logits"] = (lambda q: relative_logits(q, *tables), (q_grid,), tables)
        parts["add relative logits"] = (
            lambda x, h, w: x + tf.reshape(h + w, x.shape),
            (logits, rel_h, rel_w),
            (),
        )
    return {name: ("autodiff", *_forward_and_train(*part)) for name, part in parts.items()}


def _layer_parts(layer, x):
    """The layer's parts, each (kind, forward, train or backward), on its input x (B, H, W, C)."""
    import tensorflow as tf

    from aa_keras.layers.attention_augmentation import _average_pool_same

    pooled = layer._pool_to_output_size(x)
    output_size = pooled.shape[1:3]
    if layer.downsample_attention:  # the attention grid, as AttentionAugmentation2D._attention_inputs
        pooled = _average_pool_same(pooled, (3, 3), (2, 2))
    batch, height, width = pooled.shape[:3]
    qkv = layer.qkv(pooled)

    def split_heads(qkv):  # as AttentionAugmentation2D._attention_inputs
        q, k, v = tf.split(qkv, [layer.dk, layer.dk, layer.dv], axis=-1)
        q = tf.reshape(q, [batch, height, width, layer.num_heads, layer.dkh]) * (layer.dkh**-0.5)
        k = tf.reshape(k, [batch, height, width, layer.num_heads, layer.dkh])
        return q, k, tf.reshape(v, [batch, height, width, layer.num_heads, layer.dvh])

    q, k, v = split_heads(qkv)
    heads_out = _random(v.shape)
    attn = layer.attn_out(tf.reshape(heads_out, [batch, height, width, layer.dv]))
    if layer.downsample_attention:  # back to the output grid, as AttentionAugmentation2D.call
        attn = layer._resize_bilinear(attn, output_size)
    parts = {}
    if layer.strides != (1, 1):
        parts["pool"] = (layer._pool_to_output_size, (x,), ())
    parts["qkv projection"] = (layer.qkv, (pooled,), layer.qkv.trainable_variables)
    parts["split heads"] = (split_heads, (qkv,), ())
    parts["attn_out projection"] = (
        lambda o: layer.attn_out(tf.reshape(o, [batch, height, width, layer.dv])),
        (heads_out,),
        layer.attn_out.trainable_variables,
    )
    if layer.conv is not None:
        conv = layer.conv(x)
        parts["conv branch"] = (layer.conv, (x,), layer.conv.trainable_variables)
        parts["concatenation"] = (lambda a, b: tf.concat([a, b], axis=-1), (conv, attn), ())

    def without_attention(x):  # AttentionAugmentation2D.call with v in place of the attention output
        v = layer._attention_inputs(x)[2]
        attn = layer.attn_out(tf.reshape(v, [batch, height, width, layer.dv]))
        return attn if layer.conv is None else tf.concat([layer.conv(x), attn], axis=-1)

    def qkv_matmul(pooled):  # the 1x1 projection as (B H W, C) x (C, F)
        kernel = tf.reshape(layer.qkv.kernel, [pooled.shape[-1], -1])
        qkv = tf.matmul(tf.reshape(pooled, [-1, pooled.shape[-1]]), kernel)
        qkv = qkv if layer.qkv.bias is None else qkv + layer.qkv.bias
        return tf.reshape(qkv, [batch, height, width, kernel.shape[-1]])

    if not layer.downsample_attention:
        parts["compare: layer without attention op"] = (without_attention, (x,), layer.trainable_variables)
    parts["compare: qkv projection as matmul"] = (qkv_matmul, (pooled,), layer.qkv.trainable_variables)
    timed = {name: ("autodiff", *_forward_and_train(*part)) for name, part in parts.items()}
    if "fused" in FLAGS.paths:
        timed.update(_fused_parts(layer, q, k, v))
    if "tf_ops" in FLAGS.paths:
        timed.update({f"tf_ops: {name}": part for name, part in _tf_ops_parts(layer, q, k, v).items()})
    return timed


def _network_step(model):
    """tf.function: a training-mode forward of `model` and the gradients of all its weights."""
    import tensorflow as tf

    x = _random((FLAGS.batch, FLAGS.image_size, FLAGS.image_size, 3))
    upstream = _random((FLAGS.batch, *model.output.shape[1:]), "upstream")

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) * upstream)
        return tape.gradient(loss, model.trainable_variables)

    return step


def _distinct_layers(model, twin):
    """[(key, count, layer, conv twin, input shape)] of the AA layers of `model`, one per input
    shape and configuration, in network order."""
    from aa_keras.layers import attention_layers

    distinct = {}
    for layer in attention_layers(model):
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        key = (tuple(layer.input.shape[1:]), json.dumps(config, sort_keys=True, default=str))
        if key not in distinct:
            distinct[key] = [0, layer, twin.get_layer(layer.name), (FLAGS.batch, *layer.input.shape[1:])]
        distinct[key][0] += 1
    return list(distinct.values())


def _time(functions):
    """Medians in ms of the no-argument `functions` ({name: fn}), run once each per round."""
    times = {name: [] for name in functions}
    for round_ in range(FLAGS.warmup + FLAGS.rounds):
        logging.info("round %d of %d", round_ + 1, FLAGS.warmup + FLAGS.rounds)
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            if round_ >= FLAGS.warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def _standalone_layers():
    """[(1, layer, Conv2D twin, input shape)] at `--layer_shapes`, built (bench_layer's configuration)."""
    import keras

    from aa_keras.layers import AttentionAugmentation2D

    layers = []
    for shape in FLAGS.layer_shapes:
        filters, size = (int(n) for n in shape.split(":"))
        input_shape = (FLAGS.batch, size, size, filters)
        layer = AttentionAugmentation2D(filters, 3, depth_k=0.2, depth_v=0.2, num_heads=8, name=f"layer_{filters}_at_{size}")
        conv = keras.layers.Conv2D(filters, 3, padding="same")
        layer.build(input_shape)
        conv.build(input_shape)
        layers.append((1, layer, conv, input_shape))
    return layers


def _pair_names():
    """(AA network, twin) names for the table."""
    if FLAGS.pair:
        return tuple(FLAGS.pair.split(":"))
    return f"AA-WRN-{FLAGS.depth}-{FLAGS.width}", f"WRN-{FLAGS.depth}-{FLAGS.width}"


def _networks():
    """(AA network, twin): `--pair`'s, or AA-WRN-depth-width and its WRN."""
    from aa_keras.applications import build_model
    from aa_keras.applications.wide_resnet import AAWideResNet, WideResNet

    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    if FLAGS.pair:
        aa_name, twin_name = FLAGS.pair.split(":")
        return build_model(aa_name, input_shape=shape), build_model(twin_name, input_shape=shape)
    return AAWideResNet(FLAGS.depth, FLAGS.width, input_shape=shape), WideResNet(FLAGS.depth, FLAGS.width, input_shape=shape)


def _profile():
    """Builds the networks (or the standalone layers) and every timed function, times them;
    returns the results."""
    if "fused" in FLAGS.paths:
        _multiply_add_peak()  # the floors' yardstick, compiled and run before anything is timed
    if FLAGS.layer_shapes:
        functions, distinct = {}, _standalone_layers()
    else:
        model, twin = _networks()
        functions = {"aa network": _network_step(model), "twin network": _network_step(twin)}
        distinct = _distinct_layers(model, twin)
    functions["matmul"] = _matmul_yardstick()[0]
    layers = []
    for i, (count, layer, conv, input_shape) in enumerate(distinct):
        x = _random(input_shape)
        info = {
            "name": layer.name, "count": count, "input_shape": list(input_shape), "filters": layer.filters,
            "strides": list(layer.strides), "grid": list(layer._attention_size(*input_shape[1:3])),
            "heads": layer.num_heads, "dkh": layer.dkh, "dvh": layer.dvh, "parts": {},
        }
        layers.append(info)
        functions[i, "layer", "train"] = _forward_and_train(layer, (x,), layer.trainable_variables)[1]
        functions[i, "conv", "train"] = _forward_and_train(conv, (x,), conv.trainable_variables)[1]
        for name, (kind, forward, second) in _layer_parts(layer, x).items():
            info["parts"][name] = kind
            functions[i, name, "forward"] = forward
            functions[i, name, kind] = second
    medians = _time(functions)
    return _summarise(medians, layers)


@functools.cache
def _matmul_yardstick():
    """kernel_efficiency's matrix product (tf.function, FLOPs), made once."""
    from benchmarks.kernel_efficiency import matmul_function

    return matmul_function()


@functools.cache
def _multiply_add_peak():
    """(GFLOP per second of the cores this process may use, of one core): the float32 multiply-add
    peak of one core (`kernel_harness peak`, built with the kernel's flags) times the cores (two
    processes at once each kept it on the AVX2 VM; where two hardware threads share a core, this
    counts it twice: a lower floor, still one no kernel goes below)."""
    from benchmarks.kernel_instructions import compile_harness, run_harness

    with tempfile.TemporaryDirectory() as workdir:
        binary = os.path.join(workdir, "kernel_harness")
        compile_harness(binary)
        core = run_harness([binary, "peak"])["gflop_per_second"]
    return core * len(os.sched_getaffinity(0)), core


def _kernel_floor(info):
    """The fused attention's floor at one layer's shapes, in ms at the cores' multiply-add peak:
    {"products": forward and gradient products, "products and exponentials": with both ops'
    exponentials as the kernel computes them}; see kernel_efficiency.attention_flops."""
    from benchmarks.kernel_efficiency import attention_flops

    flops = attention_flops(info["input_shape"][0], info["heads"], info["grid"][0] * info["grid"][1], info["dkh"],
                            info["dvh"])
    ms_per_flop = 1e-6 / _multiply_add_peak()[0]
    products = (flops["fused forward"] + flops["fused gradient"]) * ms_per_flop
    return {"products": products, "products and exponentials": products + flops["exponentials"] * ms_per_flop}


def _layer_target(info):
    """The target ratio of a `--layer_shapes` layer at targets.LAYER_BATCH, or None."""
    if not FLAGS.layer_shapes or FLAGS.batch != targets.LAYER_BATCH:
        return None
    return next((t for f, size, t in targets.LAYER_SHAPES if (f, size) == (info["filters"], info["grid"][0])), None)


def _network_target():
    """The target ratio of the profiled network pair at its image size and batch, or None."""
    names = tuple(FLAGS.pair.split(":")) if FLAGS.pair else (f"aa_wrn{FLAGS.depth}_{FLAGS.width}",
                                                              f"wrn{FLAGS.depth}_{FLAGS.width}")
    shape = (*names, FLAGS.image_size, FLAGS.batch)
    return next((t for *pair, t in targets.NETWORKS.values() if tuple(pair) == shape), None)


def _summarise(medians, layers):
    """The results dict: networks, per layer its step, its conv twin's and its parts'
    {forward_ms, gradient_ms}, and the rest of the network (without networks, the layers only)."""
    attention_total = conv_total = fused_total = 0.0
    floor_totals = {}
    for i, info in enumerate(layers):
        info["layer_ms"] = medians[i, "layer", "train"]
        info["conv_ms"] = medians[i, "conv", "train"]
        attention_total += info["count"] * info["layer_ms"]
        conv_total += info["count"] * info["conv_ms"]
        parts = {}
        for name, kind in info["parts"].items():
            forward = medians[i, name, "forward"]
            second = medians[i, name, kind]
            parts[name] = {"forward_ms": forward, "gradient_ms": second if kind == "op" else second - forward}
        fused_sum = sum(
            p["forward_ms"] + p["gradient_ms"] for n, p in parts.items() if not n.startswith(("tf_ops", "compare"))
        )
        if "fused attention" in parts:
            parts["layer overhead"] = {"forward_ms": None, "gradient_ms": None, "total_ms": info["layer_ms"] - fused_sum}
            fused = parts["fused attention"]["forward_ms"] + parts["fused attention"]["gradient_ms"]
            info["kernel_floor_ms"] = _kernel_floor(info)
            info["layer_at_kernel_floor_ms"] = {
                name: info["layer_ms"] - fused + floor for name, floor in info["kernel_floor_ms"].items()
            }
            fused_total += info["count"] * fused
            for name, floor in info["kernel_floor_ms"].items():
                floor_totals[name] = floor_totals.get(name, 0.0) + info["count"] * floor
            if (target := _layer_target(info)) is not None:
                info["target_budget"] = targets.budget(target, info["conv_ms"], info["layer_ms"], fused,
                                                       info["kernel_floor_ms"])
        info["parts"] = parts
    floors = {"matmul_ms": medians["matmul"], "matmul_gflop_per_s": _matmul_yardstick()[1] / medians["matmul"] / 1e6}
    if "fused" in FLAGS.paths:  # the floors, of the fused attention only
        floors["peak_gflop_per_s"], floors["core_peak_gflop_per_s"] = _multiply_add_peak()
    if "aa network" not in medians:
        return {**floors, "layers": layers}
    aa, twin = medians["aa network"], medians["twin network"]
    if all("kernel_floor_ms" in info for info in layers):
        floors["aa_step_at_kernel_floor_ms"] = {name: aa - fused_total + floor for name, floor in floor_totals.items()}
        if (target := _network_target()) is not None:
            floors["target_budget"] = targets.budget(target, twin, aa, fused_total, floor_totals)
    return {
        **floors,
        "aa_step_ms": aa,
        "twin_step_ms": twin,
        "aa_over_twin": aa / twin,
        "attention_layers_ms": attention_total,
        "conv_twins_ms": conv_total,
        "rest_of_aa_network_ms": aa - attention_total,
        "rest_of_twin_ms": twin - conv_total,
        "layers": layers,
    }


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def _table(results):
    network = "aa_step_ms" in results
    aa_name, twin_name = _pair_names()

    def share(ms, info=None):
        """ms as a share of the AA step, or (layers alone) over the layer's Conv2D twin."""
        return f"{100 * ms / results['aa_step_ms']:.1f}%" if network else f"{ms / info['conv_ms']:.2f}"

    if network:
        aa = results["aa_step_ms"]
        lines = [
            f"{aa_name} train step {aa:.0f} ms, {twin_name} {results['twin_step_ms']:.0f} ms: "
            f"ratio {results['aa_over_twin']:.2f}; batch {FLAGS.batch}, {FLAGS.image_size}x{FLAGS.image_size}",
            "",
            "| layer | count | part | forward ms | gradient ms | ms per step (x count) | % of AA step |",
        ]
    else:
        lines = [
            f"AttentionAugmentation2D (3x3, 8 heads, dk = dv = 0.2 x filters) against Conv2D; batch {FLAGS.batch}",
            "",
            "| layer | count | part | forward ms | gradient ms | ms per step | / Conv2D twin |",
        ]
    lines.append("|---|---|---|---|---|---|---|")
    for info in results["layers"]:
        label = (f"{info['name']}: {info['input_shape'][3]}->{info['filters']}, grid {info['grid'][0]}x{info['grid'][1]}, "
                 f"dkh {info['dkh']}, dvh {info['dvh']}")
        count = info["count"]
        rows = [("whole layer", None, None, info["layer_ms"]), ("Conv2D twin", None, None, info["conv_ms"])]
        for name, part in info["parts"].items():
            total = part.get("total_ms", (part["forward_ms"] or 0) + (part["gradient_ms"] or 0))
            rows.append((name, part["forward_ms"], part["gradient_ms"], total))
        for name, floor in info.get("kernel_floor_ms", {}).items():
            rows.append((f"floor: fused attention, {name} at the multiply-add peak", None, None, floor))
            rows.append(("floor: whole layer, its fused attention at that floor", None, None,
                         info["layer_at_kernel_floor_ms"][name]))
        if "target_budget" in info:
            rows.append((f"target {info['target_budget']['target']}: what it leaves the fused attention", None, None,
                         info["target_budget"]["budget_ms"]))
        for row, (name, forward, gradient, total) in enumerate(rows):
            lines.append(
                f"| {label if row == 0 else ''} | {count if row == 0 else ''} | {name} | {_fmt(forward)} | {_fmt(gradient)} | {count * total:.1f} | "
                f"{share(count * total, info)} |"
            )
    if network:
        lines += [
            f"| all attention layers | | | | | {results['attention_layers_ms']:.1f} | "
            f"{share(results['attention_layers_ms'])} |",
            f"| their Conv2D twins | | | | | {results['conv_twins_ms']:.1f} | {share(results['conv_twins_ms'])} |",
            f"| rest of the AA network | | | | | {results['rest_of_aa_network_ms']:.1f} | "
            f"{share(results['rest_of_aa_network_ms'])} |",
            f"| rest of {twin_name} | | | | | {results['rest_of_twin_ms']:.1f} | {share(results['rest_of_twin_ms'])} |",
        ]
    matmul = f"tf.matmul 2048 x 2048 x 2048: {results['matmul_ms']:.1f} ms, {results['matmul_gflop_per_s']:.0f} GFLOP/s"
    if "peak_gflop_per_s" in results:
        matmul = (f"multiply-add peak (the floors' yardstick): {results['peak_gflop_per_s']:.0f} GFLOP/s "
                  f"({results['core_peak_gflop_per_s']:.1f} per core); {matmul}, "
                  f"{100 * results['matmul_gflop_per_s'] / results['peak_gflop_per_s']:.0f}% of the peak")
    lines += ["", matmul]
    for name, ms in results.get("aa_step_at_kernel_floor_ms", {}).items():
        lines.append(f"{aa_name} with every fused attention at its floor ({name}): {ms:.0f} ms, "
                     f"ratio {ms / results['twin_step_ms']:.2f}")
    budgets = [(info["name"], info["target_budget"]) for info in results["layers"] if "target_budget" in info]
    if "target_budget" in results:
        budgets.append((f"{aa_name} (all its fused attention)", results["target_budget"]))
    for name, budget in budgets:
        lines.append(_budget_line(name, budget))
    return "\n".join(lines)


def _budget_line(name, budget):
    """One sentence on what a target leaves the fused attention (see targets.budget)."""
    head = (f"{name}: at the target ratio {budget['target']} the fused attention may take "
            f"{budget['budget_ms']:.1f} ms (now {budget['fused_attention_ms']:.1f})")
    if budget["speedup_needed"] is None:
        return head + ": nothing else fits; out of reach"
    floor = "products and exponentials"
    needed, now = budget["floor_share_needed"][floor], budget["floor_share_now"][floor]
    if needed > 1:
        return head + f": out of reach, below its floor ({floor} at the multiply-add peak)"
    verdict = (f"{budget['speedup_needed']:.2f}x faster needed" if budget["speedup_needed"] > 1 else "within it")
    return (head + f": {verdict}; its {floor} would run at {100 * needed:.0f}% of the multiply-add "
            f"peak (now {100 * now:.0f}%)")


def main(argv):
    del argv
    results = {
        "config": {name: FLAGS[name].value for name in ("batch", "image_size", "depth", "width", "pair", "paths",
                                                        "rounds", "warmup", "layer_shapes")},
        "machine": machine.record(),
        **_profile(),
    }
    table = _table(results)
    print(table)
    results["table"] = table
    files.write_json(FLAGS.output, results)
    logging.info("wrote %s", FLAGS.output)


if __name__ == "__main__":
    app.run(main)
