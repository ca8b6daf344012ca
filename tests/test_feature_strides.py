"""The Wide ResNets' groups run at strides 1, 2 and 4 of the input: the feature maps C0, C1, C2
have the sizes the docstrings give, in the plain network and in its augmented twin."""

import numpy as np
import pytest

from aa_keras.applications import AAWideResNet, WideResNet, feature_extractor


@pytest.mark.parametrize("builder", [WideResNet, AAWideResNet], ids=["wrn", "aa_wrn"])
def test_wide_resnet_groups_run_at_strides_1_2_4(builder):
    kwargs = dict(num_heads=2, min_key_depth_per_head=0) if builder is AAWideResNet else {}
    model = builder(depth=10, width=2, include_top=False, input_shape=(24, 40, 3), **kwargs)
    images = np.random.default_rng(0).uniform(size=(1, 24, 40, 3)).astype("float32")
    features = feature_extractor(model)(images)
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "C0": (1, 24, 40, 32), "C1": (1, 12, 20, 64), "C2": (1, 6, 10, 128)
    }
