"""The custom training loop: one network, one recipe, any `tf.distribute` strategy.

`run_training` is the loop of every task; a `TrainingTask` gives what differs between tasks
(the model, the training data, the loss, the evaluation, the metrics); the task modules
`training.classification` and `training.detection` build one each. Model, optimizer and
checkpoint are built under the strategy's scope; the training data is distributed with
`distribute_datasets_from_function` (one even part of the split per input pipeline, per-replica
batches); gradients are summed over replicas by the optimizer. The run resumes from the last checkpoint in `model_dir`, mid-epoch included, and
stops on a non-finite loss without saving.
"""

import contextlib
import dataclasses
import math
import re
import shutil
import time
from typing import Callable, Optional

import keras
import tensorflow as tf
from absl import logging

from aa_keras.applications import batch_norm_layers, recalibrate_batch_norm, set_backbone_trainable
from aa_keras.programs import files
from aa_keras.programs.run_folder import RunFolder
from aa_keras.validation import positive_int

from . import artifacts, checkpoints, run_lock
from .distribute import is_chief, worker_id
from .init_from import initialize_from
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


def start_run(
    model_dir, recipe, checkpoint_steps, steps_per_epoch, mixed_precision, allow_changed_settings=False, **fields
):
    """Checks the arguments that every trainer takes, that `model_dir` is a writable folder, and
    that it holds no other run (`artifacts.check_run_config`: a run with other settings is
    resumed only with `allow_changed_settings`).

    Returns:
        The run's configuration, as recorded in run_config.json: the fields of `recipe` but
        `models` (the networks it is meant for), then `fields`, `mixed_precision` and
        `steps_per_epoch`.

    Raises:
        ValueError: a bad argument, an unusable `model_dir`, or one holding a different run.
    """
    check_mixed_precision(mixed_precision)
    positive_int("checkpoint_steps", checkpoint_steps)
    positive_int("steps_per_epoch", steps_per_epoch, optional=True)
    config = {k: v for k, v in dataclasses.asdict(recipe).items() if k != "models"}
    config.update(fields, mixed_precision=mixed_precision, steps_per_epoch=steps_per_epoch)
    artifacts.check_model_dir(model_dir)
    artifacts.check_run_config(model_dir, config, allow_changed_settings)
    return config


@dataclasses.dataclass(frozen=True)
class TrainingTask:
    """What `run_training` needs to know of a task (classification, detection).

    Attributes:
        build_model: `() -> keras.Model`, called under the strategy's scope and the run's
            dtype policy.
        train_dataset: `(input_context, seed, skip_batches) -> tf.data.Dataset`: one epoch of
            per-replica training batches (inputs, targets) for the input pipeline of
            `input_context`, shuffled from `seed`, its first `skip_batches` batches skipped.
        loss: `(model, inputs, targets) -> (loss, sums)` on one replica, inside the gradient
            tape: the float32 loss scaled for summing over replicas (the loop adds the model's
            own losses and the recipe's weight decay), and {name: float32 sum over this
            replica's examples} of training metrics, reported as means per example.
        make_evaluate: `(model) -> evaluate`, called once after the model is built;
            `evaluate() -> {name: float}` evaluates the model (its statistics already synced).
        metrics: `(results) -> dict`: the task's fields of metrics.json, from the results of
            the last evaluation.
        describe: `(results) -> str`: one line on an evaluation, shown after each epoch.
        compile: `(model, optimizer) -> None`, called under the strategy's scope once the
            optimizer is built; None for nothing.
        eval_summaries: `(model) -> None`, called on the chief after each evaluation's scalar
            summaries, under the eval summary writer, to write more; None for nothing.
        class_names: the dataset's class names in label order, written to the run folder's
            `labels.txt`; None for none.
        calibration_dataset: `(input_context, num_images) -> tf.data.Dataset`: per-replica
            batches whose first element is the images, of the first `num_images` of the training
            split preprocessed as for evaluation, for the input pipeline of `input_context`; the
            images over which BatchNormalization statistics are re-estimated at the end of a
            run. None for no re-estimation.
    """

    build_model: Callable
    train_dataset: Callable
    loss: Callable
    make_evaluate: Callable
    metrics: Callable
    describe: Callable
    compile: Optional[Callable] = None
    eval_summaries: Optional[Callable] = None
    class_names: Optional[tuple] = None
    calibration_dataset: Optional[Callable] = None


