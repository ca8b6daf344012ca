"""Test accuracy of a classifier for the benchmarks, with BatchNormalization on its moving
statistics or (a diagnostic) on the statistics of each test batch."""

import tensorflow as tf

from aa_keras.data import classification as data


def accuracy(model, dataset, image_size, data_dir=None, batch_statistics=False, split="test", batch_size=200,
             preprocessing="none"):
    """Accuracy of `model` on the whole `split` of `dataset` at `image_size`, in batches of
    `batch_size`; with `batch_statistics`, BatchNormalization normalises with the statistics of
    each batch instead of its moving averages (how much of a drop is theirs)."""
    predict = tf.function(
        lambda images: tf.argmax(model(images, training=batch_statistics), -1, output_type=tf.int32),
        reduce_retracing=True,
    )
    correct = total = 0
    for images, labels in data.build_dataset(dataset, split, image_size, global_batch_size=batch_size,
                                             data_dir=data_dir, preprocessing=preprocessing):  # fmt: skip
        correct += int(tf.reduce_sum(tf.cast(predict(images) == labels, tf.int32)))
        total += int(labels.shape[0])
    return correct / total
