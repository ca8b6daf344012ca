"""Training recipes as data, for both tasks: the paper's ImageNet and CIFAR-100 settings, a quick
offline run, the fine-tuning of a pretrained `keras.applications` network with attention added,
and the detection recipes (the paper's COCO RetinaNet and a quick offline run).

A `Recipe` holds everything that defines a run except the network and where it runs; flags
override single fields with `get_recipe(name, **overrides)`. Learning rates are given per 256
images and scaled linearly with the global batch size (`peak_learning_rate`).
"""

import dataclasses

from aa_keras.applications.retinanet import DETECTOR_NAMES
from aa_keras.data.classification import PREPROCESSING
from aa_keras.programs.field_flags import flag_field

from .schedules import DECAYS as SCHEDULES

OPTIMIZERS = ("sgd", "adam")


def _flag(flag, help, default=dataclasses.MISSING, choices=None, task=None, lower_bound=None):
    """A recipe field that the trainer's flag `--<flag>` overrides
    (`aa_keras.programs.field_flags`): its help, its choices (an enum flag), the task it applies
    to (None: both) and its lower bound."""
    return flag_field(help, default, flag=flag, choices=choices, lower_bound=lower_bound, task=task)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training recipe.

    Attributes:
        dataset: TFDS name of an image classification dataset.
        models: network names (`aa_keras.applications.build_model`) trained by default.
        image_size: side of the square training and evaluation images.
        epochs: passes over the training split.
        global_batch_size: images per step over all replicas.
        optimizer: "sgd" (with `momentum`) or "adam".
        learning_rate: peak learning rate per 256 images.
        momentum: SGD momentum.
        weight_decay: L2 coefficient: `weight_decay / 2 * sum(kernel ** 2)` is added to the loss.
        label_smoothing: of the one-hot targets.
        warmup_fraction: fraction of all steps with a linear warm-up from 0 to the peak.
        schedule: after warm-up, "step" (times `decay_factor` at each of `decay_epochs`),
            "cosine" (to 0 at the last step) or "constant".
        decay_epochs: epochs at which the "step" schedule decays.
        decay_factor: factor of each "step" decay.
        preprocessing: "inception" (random crop of 8-100% area, flip; central crop to
            evaluate), "cifar" (4-pixel pad, random crop, flip) or "none" (resize only).
        randaugment_magnitude: RandAugment magnitude (2 layers) on training images; 0 is off.
        train_split, eval_split: TFDS split names.
        freeze_backbone_epochs: for this many first epochs, train only the new head and the
            attention branches of a "keras:<Name>" model (its pretrained backbone frozen,
            `aa_keras.applications.set_backbone_trainable`), then everything; 0 is off.
        batch_norm_images: at the end of a run, re-estimate the BatchNormalization statistics
            over the first this many training images (all if the split is smaller;
            `aa_keras.applications.recalibrate_batch_norm`) before the final evaluation and
            `model.keras`; 0 is off.
    """

    dataset: str = _flag(
        "dataset", "TFDS dataset: image classification, or detection in the layout of coco/2017; or a folder: "
        "image_folder:PATH (PATH/<split>/<label>/<image>) for classification, coco_json:PATH "
        "(PATH/annotations/instances_<split>.json, images in PATH/<split>/) for detection; default: the recipe's.",
    )
    models: tuple
    image_size: int = _flag("image_size", "Overrides the recipe's image size.")
    epochs: int = _flag("epochs", "Overrides the recipe's epochs.")
    global_batch_size: int = _flag("batch_size", "Overrides the recipe's global batch size (over all replicas).")
    optimizer: str = _flag("optimizer", "Overrides the recipe's optimizer.", choices=OPTIMIZERS)
    learning_rate: float = _flag("learning_rate", "Overrides the recipe's peak learning rate per 256 images.")
    momentum: float = _flag("momentum", "Overrides the recipe's SGD momentum.", default=0.9)
    weight_decay: float = _flag("weight_decay", "Overrides the recipe's L2 weight decay.", default=0.0)
    label_smoothing: float = _flag(
        "label_smoothing", "Overrides the recipe's label smoothing.", default=0.0, task="classification"
    )
    warmup_fraction: float = _flag(
        "warmup_fraction", "Overrides the recipe's warm-up fraction of all steps.", default=0.05
    )
    schedule: str = _flag(
        "schedule", "Overrides the recipe's schedule after warm-up.", default="cosine", choices=SCHEDULES
    )
    decay_epochs: tuple = ()
    decay_factor: float = 0.1
    preprocessing: str = "none"
    randaugment_magnitude: int = _flag(
        "randaugment", "RandAugment magnitude for training images (0 is off).", default=0, task="classification"
    )
    train_split: str = "train"
    eval_split: str = "test"
    freeze_backbone_epochs: int = _flag(
        "freeze_backbone_epochs", "keras:<Name> models: overrides the recipe's number of first epochs that train only "
        "the new head and the attention branches on the frozen pretrained backbone.",
        default=0, task="classification", lower_bound=0,
    )
    batch_norm_images: int = _flag(
        "batch_norm_images", "Overrides the recipe's number of training images (1000) over which BatchNormalization's "
        "statistics are re-estimated at the end of the run, before the final evaluation and model.keras; 0 is off.",
        default=1000, lower_bound=0,
    )

    def __post_init__(self):
        check_field(self, "dataset", isinstance(self.dataset, str) and self.dataset, "a TFDS dataset name")
        check_field(self, "models", isinstance(self.models, tuple) and self.models, "a non-empty tuple of names")
        for name in ("image_size", "epochs", "global_batch_size"):
            value = getattr(self, name)
            check_field(self, name, isinstance(value, int) and not isinstance(value, bool) and value > 0, "a positive int")
        check_field(self, "optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}")
        check_field(self, "schedule", self.schedule in SCHEDULES, f"one of {SCHEDULES}")
        check_field(self, "preprocessing", self.preprocessing in PREPROCESSING, f"one of {PREPROCESSING}")
        check_field(self, "learning_rate", self.learning_rate > 0, "a positive float")
        check_field(self, "momentum", 0 <= self.momentum < 1, "a float in [0, 1)")
        check_field(self, "weight_decay", self.weight_decay >= 0, "a float >= 0")
        check_field(self, "label_smoothing", 0 <= self.label_smoothing < 1, "a float in [0, 1)")
        check_field(self, "warmup_fraction", 0 <= self.warmup_fraction < 1, "a float in [0, 1)")
        check_field(self, "decay_factor", 0 < self.decay_factor <= 1, "a float in (0, 1]")
        check_field(
            self,
            "decay_epochs",
            isinstance(self.decay_epochs, tuple)
            and all(0 < e < self.epochs for e in self.decay_epochs)
            and list(self.decay_epochs) == sorted(set(self.decay_epochs)),
            f"increasing epochs strictly between 0 and epochs={self.epochs}",
        )
        check_field(
            self,
            "randaugment_magnitude",
            isinstance(self.randaugment_magnitude, int) and 0 <= self.randaugment_magnitude <= 30,
            "an int in [0, 30] (0 is off)",
        )
        value = self.freeze_backbone_epochs
        check_field(
            self, "freeze_backbone_epochs", isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            "an int >= 0 (0 is off)",
        )
        value = self.batch_norm_images
        check_field(
            self, "batch_norm_images", isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            "an int >= 0 (0 is off)",
        )

    @property
    def peak_learning_rate(self):
        """`learning_rate` scaled from 256 images to `global_batch_size`."""
        return self.learning_rate * self.global_batch_size / 256


def check_field(recipe, name, ok, valid):
    """Raises a ValueError naming the field `name` of `recipe`, its value and `valid` (what is
    valid) unless `ok`."""
    if not ok:
        raise ValueError(f"Invalid recipe field `{name}`: received {name}={getattr(recipe, name)!r}, expected {valid}.")


RECIPES = {
    # Bello et al. 2019, ImageNet: 100 epochs, SGD momentum 0.9, weight decay 1e-4, 0.128 per
    # 256 images, 5% linear warm-up, divided by 10 at epochs 30, 60, 80 and 90, Inception
    # preprocessing at 224. The global batch size is ours (the learning rate scales with it).
    "paper_imagenet": Recipe(
        dataset="imagenet2012",
        models=("aa_resnet50",),
        image_size=224,
        epochs=100,
        global_batch_size=1024,
        optimizer="sgd",
        learning_rate=0.128,
        momentum=0.9,
        weight_decay=1e-4,
        warmup_fraction=0.05,
        schedule="step",
        decay_epochs=(30, 60, 80, 90),
        decay_factor=0.1,
        preprocessing="inception",
        eval_split="validation",
    ),
    # Bello et al. 2019, CIFAR-100 Wide-ResNet: 500 epochs, SGD momentum 0.9, 0.2 per 256
    # images, 5% linear warm-up then cosine decay, flips and crops. The weight decay (5e-4,
    # Zagoruyko & Komodakis's WRN setting) and the batch size are ours.
    "paper_cifar100": Recipe(
        dataset="cifar100",
        models=("aa_wrn28_10",),
        image_size=32,
        epochs=500,
        global_batch_size=256,
        optimizer="sgd",
        learning_rate=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        warmup_fraction=0.05,
        schedule="cosine",
        preprocessing="cifar",
    ),
    # The default run: the small AA network against its matched conv baseline on the offline
    # glyph_pairs dataset, sized to finish on a 2-core CPU.
    "quick": Recipe(
        dataset="glyph_pairs",
        models=("aa_small", "conv_small"),
        image_size=32,
        epochs=4,
        global_batch_size=128,
        optimizer="adam",
        learning_rate=4e-3,
        warmup_fraction=0.05,
        schedule="cosine",
        preprocessing="none",
    ),
    # Fine-tuning a pretrained keras.applications network with attention added ("keras:<Name>",
    # e.g. on --dataset=image_folder:PATH): one epoch trains the new head and the attention
    # branches on the frozen backbone, then everything trains at a small learning rate, SGD with
    # momentum and a cosine decay, at the ImageNet weights' 224x224. Our choice of the usual
    # transfer-learning settings; the dataset is the offline default only.
    "finetune": Recipe(
        dataset="glyph_pairs",
        models=("keras:ResNet50",),
        image_size=224,
        epochs=5,
        global_batch_size=64,
        optimizer="sgd",
        learning_rate=0.04,
        momentum=0.9,
        weight_decay=1e-5,
        warmup_fraction=0.05,
        schedule="cosine",
        preprocessing="none",
        freeze_backbone_epochs=1,
    ),
}


def override(recipe, **overrides):
    """`recipe` (a `Recipe` or a subclass) with the fields in `overrides` replaced (None values
    are ignored), validated again.

    Raises:
        ValueError: for an unknown field or an invalid value.
    """
    fields = {f.name for f in dataclasses.fields(recipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown recipe fields {unknown}; valid fields are {sorted(fields)}.")
    return dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class DetectionRecipe(Recipe):
    """A `Recipe` for detection, with the augmentation of detection.

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
        check_field(self, "preprocessing", self.preprocessing == "none", "'none' for detection")
        check_field(self, "label_smoothing", self.label_smoothing == 0, "0 for detection")
        check_field(self, "randaugment_magnitude", self.randaugment_magnitude == 0, "0 for detection")
        check_field(self, "scale_min", 0 < self.scale_min <= 1, "a float in (0, 1]")
        check_field(self, "scale_max", self.scale_max >= 1, "a float >= 1")
        check_field(self, "flip", isinstance(self.flip, bool), "a bool")
        check_field(
            self,
            "max_instances",
            isinstance(self.max_instances, int) and not isinstance(self.max_instances, bool) and self.max_instances > 0,
            "a positive int",
        )
        unknown = [name for name in self.models if name not in DETECTOR_NAMES]
        check_field(self, "models", not unknown, f"names from {DETECTOR_NAMES}")


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