def run_training(
    task,
    strategy,
    model_name,
    recipe,
    model_dir,
    config,
    train_examples,
    steps_per_epoch=None,
    mixed_precision=None,
    checkpoint_steps=200,
    seed=0,
    verbose=True,
    init_from=None,
    init_method="linear",
):
    """Trains `task`'s model with `recipe` into `model_dir`, resuming a run found there.

    Writes `model_dir/run_config.json` (`config`, which the caller has checked against the
    run found there with `start_run`; settings changed on resume are recorded in its
    `changes`), `labels.txt` (the task's class names), `checkpoints` (every `checkpoint_steps` steps and each epoch),
    `logs/{train,eval}` (TensorBoard), `train.log` (resumption and recovery), and at the end
    `model.keras` and `metrics.json`; the last two atomically. Each epoch is evaluated and
    recorded in the history of metrics.json. The chief holds `train.lock` while it runs
    (`training.run_lock`). A run resumes from its newest intact checkpoint
    (`training.checkpoints.restore_newest`; damaged ones are moved aside, never deleted).
    Outside the chief of a cluster, writes go to a scratch folder that is removed at the end.

    Args:
        task: a `TrainingTask`.
        strategy: a `tf.distribute.Strategy`.
        model_name: the network's name, for metrics.json and messages.
        recipe: a `training.recipes.Recipe` (or subclass): epochs, batch, optimizer, schedule.
        model_dir: output folder.
        config: the run configuration (a JSON-able dict).
        train_examples: examples in the training split.
        steps_per_epoch: at most this many steps per epoch (None: the whole training split).
        mixed_precision: None, "bfloat16" or "float16" (with dynamic loss scaling).
        checkpoint_steps: steps between checkpoints.
        seed: seed of the data order (epoch e shuffles with seed + e).
        verbose: show a progress bar (on the chief).
        init_from: a .keras model or a run folder whose weights a new run starts from
            (`training.init_from.initialize_from`, tables resampled with `init_method`);
            ignored when the run resumes from its own checkpoint.

    Returns:
        (model, metrics dict as written to metrics.json).

    Raises:
        ValueError: a global batch larger than the training split, another trainer holding the
            run folder, or checkpoints none of which is intact (nothing is written).
        FloatingPointError: the loss or the weights became non-finite; the last good
            checkpoint is kept.
    """
    chief = is_chief(strategy)
    epoch_steps = _epoch_steps(recipe, train_examples, steps_per_epoch)
    built = _build(task, strategy, recipe, epoch_steps, mixed_precision)
    # A new run starts from --init_from before the lock creates the run folder: a source that does
    # not fit the network leaves nothing behind. A checkpoint found under the lock overrides it.
    initialised = bool(init_from) and not checkpoints.checkpoint_files(RunFolder(model_dir).checkpoints)
    if initialised:
        initialize_from(built[0], init_from, init_method, verbose=chief)
    lock = run_lock.run_lock(model_dir, warn=lambda m: _note(model_dir, m, True)) if chief else contextlib.nullcontext()
    with lock:
        return _run_training(
            task, strategy, model_name, recipe, model_dir, config, built, epoch_steps, mixed_precision,
            checkpoint_steps, seed, verbose, chief, init_from if not initialised else None, init_method, train_examples,
        )


def _epoch_steps(recipe, train_examples, steps_per_epoch):
    """Steps per epoch: whole global batches of the training split, at most `steps_per_epoch`."""
    full_epoch = train_examples // recipe.global_batch_size
    if full_epoch == 0:
        raise ValueError(
            f"Invalid global batch size: global_batch_size={recipe.global_batch_size} is larger than the "
            f"{recipe.train_split!r} split of {recipe.dataset!r}; use a smaller --batch_size."
        )
    return min(full_epoch, steps_per_epoch or full_epoch)


def _build(task, strategy, recipe, epoch_steps, mixed_precision):
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
            if task.compile is not None:
                task.compile(model, optimizer)
            train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return model, optimizer, train_seconds


def _note(model_dir, message, warning=False):
    """Shows `message` (a warning on stderr, or a line on stdout) and appends it to the run's log."""
    if warning:
        logging.warning(message)
    else:
        print(message, flush=True)
    RunFolder(model_dir).log(message)


