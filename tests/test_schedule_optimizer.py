"""The learning rate as the trainer's optimizer gets it: `training.loop.build_optimizer` turns a
recipe (epochs, decay epochs, warm-up fraction, per-256 learning rate) into a `WarmupDecay` in
steps; these tests read the rate the optimizer applies at the step before and at each boundary."""

import keras
import numpy as np
import pytest

from aa_keras.training import recipes
from aa_keras.training.loop import build_optimizer

STEPS_PER_EPOCH = 5


def _step_recipe(**overrides):
    # 6 epochs of 5 steps = 30 steps; warm-up 10% = 3 steps; decays by 0.5 at epochs 2 and 4
    # (steps 10 and 20); peak = 0.8 * 64 / 256 = 0.2.
    fields = dict(
        optimizer="sgd", epochs=6, global_batch_size=64, learning_rate=0.8, momentum=0.7,
        warmup_fraction=0.1, schedule="step", decay_epochs=(2, 4), decay_factor=0.5,
    )  # fmt: skip
    return recipes.get_recipe("quick", **{**fields, **overrides})


def _rate_at(optimizer, step):
    """The learning rate `optimizer` applies at (0-based) step `step`."""
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate)


def test_step_schedule_decays_at_each_epoch_boundary():
    recipe = _step_recipe()
    peak = 0.2
    assert recipe.peak_learning_rate == pytest.approx(peak)
    optimizer = build_optimizer(recipe, STEPS_PER_EPOCH, None)
    expected = {
        0: peak / 3, 1: 2 * peak / 3, 2: peak,  # linear warm-up over 3 steps
        3: peak, 9: peak,  # up to the step before the first boundary (epoch 2 = step 10)
        10: peak * 0.5, 19: peak * 0.5,  # the first decay, up to the step before the second
        20: peak * 0.25, 29: peak * 0.25,  # the second decay (epoch 4 = step 20), to the end
    }  # fmt: skip
    got = {step: _rate_at(optimizer, step) for step in expected}
    assert got == pytest.approx(expected, rel=1e-6)


def test_cosine_schedule_spans_all_epochs_after_the_warm_up():
    recipe = _step_recipe(schedule="cosine", decay_epochs=(), warmup_fraction=0.2)
    optimizer = build_optimizer(recipe, STEPS_PER_EPOCH, None)
    total, warmup, peak = 30, 6, 0.2
    assert _rate_at(optimizer, warmup - 1) == pytest.approx(peak)
    assert _rate_at(optimizer, warmup) == pytest.approx(peak)
    assert _rate_at(optimizer, (warmup + total) // 2) == pytest.approx(peak / 2, rel=1e-5)
    assert _rate_at(optimizer, total - 1) == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * 23 / 24)), rel=1e-5)
    assert _rate_at(optimizer, total) == pytest.approx(0.0, abs=1e-8)


def test_sgd_applies_the_scheduled_rate_with_the_recipes_momentum():
    recipe = _step_recipe()
    optimizer = build_optimizer(recipe, STEPS_PER_EPOCH, None)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == pytest.approx(0.7)
    # One update of a fresh optimizer at the first decay boundary: -lr * gradient.
    weight = keras.Variable(np.zeros(3, "float32"))
    optimizer.build([weight])
    optimizer.iterations.assign(10)
    optimizer.apply_gradients([(np.array([1.0, 2.0, -4.0], "float32"), weight)])
    np.testing.assert_allclose(weight.numpy(), [-0.1, -0.2, 0.4], rtol=1e-6)
    # A second one adds the momentum of the first: -(0.7 * 0.1 + 0.1) * gradient.
    optimizer.apply_gradients([(np.array([1.0, 2.0, -4.0], "float32"), weight)])
    np.testing.assert_allclose(weight.numpy(), np.array([-0.1, -0.2, 0.4]) * (1 + 0.7 + 1), rtol=1e-6)


@pytest.mark.parametrize("mixed_precision", [None, "float16"])
def test_adam_and_loss_scaling_keep_the_schedule(mixed_precision):
    optimizer = build_optimizer(_step_recipe(optimizer="adam"), STEPS_PER_EPOCH, mixed_precision)
    if mixed_precision == "float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        inner = optimizer.inner_optimizer
    else:
        assert not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        inner = optimizer
    assert isinstance(inner, keras.optimizers.Adam)
    assert [_rate_at(inner, step) for step in (9, 10, 20)] == pytest.approx([0.2, 0.1, 0.05], rel=1e-6)
