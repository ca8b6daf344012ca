"""Trains aa_keras networks with the paper's recipes on any tf.distribute strategy.

    python -m aa_keras.training.train                      # the default run: aa_small vs conv_small on glyph_pairs
    python -m aa_keras.training.train --recipe=paper_cifar100 --model=aa_wrn28_10 --strategy=mirrored --num_gpus=8
    python -m aa_keras.training.train --recipe=paper_imagenet --manual_dir=/data/imagenet --strategy=tpu --tpu=NAME
    python -m aa_keras.training.train --task=detection     # aa_retinanet_r18 vs retinanet_r18 on glyph_boxes
    python -m aa_keras.training.train --task=detection --dataset=coco/2017 --model=aa_retinanet_r50 --recipe=paper_coco
    python -m aa_keras.training.train --recipe=finetune --model=keras:EfficientNetB0 --dataset=NAME   # pretrained, attention added

Each network trains into `<model_dir>/<name>` (`keras:<Name>` into `<model_dir>/keras_<Name>`;
checkpoints, TensorBoard logs, model.keras, metrics.json); re-running the same command resumes. A table compares the networks at the end.
Each task is a module with one `train` function: `training.classification`, `training.detection`.
"""

import os

import keras
from absl import flags

from aa_keras.applications import DETECTOR_NAMES, KERAS_PREFIX, MODEL_NAMES, keras_networks
from aa_keras.applications.keras_classifier import AUGMENT
from aa_keras.data import TASKS
from aa_keras.data import classification as data
from aa_keras.layers import RESAMPLE_METHODS
from aa_keras.programs.command_line import program_main, run_program

from . import classification, detection, recipes
from .distribute import STRATEGIES, create_strategy
from .init_from import InitSource
from .loop import MIXED_PRECISION
from .trainer import Interrupted

