"""Shape helper shared by the attention modules."""

import tensorflow as tf


def dims(x):
    """The dimensions of `x`: static ints where known, scalar tensors where not."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(x.shape)]
