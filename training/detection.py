"""Object detection with RetinaNet / AA-RetinaNet, the trainer's second task
(`--task=detection`): a sibling of `training.classification`, with the same `train(strategy, settings)`.

The run is the loop of every task (`training.trainer.run_training`) with a detection
`DetectionTask`: the same checkpoints, resumption (mid-epoch included), stop on a non-finite
loss, and the same recipe fields (optimizer, warm-up and decay schedule, weight decay, mixed
precision) mean the same.
The losses, anchors, box encoding and decoding are keras-hub's `RetinaNetObjectDetector`'s;
the classification loss is its focal loss with the RetinaNet paper's alpha = 0.25, gamma = 2.
Evaluation runs the detector's non-maximum suppression and Model Garden's COCO evaluator
(pycocotools) for AP, AP50, AP75, APs, APm, APl and the recalls.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from official.vision.evaluation import coco_evaluator

from aa_keras.applications.retinanet import build_detector, detections
from aa_keras.data import detection as detection_data
from aa_keras.data.classification import per_replica_batch_size

from .init_from import detector_attention, init_source
from .loop import TrainingTask, start_run
from .trainer import run_training

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1", "ARmax10", "ARmax100", "ARs", "ARm", "ARl")


def percent(value):
    """A metric in [0, 1] in percent ("12.34%"), or "n/a" for the -1 of COCO's evaluation (no
    objects to score: none of a size, or images without any)."""
    return "n/a" if value < 0 else f"{value * 100:.2f}%"


def compile_detector(model, optimizer):
    """Compiles `model` with keras-hub's RetinaNet losses (Huber box loss) and the focal loss
    of the RetinaNet paper (alpha = 0.25, gamma = 2, summed and normalized by the positive
    anchors, as `RetinaNetObjectDetector.compute_loss` does), and builds them.

    The compiled losses create their state (per-output loss trackers) on first use; building
    them here, under the caller's strategy scope, keeps variable creation out of the
    distributed training step, where `MirroredStrategy` does not allow it.
    """
    model.compile(
        optimizer=optimizer,
        classification_loss=keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=True, reduction="sum"
        ),
    )
    images = tf.zeros((1, *model.inputs[0].shape[1:]))
    no_objects = {"boxes": -tf.ones((1, 1, 4)), "labels": -tf.ones((1, 1), tf.int32)}
    model.compute_loss(x=images, y=no_objects, y_pred=model(images), sample_weight=None)


def coco_predictions(found, groundtruth):
    """The `COCOEvaluator` predictions of a batch: `found` from
    `aa_keras.applications.retinanet.detections` on the images of the evaluation batch whose
    ground truth is `groundtruth` (see `aa_keras.data.detection.preprocess_for_evaluation`).
    Boxes stay in pixels of the resized image (the evaluator rescales them with `image_info`);
    category ids are class + 1, as in the ground truth, and 0 (no category) marks padding."""
    count = np.asarray(found["num_detections"])
    valid = np.arange(np.shape(found["classes"])[1])[None, :] < count[:, None]
    predictions = {
        "source_id": groundtruth["source_id"],
        "image_info": groundtruth["image_info"],
        "num_detections": count,
        "detection_boxes": found["boxes"],
        "detection_classes": np.where(valid, np.asarray(found["classes"]) + 1, 0),
        "detection_scores": np.where(valid, np.asarray(found["scores"]), 0.0),
    }
    return {k: tf.convert_to_tensor(v) for k, v in predictions.items()}  # The evaluator takes tensors.


def evaluate_detector(model, dataset, split, image_size, data_dir=None, batch_size=8, max_instances=100,
                      max_examples=None, verbose=False):
    """COCO metrics of `model` on `split` of `dataset`, from Model Garden's `COCOEvaluator`.

    Args:
        model: a detector from `aa_keras.applications.retinanet` taking (image_size, image_size, 3).
        dataset, split, data_dir: the TFDS detection data (see `aa_keras.data.detection`).
        image_size: side of the square images.
        batch_size: images per prediction batch.
        max_instances: ground-truth objects kept per image.
        max_examples: evaluate on the first this many images only; None for the whole split.
        verbose: show a progress bar over the images.

    Returns:
        {metric: float} for `COCO_METRICS` (AP in [0, 1], -1 where COCO has no objects to score,
        e.g. of a size; shown as "n/a" by `percent`).
    """
    data = detection_data.build_dataset(
        dataset, split, image_size, global_batch_size=batch_size, data_dir=data_dir, max_instances=max_instances
    )
    if max_examples is not None:
        data = data.unbatch().take(max_examples).batch(batch_size)
    evaluator = coco_evaluator.COCOEvaluator(annotation_file=None, include_mask=False, need_rescale_bboxes=True)
    detect = tf.function(lambda images: detections(model, images))
    total = detection_data.split_size(dataset, split, data_dir)
    progbar = keras.utils.Progbar(total if max_examples is None else min(total, max_examples),
                                  verbose=1 if verbose else 0, unit_name="image")  # fmt: skip
    for images, groundtruth in data:
        evaluator.update_state(groundtruth, coco_predictions(detect(images), groundtruth))
        progbar.add(len(images))
    results = evaluator.result()
    return {name: float(results[name]) for name in COCO_METRICS}


def train(strategy, settings):
    """Trains the detector of `settings` (a `training.settings.TrainingSettings` of task
    "detection"; see `training.settings.settings_for`) into its model_dir, resuming a run found
    there, and evaluates it with the COCO evaluator after each epoch.

    Writes `model_dir/checkpoints` (every `checkpoint_steps` steps and each epoch),
    `logs/{train,eval}` (TensorBoard), `run_config.json`, `labels.txt` (the class names), and at the end `model.keras` and
    `metrics.json` (the COCO metrics of the last evaluation, and the history); the last two
    atomically. Outside the chief of a cluster, writes go to a scratch folder removed at the
    end, and every worker evaluates the (whole) evaluation split by itself.

    Args:
        strategy: a `tf.distribute.Strategy`.
        settings: as for `training.classification.train`, except: the model's name is one of
            `aa_keras.applications.retinanet.DETECTOR_NAMES` (unless `settings.model.model_fn`,
            `(name, input_shape, classes, **attention) -> detector`, is given); the recipe is a
            `training.recipes.DetectionRecipe`; `settings.data.eval_examples` evaluates on the
            first this many images of the evaluation split (None: all). An AA detector started
            from `settings.run.init_from` takes the attention settings of its backbone
            (`training.init_from.detector_attention`), so re-run the same command to resume.

    Returns:
        (model, metrics dict as written to metrics.json).

    Raises:
        ValueError: bad settings, or a model_dir holding a different run (nothing is written).
        FloatingPointError: the loss or the weights became non-finite; the last good
            checkpoint is kept.
    """
    started = start_run(settings)
    # The --init_from model is read once, for the attention settings and the weights.
    run = dataclasses.replace(settings.run, init_from=init_source(settings.run.init_from))
    settings = dataclasses.replace(settings, run=run)
    return run_training(DetectionTask(strategy, settings), strategy, settings, started)


class DetectionTask(TrainingTask):
    """The detector of `settings` (see `train`) trained on `strategy`: keras-hub's RetinaNet
    losses, evaluated with the COCO evaluator; an AA detector started from `init_from` takes the
    attention settings of its backbone layers. Reads the dataset's sizes and class names."""

    def __init__(self, strategy, settings):
        recipe, data_dir, init_from = settings.recipe, settings.data.data_dir, settings.run.init_from
        self.strategy, self.recipe, self.data_dir = strategy, recipe, data_dir
        self.model_name, self.model_fn = settings.model.name, settings.model.model_fn or build_detector
        self.eval_examples = settings.data.eval_examples
        self.per_replica = per_replica_batch_size(recipe.global_batch_size, strategy.num_replicas_in_sync)
        self.classes = detection_data.num_classes(recipe.dataset, data_dir)
        self.train_examples = detection_data.split_size(recipe.dataset, recipe.train_split, data_dir)
        detection_data.split_size(recipe.dataset, recipe.eval_split, data_dir)  # Fails early on a bad split.
        self.attention = detector_attention(init_from) if init_from and self.model_name.startswith("aa_") else {}
        self.class_names = tuple(detection_data.class_names(recipe.dataset, data_dir))

    def build_model(self):
        size = self.recipe.image_size
        return self.model_fn(self.model_name, (size, size, 3), self.classes, **self.attention)

    def compile(self, model, optimizer):
        compile_detector(model, optimizer)

    def train_dataset(self, context, epoch_seed, skip_batches):
        recipe = self.recipe
        return detection_data.build_dataset(
            recipe.dataset,
            recipe.train_split,
            recipe.image_size,
            global_batch_size=recipe.global_batch_size,
            data_dir=self.data_dir,
            training=True,
            scale_min=recipe.scale_min,
            scale_max=recipe.scale_max,
            flip=recipe.flip,
            max_instances=recipe.max_instances,
            input_context=context,
            seed=epoch_seed,
            skip_batches=skip_batches,
        )

    def loss(self, model, images, targets):
        predictions = model(images, training=True)
        # The detector's losses are sums normalized by this replica's positive anchors;
        # gradients are summed over replicas, so each replica contributes 1 / replicas.
        value = model.compute_loss(x=images, y=targets, y_pred=predictions, sample_weight=None)
        return tf.cast(value, tf.float32) / self.strategy.num_replicas_in_sync, {}

    def calibration_dataset(self, context, images):
        # The first `images` of the training split as evaluated, dealt out to the input pipelines.
        recipe = self.recipe
        first = detection_data.build_dataset(
            recipe.dataset, recipe.train_split, recipe.image_size, data_dir=self.data_dir,
            max_instances=recipe.max_instances,
        ).take(images)
        return first.shard(context.num_input_pipelines, context.input_pipeline_id).batch(self.per_replica)

    def make_evaluate(self, model):
        recipe = self.recipe
        return lambda: evaluate_detector(
            model, recipe.dataset, recipe.eval_split, recipe.image_size, data_dir=self.data_dir,
            batch_size=self.per_replica, max_instances=recipe.max_instances, max_examples=self.eval_examples,
        )

    def metrics(self, results):
        return {"task": "detection", "eval_split": self.recipe.eval_split, "eval_examples": self.eval_examples,
                "coco": results}

    def describe(self, results):
        return f"COCO AP {percent(results['AP'])}, AP50 {percent(results['AP50'])}"
