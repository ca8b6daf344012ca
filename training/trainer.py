"""The trainer of every task: one network, one recipe, any `tf.distribute` strategy.

`run_training` takes a task (`training.loop.TrainingTask`: what differs between tasks), the
strategy, the run's `training.settings.TrainingSettings` and its `training.loop.StartedRun`; a
`Trainer` owns the rest: the run folder and its lock, checkpoints and resume (`training.checkpoints`, `training.resume`), the epoch loop,
summaries, metrics.json and the final model. Model, optimizer and checkpoint are built under the
strategy's scope; the training data is distributed with `distribute_datasets_from_function` (one
even part of the split per input pipeline, per-replica batches); gradients are summed over
replicas by the optimizer. The run resumes from the last checkpoint in its folder, mid-epoch
included, and stops on a non-finite loss without saving.
"""

import contextlib
import math
import shutil
import time

import keras
import tensorflow as tf
from absl import logging

from aa_keras.applications import batch_norm_layers, recalibrate_batch_norm, set_backbone_trainable
from aa_keras.programs import files
from aa_keras.programs.run_folder import RunFolder

from . import checkpoints, resume, run_lock
from .distribute import is_chief, worker_id
from .init_from import init_source, initialize_from
from .loop import Diverged, all_finite, build_run_state, statistics_sync, train_step_function

# A finished run whose test accuracy is this far below its last training accuracy (above
# TRAIN_ACCURACY_CHECKED) gets a warning.
ACCURACY_GAP_WARNED = 0.3
TRAIN_ACCURACY_CHECKED = 0.8


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); the message says where a re-run resumes."""


def run_training(task, strategy, settings, started):
    """Trains `task`'s model with `settings.recipe` into `settings.run.model_dir`, resuming a run
    found there.

    Writes `run_config.json` (`started.config`; settings changed on resume are recorded in its
    `changes`), `labels.txt` (the task's class names), `checkpoints` (every `checkpoint_steps`
    steps and each epoch), `logs/{train,eval}` (TensorBoard), `train.log` (resumption and
    recovery), and at the end `model.keras` and `metrics.json`; the last two atomically. Each
    epoch is evaluated and recorded in the history of metrics.json. The chief holds `train.lock`
    while it runs (`training.run_lock`). A run resumes from its newest intact checkpoint
    (`training.checkpoints.restore_newest`; damaged ones are moved aside, never deleted).
    Outside the chief of a cluster, writes go to a scratch folder that is removed at the end.

    Args:
        task: a `training.loop.TrainingTask` (`ClassificationTask`, `DetectionTask`).
        strategy: a `tf.distribute.Strategy`.
        settings: the run's `training.settings.TrainingSettings`.
        started: the run as `training.loop.start_run` checked it against its folder.

    Returns:
        (model, metrics dict as written to metrics.json).

    Raises:
        ValueError: a global batch larger than the training split, another trainer holding the
            run folder, or checkpoints none of which is intact (nothing is written).
        FloatingPointError: the loss or the weights became non-finite; the last good
            checkpoint is kept.
    """
    chief, run = is_chief(strategy), settings.run
    epoch_steps = resume.epoch_steps(settings.recipe, task.train_examples, run.steps_per_epoch)
    built = build_run_state(task, strategy, settings.recipe, epoch_steps, settings.distribution.mixed_precision)
    # A new run starts from --init_from before the lock creates the run folder: a source that does
    # not fit the network leaves nothing behind. A checkpoint found under the lock overrides it.
    init_from = init_source(run.init_from)
    if init_from and not checkpoints.checkpoint_files(RunFolder(run.model_dir).checkpoints):
        initialize_from(built[0], init_from, run.init_method, verbose=chief)
        init_from = None
    model_dir = run.model_dir
    lock = run_lock.run_lock(model_dir, warn=lambda m: _note(model_dir, m, True)) if chief else contextlib.nullcontext()
    with lock:
        return Trainer(task, strategy, settings, started, built, epoch_steps).run(init_from)


def _note(model_dir, message, warning=False):
    """Shows `message` (a warning on stderr, or a line on stdout) and appends it to the run's log."""
    if warning:
        logging.warning(message)
    else:
        print(message, flush=True)
    RunFolder(model_dir).log(message)


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


