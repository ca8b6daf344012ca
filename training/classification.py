"""Image classification, the trainer's first task (`--task=classification`): the softmax
cross-entropy with the recipe's label smoothing, evaluated for loss and top-1 accuracy after each
epoch, on `aa_keras.data.classification`'s pipelines. A sibling of `training.detection`: the
same `train` signature, the same loop (`training.loop.run_training`).
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.applications import build_model
from aa_keras.data import classification as data

from . import attention_summaries, recipes
from .loop import TrainingTask, run_training, start_run

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
    found there (see `training.loop.run_training` for what is written), evaluated on the
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
            `training.loop.run_training`).
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
    batch = recipe.global_batch_size
    per_replica = data.per_replica_batch_size(batch, strategy.num_replicas_in_sync)
    classes = data.num_classes(recipe.dataset, data_dir)
    train_examples = data.split_size(recipe.dataset, recipe.train_split, data_dir)
    eval_size = data.split_size(recipe.dataset, recipe.eval_split, data_dir)

    def train_dataset(context, epoch_seed, skip_batches):
        return data.build_dataset(
            recipe.dataset,
            recipe.train_split,
            recipe.image_size,
            global_batch_size=batch,
            data_dir=data_dir,
            training=True,
            preprocessing=recipe.preprocessing,
            randaugment_magnitude=recipe.randaugment_magnitude,
            input_context=context,
            seed=epoch_seed,
            skip_batches=skip_batches,
        )

    def loss(model, images, labels):
        logits = tf.cast(model(images, training=True), tf.float32)
        per_example = keras.losses.categorical_crossentropy(
            tf.one_hot(labels, classes), logits, from_logits=True, label_smoothing=recipe.label_smoothing
        )
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        return tf.nn.compute_average_loss(per_example, global_batch_size=batch), {"accuracy": tf.reduce_sum(correct)}

    eval_steps = -(-eval_size // batch)

    def eval_dataset(context):
        # Every pipeline yields exactly eval_steps batches per local replica: its part of the
        # split, then zero-weight copies of its first example, so all replicas stay in step.
        part = tfds.even_splits(recipe.eval_split, n=context.num_input_pipelines)[context.input_pipeline_id]
        real = data.build_dataset(
            recipe.dataset, part, recipe.image_size, data_dir=data_dir, preprocessing=recipe.preprocessing
        ).map(lambda image, label: (image, label, 1.0))
        padding = real.take(1).map(lambda image, label, _: (image, label, 0.0)).repeat()
        length = eval_steps * batch // context.num_input_pipelines
        return real.concatenate(padding).take(length).batch(per_replica)

    def calibration_dataset(context, images):
        # The first `images` of the training split, in order, dealt out to the input pipelines.
        first = data.build_dataset(
            recipe.dataset, recipe.train_split, recipe.image_size, data_dir=data_dir, preprocessing=recipe.preprocessing
        ).take(images)
        return first.shard(context.num_input_pipelines, context.input_pipeline_id).batch(per_replica)

    def make_evaluate(model):
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
            iterator = iter(strategy.distribute_datasets_from_function(eval_dataset))
            totals = np.zeros(3)
            for _ in range(eval_steps):
                totals += [float(s) for s in eval_step(iterator)]
            loss, correct, count = totals
            return {"loss": float(loss / count), "accuracy": float(correct / count)}

        return evaluate

    task = TrainingTask(
        build_model=lambda: model_fn(model_name, (recipe.image_size, recipe.image_size, 3), classes, **model_options),
        train_dataset=train_dataset,
        loss=loss,
        make_evaluate=make_evaluate,
        metrics=lambda results: {"test_loss": results["loss"], "test_accuracy": results["accuracy"]},
        describe=lambda results: f"eval loss {results['loss']:.4f}, accuracy {results['accuracy']:.4f}",
        eval_summaries=attention_summaries.make_eval_summaries(recipe, data_dir),
        class_names=tuple(data.class_names(recipe.dataset, data_dir)),
        calibration_dataset=calibration_dataset,
    )
    return run_training(
        task, strategy, model_name, recipe, model_dir, config, train_examples, steps_per_epoch=steps_per_epoch,
        mixed_precision=mixed_precision, checkpoint_steps=checkpoint_steps, seed=seed, verbose=verbose,
        init_from=init_from, init_method=init_method,
    )
