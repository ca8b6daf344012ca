"""Applications: attention augmentation of existing models, the paper's networks, the
RetinaNet detectors, and registries of named models and detectors.

    model = augment(keras.applications.ResNet50(weights=None))
    model_320 = resize_model(model, (320, 320, 3))                # relative tables resampled
    summary = recalibrate_batch_norm(model, images)               # exact BatchNormalization statistics
    model = build_model("aa_resnet50", classes=1000)
    detector = build_detector("aa_retinanet_r50", classes=80)
    model = keras_classifier("ResNet50", classes=5)               # pretrained, attention added

`augment`, `resize_model` and `keras_classifier` return the model; `return_summary=True` also
returns what they did (an `AugmentSummary` or `ResizeSummary`).
"""

import importlib

from aa_keras.applications._backbone import feature_extractor
from aa_keras.applications.batch_norm import RecalibrationSummary, batch_norm_layers, recalibrate_batch_norm
from aa_keras.applications.augment import PRESETS, AugmentSummary, LastStages, Replacement, augment
from aa_keras.applications.keras_classifier import ChannelAffine, keras_classifier, keras_networks, set_backbone_trainable
from aa_keras.applications.resize import GridChange, ResizeSummary, WeightTransfer, resize_model, transfer_weights
from aa_keras.applications.resnet import AAResNet, ResNet
from aa_keras.applications.wide_resnet import AAWideResNet, WideResNet

# The detectors are built on keras-hub, which `import aa_keras` does not load: these names import
# `aa_keras.applications.retinanet` on first use (which also registers the detector classes for
# `keras.saving.load_model`).
_DETECTION_NAMES = ("DETECTOR_NAMES", "AARetinaNet", "ResNetEncoder", "RetinaNet", "build_detector", "detections")


def __getattr__(name):
    if name in _DETECTION_NAMES:
        return getattr(importlib.import_module("aa_keras.applications.retinanet"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resnet(depth, augmented):
    builder = AAResNet if augmented else ResNet
    return lambda **kwargs: builder(depth=depth, **kwargs)


def _wrn(augmented):
    builder = AAWideResNet if augmented else WideResNet
    return lambda **kwargs: builder(depth=28, width=10, **kwargs)


def _small_net(function_name):
    def build(input_shape=None, classes=None):
        if input_shape is None or classes is None:
            raise ValueError(
                f"The small networks need `input_shape` and `classes`, received "
                f"input_shape={input_shape!r}, classes={classes!r}."
            )
        small_nets = importlib.import_module("aa_keras.applications.small_nets")
        return getattr(small_nets, function_name)(input_shape, classes)

    return build


_BUILDERS = {
    **{f"resnet{d}": _resnet(d, False) for d in (18, 34, 50, 101, 152)},
    **{f"aa_resnet{d}": _resnet(d, True) for d in (18, 34, 50, 101, 152)},
    "wrn28_10": _wrn(False),
    "aa_wrn28_10": _wrn(True),
    "aa_small": _small_net("aa_small_net"),
    "conv_small": _small_net("conv_small_net"),
}
MODEL_NAMES = tuple(_BUILDERS)
# "keras:<Name>": the pretrained `keras.applications.<Name>` with attention added (`keras_classifier`).
KERAS_PREFIX = "keras:"


def build_model(name, input_shape=None, classes=None, **kwargs):
    """Builds a registered model by name.

    Args:
        name: one of `MODEL_NAMES`, or "keras:<Name>" for `keras_classifier(<Name>, ...)`'s
            pretrained `keras.applications` network with attention added.
        input_shape: (H, W, C); None for the network's default ((224, 224, 3) for the ResNets,
            (32, 32, 3) for the WRNs). Required by "aa_small" and "conv_small".
        classes: number of classes; None for the network's default (1000 for the ResNets,
            100 for the WRNs). Required by "aa_small", "conv_small" and "keras:<Name>".
        **kwargs: further arguments of the builder (`AAResNet`, `WideResNet`, ...); the small
            networks take none; "keras:<Name>" takes `keras_classifier`'s `weights` and
            `augment`, and `augment_skip_unfit` (its `skip_unfit`).

    Returns:
        A `keras.Model`.
    """
    if name.startswith(KERAS_PREFIX):
        skip_unfit = kwargs.pop("augment_skip_unfit", False)
        return keras_classifier(name[len(KERAS_PREFIX):], classes, input_shape, skip_unfit=skip_unfit, **kwargs)
    if name not in _BUILDERS:
        raise ValueError(
            f"Unknown model name {name!r}; valid names are {', '.join(MODEL_NAMES)} and {KERAS_PREFIX}<Name>."
        )
    if name in ("aa_small", "conv_small"):
        if kwargs:
            raise ValueError(f"Model {name!r} takes only input_shape and classes, received {sorted(kwargs)}.")
        return _BUILDERS[name](input_shape, classes)
    if input_shape is not None:
        kwargs["input_shape"] = input_shape
    if classes is not None:
        kwargs["classes"] = classes
    return _BUILDERS[name](**kwargs)


__all__ = [
    "AAResNet",
    "AARetinaNet",
    "AAWideResNet",
    "AugmentSummary",
    "ChannelAffine",
    "DETECTOR_NAMES",
    "GridChange",
    "KERAS_PREFIX",
    "LastStages",
    "MODEL_NAMES",
    "PRESETS",
    "RecalibrationSummary",
    "Replacement",
    "ResizeSummary",
    "ResNet",
    "ResNetEncoder",
    "RetinaNet",
    "WeightTransfer",
    "WideResNet",
    "augment",
    "build_detector",
    "batch_norm_layers",
    "build_model",
    "detections",
    "feature_extractor",
    "keras_classifier",
    "keras_networks",
    "recalibrate_batch_norm",
    "resize_model",
    "set_backbone_trainable",
    "transfer_weights",
]
