"""The JAX or PyTorch side of tests/test_backends.py: `KERAS_BACKEND=jax python backend_script.py DIR`
(or KERAS_BACKEND=torch), with TensorFlow unimportable (`without_tensorflow`).

Reads DIR/cases.json (layer configs, build shapes, call arguments) and DIR/inputs.npz (each
case's input, cotangent and weights, written by the TensorFlow test); writes DIR/<backend>.npz
with each case's outputs, scores and gradients (input and trainable weights of
sum(outputs * cotangent) through a stateless call: by jax.grad, jitted, on JAX; by torch
autograd, eagerly, on PyTorch), the eager outputs, the errors of
attention_implementation='fused' and 'tf_ops', the outputs of DIR/tf_model.keras loaded here
(called, and by `predict` compiled with `jit_compile=True` on JAX, eager on PyTorch), the
re-estimated BatchNormalization statistics of DIR/tf_batch_norm_model.keras, the "relative" case
with dropout (inference, training, the same seed, a stateless training gradient, the dropped
fraction); saves a model built here as DIR/<backend>_model.keras with its outputs.
"""

import json
import os
import sys

import without_tensorflow  # noqa: F401  (first: nothing below may import TensorFlow)
import keras
import numpy as np

from aa_keras.applications import recalibrate_batch_norm
from aa_keras.layers import AttentionAugmentation2D

BACKEND = keras.backend.backend()
to_numpy = keras.ops.convert_to_numpy


