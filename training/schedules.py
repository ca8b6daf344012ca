"""The learning-rate schedule of the recipes: linear warm-up, then step, cosine or constant."""

import math

import keras
import tensorflow as tf

from aa_keras.validation import positive_int

DECAYS = ("step", "cosine", "constant")


@keras.saving.register_keras_serializable(package="aa_keras")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then a decay until `total_steps`.

    For step s (counted from 0):
        s < warmup_steps:  peak * (s + 1) / warmup_steps
        "constant":        peak
        "step":            peak * decay_factor ** (number of `boundaries` <= s)
        "cosine":          peak * 0.5 * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps)))

    Args:
        peak: float, the learning rate at the end of the warm-up.
        total_steps: int, steps of the whole run.
        warmup_steps: int, in [0, total_steps).
        decay: "step", "cosine" or "constant".
        boundaries: increasing steps of the "step" decays.
        decay_factor: float, factor of each "step" decay.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, decay="cosine", boundaries=(), decay_factor=0.1):
        if not peak > 0:
            raise ValueError(f"Invalid `peak`: expected a positive float, received peak={peak!r}.")
        positive_int("total_steps", total_steps)
        if not (isinstance(warmup_steps, int) and 0 <= warmup_steps < total_steps):
            raise ValueError(
                f"Invalid `warmup_steps`: expected an int in [0, total_steps={total_steps}), "
                f"received warmup_steps={warmup_steps!r}."
            )
        if decay not in DECAYS:
            raise ValueError(f"Invalid `decay`: received decay={decay!r}, expected one of {DECAYS}.")
        self.peak = float(peak)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.decay = decay
        self.boundaries = tuple(int(b) for b in boundaries)
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.decay == "step" and self.boundaries:
            decays = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries, tf.float32), tf.float32))
            rate = self.peak * tf.pow(self.decay_factor, decays)
        elif self.decay == "cosine":
            progress = (step - self.warmup_steps) / float(self.total_steps - self.warmup_steps)
            rate = self.peak * 0.5 * (1.0 + tf.cos(math.pi * tf.clip_by_value(progress, 0.0, 1.0)))
        else:
            rate = tf.constant(self.peak, tf.float32)
        if self.warmup_steps == 0:
            return rate
        warmup = self.peak * (step + 1.0) / self.warmup_steps
        return tf.where(step < self.warmup_steps, warmup, rate)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "boundaries": self.boundaries,
            "decay_factor": self.decay_factor,
        }
