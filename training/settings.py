"""The settings of one training run in one object, `TrainingSettings`: its sections `run`, `data`,
`model`, `distribution` (dataclasses here) and `recipe` (the optimizer, schedule and the rest of
`training.recipes.Recipe`). Built once (from the flags by `training.train`, or by `settings_for`),
checked once (`TrainingSettings.check`, by `training.loop.start_run`) and written once to
run_config.json (`TrainingSettings.config`).

The fields that the trainer's command line sets carry their flag (`aa_keras.programs.field_flags`):
`training.train` generates its flags from them.
"""

import dataclasses
from typing import Callable, Optional

from aa_keras.applications import KERAS_PREFIX
from aa_keras.applications.keras_classifier import AUGMENT
from aa_keras.applications.retinanet import DETECTOR_NAMES
from aa_keras.data import TASKS
from aa_keras.layers import RESAMPLE_METHODS
from aa_keras.programs.field_flags import flag_field
from aa_keras.validation import positive_int

from . import recipes
from .distribute import STRATEGIES
from .loop import MIXED_PRECISION, check_mixed_precision


@dataclasses.dataclass(frozen=True)
class RunSection:
    """Where the run writes, how it steps and where it starts.

    Attributes:
        model_dir: the run folder.
        checkpoint_steps: steps between checkpoints.
        steps_per_epoch: at most this many steps per epoch (None: the whole training split).
        seed: seed of the data order (epoch e shuffles with seed + e).
        verbose: show a progress bar (on the chief).
        allow_changed_settings: resume a run found in `model_dir` whose settings (other than the
            identity fields and `epochs`) differ from these; the change is recorded.
        init_from: a .keras model or a run folder (or its `training.init_from.InitSource`) whose
            weights a new run starts from (`training.init_from.initialize_from`, tables resampled
            with `init_method`); ignored when the run resumes from its own checkpoint.
        init_method: "linear" or "edge".
    """

    model_dir: str
    checkpoint_steps: int = flag_field("Steps between checkpoints (one is also written each epoch).", 200)
    steps_per_epoch: Optional[int] = flag_field(
        "At most this many steps per epoch (default: the whole split).", None, type=int
    )
    seed: int = flag_field("Seed of the weight initialisation (each network starts from it) and the data order.", 0)
    verbose: bool = True
    allow_changed_settings: bool = flag_field(
        "Resume a run in --model_dir although settings other than the model, dataset, image size, optimizer, mixed "
        "precision, the keras: models' weights, augment and freeze settings, and epochs changed; the change is "
        "recorded in run_config.json.", False,
    )  # fmt: skip
    init_from: object = flag_field(
        "Start from the weights of this .keras model or run folder (matched by layer, relative tables resampled to "
        "--image_size, other shapes newly initialised); a run resuming its own checkpoints ignores it.", None, type=str,
    )  # fmt: skip
    init_method: str = flag_field(
        "How --init_from fills relative tables of a larger attention grid.", "linear", choices=RESAMPLE_METHODS
    )


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where the data is, besides the recipe's dataset and splits.

    Attributes:
        data_dir: TFDS data directory.
        manual_dir: folder of manually downloaded archives (classification).
        eval_examples: detection: evaluate on the first this many images (None: all).
    """

    data_dir: Optional[str] = flag_field("TFDS data directory; default: TFDS's (~/tensorflow_datasets).", None, type=str)
    manual_dir: Optional[str] = flag_field(
        "Folder with manually downloaded archives (imagenet2012).", None, type=str, task="classification"
    )
    eval_examples: Optional[int] = flag_field(
        "Detection: evaluate on the first this many images of the evaluation split (default: all).", None, type=int,
        lower_bound=1, task="detection",
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The network.

    Attributes:
        name: its name, passed to `model_fn`.
        model_fn: `(name, input_shape, classes, **options) -> keras.Model`; None for the task's
            (`aa_keras.applications.build_model`, `aa_keras.applications.retinanet.build_detector`).
        model_options: classification: keyword arguments of `model_fn` for this network (for
            "keras:<Name>": `weights`, `augment`, `augment_skip_unfit`), recorded in run_config.json.
    """

    name: str
    model_fn: Optional[Callable] = None
    model_options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class KerasSection:
    """The flags of "keras:<Name>" networks, resolved into their `ModelSection.model_options` by
    `training.train` (None: not given)."""

    weights: Optional[str] = flag_field(
        f"{KERAS_PREFIX}<Name> models: the backbone's starting weights: imagenet (default; keras downloads them on "
        "first use), none (random), or the path of a weights file of the network without its top (a .weights.h5 "
        "saved from keras.applications.<Name>(include_top=False), or keras's ..._notop.h5).", None, type=str,
        task="classification",
    )  # fmt: skip
    augment: Optional[str] = flag_field(
        f"{KERAS_PREFIX}<Name> models: the Conv2D layers replaced by attention-augmented ones: paper (default: the 3x3 "
        "convolutions of the three lowest-resolution stages), all, or none.", None, choices=AUGMENT,
        task="classification",
    )  # fmt: skip
    augment_skip_unfit: Optional[bool] = flag_field(
        f"{KERAS_PREFIX}<Name> models: skip selected convolutions that cannot be augmented (too few filters, grouped, "
        "dilated) instead of stopping; e.g. --augment=all --augment_skip_unfit for MobileNet and EfficientNet, whose "
        "3x3 convolutions are depthwise.", None, type=bool, task="classification",
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DistributionSection:
    """Where the run computes: the `tf.distribute` strategy (`training.distribute.create_strategy`)
    and the mixed precision policy (None, "bfloat16" or "float16" with dynamic loss scaling)."""

    strategy: str = flag_field("tf.distribute strategy.", "default", choices=STRATEGIES)
    num_gpus: int = flag_field("GPUs for one_device / mirrored.", 0)
    devices: Optional[list] = flag_field(
        "Explicit devices for mirrored, e.g. GPU:0,GPU:1 (overrides --num_gpus).", None, type=list
    )
    tpu: Optional[str] = flag_field("TPU address or name for --strategy=tpu ('local' for attached TPUs).", None, type=str)
    mixed_precision: Optional[str] = flag_field(
        "Mixed precision policy.", None, choices=[p for p in MIXED_PRECISION if p]
    )


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """Everything one training run takes besides its strategy: the task ("classification" or
    "detection"), its recipe (a `training.recipes.Recipe` of that task) and the sections."""

    task: str
    recipe: recipes.Recipe
    model: ModelSection
    run: RunSection
    data: DataSection = DataSection()
    distribution: DistributionSection = DistributionSection()

    def check(self):
        """Raises a ValueError naming the first bad setting."""
        if self.task not in TASKS:
            raise ValueError(f"Invalid `task`: received {self.task!r}, expected one of {TASKS}.")
        if self.task == "detection" and self.model.name not in DETECTOR_NAMES and self.model.model_fn is None:
            raise ValueError(
                f"Invalid `model`: received {self.model.name!r}; detection models are {', '.join(DETECTOR_NAMES)}."
            )
        if self.task != "detection" and self.data.eval_examples is not None:
            raise ValueError("Invalid `eval_examples`: it applies to detection only, and this run is classification.")
        positive_int("eval_examples", self.data.eval_examples, optional=True)
        check_mixed_precision(self.distribution.mixed_precision)
        positive_int("checkpoint_steps", self.run.checkpoint_steps)
        positive_int("steps_per_epoch", self.run.steps_per_epoch, optional=True)

    def config(self):
        """The run configuration recorded in run_config.json: the fields of the recipe but
        `models` (the networks it is meant for), the task (detection only), the model, seed and
        model options, `mixed_precision` and `steps_per_epoch`."""
        config = {k: v for k, v in dataclasses.asdict(self.recipe).items() if k != "models"}
        if self.task == "detection":
            config["task"] = "detection"
        config.update(model=self.model.name, seed=self.run.seed, **self.model.model_options)
        config.update(mixed_precision=self.distribution.mixed_precision, steps_per_epoch=self.run.steps_per_epoch)
        return config


_SECTIONS = {"model": ModelSection, "run": RunSection, "data": DataSection, "distribution": DistributionSection}


def settings_for(task, model, model_dir, recipe=None, **fields):
    """The `TrainingSettings` of training the network `model` into `model_dir` on `task` with
    `recipe` (a recipe of `task`, or its name; default: the task's `recipes.DEFAULT_RECIPES`),
    each of `fields` a field of a section (`seed=1`, `model_fn=...`) or a recipe field that
    overrides the recipe's (`epochs=2`; None keeps the recipe's).

    Raises:
        ValueError: an unknown field or recipe, or a bad recipe value (the rest is checked by
            `TrainingSettings.check`).
    """
    recipe = recipes.recipe_for(task, recipe or recipes.DEFAULT_RECIPES[task])
    recipe_fields = {field.name for field in dataclasses.fields(recipe)}
    values = {"model": {"name": model}, "run": {"model_dir": model_dir}, "data": {}, "distribution": {}}
    for name, value in fields.items():
        section = next((s for s, cls in _SECTIONS.items() if name in {f.name for f in dataclasses.fields(cls)}), None)
        if section is None and name not in recipe_fields:
            raise ValueError(f"Unknown training setting {name!r}: expected a field of {sorted(_SECTIONS)} or of the recipe.")
        if section is not None:
            values[section][name] = value
    overrides = {name: value for name, value in fields.items() if name in recipe_fields}
    recipe = recipes.override(recipe, **overrides)
    sections = {name: _SECTIONS[name](**section) for name, section in values.items()}
    return TrainingSettings(task, recipe, **sections)


# The sections that `with_params` (`--params_override`) replaces fields of.
PARAMS_SECTIONS = ("recipe", "run", "data", "distribution")


def with_params(settings, params):
    """`settings` with the fields in `params` replaced: {section: {field: value}} for sections
    of `PARAMS_SECTIONS` (as `--params_override` gives them; lists become tuples in the recipe).

    Raises:
        ValueError: an unknown section or field, or a bad recipe value.
    """
    if not isinstance(params, dict):
        raise ValueError(f"expected a mapping of sections {PARAMS_SECTIONS} to {{field: value}}, received {params!r}")
    replaced = {}
    for name, values in params.items():
        if name not in PARAMS_SECTIONS or not isinstance(values, dict):
            raise ValueError(f"{name!r} is not a section of {PARAMS_SECTIONS} mapped to {{field: value}}")
        section = getattr(settings, name)
        fields = {field.name for field in dataclasses.fields(section)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"the {name} section has no fields {unknown}; its fields are {sorted(fields)}")
        if name == "recipe":
            replaced[name] = recipes.override(section, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        else:
            replaced[name] = dataclasses.replace(section, **values)
    return dataclasses.replace(settings, **replaced)