# The recipes of each task (`training.train --task`), and the one a task runs by default.
TASK_RECIPES = {"classification": RECIPES, "detection": DETECTION_RECIPES}
DEFAULT_RECIPES = {"classification": "quick", "detection": "quick_detection"}


def recipe_for(task, recipe, **overrides):
    """`recipe` (a recipe of `task`, or the name of one in `TASK_RECIPES[task]`) with the fields
    in `overrides` replaced (None values are ignored).

    Raises:
        ValueError: an unknown recipe, a recipe of the other task, an unknown field or an
            invalid value.
    """
    recipes = TASK_RECIPES[task]
    if isinstance(recipe, str):
        if recipe not in recipes:
            raise ValueError(f"Unknown {task} recipe: received recipe={recipe!r}, expected one of {sorted(recipes)}.")
        recipe = recipes[recipe]
    expected = DetectionRecipe if task == "detection" else Recipe
    if not isinstance(recipe, expected) or (task == "classification" and isinstance(recipe, DetectionRecipe)):
        raise ValueError(
            f"Invalid `recipe`: expected a {expected.__name__} or a name from {sorted(recipes)}, received {recipe!r}."
        )
    return override(recipe, **overrides)


def get_recipe(name, **overrides):
    """The classification recipe `name` with `overrides` (see `recipe_for`)."""
    return recipe_for("classification", name, **overrides)


def get_detection_recipe(name, **overrides):
    """The detection recipe `name` with `overrides` (see `recipe_for`)."""
    return recipe_for("detection", name, **overrides)
