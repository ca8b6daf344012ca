"""The JAX side of tests/test_backends.py: run as `KERAS_BACKEND=jax python backend_script.py DIR`.

Reads DIR/cases.json (layer configs, build shapes, call arguments) and DIR/inputs.npz (each
case's input, cotangent and weights, written by the TensorFlow test); writes DIR/jax.npz with
each case's outputs, scores and gradients (input and trainable weights of
sum(outputs * cotangent), by jax.grad through a jitted stateless call), the errors of
attention_implementation='fused' and 'tf_ops', the outputs of a
`jit_compile=True` model, the outputs of DIR/tf_model.keras loaded here, the re-estimated
BatchNormalization statistics of DIR/tf_batch_norm_model.keras; saves a model
built here as DIR/jax_model.keras with its outputs.
"""

import json
import os
import sys

import jax
import keras
import numpy as np

from aa_keras.applications import recalibrate_batch_norm
from aa_keras.layers import AttentionAugmentation2D


def case_results(name, case, arrays):
    layer = AttentionAugmentation2D.from_config(case["config"])
    layer.build(tuple(case["build_shape"]))
    layer.set_weights([arrays[f"{name}/w{i}"] for i in range(len(layer.weights))])
    x, cotangent = arrays[f"{name}/x"], arrays[f"{name}/cotangent"]
    results = {}
    if case.get("scores"):
        outputs, scores = layer(x, return_attention_scores=True)
        results[f"{name}/scores"] = np.asarray(scores)

    def loss(trainable, x):
        outputs, _ = layer.stateless_call(trainable, [v.value for v in layer.non_trainable_variables], x)
        return (outputs.astype("float32") * cotangent).sum(), outputs

    trainable = [v.value for v in layer.trainable_variables]
    (_, outputs), (d_trainable, d_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(trainable, x)
    results[f"{name}/outputs"] = np.asarray(outputs)
    results[f"{name}/eager"] = np.asarray(layer(x))
    results[f"{name}/d_x"] = np.asarray(d_x)
    for i, grad in enumerate(d_trainable):
        results[f"{name}/d_w{i}"] = np.asarray(grad)
    return results


def main(folder):
    assert keras.backend.backend() == "jax", keras.backend.backend()
    with open(os.path.join(folder, "cases.json")) as f:
        cases = json.load(f)
    arrays = dict(np.load(os.path.join(folder, "inputs.npz")))
    results = {}
    for name, case in cases.items():
        results.update(case_results(name, case, arrays))

    for implementation in ("fused", "tf_ops"):
        try:
            AttentionAugmentation2D(8, 3, depth_k=8, depth_v=8, num_heads=2, attention_implementation=implementation)
        except ValueError as error:
            results[f"refusal/{implementation}"] = np.array(str(error))

    images = arrays["model/x"]
    model = keras.saving.load_model(os.path.join(folder, "tf_model.keras"))
    results["tf_model/outputs"] = np.asarray(model(images))
    model.compile(jit_compile=True)
    results["tf_model/jit"] = model.predict(images, verbose=0)

    model = keras.saving.load_model(os.path.join(folder, "tf_batch_norm_model.keras"))
    recalibrate_batch_norm(model, [images[:1], images[1:]])
    for i, variable in enumerate(v for v in model.non_trainable_weights if "moving" in v.path):
        results[f"batch_norm/{i}"] = np.asarray(variable)

    keras.utils.set_random_seed(1)
    inputs = keras.Input(images.shape[1:])
    x = AttentionAugmentation2D(16, 3, depth_k=8, depth_v=8, num_heads=2, position_encoding="sine")(inputs)
    x = AttentionAugmentation2D(8, 3, strides=2, depth_k=8, depth_v=8, num_heads=2)(x)
    model = keras.Model(inputs, x)
    model.save(os.path.join(folder, "jax_model.keras"))
    results["jax_model/outputs"] = np.asarray(model(images))
    np.savez(os.path.join(folder, "jax.npz"), **results)


if __name__ == "__main__":
    main(sys.argv[1])
