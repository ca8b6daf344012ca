"""The JAX or PyTorch side of tests/test_backends_models.py:
`KERAS_BACKEND=jax python backend_models_script.py DIR` (or KERAS_BACKEND=torch), with TensorFlow
unimportable (`without_tensorflow`).

Reads DIR/inputs.npz (images, queries, training data) and DIR/source.keras (a plain functional
model saved by the TensorFlow test); writes, for each network built here with a fixed seed,
DIR/<name>.keras and its outputs; augments and resizes the given models; computes attention
maps; fits `aa_small` two steps. Every array goes to DIR/<backend>.npz.
"""

import os
import sys

import without_tensorflow  # noqa: F401  (first: nothing below may import TensorFlow)
import keras
import numpy as np

from aa_keras.applications import AAResNet, AAWideResNet, augment, resize_model
from aa_keras.applications.small_nets import aa_small_net, conv_small_net
from aa_keras.visualize import attention_maps

to_numpy = keras.ops.convert_to_numpy

NETWORKS = {
    "aa_small": lambda: aa_small_net((32, 32, 3), classes=3),
    "conv_small": lambda: conv_small_net((32, 32, 3), classes=3),
    "aa_resnet18": lambda: AAResNet(18, input_shape=(32, 32, 3), classes=3),
    "aa_wrn10_2": lambda: AAWideResNet(
        10, 2, input_shape=(32, 32, 3), classes=3, num_heads=2, min_key_depth_per_head=4
    ),
}


def main(folder):
    backend = keras.backend.backend()
    assert backend in ("jax", "torch"), backend
    arrays = dict(np.load(os.path.join(folder, "inputs.npz")))
    images = arrays["images"]
    results = {}
    for seed, (name, build) in enumerate(NETWORKS.items()):
        keras.utils.set_random_seed(seed)
        model = build()
        model.save(os.path.join(folder, f"{name}.keras"))
        results[name] = to_numpy(model(images, training=False))

    source = keras.saving.load_model(os.path.join(folder, "source.keras"))
    augmented = augment(source, select="all", depth_k=8, depth_v=8, num_heads=2)
    augmented.save(os.path.join(folder, "augmented.keras"))
    results["augmented"] = to_numpy(augmented(images, training=False))

    aa_small = keras.saving.load_model(os.path.join(folder, "aa_small.keras"))
    resized = resize_model(aa_small, (48, 48, 3))
    results["resized"] = to_numpy(resized(arrays["images_48"], training=False))
    maps = attention_maps(aa_small, images, arrays["queries"])
    results.update({f"maps/{name}": value for name, value in maps.items()})

    keras.utils.set_random_seed(7)
    model = aa_small_net((32, 32, 3), classes=3)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    history = model.fit(arrays["train_x"], arrays["train_y"], batch_size=4, epochs=1, verbose=0)
    model.save(os.path.join(folder, "fitted.keras"))
    results["fitted"] = to_numpy(model(images, training=False))
    results["fitted/loss"] = np.asarray(history.history["loss"])
    results["backend"] = np.array(backend)
    np.savez(os.path.join(folder, f"{backend}.npz"), **results)


if __name__ == "__main__":
    main(sys.argv[1])
