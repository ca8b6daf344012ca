"""Parameters and FLOPs of the paper's networks against the paper's tables.

    python -m benchmarks.param_table                       # all networks, markdown + JSON
    python -m benchmarks.param_table --models=resnet50,aa_resnet50 --noprofile

Every network is built with `aa_keras.applications.build_model` at the paper's resolution
(224x224 for the ResNets, 32x32 and 100 classes for the WRNs). FLOPs follow the paper's
convention, 2 x multiply-adds, counted analytically over convolutions, dense layers and the
attention of every `AttentionAugmentation2D` (q/k/v and output projections, content logits,
the two 1D relative logit terms and the weighted sum of the values); normalisation,
activations, pooling and the softmax are not counted. `--profile` cross-checks with the
TensorFlow profiler's float-operation count of the traced graph, which also counts BatchNorm,
bias, softmax and elementwise ops but not `Einsum` ops (the relative logits). The markdown
table is printed and written next to the JSON.
"""

import json
import math
import os

import keras
import tensorflow as tf
from absl import app, flags

from aa_keras.applications import build_model
from aa_keras.layers import AttentionAugmentation2D, use_attention_implementation

FLAGS = flags.FLAGS


def _define_flags():
    """The script's flags, defined only when it runs (tests import its functions)."""
    flags.DEFINE_list(
        "models",
        ["resnet34", "aa_resnet34", "resnet50", "aa_resnet50", "resnet101", "aa_resnet101",
         "resnet152", "aa_resnet152", "wrn28_10", "aa_wrn28_10"],
        "Registered model names (aa_keras.applications.MODEL_NAMES).",
    )
    flags.DEFINE_string(
        "output", "benchmarks/results/param_table.json", "JSON output path; the markdown goes next to it (.md)."
    )
    flags.DEFINE_bool("profile", True, "Also count FLOPs with the TensorFlow profiler.")


# Bello et al., 2019: parameters (millions) of tables 1 and 3 and GFLOPs where reported.
PAPER = {
    "resnet34": (21.8, None), "aa_resnet34": (20.7, None),
    "resnet50": (25.6, 8.2), "aa_resnet50": (25.8, 8.3),
    "resnet101": (44.5, None), "aa_resnet101": (45.4, None),
    "resnet152": (60.2, None), "aa_resnet152": (61.6, None),
    "wrn28_10": (36.3, None), "aa_wrn28_10": (36.2, None),
}
CIFAR_CLASSES = 100


def _conv_flops(output_shape, kernel):
    """2 x multiply-adds of a convolution (the kernel's input dimension is per group)."""
    _, height, width, _ = output_shape
    kh, kw, channels, filters = kernel.shape
    return 2 * height * width * kh * kw * channels * filters


def _attention_flops(layer):
    """2 x multiply-adds of the attention branch of an AttentionAugmentation2D."""
    height, width = layer.output.shape[1:3]
    if layer.downsample_attention:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    positions = height * width
    macs = positions * layer.qkv.kernel.shape[2] * (2 * layer.dk + layer.dv)  # q, k, v projection
    macs += positions * positions * (layer.dk + layer.dv)  # content logits, weighted values
    if layer.position_encoding == "relative":
        macs += positions * (height + width) * layer.dk  # the two 1D relative terms
    macs += positions * layer.dv * layer.dv  # attn_out
    return 2 * macs


def analytic_flops(model):
    """FLOPs (2 x multiply-adds) of one example through `model`."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, AttentionAugmentation2D):
            if layer.conv is not None:
                total += _conv_flops(layer.output.shape, layer.conv.kernel)
            total += _attention_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            total += _conv_flops(layer.output.shape, layer.kernel)
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


def profiler_flops(model, op_types=(".*",)):
    """The TensorFlow profiler's float-operation count of one example through `model`, over
    the ops whose type matches one of the `op_types` regexes. The profiler registers no count
    for `Einsum` ops (here: the relative logits) nor for custom ops, so the model is traced
    with the attention built from standard TensorFlow ops."""
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    with use_attention_implementation(model, "tf_ops"):
        graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    options["account_type_regexes"] = list(op_types)
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def measure(name, profile):
    model = build_model(name, classes=CIFAR_CLASSES if "wrn" in name else None)
    row = {
        "model": name,
        "input_shape": list(model.input_shape[1:]),
        "params": model.count_params(),
        "gflops": analytic_flops(model) / 1e9,
    }
    if profile:
        row["profiler_gflops"] = profiler_flops(model) / 1e9
    paper_params, paper_gflops = PAPER.get(name, (None, None))
    row["paper_params_m"] = paper_params
    row["paper_gflops"] = paper_gflops
    if paper_params is not None:
        row["params_diff_pct"] = 100.0 * (row["params"] / 1e6 - paper_params) / paper_params
    return row


def markdown(rows, profile):
    head = "| model | input | params (M) | paper (M) | diff | GFLOPs | paper GFLOPs |"
    rule = "|---|---|---|---|---|---|---|"
    if profile:
        head, rule = head + " profiler GFLOPs |", rule + "---|"
    lines = [head, rule]
    for r in rows:
        diff = f"{r['params_diff_pct']:+.2f}%" if r["paper_params_m"] is not None else "-"
        line = (
            f"| {r['model']} | {'x'.join(map(str, r['input_shape']))} | {r['params'] / 1e6:.2f} | "
            f"{r['paper_params_m'] if r['paper_params_m'] is not None else '-'} | {diff} | "
            f"{r['gflops']:.2f} | {r['paper_gflops'] if r['paper_gflops'] is not None else '-'} |"
        )
        if profile:
            line += f" {r['profiler_gflops']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv):
    del argv
    rows = [measure(name, FLAGS.profile) for name in FLAGS.models]
    table = markdown(rows, FLAGS.profile)
    print(table)
    if not FLAGS.output.endswith(".json"):
        raise app.UsageError(f"--output must end with .json, received {FLAGS.output!r}.")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    for path, text in ((FLAGS.output, json.dumps(rows, indent=2)), (FLAGS.output[:-5] + ".md", table)):
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
