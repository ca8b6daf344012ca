"""Trains aa_keras networks with the paper's recipes on any tf.distribute strategy.

    python -m aa_keras.training.train                      # the default run: aa_small vs conv_small on glyph_pairs
    python -m aa_keras.training.train --recipe=paper_cifar100 --model=aa_wrn28_10 --strategy=mirrored --num_gpus=8
    python -m aa_keras.training.train --recipe=paper_imagenet --manual_dir=/data/imagenet --strategy=tpu --tpu=NAME
    python -m aa_keras.training.train --task=detection     # aa_retinanet_r18 vs retinanet_r18 on glyph_boxes
    python -m aa_keras.training.train --task=detection --dataset=coco/2017 --model=aa_retinanet_r50 --recipe=paper_coco
    python -m aa_keras.training.train --recipe=finetune --model=keras:EfficientNetB0 --dataset=NAME   # pretrained, attention added

Each network trains into `<model_dir>/<name>` (`keras:<Name>` into `<model_dir>/keras_<Name>`;
checkpoints, TensorBoard logs, model.keras, metrics.json); re-running the same command resumes. A table compares the networks at the end.
Each task is a module with one `train(strategy, settings)` function: `training.classification`,
`training.detection`; the flags build the run's `training.settings.TrainingSettings`.
"""

import dataclasses
import os

import keras
from absl import flags

from aa_keras.applications import DETECTOR_NAMES, KERAS_PREFIX, MODEL_NAMES, keras_networks
from aa_keras.data import TASKS
from aa_keras.data import classification as data
from aa_keras.programs import field_flags
from aa_keras.programs.command_line import program_main, run_program

from . import classification, detection, recipes
from .distribute import create_strategy
from .init_from import InitSource
from .settings import (
    DataSection, DistributionSection, KerasSection, ModelSection, RunSection, TrainingSettings, with_params,
)
from .trainer import Interrupted

# The CLI's own flags, added to absl's global flags by run_main only, so that the trainer's and
# the exporter's flags (both have --model, --dataset, ...) can be imported into one process.
FLAGS = flags.FlagValues()
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
# The settings' flags, one per field that has one (`aa_keras.programs.field_flags`): its name, type,
# default, choices, bound and help are the field's. The recipe's default to None: the recipe's value.
SECTIONS = (RunSection, DataSection, DistributionSection, KerasSection)
for _section in SECTIONS:
    field_flags.define_flags(_section, FLAGS)
field_flags.define_flags(recipes.DetectionRecipe, FLAGS, defaults=False)
RECIPE_FLAGS = {field_flags.flag_name(field): field for field in field_flags.flag_fields(recipes.DetectionRecipe)}
flags.DEFINE_string(
    "params_override", None, "YAML or JSON, or the path of a file holding it: fields of the sections recipe, run, data "
    "and distribution to override after the other flags, e.g. '{recipe: {epochs: 2, decay_epochs: [1]}, run: {seed: 1}}' "
    "(training/settings.py names the fields).", flag_values=FLAGS,
)
# Flags that only one task reads (their field's `task`); giving one to the other task is an error.
TASK_FLAGS = {
    task: tuple(
        field_flags.flag_name(field)
        for cls in (*SECTIONS, recipes.DetectionRecipe) for field in field_flags.flag_fields(cls)
        if field.metadata.get("task") == task
    )
    for task in TASKS
}


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


def _models(task, recipe):
    """The networks of `--model` (or the recipe's), checked for `task`."""
    valid = DETECTOR_NAMES if task == "detection" else MODEL_NAMES
    models = tuple(FLAGS.model) if FLAGS.model else recipe.models
    unknown = [name for name in models if name not in valid and not (task == "classification" and name.startswith(KERAS_PREFIX))]
    if unknown:
        raise ValueError(
            f"Invalid `--model`: unknown {task} networks {unknown}; with --task={task} valid names are {', '.join(valid)}."
        )
    return models


def _init_from(path, models):
    """The `InitSource` of `--init_from`'s `path` (checked), or None."""
    if not path:
        return None
    init_from = InitSource(path)
    init_from.file  # A bad path fails before any data is prepared.
    if len(models) > 1:
        raise ValueError(f"Invalid `--init_from`: it initialises one network, and this run trains {list(models)}; pass one --model.")
    return init_from


def settings_from_flags(task, recipe, model_dir):
    """The `TrainingSettings` of the flags, `--params_override` applied, the model section left to
    each network (None)."""
    sections = {cls: field_flags.flag_values(cls, FLAGS) for cls in (RunSection, DataSection, DistributionSection)}
    settings = TrainingSettings(task, recipe, None, RunSection(model_dir=model_dir, **sections[RunSection]),
                                DataSection(**sections[DataSection]), DistributionSection(**sections[DistributionSection]))  # fmt: skip
    try:
        return with_params(settings, field_flags.read_mapping(FLAGS.params_override))
    except ValueError as error:
        raise ValueError(f"Invalid `--params_override`: {error}.") from None


def run(argv):
    """Trains every requested network of `--task`; returns their metrics."""
    if len(argv) > 1:
        raise ValueError(f"Unexpected positional arguments {argv[1:]}; all options are --flags (see --help).")
    task = FLAGS.task
    _check_task_flags(task)
    recipe_name, recipe = _recipe_from_flags(task)
    base = settings_from_flags(task, recipe, FLAGS.model_dir or os.path.join("runs", recipe_name))
    recipe = base.recipe
    models = _models(task, recipe)
    init_from = _init_from(base.run.init_from, models)
    keras_options = _keras_options(models, recipe) if task == "classification" else None
    base = dataclasses.replace(base, run=dataclasses.replace(base.run, init_from=init_from))
    # One strategy for the whole run: a second MirroredStrategy in a process breaks its collectives.
    distribution = base.distribution
    strategy = create_strategy(distribution.strategy, num_gpus=distribution.num_gpus, tpu=distribution.tpu,
                               devices=distribution.devices)  # fmt: skip
    if init_from:
        init_from.model  # Read once, after the strategy (loading starts the runtime), before any run folder.
    if task == "classification":
        data.prepare(recipe.dataset, base.data.data_dir, base.data.manual_dir)
    trainer = detection.train if task == "detection" else classification.train
    rows = []
    for name in models:
        keras.utils.set_random_seed(base.run.seed)
        options = keras_options if name.startswith(KERAS_PREFIX) else {}
        model_dir = os.path.join(base.run.model_dir, name.replace(":", "_"))
        settings = dataclasses.replace(base, model=ModelSection(name, model_options=options),
                                       run=dataclasses.replace(base.run, model_dir=model_dir))  # fmt: skip
        _, metrics = trainer(strategy, settings)
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