def value_and_grad(loss, argnums):
    """`jax.value_and_grad(loss, argnums, has_aux=True)`, jitted, on JAX; the same by torch
    autograd (eager) on PyTorch: a function of loss's arguments returning ((loss, aux), grads)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))
    import torch

    def step(*args):
        args = list(args)
        for i in argnums:
            args[i] = keras.tree.map_structure(
                lambda a: keras.ops.convert_to_tensor(a).detach().clone().requires_grad_(True), args[i]
            )
        value, aux = loss(*args)
        wrt = [args[i] for i in argnums]
        grads = torch.autograd.grad(value, keras.tree.flatten(wrt))
        return (value, aux), keras.tree.pack_sequence_as(wrt, list(grads))

    return step


def case_results(name, case, arrays):
    layer = AttentionAugmentation2D.from_config(case["config"])
    layer.build(tuple(case["build_shape"]))
    layer.set_weights([arrays[f"{name}/w{i}"] for i in range(len(layer.weights))])
    x, cotangent = arrays[f"{name}/x"], arrays[f"{name}/cotangent"]
    results = {}
    if case.get("scores"):
        outputs, scores = layer(x, return_attention_scores=True)
        results[f"{name}/scores"] = to_numpy(scores)

    def loss(trainable, x):
        outputs, _ = layer.stateless_call(trainable, [v.value for v in layer.non_trainable_variables], x)
        return keras.ops.sum(keras.ops.multiply(keras.ops.cast(outputs, "float32"), cotangent)), outputs

    trainable = [v.value for v in layer.trainable_variables]
    (_, outputs), (d_trainable, d_x) = value_and_grad(loss, argnums=(0, 1))(trainable, x)
    results[f"{name}/outputs"] = to_numpy(outputs)
    results[f"{name}/eager"] = to_numpy(layer(x))
    results[f"{name}/d_x"] = to_numpy(d_x)
    for i, grad in enumerate(d_trainable):
        results[f"{name}/d_w{i}"] = to_numpy(grad)
    return results


def dropout_results(case, arrays):
    """A layer of the "relative" case with dropout=0.5, seed=3 and that case's weights: inference and
    training calls, a fresh layer with the same seed, a stateless training gradient, and the
    fraction of dropped weights of a layer whose outputs are its (uniform) attention weights."""
    config = dict(case["config"], dropout=0.5, seed=3)
    x = arrays["relative/x"]
    results = {}
    for run in range(2):
        layer = AttentionAugmentation2D.from_config(config)
        layer.build(tuple(case["build_shape"]))
        layer.set_weights([arrays[f"relative/w{i}"] for i in range(len(layer.weights))])
        results[f"dropout/inference{run}"] = to_numpy(layer(x))
        results[f"dropout/training{run}"] = np.stack([to_numpy(layer(x, training=True)) for _ in range(2)])

    def loss(trainable, non_trainable):
        outputs, non_trainable = layer.stateless_call(trainable, non_trainable, x, training=True)
        return keras.ops.sum(outputs), (outputs, non_trainable)

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    step = value_and_grad(loss, argnums=(0,))
    (_, (first, non_trainable)), (grads,) = step(trainable, non_trainable)
    (_, (second, _)), _ = step(trainable, non_trainable)
    results["dropout/stateless"] = np.stack([to_numpy(first), to_numpy(second)])
    results["dropout/stateless_grads_finite"] = np.array(all(bool(np.isfinite(to_numpy(g)).all()) for g in grads))

    positions = 16
    layer = AttentionAugmentation2D(
        positions, 1, depth_k=4, depth_v=positions, num_heads=1, position_encoding="none", use_bias=False, dropout=0.5
    )
    layer.build((None, 4, 4, positions))
    qkv = np.zeros((1, 1, positions, 8 + positions), "float32")
    qkv[0, 0, :, 8:] = np.eye(positions)
    layer.qkv.kernel.assign(qkv)
    layer.attn_out.kernel.assign(np.eye(positions, dtype="float32")[None, None])
    one_hot = np.broadcast_to(np.eye(positions, dtype="float32").reshape(1, 4, 4, positions), (8, 4, 4, positions))
    outputs, scores = layer(one_hot, training=True, return_attention_scores=True)
    results["dropout/one_hot_outputs"] = to_numpy(outputs)
    results["dropout/one_hot_scores"] = to_numpy(scores)
    return results


def main(folder):
    assert BACKEND in ("jax", "torch"), BACKEND
    with open(os.path.join(folder, "cases.json")) as f:
        cases = json.load(f)
    arrays = dict(np.load(os.path.join(folder, "inputs.npz")))
    results = {}
    for name, case in cases.items():
        results.update(case_results(name, case, arrays))
    results.update(dropout_results(cases["relative"], arrays))

    for implementation in ("fused", "tf_ops"):
        try:
            AttentionAugmentation2D(8, 3, depth_k=8, depth_v=8, num_heads=2, attention_implementation=implementation)
        except ValueError as error:
            results[f"refusal/{implementation}"] = np.array(str(error))

    images = arrays["model/x"]
    model = keras.saving.load_model(os.path.join(folder, "tf_model.keras"))
    results["tf_model/outputs"] = to_numpy(model(images))
    model.compile(jit_compile=BACKEND == "jax")
    results["tf_model/predict"] = model.predict(images, verbose=0)

    model = keras.saving.load_model(os.path.join(folder, "tf_batch_norm_model.keras"))
    recalibrate_batch_norm(model, [images[:1], images[1:]])
    for i, variable in enumerate(v for v in model.non_trainable_weights if "moving" in v.path):
        results[f"batch_norm/{i}"] = to_numpy(variable)

    keras.utils.set_random_seed(1)
    inputs = keras.Input(images.shape[1:])
    x = AttentionAugmentation2D(16, 3, depth_k=8, depth_v=8, num_heads=2, position_encoding="sine")(inputs)
    x = AttentionAugmentation2D(8, 3, strides=2, depth_k=8, depth_v=8, num_heads=2)(x)
    model = keras.Model(inputs, x)
    model.save(os.path.join(folder, f"{BACKEND}_model.keras"))
    results["model/outputs"] = to_numpy(model(images))
    np.savez(os.path.join(folder, f"{BACKEND}.npz"), **results)


if __name__ == "__main__":
    main(sys.argv[1])
