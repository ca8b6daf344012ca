"""Training recipes as data: the paper's ImageNet and CIFAR-100 settings, a quick offline run, and
the fine-tuning of a pretrained `keras.applications` network with attention added.

A `Recipe` holds everything that defines a run except the network and where it runs; flags
override single fields with `get_recipe(name, **overrides)`. Learning rates are given per 256
images and scaled linearly with the global batch size (`peak_learning_rate`).
"""

import dataclasses

from aa_keras.data.classification import PREPROCESSING
from training.schedules import DECAYS as SCHEDULES

OPTIMIZERS = ("sgd", "adam")


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
    """

    dataset: str
    models: tuple
    image_size: int
    epochs: int
    global_batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    warmup_fraction: float = 0.05
    schedule: str = "cosine"
    decay_epochs: tuple = ()
    decay_factor: float = 0.1
    preprocessing: str = "none"
    randaugment_magnitude: int = 0
    train_split: str = "train"
    eval_split: str = "test"
    freeze_backbone_epochs: int = 0

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


def get_recipe(name, **overrides):
    """The recipe `name` with the fields in `overrides` replaced (None values are ignored).

    Raises:
        ValueError: for an unknown recipe, an unknown field or an invalid value.
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe: received recipe={name!r}, expected one of {sorted(RECIPES)}.")
    return override(RECIPES[name], **overrides)


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