def _resume_position(history, step, epoch_steps):
    """(epoch, first step of that epoch) of a run at `step` whose finished epochs are `history`.

    An epoch is finished once it is recorded (its `end_step` at most `step`); a run at an
    epoch's last step that was not yet evaluated resumes that epoch with no steps left. Where
    records are missing, whole epochs of `epoch_steps` are counted on from the last one.
    """
    epoch, start = (len(history), history[-1]["end_step"]) if history else (0, 0)
    skipped = max(0, -(-(step - start) // epoch_steps) - 1)
    return epoch + skipped, start + skipped * epoch_steps


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); the message says where a re-run resumes."""


def _reason(error):
    """What went wrong, in a few words, from an OS or TensorFlow error: "No space left on
    device", "Permission denied"... (TensorFlow puts it after the file name and a "; ")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    message = str(getattr(error, "message", error)).strip()
    message = message.splitlines()[0] if message else type(error).__name__
    return re.sub(r"\s*\[Op:\w+\]$", "", message.rsplit("; ", 1)[-1])


def _resume_point(manager):
    """Where a re-run resumes: the newest checkpoint of `manager`, or the start."""
    return manager.latest_checkpoint or "the start (no checkpoint was written yet)"


def _recalibrate(model, strategy, task, images, global_batch, before, note, model_name, verbose):
    """Re-estimates `model`'s BatchNormalization statistics over the first `images` training
    images in batches of `global_batch` (`aa_keras.applications.recalibrate_batch_norm`, under
    `strategy`). Returns
    {"images", "layers", "kept", "before": `before`} for metrics.json, or {} for a model with
    no trainable BatchNormalization layer."""
    if not any(layer.trainable for _, layer in batch_norm_layers(model)):
        note(f"{model_name}: no BatchNormalization statistics to re-estimate.")
        return {}
    note(f"{model_name}: re-estimating the BatchNormalization statistics over the first {images} training images "
         "(--batch_norm_images; 0 turns this off).")
    data = strategy.distribute_datasets_from_function(lambda context: task.calibration_dataset(context, images))
    with strategy.scope():
        summary = recalibrate_batch_norm(model, data, steps=-(-images // global_batch), verbose=1 if verbose else 0)
    note(f"{model_name}: {summary}")
    return {"images": summary.images, "layers": len(summary.layers), "kept": len(summary.kept), "before": before}


# A finished run whose test accuracy is this far below its last training accuracy (above
# TRAIN_ACCURACY_CHECKED) gets a warning.
ACCURACY_GAP_WARNED = 0.3
TRAIN_ACCURACY_CHECKED = 0.8


def _warn_far_below_training(train_accuracy, test_accuracy, warn, model_name):
    """Warns when `test_accuracy` is far below `train_accuracy` (see ACCURACY_GAP_WARNED)."""
    if train_accuracy is None or train_accuracy <= TRAIN_ACCURACY_CHECKED:
        return
    if test_accuracy < train_accuracy - ACCURACY_GAP_WARNED:
        warn(
            f"{model_name}: test accuracy {test_accuracy:.1%} is far below the last training accuracy "
            f"{train_accuracy:.1%}. Likely causes: too few steps for BatchNormalization's moving statistics "
            "(keep --batch_norm_images above 0), preprocessing that differs between the training and test "
            "images, or a test set unlike the training set."
        )


def _run_training(
    task, strategy, model_name, recipe, model_dir, config, built, epoch_steps, mixed_precision,
    checkpoint_steps, seed, verbose, chief, init_from, init_method, train_examples,
):
    batch = recipe.global_batch_size
    model, optimizer, train_seconds = built
    folder = RunFolder(model_dir)
    # Other workers of a cluster write their checkpoints and model to a scratch folder.
    write_folder = folder if chief else RunFolder(folder.file(f".scratch_{worker_id(strategy)}"))

    def note(message, warning=False):
        if chief:
            _note(model_dir, message, warning)

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, train_seconds=train_seconds)
    restored = checkpoints.restore_newest(checkpoint, folder.checkpoints, move_damaged=chief)
    if restored.damaged or restored.stale_state:
        damaged = [f"{path} ({reason})" for path, reason in restored.damaged.items()]
        if restored.stale_state:
            damaged.append(f"the state file {checkpoints.STATE_FILE} (unreadable or not naming the newest intact one)")
        moved = f"; moved to {restored.moved_to}" if restored.moved_to else ""
        note(f"Damaged checkpoint files of {model_name}: {'; '.join(damaged)}{moved}. Resuming from the newest "
             f"intact one, {restored.path}.", warning=True)
    manager = tf.train.CheckpointManager(checkpoint, write_folder.checkpoints, max_to_keep=3)
    if restored.path:
        if init_from:
            note(f"{model_name}: resuming from {restored.path}; --init_from={init_from} is ignored.")
    elif init_from:
        initialize_from(model, init_from, init_method, verbose=chief)

    decayed = [v for v in model.trainable_variables if v.name == "kernel"] if recipe.weight_decay else []

    def replica_train_step(inputs, targets):
        with tf.GradientTape() as tape:
            loss, sums = task.loss(model, inputs, targets)
            penalties = [tf.cast(l, tf.float32) for l in model.losses]
            if decayed:
                penalties.append(0.5 * recipe.weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed]))
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

    sync_statistics = statistics_sync(strategy, model)
    task_evaluate = task.make_evaluate(model)

    def evaluate():
        sync_statistics()
        return task_evaluate()

    def save(step):
        if not all_finite(model.trainable_variables):
            raise Diverged(f"the weights became non-finite before step {step}")
        sync_statistics()
        try:
            manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            checkpoints.remove_partial(write_folder.checkpoints, step)
            raise OSError(
                f"Could not write the checkpoint of step {step} of {model_name} into {write_folder.checkpoints} "
                f"({_reason(error)}); the partial files were removed. Free space or make the folder writable, then "
                f"re-run the same command: it resumes from {_resume_point(manager)}."
            ) from None

    def summary_writer(name):
        if chief:
            return tf.summary.create_file_writer(folder.logs(name))
        return tf.summary.create_noop_writer()

    train_writer, eval_writer = summary_writer("train"), summary_writer("eval")
    step = int(optimizer.iterations.numpy())
    seconds = float(train_seconds.numpy())
    previous = files.read_json(folder.metrics, {})
    resumed_at = previous.get("resumed_at_steps", []) + ([step] if step else [])
    # Records of the epochs finished by the restored step; older metrics.json files lack end_step.
    history = [
        {"end_step": (h["epoch"] + 1) * epoch_steps, **h} for h in previous.get("history", [])
    ]
    history = [h for h in history if h["end_step"] <= step]
    first_epoch, first_epoch_step = _resume_position(history, step, epoch_steps)
    if step > recipe.epochs * epoch_steps:
        raise ValueError(
            f"model_dir {model_dir!r} holds a run of {model_name} that is past --epochs={recipe.epochs}: it reached step "
            f"{step} ({len(history)} epoch(s) recorded, {epoch_steps} steps each). Pass --epochs={first_epoch} or more "
            "to resume or finish it, or a new --model_dir; nothing was written."
        )
    if restored.path:
        note(f"Resuming {model_name} from {restored.path} (step {step}, epoch {min(first_epoch + 1, recipe.epochs)} "
             f"of {recipe.epochs})")
    stored = folder.read_run_config()
    if stored is not None:
        changes = artifacts.changed_fields(stored, config)
        config = {**config, "changes": stored.get("changes", [])}
        if changes:
            config["changes"].append({"step": step, "fields": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
            note(f"Continuing {model_name} at step {step} with changed settings: "
                 + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    if chief:
        files.write_json(folder.run_config, config)
        if task.class_names is not None:
            files.write_labels(folder.labels, task.class_names)

    def write_metrics(results, finished, batch_norm=None):
        metrics = {
            "model": model_name,
            "dataset": recipe.dataset,
            "params": model.count_params(),
            "steps": step,
            "epochs": recipe.epochs,
            "finished": finished,
            **task.metrics(results),
            "train_seconds": seconds,
            "resumed_at_steps": resumed_at,
            "history": history,
            **({"batch_norm": batch_norm} if batch_norm else {}),
        }
        if chief:
            files.write_json(folder.metrics, metrics)
        return metrics

    try:
        for epoch in range(first_epoch, recipe.epochs):
            frozen = epoch < recipe.freeze_backbone_epochs
            if recipe.freeze_backbone_epochs:
                set_backbone_trainable(model, not frozen)
            offset = step - first_epoch_step if epoch == first_epoch else 0
            train_data = strategy.distribute_datasets_from_function(
                lambda context, epoch=epoch, offset=offset: task.train_dataset(context, seed + epoch, offset)
            )
            iterator = iter(train_data)
            progbar = keras.utils.Progbar(
                epoch_steps, verbose=1 if chief and verbose else 0, stateful_metrics=["images/s"], unit_name="step"
            )
            if chief and verbose:
                print(f"{model_name}: epoch {epoch + 1}/{recipe.epochs}", flush=True)
            epoch_start, epoch_loss, epoch_sums, throughput = time.perf_counter(), 0.0, {}, None
            for index in range(offset, epoch_steps):
                started = time.perf_counter()
                loss, sums = train_step(iterator, frozen)
                loss, sums = float(loss), {name: float(value) for name, value in sums.items()}
                if not math.isfinite(loss):
                    raise Diverged(f"the loss is {loss} at step {step + 1}")
                seconds += time.perf_counter() - started
                step += 1
                epoch_loss += loss
                for name, value in sums.items():
                    epoch_sums[name] = epoch_sums.get(name, 0.0) + value
                done = index + 1 - offset
                throughput = done * batch / (time.perf_counter() - epoch_start)
                means = [(name, value / batch) for name, value in sums.items()]
                progbar.update(index + 1, [("loss", loss), *means, ("images/s", throughput)])
                if step % checkpoint_steps == 0 or index + 1 == epoch_steps:
                    train_seconds.assign(seconds)
                    save(step)
            done = epoch_steps - offset
            results = evaluate()
            # An epoch resumed at its last step (killed before its evaluation) has no training figures.
            train = {"train_loss": epoch_loss / done} if done else {}
            train.update({f"train_{name}": value / (done * batch) for name, value in epoch_sums.items()})
            record = {
                "epoch": epoch,
                "end_step": step,
                **train,
                **{f"eval_{name}": value for name, value in results.items()},
                "images_per_second": throughput,
            }
            history.append(record)
            with train_writer.as_default(step=step):
                for name, value in train.items():
                    tf.summary.scalar(name.removeprefix("train_"), value)
                tf.summary.scalar("learning_rate", float(optimizer.learning_rate))
                if throughput is not None:
                    tf.summary.scalar("images_per_second", throughput)
            with eval_writer.as_default(step=step):
                for name, value in results.items():
                    tf.summary.scalar(name, value)
                if task.eval_summaries is not None and chief:
                    task.eval_summaries(model)
            write_metrics(results, finished=False)
            if chief and verbose:
                print(f"{model_name}: {task.describe(results)}", flush=True)
    except KeyboardInterrupt:
        raise Interrupted(
            f"{model_name} interrupted at step {step}; re-run the same command to resume from "
            f"{_resume_point(manager)}."
        ) from None
    except Diverged as error:
        raise FloatingPointError(
            f"Training {model_name} stopped: {error}. Nothing was saved after the last good checkpoint "
            f"({manager.latest_checkpoint or 'none yet'}). Lower the learning rate (--learning_rate) or "
            "use a longer warm-up, then re-run the command to resume from that checkpoint."
        ) from None
    final = history[-1] if history and history[-1]["epoch"] == recipe.epochs - 1 else None
    if final is None:
        results = evaluate()
    else:
        results = {name[len("eval_"):]: value for name, value in final.items() if name.startswith("eval_")}
    recalibration = {}
    if recipe.batch_norm_images and task.calibration_dataset is not None:
        if recipe.freeze_backbone_epochs:
            # As after the last epoch, also when a finished run is re-run.
            set_backbone_trainable(model, recipe.epochs > recipe.freeze_backbone_epochs)
        images = min(recipe.batch_norm_images, train_examples)
        recalibration = _recalibrate(model, strategy, task, images, batch, results, note, model_name, verbose and chief)
        if recalibration:
            results = evaluate()
            note(f"{model_name}: evaluated with the re-estimated statistics: {task.describe(results)} (with the "
                 f"moving statistics of training: {task.describe(recalibration['before'])}).")
            recalibration["before"] = task.metrics(recalibration["before"])
    if recipe.freeze_backbone_epochs:
        set_backbone_trainable(model, True)  # The saved model is trainable throughout.
    if history and "accuracy" in results:
        _warn_far_below_training(history[-1].get("train_accuracy"), results["accuracy"], lambda m: note(m, True), model_name)
    files.save_model(model, write_folder.model)
    metrics = write_metrics(results, finished=True, batch_norm=recalibration or None)
    if not chief:
        shutil.rmtree(write_folder.path, ignore_errors=True)
    return model, metrics
