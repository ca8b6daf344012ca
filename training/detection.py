"""Trains and evaluates RetinaNet / AA-RetinaNet detectors: the `--task=detection` path of the
trainer (`train_detection`).

The run is the classification loop's (`training.loop.run_training`) with a detection
`TrainingTask`: the same checkpoints, resumption (mid-epoch included), stop on a non-finite
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

from aa_keras.applications.retinanet import DETECTOR_NAMES, build_detector, detections
from aa_keras.data import detection as detection_data
from aa_keras.data.classification import per_replica_batch_size
from aa_keras.validation import positive_int
from training import recipes
from training.init_from import detector_attention
from training.loop import TrainingTask, run_training, start_run

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1", "ARmax10", "ARmax100", "ARs", "ARm", "ARl")


@dataclasses.dataclass(frozen=True)
class DetectionRecipe(recipes.Recipe):
    """A `training.recipes.Recipe` for detection, with the augmentation of detection.

    The classification fields mean the same here, except `preprocessing`, which must be
    "none"; `label_smoothing` and `randaugment_magnitude` must be 0 (detection has neither).

    Attributes:
        scale_min, scale_max: scale jitter range of training images (1, 1 is off).
        flip: random horizontal flips of training images.
        max_instances: objects per image kept for training and evaluation.
    """

    scale_min: float = 0.8
    scale_max: float = 1.2
    flip: bool = True
    max_instances: int = 100

    def __post_init__(self):
        super().__post_init__()
        recipes.check_field(self, "preprocessing", self.preprocessing == "none", "'none' for detection")
        recipes.check_field(self, "label_smoothing", self.label_smoothing == 0, "0 for detection")
        recipes.check_field(self, "randaugment_magnitude", self.randaugment_magnitude == 0, "0 for detection")
        recipes.check_field(self, "scale_min", 0 < self.scale_min <= 1, "a float in (0, 1]")
        recipes.check_field(self, "scale_max", self.scale_max >= 1, "a float >= 1")
        recipes.check_field(self, "flip", isinstance(self.flip, bool), "a bool")
        recipes.check_field(
            self,
            "max_instances",
            isinstance(self.max_instances, int) and not isinstance(self.max_instances, bool) and self.max_instances > 0,
            "a positive int",
        )
        unknown = [name for name in self.models if name not in DETECTOR_NAMES]
        recipes.check_field(self, "models", not unknown, f"names from {DETECTOR_NAMES}")


DETECTION_RECIPES = {
    # Bello et al. 2019, section 4.4: RetinaNet on COCO with the training setup of the TPU
    # RetinaNet reference they used: 640x640 images, flips and [0.8, 1.2] scale jitter, SGD
    # momentum 0.9, weight decay 1e-4, 0.08 per 64 images (0.32 per 256), a linear warm-up
    # of 1000 of 22500 steps, divided by 10 at steps 15000 and 20000: at batch 64 on the
    # 118287 train2017 images, 12 epochs with decays at epochs 8 and 11.
    "paper_coco": DetectionRecipe(
        dataset="coco/2017",
        models=("aa_retinanet_r50", "retinanet_r50"),
        image_size=640,
        epochs=12,
        global_batch_size=64,
        optimizer="sgd",
        learning_rate=0.32,
        momentum=0.9,
        weight_decay=1e-4,
        warmup_fraction=0.044,
        schedule="step",
        decay_epochs=(8, 11),
        decay_factor=0.1,
        scale_min=0.8,
        scale_max=1.2,
        train_split="train",
        eval_split="validation",
    ),
    # The offline run: AA-RetinaNet-18 against RetinaNet-18 on glyph_boxes, sized for a CPU.
    "quick_detection": DetectionRecipe(
        dataset="glyph_boxes",
        models=("aa_retinanet_r18", "retinanet_r18"),
        image_size=128,
        epochs=3,
        global_batch_size=16,
        optimizer="adam",
        learning_rate=0.008,
        warmup_fraction=0.05,
        schedule="cosine",
        scale_min=0.9,
        scale_max=1.1,
        max_instances=8,
    ),
}


def get_detection_recipe(name, **overrides):
    """The detection recipe `name` with the fields in `overrides` replaced (None values are
    ignored). Raises a ValueError for an unknown recipe, an unknown field or a bad value."""
    if name not in DETECTION_RECIPES:
        raise ValueError(f"Unknown detection recipe: received recipe={name!r}, expected one of {sorted(DETECTION_RECIPES)}.")
    return recipes.override(DETECTION_RECIPES[name], **overrides)


def build_named_detector(name, input_shape, num_classes, **kwargs):
    """The detector `name` from `aa_keras.applications.retinanet` (`kwargs`: its further arguments)."""
    return build_detector(name, input_shape=input_shape, num_classes=num_classes, **kwargs)


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
    ground truth is `groundtruth` (see `training.detection_data.preprocess_for_evaluation`).
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
        dataset, split, data_dir: the TFDS detection data (see `training.detection_data`).
        image_size: side of the square images.
        batch_size: images per prediction batch.
        max_instances: ground-truth objects kept per image.
        max_examples: evaluate on the first this many images only; None for the whole split.
        verbose: show a progress bar over the images.

    Returns:
        {metric: float} for `COCO_METRICS` (AP in [0, 1], -1 where COCO has no objects of a size).
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


def train_detection(
    strategy,
    model_name,
    model_dir,
    recipe="quick_detection",
    dataset=None,
    data_dir=None,
    epochs=None,
    steps_per_epoch=None,
    global_batch_size=None,
    mixed_precision=None,
    checkpoint_steps=200,
    eval_examples=None,
    seed=0,
    verbose=True,
    model_fn=build_named_detector,
    allow_changed_settings=False,
    init_from=None,
    init_method="linear",
):
    """Trains the detector `model_name` into `model_dir`, resuming a run found there, and
    evaluates it with the COCO evaluator after each epoch.

    Writes `model_dir/checkpoints` (every `checkpoint_steps` steps and each epoch),
    `logs/{train,eval}` (TensorBoard), `run_config.json`, `labels.txt` (the class names), and at the end `model.keras` and
    `metrics.json` (the COCO metrics of the last evaluation, and the history); the last two
    atomically. Outside the chief of a cluster, writes go to a scratch folder removed at the
    end, and every worker evaluates the (whole) evaluation split by itself.

    Args:
        strategy: a `tf.distribute.Strategy` (see `training.distribute.create_strategy`).
        model_name: one of `aa_keras.applications.retinanet.DETECTOR_NAMES`.
        model_dir: output folder.
        recipe: a `DetectionRecipe`, or the name of one in `DETECTION_RECIPES`.
        dataset, epochs, global_batch_size: override the recipe's (None keeps it).
        data_dir: TFDS data directory.
        steps_per_epoch: at most this many steps per epoch (None: the whole training split).
        mixed_precision: None, "bfloat16" or "float16" (with dynamic loss scaling).
        checkpoint_steps: steps between checkpoints.
        eval_examples: evaluate on the first this many images of the evaluation split (None: all).
        seed: seed of the data order (epoch e shuffles with seed + e).
        verbose: show a progress bar (on the chief).
        model_fn: `(name, input_shape, num_classes, **attention) -> detector`.
        allow_changed_settings: resume a run found in `model_dir` whose settings (other than
            the identity fields and `epochs`) differ from these; the change is recorded.
        init_from, init_method: start from the weights of a saved classifier or detector (see
            `training.loop.run_training`); an AA detector takes the attention settings of its
            backbone layers (`training.init_from.detector_attention`), so re-run the same command
            to resume.

    Returns:
        (model, metrics dict as written to metrics.json).

    Raises:
        ValueError: bad arguments, or a `model_dir` holding a different run (nothing is written).
        FloatingPointError: the loss or the weights became non-finite; the last good
            checkpoint is kept.
    """
    if isinstance(recipe, str):
        recipe = get_detection_recipe(recipe)
    if not isinstance(recipe, DetectionRecipe):
        raise ValueError(f"Invalid `recipe`: expected a DetectionRecipe or a name from {sorted(DETECTION_RECIPES)}, "
                         f"received {recipe!r}.")
    recipe = recipes.override(recipe, dataset=dataset, epochs=epochs, global_batch_size=global_batch_size)
    if model_name not in DETECTOR_NAMES and model_fn is build_named_detector:
        raise ValueError(f"Invalid `model`: received {model_name!r}; detection models are {', '.join(DETECTOR_NAMES)}.")
    positive_int("eval_examples", eval_examples, optional=True)
    config = start_run(
        model_dir, recipe, checkpoint_steps, steps_per_epoch, mixed_precision, allow_changed_settings,
        task="detection", model=model_name, seed=seed,
    )
    batch = recipe.global_batch_size
    per_replica = per_replica_batch_size(batch, strategy.num_replicas_in_sync)
    num_classes = detection_data.num_classes(recipe.dataset, data_dir)
    train_examples = detection_data.split_size(recipe.dataset, recipe.train_split, data_dir)
    detection_data.split_size(recipe.dataset, recipe.eval_split, data_dir)  # Fails early on a bad split.

    attention = detector_attention(init_from) if init_from and model_name.startswith("aa_") else {}

    def train_dataset(context, epoch_seed, skip_batches):
        return detection_data.build_dataset(
            recipe.dataset,
            recipe.train_split,
            recipe.image_size,
            global_batch_size=batch,
            data_dir=data_dir,
            training=True,
            scale_min=recipe.scale_min,
            scale_max=recipe.scale_max,
            flip=recipe.flip,
            max_instances=recipe.max_instances,
            input_context=context,
            seed=epoch_seed,
            skip_batches=skip_batches,
        )

    def loss(model, images, targets):
        predictions = model(images, training=True)
        # The detector's losses are sums normalized by this replica's positive anchors;
        # gradients are summed over replicas, so each replica contributes 1 / replicas.
        value = model.compute_loss(x=images, y=targets, y_pred=predictions, sample_weight=None)
        return tf.cast(value, tf.float32) / strategy.num_replicas_in_sync, {}

    def make_evaluate(model):
        return lambda: evaluate_detector(
            model, recipe.dataset, recipe.eval_split, recipe.image_size, data_dir=data_dir, batch_size=per_replica,
            max_instances=recipe.max_instances, max_examples=eval_examples,
        )

    task = TrainingTask(
        build_model=lambda: model_fn(model_name, (recipe.image_size, recipe.image_size, 3), num_classes, **attention),
        compile=compile_detector,
        train_dataset=train_dataset,
        loss=loss,
        make_evaluate=make_evaluate,
        metrics=lambda results: {
            "task": "detection", "eval_split": recipe.eval_split, "eval_examples": eval_examples, "coco": results
        },
        describe=lambda results: f"COCO AP {results['AP']:.4f}, AP50 {results['AP50']:.4f}",
        class_names=tuple(detection_data.class_names(recipe.dataset, data_dir)),
    )
    return run_training(
        task, strategy, model_name, recipe, model_dir, config, train_examples, steps_per_epoch=steps_per_epoch,
        mixed_precision=mixed_precision, checkpoint_steps=checkpoint_steps, seed=seed, verbose=verbose,
        init_from=init_from, init_method=init_method,
    )
