"""A `model_dir` keeps one run: changing any identity field of the run found there is refused,
naming the field, also with `allow_changed_settings`, and nothing is written."""

import pytest

from aa_keras.programs import files
from aa_keras.programs.run_folder import RunFolder
from aa_keras.training import artifacts, recipes
from aa_keras.training.loop import start_run
from aa_keras.training.settings import settings_for

# Each identity field, and a run that differs from `_BASE` in that field only. Written out here
# rather than read from `artifacts.IDENTITY_FIELDS`, so that a field dropped from the check fails.
CHANGES = {
    "model": dict(model="aa_small"),
    "dataset": dict(recipe=dict(dataset="cifar10")),
    "image_size": dict(recipe=dict(image_size=48)),
    "optimizer": dict(recipe=dict(optimizer="sgd")),
    "mixed_precision": dict(mixed_precision="bfloat16"),
}
_BASE = dict(model="conv_small", recipe={}, mixed_precision=None)


def _start(model_dir, model, recipe, mixed_precision, allow_changed_settings=False):
    return start_run(settings_for(
        "classification", model, str(model_dir), recipes.get_recipe("quick", **recipe), checkpoint_steps=10,
        steps_per_epoch=None, mixed_precision=mixed_precision, allow_changed_settings=allow_changed_settings, seed=0,
    )).config  # fmt: skip


def test_every_identity_field_is_checked():
    assert set(CHANGES) <= set(artifacts.IDENTITY_FIELDS)


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_changed_identity_field_is_refused(tmp_path, field):
    config = _start(tmp_path, **_BASE)
    files.write_json(str(tmp_path / RunFolder.RUN_CONFIG), config)
    stored = (tmp_path / RunFolder.RUN_CONFIG).read_text()
    assert _start(tmp_path, **_BASE) == config  # the same run resumes
    changed = {**_BASE, **CHANGES[field]}
    # Refused even where other settings may change: the checkpoints do not fit another identity.
    for allow in (False, True):
        with pytest.raises(ValueError, match=rf"holds a run with {field}=.*this run has {field}="):
            _start(tmp_path, **changed, allow_changed_settings=allow)
    assert (tmp_path / RunFolder.RUN_CONFIG).read_text() == stored
    assert sorted(p.name for p in tmp_path.iterdir()) == [RunFolder.RUN_CONFIG]
