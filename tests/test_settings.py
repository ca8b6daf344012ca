"""One settings object per training run (`aa_keras.training.settings`), its flags generated from
its fields (`aa_keras.programs.field_flags`), and `--params_override`."""

import dataclasses
import json

import pytest

from aa_keras.export import export as exporter
from aa_keras.export.settings import ExportSettings
from aa_keras.programs import field_flags
from aa_keras.training import recipes, train
from aa_keras.training.settings import (
    DataSection, DistributionSection, KerasSection, RunSection, settings_for, with_params,
)

# The keys of run_config.json before the settings object, in order (a run folder written then resumes).
CLASSIFICATION_KEYS = [
    "dataset", "image_size", "epochs", "global_batch_size", "optimizer", "learning_rate", "momentum", "weight_decay",
    "label_smoothing", "warmup_fraction", "schedule", "decay_epochs", "decay_factor", "preprocessing",
    "randaugment_magnitude", "train_split", "eval_split", "freeze_backbone_epochs", "batch_norm_images", "model",
    "seed", "mixed_precision", "steps_per_epoch",
]  # fmt: skip


def _flags(argv):
    train.FLAGS(["train", *argv])


@pytest.fixture
def parsed():
    yield _flags
    train.FLAGS.unparse_flags()


def test_settings_for_sorts_fields_into_sections_and_the_recipe():
    settings = settings_for("classification", "conv_small", "/runs/a", "quick", epochs=3, seed=4, data_dir="/d",
                            mixed_precision="bfloat16", model_options={"augment": "all"})  # fmt: skip
    assert settings.recipe == recipes.get_recipe("quick", epochs=3)
    assert (settings.run.model_dir, settings.run.seed, settings.data.data_dir) == ("/runs/a", 4, "/d")
    assert settings.distribution.mixed_precision == "bfloat16"
    assert (settings.model.name, settings.model.model_options) == ("conv_small", {"augment": "all"})
    with pytest.raises(ValueError, match="Unknown training setting 'epoch'"):
        settings_for("classification", "conv_small", "/runs/a", epoch=3)


def test_the_run_config_keeps_its_keys_and_values():
    config = settings_for("classification", "conv_small", "/r", seed=2, steps_per_epoch=5).config()
    assert list(config) == CLASSIFICATION_KEYS
    assert (config["model"], config["seed"], config["steps_per_epoch"], config["mixed_precision"]) == ("conv_small", 2, 5, None)
    keras = settings_for("classification", "keras:VGG16", "/r", "finetune", model_options={"weights": None, "augment": "paper"})
    assert list(keras.config())[-4:] == ["weights", "augment", "mixed_precision", "steps_per_epoch"]
    detection = settings_for("detection", "retinanet_r18", "/r").config()
    assert list(detection)[-5:] == ["task", "model", "seed", "mixed_precision", "steps_per_epoch"]
    assert detection["task"] == "detection" and detection["max_instances"] == 8


@pytest.mark.parametrize(
    "task, fields, message",
    [
        ("detection", dict(), "Invalid `model`: received 'conv_small'; detection models are"),
        ("classification", dict(eval_examples=2), "Invalid `eval_examples`: it applies to detection only"),
        ("classification", dict(mixed_precision="float64"), "Invalid `mixed_precision`"),
        ("classification", dict(checkpoint_steps=0), "Invalid `checkpoint_steps`"),
        ("classification", dict(steps_per_epoch=-1), "Invalid `steps_per_epoch`"),
    ],
)
def test_check_names_the_bad_setting(task, fields, message):
    with pytest.raises(ValueError, match=message):
        settings_for(task, "conv_small", "/r", **fields).check()


@pytest.mark.parametrize("section", [RunSection, DataSection, DistributionSection, KerasSection])
def test_the_trainers_flags_are_the_fields(section):
    for field in field_flags.flag_fields(section):
        flag = train.FLAGS[field_flags.flag_name(field)]
        assert flag.help.endswith(field.metadata["help"])  # An enum flag prefixes its choices.
        assert flag.default == field.default


def test_the_exporters_flags_are_the_fields():
    fields = field_flags.flag_fields(ExportSettings)
    assert {field.name for field in fields} == {"image_size", "batch", "threads", "latency_runs", "uint8_input", "overwrite"}
    for field in fields:
        assert exporter.FLAGS[field.name].default == field.default
    assert exporter.CLASSIFICATION_FLAGS == ("baseline", "threads", "latency_runs", "uint8_input")


def test_the_flags_make_the_settings(parsed):
    parsed(["--steps_per_epoch=3", "--seed=7", "--data_dir=/d", "--strategy=mirrored", "--num_gpus=2", "--epochs=5"])
    settings = train.settings_from_flags("classification", train._recipe_from_flags("classification")[1], "/runs/q")
    assert (settings.run.model_dir, settings.run.steps_per_epoch, settings.run.seed) == ("/runs/q", 3, 7)
    assert (settings.run.checkpoint_steps, settings.run.init_method) == (200, "linear")
    assert (settings.distribution.strategy, settings.distribution.num_gpus, settings.data.data_dir) == ("mirrored", 2, "/d")
    assert settings.recipe.epochs == 5


def test_params_override_replaces_fields_after_the_flags(parsed, tmp_path):
    params = {"recipe": {"schedule": "step", "decay_epochs": [1, 2]}, "run": {"seed": 9}, "data": {"data_dir": "/e"}}
    path = tmp_path / "params.json"
    path.write_text(json.dumps(params))
    for value in (str(path), "{recipe: {schedule: step, decay_epochs: [1, 2]}, run: {seed: 9}, data: {data_dir: /e}}"):
        parsed(["--seed=3", "--data_dir=/d", f"--params_override={value}"])
        settings = train.settings_from_flags("classification", recipes.get_recipe("quick"), "/runs/q")
        assert settings.recipe == recipes.get_recipe("quick", schedule="step", decay_epochs=(1, 2))
        assert (settings.run.seed, settings.data.data_dir, settings.run.model_dir) == (9, "/e", "/runs/q")
        train.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "value, message",
    [
        ("{model: {name: x}}", r"'model' is not a section of \('recipe', 'run', 'data', 'distribution'\)"),
        ("{run: {seeds: 1}}", r"the run section has no fields \['seeds'\]"),
        ("{recipe: {epochs: 0}}", "epochs"),
        ("[1, 2]", "expected a mapping"),
        ("{run: [", "not YAML or JSON"),
    ],
)
def test_a_bad_params_override_is_named(parsed, value, message):
    parsed([f"--params_override={value}"])
    with pytest.raises(ValueError, match=r"^Invalid `--params_override`: " + f".*{message}"):
        train.settings_from_flags("classification", recipes.get_recipe("quick"), "/runs/q")


def test_with_params_leaves_what_it_is_not_given():
    settings = settings_for("detection", "retinanet_r18", "/r", eval_examples=4)
    assert with_params(settings, {}) == settings
    changed = with_params(settings, {"distribution": {"mixed_precision": "bfloat16"}})
    assert changed == dataclasses.replace(settings, distribution=DistributionSection(mixed_precision="bfloat16"))
