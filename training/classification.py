"""Image classification, the trainer's first task (`--task=classification`): the softmax
cross-entropy with the recipe's label smoothing, evaluated for loss and top-1 accuracy after each
epoch, on `aa_keras.data.classification`'s pipelines. A sibling of `training.detection`: the
same `train(strategy, settings)`, the same trainer (`training.trainer.run_training`) given a
`ClassificationTask`.
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.applications import build_model
from aa_keras.data import classification as data

from . import attention_summaries
from .loop import TrainingTask, start_run
from .trainer import run_training

_SUM = tf.distribute.ReduceOp.SUM


def train(strategy, settings):
    """Trains the classifier of `settings` (a `training.settings.TrainingSettings` of task
    "classification"; see `training.settings.settings_for`) into its model_dir, resuming a run
    found there (see `training.trainer.run_training` for what is written), evaluated on the
    recipe's `eval_split` for its loss and accuracy after each epoch.

    Args:
        strategy: a `tf.distribute.Strategy` (see `training.distribute.create_strategy`).
        settings: the run's settings; `settings.model.model_fn` (default
            `aa_keras.applications.build_model`: its names and "keras:<Name>") builds the network.

    Returns:
        (model, metrics dict as written to metrics.json).

    Raises:
        ValueError: bad settings, or a model_dir holding a different run.
        FloatingPointError: the loss or the weights became non-finite; the last good
            checkpoint is kept.
    """
    started = start_run(settings)
    return run_training(ClassificationTask(strategy, settings), strategy, settings, started)


class ClassificationTask(TrainingTask):
    """The classifier of `settings` (see `train`) trained on `strategy`: the softmax cross-entropy
    with the recipe's label smoothing, evaluated for loss and top-1 accuracy, attention maps in
    TensorBoard. Reads the dataset's sizes and class names."""

    def __init__(self, strategy, settings):
        recipe, data_dir = settings.recipe, settings.data.data_dir
        self.strategy, self.recipe, self.data_dir = strategy, recipe, data_dir
        self.model_name = settings.model.name
        self.model_fn = settings.model.model_fn or build_model
        self.model_options = dict(settings.model.model_options)
        self.batch = recipe.global_batch_size
        self.per_replica = data.per_replica_batch_size(self.batch, strategy.num_replicas_in_sync)
        self.classes = data.num_classes(recipe.dataset, data_dir)
        self.train_examples = data.split_size(recipe.dataset, recipe.train_split, data_dir)
        self.eval_steps = -(-data.split_size(recipe.dataset, recipe.eval_split, data_dir) // self.batch)
        self._attention_summaries = attention_summaries.make_eval_summaries(recipe, data_dir)
        self.class_names = tuple(data.class_names(recipe.dataset, data_dir))

    def build_model(self):
        size = self.recipe.image_size
        return self.model_fn(self.model_name, (size, size, 3), self.classes, **self.model_options)

    def train_dataset(self, context, epoch_seed, skip_batches):
        recipe = self.recipe
        return data.build_dataset(
            recipe.dataset,
            recipe.train_split,
            recipe.image_size,
            global_batch_size=self.batch,
            data_dir=self.data_dir,
            training=True,
            preprocessing=recipe.preprocessing,
            randaugment_magnitude=recipe.randaugment_magnitude,
            input_context=context,
            seed=epoch_seed,
            skip_batches=skip_batches,
        )

    def loss(self, model, images, labels):
        logits = tf.cast(model(images, training=True), tf.float32)
        per_example = keras.losses.categorical_crossentropy(
            tf.one_hot(labels, self.classes), logits, from_logits=True, label_smoothing=self.recipe.label_smoothing
        )
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        return tf.nn.compute_average_loss(per_example, global_batch_size=self.batch), {"accuracy": tf.reduce_sum(correct)}

    def _eval_dataset(self, context):
        # Every pipeline yields exactly eval_steps batches per local replica: its part of the
        # split, then zero-weight copies of its first example, so all replicas stay in step.
        recipe = self.recipe
        part = tfds.even_splits(recipe.eval_split, n=context.num_input_pipelines)[context.input_pipeline_id]
        real = data.build_dataset(
            recipe.dataset, part, recipe.image_size, data_dir=self.data_dir, preprocessing=recipe.preprocessing
        ).map(lambda image, label: (image, label, 1.0))
        padding = real.take(1).map(lambda image, label, _: (image, label, 0.0)).repeat()
        length = self.eval_steps * self.batch // context.num_input_pipelines
        return real.concatenate(padding).take(length).batch(self.per_replica)

    def calibration_dataset(self, context, images):
        # The first `images` of the training split, in order, dealt out to the input pipelines.
        recipe = self.recipe
        first = data.build_dataset(
            recipe.dataset, recipe.train_split, recipe.image_size, data_dir=self.data_dir,
            preprocessing=recipe.preprocessing,
        ).take(images)
        return first.shard(context.num_input_pipelines, context.input_pipeline_id).batch(self.per_replica)

    def make_evaluate(self, model):
        strategy = self.strategy

        def replica_eval_step(images, labels, weights):
            logits = tf.cast(model(images, training=False), tf.float32)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
            return tf.reduce_sum(per_example * weights), tf.reduce_sum(correct * weights), tf.reduce_sum(weights)

        @tf.function
        def eval_step(iterator):
            sums = strategy.run(replica_eval_step, args=next(iterator))
            return [strategy.reduce(_SUM, s, axis=None) for s in sums]

        def evaluate():
            iterator = iter(strategy.distribute_datasets_from_function(self._eval_dataset))
            totals = np.zeros(3)
            for _ in range(self.eval_steps):
                totals += [float(s) for s in eval_step(iterator)]
            loss, correct, count = totals
            return {"loss": float(loss / count), "accuracy": float(correct / count)}

        return evaluate

    def metrics(self, results):
        return {"test_loss": results["loss"], "test_accuracy": results["accuracy"]}

    def describe(self, results):
        return f"eval loss {results['loss']:.4f}, accuracy {results['accuracy']:.4f}"

    def eval_summaries(self, model):
        self._attention_summaries(model)