class Trainer:
    """One run of `run_training` under its lock: the model, optimizer and `train_seconds`
    variable `built` by `training.loop.build_run_state`, trained for `epoch_steps` steps per epoch."""

    def __init__(self, task, strategy, settings, started, built, epoch_steps):
        self.task, self.strategy, self.started = task, strategy, started
        self.recipe, self.run_settings = settings.recipe, settings.run
        self.model, self.optimizer, self.train_seconds = built
        self.epoch_steps = epoch_steps
        self.name = settings.model.name
        self.batch = self.recipe.global_batch_size
        self.chief = is_chief(strategy)
        self.folder = RunFolder(settings.run.model_dir)
        # Other workers of a cluster write their checkpoints and model to a scratch folder.
        self.write_folder = self.folder if self.chief else RunFolder(self.folder.file(f".scratch_{worker_id(strategy)}"))

    def note(self, message, warning=False):
        """Shows `message` and appends it to the run's log (on the chief)."""
        if self.chief:
            _note(self.run_settings.model_dir, message, warning)

    def run(self, init_from):
        """Restores or initialises (from `init_from`, None for none) the model, trains the epochs
        left and finishes the run; returns (model, metrics)."""
        self._restore(init_from)
        self.train_step = train_step_function(self.task, self.strategy, self.model, self.optimizer, self.recipe.weight_decay)
        self.sync_statistics = statistics_sync(self.strategy, self.model)
        self.task_evaluate = self.task.make_evaluate(self.model)
        self.train_writer, self.eval_writer = self._summary_writer("train"), self._summary_writer("eval")
        first_epoch, first_epoch_step = self._load_progress()
        try:
            for epoch in range(first_epoch, self.recipe.epochs):
                offset = self.step - first_epoch_step if epoch == first_epoch else 0
                self._train_epoch(epoch, offset)
        except KeyboardInterrupt:
            raise Interrupted(
                f"{self.name} interrupted at step {self.step}; re-run the same command to resume from "
                f"{self._resume_point()}."
            ) from None
        except Diverged as error:
            raise FloatingPointError(
                f"Training {self.name} stopped: {error}. Nothing was saved after the last good checkpoint "
                f"({self.manager.latest_checkpoint or 'none yet'}). Lower the learning rate (--learning_rate) or "
                "use a longer warm-up, then re-run the command to resume from that checkpoint."
            ) from None
        return self._finish()

    def _restore(self, init_from):
        """Restores the newest intact checkpoint, or initialises a new run from `init_from`."""
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, train_seconds=self.train_seconds)
        restored = checkpoints.restore_newest(self.checkpoint, self.folder.checkpoints, move_damaged=self.chief)
        damaged = resume.damaged_message(restored, self.name)
        if damaged:
            self.note(damaged, warning=True)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_folder.checkpoints, max_to_keep=3)
        self.restored_path = restored.path
        if restored.path:
            if init_from:
                self.note(f"{self.name}: resuming from {restored.path}; --init_from={init_from.path} is ignored.")
        elif init_from:
            initialize_from(self.model, init_from, self.run_settings.init_method, verbose=self.chief)

    def _summary_writer(self, name):
        if self.chief:
            return tf.summary.create_file_writer(self.folder.logs(name))
        return tf.summary.create_noop_writer()

    def _load_progress(self):
        """Reads where the restored run stands (step, time, history), refuses one past its epochs,
        and writes run_config.json and labels.txt; returns (first epoch, its first step)."""
        self.step = int(self.optimizer.iterations.numpy())
        self.seconds = float(self.train_seconds.numpy())
        previous = files.read_json(self.folder.metrics, {})
        self.resumed_at = resume.resumed_at_steps(previous, self.step)
        self.history = resume.finished_history(previous, self.step, self.epoch_steps)
        first_epoch, first_epoch_step = resume.resume_position(self.history, self.step, self.epoch_steps)
        epochs = self.recipe.epochs
        if self.step > epochs * self.epoch_steps:
            raise ValueError(
                f"model_dir {self.run_settings.model_dir!r} holds a run of {self.name} that is past --epochs={epochs}: it "
                f"reached step {self.step} ({len(self.history)} epoch(s) recorded, {self.epoch_steps} steps each). Pass "
                f"--epochs={first_epoch} or more to resume or finish it, or a new --model_dir; nothing was written."
            )
        if self.restored_path:
            self.note(f"Resuming {self.name} from {self.restored_path} (step {self.step}, epoch "
                      f"{min(first_epoch + 1, epochs)} of {epochs})")
        config, changes = resume.config_with_changes(self.started, self.step)
        if changes:
            self.note(f"Continuing {self.name} at step {self.step} with changed settings: {changes}")
        if self.chief:
            files.write_json(self.folder.run_config, config)
            if self.task.class_names is not None:
                files.write_labels(self.folder.labels, self.task.class_names)
        return first_epoch, first_epoch_step

    def _evaluate(self):
        self.sync_statistics()
        return self.task_evaluate()

    def _resume_point(self):
        """Where a re-run resumes: the newest checkpoint, or the start."""
        return self.manager.latest_checkpoint or "the start (no checkpoint was written yet)"

    def _save(self, step):
        if not all_finite(self.model.trainable_variables):
            raise Diverged(f"the weights became non-finite before step {step}")
        self.sync_statistics()
        try:
            self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            checkpoints.remove_partial(self.write_folder.checkpoints, step)
            raise OSError(
                f"Could not write the checkpoint of step {step} of {self.name} into {self.write_folder.checkpoints} "
                f"({checkpoints.error_reason(error)}); the partial files were removed. Free space or make the folder writable, then "
                f"re-run the same command: it resumes from {self._resume_point()}."
            ) from None

    def _train_epoch(self, epoch, offset):
        """Trains epoch `epoch` from its step `offset`, evaluates it and records it."""
        recipe, strategy, batch, epoch_steps = self.recipe, self.strategy, self.batch, self.epoch_steps
        frozen = epoch < recipe.freeze_backbone_epochs
        if recipe.freeze_backbone_epochs:
            set_backbone_trainable(self.model, not frozen)
        seed = self.run_settings.seed
        train_data = strategy.distribute_datasets_from_function(
            lambda context: self.task.train_dataset(context, seed + epoch, offset)
        )
        iterator = iter(train_data)
        verbose = self.chief and self.run_settings.verbose
        progbar = keras.utils.Progbar(epoch_steps, verbose=1 if verbose else 0, stateful_metrics=["images/s"], unit_name="step")
        if verbose:
            print(f"{self.name}: epoch {epoch + 1}/{recipe.epochs}", flush=True)
        epoch_start, epoch_loss, epoch_sums, throughput = time.perf_counter(), 0.0, {}, None
        for index in range(offset, epoch_steps):
            started = time.perf_counter()
            loss, sums = self.train_step(iterator, frozen)
            loss, sums = float(loss), {name: float(value) for name, value in sums.items()}
            if not math.isfinite(loss):
                raise Diverged(f"the loss is {loss} at step {self.step + 1}")
            self.seconds += time.perf_counter() - started
            self.step += 1
            epoch_loss += loss
            for name, value in sums.items():
                epoch_sums[name] = epoch_sums.get(name, 0.0) + value
            throughput = (index + 1 - offset) * batch / (time.perf_counter() - epoch_start)
            means = [(name, value / batch) for name, value in sums.items()]
            progbar.update(index + 1, [("loss", loss), *means, ("images/s", throughput)])
            if self.step % self.run_settings.checkpoint_steps == 0 or index + 1 == epoch_steps:
                self.train_seconds.assign(self.seconds)
                self._save(self.step)
        done = epoch_steps - offset
        # An epoch resumed at its last step (killed before its evaluation) has no training figures.
        train = {"train_loss": epoch_loss / done} if done else {}
        train.update({f"train_{name}": value / (done * batch) for name, value in epoch_sums.items()})
        self._record_epoch(epoch, train, throughput)

    def _record_epoch(self, epoch, train, throughput):
        """Evaluates the epoch just trained and records it: history, summaries, metrics.json."""
        results = self._evaluate()
        self.history.append({
            "epoch": epoch,
            "end_step": self.step,
            **train,
            **{f"eval_{name}": value for name, value in results.items()},
            "images_per_second": throughput,
        })
        with self.train_writer.as_default(step=self.step):
            for name, value in train.items():
                tf.summary.scalar(name.removeprefix("train_"), value)
            tf.summary.scalar("learning_rate", float(self.optimizer.learning_rate))
            if throughput is not None:
                tf.summary.scalar("images_per_second", throughput)
        with self.eval_writer.as_default(step=self.step):
            for name, value in results.items():
                tf.summary.scalar(name, value)
            if self.chief:
                self.task.eval_summaries(self.model)
        self._write_metrics(results, finished=False)
        if self.chief and self.run_settings.verbose:
            print(f"{self.name}: {self.task.describe(results)}", flush=True)

    def _write_metrics(self, results, finished, batch_norm=None):
        metrics = {
            "model": self.name,
            "dataset": self.recipe.dataset,
            "params": self.model.count_params(),
            "steps": self.step,
            "epochs": self.recipe.epochs,
            "finished": finished,
            **self.task.metrics(results),
            "train_seconds": self.seconds,
            "resumed_at_steps": self.resumed_at,
            "history": self.history,
            **({"batch_norm": batch_norm} if batch_norm else {}),
        }
        if self.chief:
            files.write_json(self.folder.metrics, metrics)
        return metrics

    def _finish(self):
        """The last evaluation (after re-estimating BatchNormalization statistics), model.keras and
        metrics.json; returns (model, metrics)."""
        recipe, model, history = self.recipe, self.model, self.history
        final = history[-1] if history and history[-1]["epoch"] == recipe.epochs - 1 else None
        if final is None:
            results = self._evaluate()
        else:
            results = {name[len("eval_"):]: value for name, value in final.items() if name.startswith("eval_")}
        recalibration = {}
        if recipe.batch_norm_images:
            if recipe.freeze_backbone_epochs:
                # As after the last epoch, also when a finished run is re-run.
                set_backbone_trainable(model, recipe.epochs > recipe.freeze_backbone_epochs)
            recalibration = self._recalibrate(min(recipe.batch_norm_images, self.task.train_examples), results)
            if recalibration:
                results = self._evaluate()
                self.note(f"{self.name}: evaluated with the re-estimated statistics: {self.task.describe(results)} (with "
                          f"the moving statistics of training: {self.task.describe(recalibration['before'])}).")
                recalibration["before"] = self.task.metrics(recalibration["before"])
        if recipe.freeze_backbone_epochs:
            set_backbone_trainable(model, True)  # The saved model is trainable throughout.
        if history and "accuracy" in results:
            warn = lambda m: self.note(m, True)  # noqa: E731
            _warn_far_below_training(history[-1].get("train_accuracy"), results["accuracy"], warn, self.name)
        files.save_model(model, self.write_folder.model)
        metrics = self._write_metrics(results, finished=True, batch_norm=recalibration or None)
        if not self.chief:
            shutil.rmtree(self.write_folder.path, ignore_errors=True)
        return model, metrics

    def _recalibrate(self, images, before):
        """Re-estimates the model's BatchNormalization statistics over the first `images` training
        images in batches of the global batch (`aa_keras.applications.recalibrate_batch_norm`,
        under the strategy). Returns {"images", "layers", "kept", "before": `before`} for
        metrics.json, or {} for a model with no trainable BatchNormalization layer."""
        model, strategy, global_batch = self.model, self.strategy, self.batch
        if not any(layer.trainable for _, layer in batch_norm_layers(model)):
            self.note(f"{self.name}: no BatchNormalization statistics to re-estimate.")
            return {}
        self.note(f"{self.name}: re-estimating the BatchNormalization statistics over the first {images} training "
                  "images (--batch_norm_images; 0 turns this off).")
        data = strategy.distribute_datasets_from_function(lambda context: self.task.calibration_dataset(context, images))
        verbose = self.run_settings.verbose and self.chief
        with strategy.scope():
            summary = recalibrate_batch_norm(model, data, steps=-(-images // global_batch), verbose=1 if verbose else 0)
        self.note(f"{self.name}: {summary}")
        return {"images": summary.images, "layers": len(summary.layers), "kept": len(summary.kept), "before": before}