# The CLI's own flags, added to absl's global flags by run_main only, so that the trainer's and
# the exporter's flags (both have --model, --dataset, ...) can be imported into one process.
FLAGS = flags.FlagValues()
# Flags that only one task reads; giving one to the other task is an error.
KERAS_FLAGS = ("weights", "augment", "augment_skip_unfit", "freeze_backbone_epochs")
TASK_FLAGS = {
    "classification": ("manual_dir", "label_smoothing", "randaugment", *KERAS_FLAGS),
    "detection": ("eval_examples",),
}
flags.DEFINE_enum("task", "classification", TASKS, "Image classification, or object detection with RetinaNet.", flag_values=FLAGS)
flags.DEFINE_enum(
    "recipe", None, sorted({name for table in recipes.TASK_RECIPES.values() for name in table}),
    "Training recipe (training/recipes.py); "
    "default: quick (classification) or quick_detection (detection).", flag_values=FLAGS,
)
flags.DEFINE_list(
    "model", None, f"Networks to train, in turn; default: the recipe's. Classification: {', '.join(MODEL_NAMES)}, "
    f"or {KERAS_PREFIX}<Name> for a pretrained keras.applications network with attention added "
    f"({KERAS_PREFIX}ResNet50, {KERAS_PREFIX}EfficientNetB0, ...). Detection: {', '.join(DETECTOR_NAMES)}.",
    flag_values=FLAGS,
)
flags.DEFINE_string("model_dir", None, "Output folder; default runs/<recipe>. Each network writes to <model_dir>/<name>.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory; default: TFDS's (~/tensorflow_datasets).", flag_values=FLAGS)
flags.DEFINE_string("manual_dir", None, "Folder with manually downloaded archives (imagenet2012).", flag_values=FLAGS)
flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.", flag_values=FLAGS)
flags.DEFINE_integer("num_gpus", 0, "GPUs for one_device / mirrored.", flag_values=FLAGS)
flags.DEFINE_list("devices", None, "Explicit devices for mirrored, e.g. GPU:0,GPU:1 (overrides --num_gpus).", flag_values=FLAGS)
flags.DEFINE_string("tpu", None, "TPU address or name for --strategy=tpu ('local' for attached TPUs).", flag_values=FLAGS)
flags.DEFINE_enum("mixed_precision", None, [p for p in MIXED_PRECISION if p], "Mixed precision policy.", flag_values=FLAGS)
flags.DEFINE_integer("steps_per_epoch", None, "At most this many steps per epoch (default: the whole split).", flag_values=FLAGS)
flags.DEFINE_integer("checkpoint_steps", 200, "Steps between checkpoints (one is also written each epoch).", flag_values=FLAGS)
flags.DEFINE_integer("eval_examples", None, "Detection: evaluate on the first this many images of the evaluation split (default: all).", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_bool(
    "allow_changed_settings", False, "Resume a run in --model_dir although settings other than the model, dataset, "
    "image size, optimizer, mixed precision, the keras: models' weights, augment and freeze settings, and epochs "
    "changed; the change is recorded in run_config.json.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "init_from", None, "Start from the weights of this .keras model or run folder (matched by layer, relative tables "
    "resampled to --image_size, other shapes newly initialised); a run resuming its own checkpoints ignores it.",
    flag_values=FLAGS,
)
flags.DEFINE_enum("init_method", "linear", RESAMPLE_METHODS, "How --init_from fills relative tables of a larger attention grid.", flag_values=FLAGS)
flags.DEFINE_string(
    "weights", None, f"{KERAS_PREFIX}<Name> models: the backbone's starting weights: imagenet (default; keras "
    "downloads them on first use), none (random), or the path of a weights file of the network without its top "
    "(a .weights.h5 saved from keras.applications.<Name>(include_top=False), or keras's ..._notop.h5).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "augment", None, AUGMENT, f"{KERAS_PREFIX}<Name> models: the Conv2D layers replaced by attention-augmented "
    "ones: paper (default: the 3x3 convolutions of the three lowest-resolution stages), all, or none.",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "augment_skip_unfit", None, f"{KERAS_PREFIX}<Name> models: skip selected convolutions that cannot be augmented "
    "(too few filters, grouped, dilated) instead of stopping; e.g. --augment=all --augment_skip_unfit for "
    "MobileNet and EfficientNet, whose 3x3 convolutions are depthwise.", flag_values=FLAGS,
)
# The recipe's overrides, one flag per field that has one (`recipes.flag_fields`): its name, type,
# choices, bound and help are the field's.
RECIPE_FLAGS = {field.metadata["flag"]: field for field in recipes.flag_fields(recipes.DetectionRecipe)}


def _define_recipe_flag(name, field):
    """Defines `--<name>` (default None: the recipe's value) from the recipe field `field`."""
    metadata = field.metadata
    if metadata["choices"]:
        flags.DEFINE_enum(name, None, metadata["choices"], metadata["help"], flag_values=FLAGS)
        return
    define = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float}[field.type]
    bound = {} if metadata["lower_bound"] is None else {"lower_bound": metadata["lower_bound"]}
    define(name, None, metadata["help"], flag_values=FLAGS, **bound)


for _name, _field in RECIPE_FLAGS.items():
    _define_recipe_flag(_name, _field)
flags.DEFINE_integer("seed", 0, "Seed of the weight initialisation (each network starts from it) and the data order.", flag_values=FLAGS)


# The metric columns of the comparison table, by task: (header, the value in a metrics.json dict).
TABLE_METRICS = {
    "classification": (("test accuracy", lambda row: row["test_accuracy"]),),
    "detection": tuple((name, lambda row, name=name: row["coco"][name]) for name in ("AP", "AP50", "AP75")),
}


def comparison_table(rows, task="classification"):
    """A text table of metrics.json dicts: network, parameters, the task's metrics in percent
    (COCO's -1 as "n/a"), training time."""
    width = max([16, *(len(row["model"]) + 2 for row in rows)])
    metrics = [(header, value, max(len(header) + 3, 9)) for header, value in TABLE_METRICS[task]]
    lines = [f"{'model':<{width}}{'params':>12}" + "".join(f"{h:>{w}}" for h, _, w in metrics) + f"{'train time':>14}"]
    for row in rows:
        values = "".join(f"{detection.percent(value(row)):>{w}}" for _, value, w in metrics)
        lines.append(f"{row['model']:<{width}}{row['params']:>12,}{values}{row['train_seconds']:>13.0f}s")
    return "\n".join(lines)


def _check_task_flags(task):
    for other, names in TASK_FLAGS.items():
        for name in names:
            if other != task and FLAGS[name].value is not None:
                raise ValueError(f"Invalid `--{name}`: it applies to --task={other} only, and this run has --task={task}.")


def _recipe_from_flags(task):
    """The recipe's name and the recipe of `--recipe` (or the task's default) with the flags' overrides."""
    name = FLAGS.recipe or recipes.DEFAULT_RECIPES[task]
    table = recipes.TASK_RECIPES[task]
    if name not in table:
        raise ValueError(
            f"Invalid `--recipe`: {name!r} is not a {task} recipe; with --task={task} use one of {sorted(table)}."
        )
    overrides = {
        field.name: FLAGS[flag].value
        for flag, field in RECIPE_FLAGS.items()
        if field.metadata["task"] in (None, task)
    }
    return name, recipes.override(table[name], **overrides)


def _keras_options(models, recipe):
    """The `model_options` of the keras:<Name> networks among `models`, from --weights, --augment and
    --augment_skip_unfit; errors for those flags, or a recipe that freezes a backbone, with other networks."""
    unknown = [name for name in models if name.startswith(KERAS_PREFIX) and name[len(KERAS_PREFIX):] not in keras_networks()]
    if unknown:
        raise ValueError(
            f"Invalid `--model`: {unknown} name no keras.applications network; valid are e.g. {KERAS_PREFIX}ResNet50, "
            f"{KERAS_PREFIX}EfficientNetB0, {KERAS_PREFIX}MobileNetV2 (all: {', '.join(keras_networks())})."
        )
    others = [name for name in models if not name.startswith(KERAS_PREFIX)]
    if others:
        for flag in ("weights", "augment", "augment_skip_unfit"):
            if FLAGS[flag].present:
                raise ValueError(
                    f"Invalid `--{flag}`: it applies to {KERAS_PREFIX}<Name> models only, and this run trains {others}."
                )
        if recipe.freeze_backbone_epochs:
            raise ValueError(
                f"Invalid `--model`: the recipe freezes a pretrained backbone for {recipe.freeze_backbone_epochs} "
                f"epoch(s), which only {KERAS_PREFIX}<Name> models have, and this run trains {others}; pass "
                "--freeze_backbone_epochs=0 or a keras: model."
            )
    weights = FLAGS.weights or "imagenet"
    if weights.lower() in ("imagenet", "none"):
        weights = None if weights.lower() == "none" else "imagenet"
    else:
        if not os.path.isfile(weights):
            raise ValueError(f"Invalid `--weights`: {weights!r} is not 'imagenet', 'none' or an existing weights file.")
        weights = os.path.abspath(weights)
    return dict(weights=weights, augment=FLAGS.augment or "paper", augment_skip_unfit=bool(FLAGS.augment_skip_unfit))


def run(argv):
    """Trains every requested network of `--task`; returns their metrics."""
    if len(argv) > 1:
        raise ValueError(f"Unexpected positional arguments {argv[1:]}; all options are --flags (see --help).")
    task = FLAGS.task
    _check_task_flags(task)
    recipe_name, recipe = _recipe_from_flags(task)
    valid = DETECTOR_NAMES if task == "detection" else MODEL_NAMES
    models = tuple(FLAGS.model) if FLAGS.model else recipe.models
    unknown = [name for name in models if name not in valid and not (task == "classification" and name.startswith(KERAS_PREFIX))]
    if unknown:
        raise ValueError(
            f"Invalid `--model`: unknown {task} networks {unknown}; with --task={task} valid names are {', '.join(valid)}."
        )
    init_from = InitSource(FLAGS.init_from) if FLAGS.init_from else None
    if init_from:
        init_from.file  # A bad path fails before any data is prepared.
        if len(models) > 1:
            raise ValueError(f"Invalid `--init_from`: it initialises one network, and this run trains {list(models)}; pass one --model.")
    keras_options = _keras_options(models, recipe) if task == "classification" else None
    model_dir = FLAGS.model_dir or os.path.join("runs", recipe_name)
    # One strategy for the whole run: a second MirroredStrategy in a process breaks its collectives.
    strategy = create_strategy(FLAGS.strategy, num_gpus=FLAGS.num_gpus, tpu=FLAGS.tpu, devices=FLAGS.devices)
    if init_from:
        init_from.model  # Read once, after the strategy (loading starts the runtime), before any run folder.
    if task == "detection":
        trainer = detection.train
        options = {"eval_examples": FLAGS.eval_examples}
    else:
        data.prepare(recipe.dataset, FLAGS.data_dir, FLAGS.manual_dir)
        trainer, options = classification.train, {}
    rows = []
    for name in models:
        keras.utils.set_random_seed(FLAGS.seed)
        model_options = {"model_options": keras_options} if name.startswith(KERAS_PREFIX) else {}
        _, metrics = trainer(
            strategy=strategy,
            model_name=name,
            model_dir=os.path.join(model_dir, name.replace(":", "_")),
            recipe=recipe,
            data_dir=FLAGS.data_dir,
            mixed_precision=FLAGS.mixed_precision,
            checkpoint_steps=FLAGS.checkpoint_steps,
            steps_per_epoch=FLAGS.steps_per_epoch,
            seed=FLAGS.seed,
            allow_changed_settings=FLAGS.allow_changed_settings,
            init_from=init_from,
            init_method=FLAGS.init_method,
            **options,
            **model_options,
        )
        rows.append(metrics)
    print(comparison_table(rows, task), flush=True)
    return rows


# Bad input, a diverged run, a full disk or an unwritable folder, and Ctrl-C end in one line.
main = program_main(FLAGS, run, "training.train: ", errors=(ValueError, FloatingPointError, OSError, Interrupted))


def run_main():
    """Entry point of the `aa-train` console script."""
    run_program(FLAGS, main)


if __name__ == "__main__":
    run_main()
