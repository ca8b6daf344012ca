"""Image classification, the trainer's first task (`--task=classification`): the softmax
cross-entropy with the recipe's label smoothing, evaluated for loss and top-1 accuracy after each
epoch, on `aa_keras.data.classification`'s pipelines. A sibling of `training.detection`: the
same `train` signature, the same trainer (`training.trainer.run_training`) given a
`ClassificationTask`.
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.applications import build_model
from aa_keras.data import classification as data

from . import attention_summaries, recipes
from .loop import TrainingTask, start_run
from .settings import RunSettings
from .trainer import run_training

_SUM = tf.distribute.ReduceOp.SUM


def train(
    strategy,
    model_name,
    model_dir,
    recipe="quick",
    data_dir=None,
    dataset=None,
    epochs=None,
    global_batch_size=None,
    steps_per_epoch=None,
    mixed_precision=None,
    checkpoint_steps=200,
    seed=0,
    verbose=True,
    model_fn=build_model,
    allow_changed_settings=False,
    init_from=None,
    init_method="linear",
    model_options=None,
):
    """Trains the classifier `model_name` with `recipe` into `model_dir`, resuming a run
    found there (see `training.trainer.run_training` for what is written), evaluated on the
    recipe's `eval_split` for its loss and accuracy after each epoch.

    Args:
        strategy: a `tf.distribute.Strategy` (see `training.distribute.create_strategy`).
        model_name: network name, passed to `model_fn`.
        model_dir: output folder.
        recipe: a `training.recipes.Recipe`, or the name of one in `training.recipes.RECIPES`.
        data_dir: TFDS data directory.
        dataset, epochs, global_batch_size: override the recipe's (None keeps it).
        steps_per_epoch: at most this many steps per epoch (None: the whole training split).
        mixed_precision: None, "bfloat16" or "float16" (with dynamic loss scaling).
        checkpoint_steps: steps between checkpoints.
        seed: seed of the data order (epoch e shuffles with seed + e).
        verbose: show a progress bar (on the chief).
        model_fn: `(name, input_shape, classes, **model_options) -> keras.Model`
            (`aa_keras.applications.build_model`: its names and "keras:<Name>").
        allow_changed_settings: resume a run found in `model_dir` whose settings (other than
            the identity fields and `epochs`) differ from these; the change is recorded.
        init_from, init_method: start from the weights of a saved model (see
            `training.trainer.run_training`).
        model_options: keyword arguments of `model_fn` for this network (for "keras:<Name>":
            `weights`, `augment`, `augment_skip_unfit`), recorded in run_config.json.

    Returns:
        (model, metrics dict as written to metrics.json).

    Raises:
        ValueError: bad arguments, or a `model_dir` holding a different run.
        FloatingPointError: the loss or the weights became non-finite; the last good
            checkpoint is kept.
    """
    recipe = recipes.recipe_for("classification", recipe, dataset=dataset, epochs=epochs, global_batch_size=global_batch_size)
    model_options = dict(model_options or {})
    config = start_run(
        model_dir, recipe, checkpoint_steps, steps_per_epoch, mixed_precision, allow_changed_settings,
        model=model_name, seed=seed, **model_options,
    )
    task = ClassificationTask(strategy, recipe, model_name, data_dir, model_fn, model_options)
    settings = RunSettings(
        model_name=model_name, model_dir=model_dir, config=config, train_examples=task.train_examples,
        steps_per_epoch=steps_per_epoch, mixed_precision=mixed_precision, checkpoint_steps=checkpoint_steps,
        seed=seed, verbose=verbose, init_from=init_from, init_method=init_method,
    )
    return run_training(task, strategy, recipe, settings)


class ClassificationTask(TrainingTask):
    """The classifier `model_name` trained with `recipe` on `strategy`: the softmax cross-entropy
    with the recipe's label smoothing, evaluated for loss and top-1 accuracy, attention maps in
    TensorBoard (see `train` for the arguments). Reads the dataset's sizes and class names."""

    def __init__(self, strategy, recipe, model_name, data_dir=None, model_fn=build_model, model_options=None):
        self.strategy, self.recipe, self.model_name, self.data_dir = strategy, recipe, model_name, data_dir
        self.model_fn, self.model_options = model_fn, dict(model_options or {})
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
