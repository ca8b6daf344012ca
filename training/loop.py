"""The parts of the training loop that every task shares: the recipe's optimizer, the model and
optimizer built under the strategy (`build_run_state`), the check of a run's settings, once,
against its folder too (`start_run`), what a task gives the trainer (`TrainingTask`),
the distributed training step and the replicas' BatchNormalization statistics. The trainer
itself is `training.trainer`.
"""

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from aa_keras.applications import set_backbone_trainable

from . import artifacts
from .schedules import WarmupDecay

MIXED_PRECISION = (None, "bfloat16", "float16")
_SUM = tf.distribute.ReduceOp.SUM


def build_optimizer(recipe, steps_per_epoch, mixed_precision):
    """The recipe's optimizer over `steps_per_epoch * recipe.epochs` steps: SGD with momentum or
    Adam on its `WarmupDecay` schedule, with dynamic loss scaling under "float16"."""
    total_steps = steps_per_epoch * recipe.epochs
    schedule = WarmupDecay(
        peak=recipe.peak_learning_rate,
        total_steps=total_steps,
        warmup_steps=int(recipe.warmup_fraction * total_steps),
        decay=recipe.schedule,
        boundaries=[epoch * steps_per_epoch for epoch in recipe.decay_epochs],
        decay_factor=recipe.decay_factor,
    )
    if recipe.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=recipe.momentum)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    if mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def build_run_state(task, strategy, recipe, epoch_steps, mixed_precision):
    """(model, optimizer, train_seconds variable), built under `strategy`'s scope and the run's
    dtype policy; nothing is written."""
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{mixed_precision}" if mixed_precision else "float32")
    try:
        with strategy.scope():
            model = task.build_model()
            if recipe.freeze_backbone_epochs:
                # Fails for a model with no pretrained backbone before any checkpoint or record is written. The
                # optimizer is built over every weight, frozen or not: its checkpoint does not depend on the epoch.
                set_backbone_trainable(model, True)
            optimizer = build_optimizer(recipe, epoch_steps, mixed_precision)
            optimizer.build(model.trainable_variables)
            task.compile(model, optimizer)
            train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return model, optimizer, train_seconds


def all_finite(variables):
    """Whether every value of every variable is finite."""
    return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))


class Diverged(FloatingPointError):
    """The loss or the weights became non-finite during training."""


def statistics_sync(strategy, model):
    """A function that sets `model`'s float non-trainable variables (BatchNormalization's moving
    statistics) to their mean over the replicas (and workers) of `strategy`.

    Keras 3 updates the moving statistics on each replica with no aggregation, so replicas drift
    apart; the training loops call this before each checkpoint and evaluation.
    """
    if strategy.num_replicas_in_sync == 1:
        return lambda: None  # Nothing to average.
    statistics = [v for v in model.non_trainable_variables if keras.backend.is_float_dtype(v.dtype)]

    @tf.function
    def sync():
        local = strategy.run(lambda: [tf.convert_to_tensor(v) for v in statistics])
        for variable, value in zip(statistics, local):
            variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

    return sync


def check_mixed_precision(mixed_precision):
    """Raises a ValueError unless `mixed_precision` is one of `MIXED_PRECISION`."""
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"Invalid `mixed_precision`: received {mixed_precision!r}, expected one of {MIXED_PRECISION}."
        )


@dataclasses.dataclass(frozen=True)
class StartedRun:
    """A run checked against its folder by `start_run`.

    Attributes:
        config: its configuration, as recorded in run_config.json (`TrainingSettings.config`).
        stored: the run_config.json found in the folder, or None for a new run.
        changes: {field: (stored value, new value)} of the settings changed on resume.
    """

    config: dict
    stored: Optional[dict] = None
    changes: dict = dataclasses.field(default_factory=dict)


def start_run(settings):
    """Checks `settings` (a `training.settings.TrainingSettings`) once, that its model_dir is a
    writable folder, and that it holds no other run (`artifacts.check_run_config`: a run with
    other settings is resumed only with `allow_changed_settings`); writes nothing.

    Returns:
        The `StartedRun`.

    Raises:
        ValueError: a bad setting, an unusable model_dir, or one holding a different run.
    """
    settings.check()
    config = settings.config()
    model_dir = settings.run.model_dir
    artifacts.check_model_dir(model_dir)
    stored, changes = artifacts.check_run_config(model_dir, config, settings.run.allow_changed_settings)
    return StartedRun(config, stored, changes)


class TrainingTask:
    """What the trainer (`training.trainer.run_training`) needs to know of a task; a task
    (`training.classification.ClassificationTask`, `training.detection.DetectionTask`) is built
    for one run and implements these methods.

    Attributes:
        class_names: the dataset's class names in label order, written to the run folder's
            `labels.txt`; None for none.
        train_examples: examples in the training split (set by the task).
    """

    class_names = None

    def build_model(self):
        """The `keras.Model`, called under the strategy's scope and the run's dtype policy."""
        raise NotImplementedError

    def compile(self, model, optimizer):
        """Called under the strategy's scope once the optimizer is built; nothing by default."""

    def train_dataset(self, context, epoch_seed, skip_batches):
        """One epoch of per-replica training batches (inputs, targets) for the input pipeline of
        `context`, shuffled from `epoch_seed`, its first `skip_batches` batches skipped."""
        raise NotImplementedError

    def loss(self, model, inputs, targets):
        """(loss, sums) on one replica, inside the gradient tape: the float32 loss scaled for
        summing over replicas (the trainer adds the model's own losses and the recipe's weight
        decay), and {name: float32 sum over this replica's examples} of training metrics,
        reported as means per example."""
        raise NotImplementedError

    def make_evaluate(self, model):
        """`evaluate() -> {name: float}`, which evaluates `model` (its statistics already synced);
        called once after the model is built."""
        raise NotImplementedError

    def metrics(self, results):
        """The task's fields of metrics.json, from the results of the last evaluation."""
        raise NotImplementedError

    def describe(self, results):
        """One line on an evaluation, shown after each epoch."""
        raise NotImplementedError

    def eval_summaries(self, model):
        """Called on the chief after each evaluation's scalar summaries, under the eval summary
        writer, to write more; nothing by default."""

    def calibration_dataset(self, context, num_images):
        """Per-replica batches whose first element is the images, of the first `num_images` of
        the training split preprocessed as for evaluation, for the input pipeline of `context`:
        the images over which BatchNormalization statistics are re-estimated at the end of a
        run."""
        raise NotImplementedError


def train_step_function(task, strategy, model, optimizer, weight_decay):
    """The distributed training step of `task`: `(iterator, frozen) -> (loss, {name: sum})`
    summed over replicas, with the model's own losses and the L2 `weight_decay` of its kernels
    added to the loss."""
    decayed = [v for v in model.trainable_variables if v.name == "kernel"] if weight_decay else []

    def replica_train_step(inputs, targets):
        with tf.GradientTape() as tape:
            loss, sums = task.loss(model, inputs, targets)
            penalties = [tf.cast(l, tf.float32) for l in model.losses]
            if decayed:
                penalties.append(0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed]))
            if penalties:
                loss += tf.nn.scale_regularization_loss(tf.add_n(penalties))
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, sums

    @tf.function
    def train_step(iterator, frozen):
        # `frozen` (a Python bool: one trace each) matches the backbone's trainable state, which
        # decides the variables trained and the mode of its BatchNormalization layers.
        loss, sums = strategy.run(replica_train_step, args=next(iterator))
        return strategy.reduce(_SUM, loss, axis=None), {k: strategy.reduce(_SUM, v, axis=None) for k, v in sums.items()}

    return train_step
