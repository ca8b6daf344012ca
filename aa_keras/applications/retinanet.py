"""RetinaNet with a ResNet or attention-augmented ResNet backbone (paper, section 4.4, table 6).

The detector is keras-hub's: `RetinaNetBackbone` (our network as its image encoder, then an
FPN from P3 to P7) and `RetinaNetObjectDetector` (shared class and box heads over 9 anchors
per position, focal loss, box decoding and non-maximum suppression). What is ours is the image
encoder, `ResNetEncoder`: the `ResNet` / `AAResNet` body exposed as a keras-hub
`FeaturePyramidBackbone` whose pyramid outputs P2..P5 are the stage outputs C2..C5 (strides 4
to 32), with the same augmented layers as the classifier.

    detector = aa_retinanet_r50(classes=80)           # 640x640 inputs (TPU RetinaNet default)
    outputs = detector(images)                            # raw heads, see `RetinaNet`
    found = detections(detector, images)                  # {"boxes", "scores", "classes", "num_detections"}

The augmented backbone uses the paper's kappa = 0.2, upsilon = 0.1 literally, without the
"at least 20 key channels per head" floor of the classifiers (`min_key_depth_per_head=0`): with
it the backbone gains parameters, while the paper's COCO table shows AA-RetinaNet slightly
smaller than RetinaNet (see `benchmarks/detection_param_table.py`).
"""

import math

import keras
import keras_hub

from aa_keras.applications._backbone import feature_extractor
from aa_keras.applications.resize import transfer_weights
from aa_keras.applications.resnet import DEPTHS, AAResNet, ResNet
from aa_keras.layers import AttentionAugmentation2D
from aa_keras.validation import is_int, positive_int

MIN_LEVEL = 3
MAX_LEVEL = 7
PAPER_IMAGE_SIZE = 640
# Arguments of `AAResNet` that `ResNetEncoder` passes through.
ATTENTION_ARGUMENTS = (
    "depth_k",
    "depth_v",
    "num_heads",
    "min_key_depth_per_head",
    "position_encoding",
    "augmented_stages",
    "downsample_attention_stages",
)


@keras.saving.register_keras_serializable(package="aa_keras")
class ResNetEncoder(keras_hub.models.FeaturePyramidBackbone):
    """A `ResNet` or `AAResNet` body as a keras-hub feature pyramid backbone.

    Args:
        depth: 18, 34, 50, 101 or 152.
        augmented: build `AAResNet` (True) or `ResNet` (False).
        image_shape: (H, W, C) of the images; an augmented encoder needs a fixed H and W.
        attention: dict of `AAResNet` arguments (`ATTENTION_ARGUMENTS`), only when augmented.
        dtype: dtype policy of the model.

    Call arguments:
        images: (B, H, W, C) float images in [0, 1].

    Returns:
        The (B, H / 32, W / 32, C5) output of the last stage; `pyramid_outputs` maps
        "P2".."P5" to the stage outputs C2..C5, (B, H / 2**l, W / 2**l, C_l).
    """

    def __init__(self, depth=50, augmented=True, image_shape=(PAPER_IMAGE_SIZE, PAPER_IMAGE_SIZE, 3),
                 attention=None, dtype=None, **kwargs):
        if not isinstance(augmented, bool):
            raise ValueError(f"Invalid `augmented`: expected a bool, received augmented={augmented!r}.")
        attention = dict(attention or {})
        unknown = sorted(set(attention) - set(ATTENTION_ARGUMENTS))
        if unknown or (attention and not augmented):
            raise ValueError(
                f"Invalid `attention`: received attention={attention!r}; it takes keys from "
                f"{ATTENTION_ARGUMENTS}, and only with augmented=True."
            )
        image_shape = tuple(image_shape)
        if augmented:
            network = AAResNet(depth=depth, include_top=False, input_shape=image_shape, **attention)
        else:
            network = ResNet(depth=depth, include_top=False, input_shape=image_shape)
        features = feature_extractor(network, ["C2", "C3", "C4", "C5"])
        super().__init__(inputs=features.inputs, outputs=network.outputs[0], dtype=dtype, **kwargs)
        self.pyramid_outputs = {f"P{name[1:]}": tensor for name, tensor in features.output.items()}
        self.depth = depth
        self.augmented = augmented
        self.image_shape = image_shape
        self.attention = attention

    def get_config(self):
        config = super().get_config()
        config.update(
            depth=self.depth, augmented=self.augmented, image_shape=self.image_shape, attention=self.attention
        )
        return config


def _check_detector_arguments(classes, input_shape, confidence_threshold, iou_threshold, max_detections):
    positive_int("classes", classes)
    shape = tuple(input_shape)
    stride = 2**MAX_LEVEL
    if len(shape) != 3 or not all(is_int(d) and d > 0 for d in shape) or min(shape[:2]) < stride // 2:
        raise ValueError(
            f"Invalid `input_shape`: expected (height, width, channels) with fixed positive ints and height "
            f"and width at least {stride // 2} (P{MAX_LEVEL} has stride {stride}), received "
            f"input_shape={input_shape!r}."
        )
    for name, value in (("confidence_threshold", confidence_threshold), ("iou_threshold", iou_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Invalid `{name}`: expected a float in [0, 1], received {name}={value!r}.")
    positive_int("max_detections", max_detections)
    return shape


def _initialize_heads(detector):
    """RetinaNet's initialization of the heads (Lin et al. 2017, section 4.1): kernels from
    N(0, 0.01**2), biases 0, except the classification logits' bias, -log((1 - pi) / pi) with
    the prior pi = 0.01. keras-hub 0.32.0 draws the kernels from N(0, 0.05**2), which makes the
    initial logits and box deltas large, and gives the prior bias to the box head instead."""
    for head in (detector.classification_head, detector.box_head):
        for layer in [*head.conv_layers, head.prediction_layer]:
            layer.kernel.assign(keras.initializers.RandomNormal(stddev=0.01)(layer.kernel.shape))
            layer.bias.assign(keras.ops.zeros(layer.bias.shape))
    prior = detector.classification_head.prior_probability
    bias = detector.classification_head.prediction_layer.bias
    bias.assign(keras.ops.full(bias.shape, -math.log((1 - prior) / prior)))


def _build(depth, augmented, attention, classes, input_shape, confidence_threshold, iou_threshold,
           max_detections, name):
    if depth not in DEPTHS:
        raise ValueError(f"Invalid `depth`: expected one of {DEPTHS}, received depth={depth!r}.")
    input_shape = _check_detector_arguments(
        classes, input_shape, confidence_threshold, iou_threshold, max_detections
    )
    encoder = ResNetEncoder(depth, augmented, input_shape, attention if augmented else None, name="encoder")
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder,
        min_level=MIN_LEVEL,
        max_level=MAX_LEVEL,
        # P6 from the FPN's P5 (256 channels), as in the TPU RetinaNet the paper trained. In
        # keras-hub 0.32.0, use_p5=True takes P6 from the backbone's C5 instead (the opposite of
        # its docstring), which adds 4.1M parameters to a ResNet-50 RetinaNet.
        use_p5=False,
        image_shape=input_shape,
        name="retinanet_backbone",
    )
    decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format="yxyx",
        from_logits=True,
        iou_threshold=iou_threshold,
        confidence_threshold=confidence_threshold,
        max_detections=max_detections,
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=classes,
        bounding_box_format="yxyx",
        prediction_decoder=decoder,
        name=name,
    )
    _initialize_heads(detector)
    return detector


def RetinaNet(depth=50, classes=80, input_shape=(PAPER_IMAGE_SIZE, PAPER_IMAGE_SIZE, 3),
              confidence_threshold=0.05, iou_threshold=0.5, max_detections=100, name=None):
    """The paper's baseline RetinaNet: ResNet backbone, FPN P3-P7, 9 anchors per position.

    Args:
        depth: ResNet depth, 18, 34, 50, 101 or 152.
        classes: number of object classes (80 for COCO); no background class.
        input_shape: (H, W, C), fixed; H and W at least 64.
        confidence_threshold: the lowest score a detection keeps in the non-maximum
            suppression applied by `predict` / `decode_predictions` (0.05 for COCO AP).
        iou_threshold: the suppression's IoU threshold (0.5).
        max_detections: detections kept per image (100).
        name: model name, default "retinanet_r{depth}".

    Returns:
        A `keras_hub.models.RetinaNetObjectDetector` with "yxyx" boxes in pixels. Called on
        (B, H, W, C) images in [0, 1] it gives {"bbox_regression": (B, A, 4) anchor deltas,
        "cls_logits": (B, A, classes)}, A anchors in all.
    """
    return _build(depth, False, None, classes, input_shape, confidence_threshold, iou_threshold,
                  max_detections, name or f"retinanet_r{depth}")


def AARetinaNet(depth=50, classes=80, input_shape=(PAPER_IMAGE_SIZE, PAPER_IMAGE_SIZE, 3),
                confidence_threshold=0.05, iou_threshold=0.5, max_detections=100, depth_k=0.2, depth_v=0.1,
                num_heads=8, min_key_depth_per_head=0, position_encoding="relative", augmented_stages=3,
                downsample_attention_stages=1, name=None):
    """RetinaNet with the attention-augmented ResNet backbone of the paper (table 6).

    Args:
        depth: as in `RetinaNet`.
        classes: as in `RetinaNet`.
        input_shape: (H, W, C), fixed (the relative position embeddings are sized by it).
        confidence_threshold: as in `RetinaNet`.
        iou_threshold: as in `RetinaNet`.
        max_detections: as in `RetinaNet`.
        depth_k: as in `AAResNet`; the default is the paper's detection setting (see the module docstring).
        depth_v: as in `AAResNet`; the default is the paper's detection setting (see the module docstring).
        num_heads: as in `AAResNet`; the default is the paper's detection setting (see the module docstring).
        min_key_depth_per_head: as in `AAResNet`; the default is the paper's detection setting (see the module docstring).
        position_encoding: as in `AAResNet`; the default is the paper's detection setting (see the module docstring).
        augmented_stages: as in `AAResNet`; the default is the paper's detection setting (see the module docstring).
        downsample_attention_stages: as in `AAResNet`; the default is the paper's detection setting (see the module docstring).
        name: model name, default "aa_retinanet_r{depth}".

    Returns:
        A `keras_hub.models.RetinaNetObjectDetector`, as `RetinaNet`.
    """
    attention = dict(
        depth_k=depth_k,
        depth_v=depth_v,
        num_heads=num_heads,
        min_key_depth_per_head=min_key_depth_per_head,
        position_encoding=position_encoding,
        augmented_stages=augmented_stages,
        downsample_attention_stages=downsample_attention_stages,
    )
    return _build(depth, True, attention, classes, input_shape, confidence_threshold, iou_threshold,
                  max_detections, name or f"aa_retinanet_r{depth}")


def is_detector(model):
    """Whether `model` is a RetinaNet detector (it decodes its predictions and has anchors)."""
    return all(hasattr(model, attribute) for attribute in ("decode_predictions", "anchor_generator"))


def detections(detector, images):
    """The decoded detections of `detector` on `images`, (B, H, W, C) in [0, 1]: its raw heads,
    then keras-hub's box decoding and non-maximum suppression, under serving names.

    Returns:
        {"boxes": (B, K, 4) [ymin, xmin, ymax, xmax] in pixels of `images`, "scores": (B, K),
        "classes": (B, K) int labels, "num_detections": (B,)}, K = `max_detections`; entries
        past `num_detections` are padding.
    """
    # Decoding runs in float32: under a mixed precision policy the heads give float16 /
    # bfloat16, which keras's box decoding cannot combine with its float32 anchors.
    raw = {name: keras.ops.cast(value, "float32") for name, value in detector(images, training=False).items()}
    decoded = detector.decode_predictions(raw, images)
    return {
        "boxes": decoded["boxes"],
        "scores": decoded["confidence"],
        "classes": decoded["labels"],
        "num_detections": decoded["num_detections"],
    }


def _named(builder, depth):
    def build(**kwargs):
        return builder(depth=depth, **kwargs)

    build.__name__ = f"{'aa_' if builder is AARetinaNet else ''}retinanet_r{depth}"
    build.__doc__ = f"`{builder.__name__}(depth={depth}, **kwargs)`."
    return build


retinanet_r50 = _named(RetinaNet, 50)
retinanet_r101 = _named(RetinaNet, 101)
aa_retinanet_r50 = _named(AARetinaNet, 50)
aa_retinanet_r101 = _named(AARetinaNet, 101)
retinanet_r18 = _named(RetinaNet, 18)
aa_retinanet_r18 = _named(AARetinaNet, 18)

DETECTORS = {
    builder.__name__: builder
    for builder in (retinanet_r18, aa_retinanet_r18, retinanet_r50, aa_retinanet_r50, retinanet_r101,
                    aa_retinanet_r101)
}
DETECTOR_NAMES = tuple(DETECTORS)


def _stage(classifier, layer):
    """The ResNet stage (2 to 5) of an attention layer of `classifier`, from its output's size
    (stage s outputs ceil(H / 2**s) rows), or None if no one stage's size is its size."""
    input_height, output_height = classifier.inputs[0].shape[1], layer.output.shape[1]
    if input_height is None or output_height is None:
        return None
    stages = [stage for stage in range(2, 6) if -(-input_height // 2**stage) == output_height]
    return stages[0] if len(stages) == 1 else None


def backbone_attention(classifier):
    """The `AARetinaNet` attention arguments whose backbone has the augmented layers of
    `classifier` (an `AAResNet`), or None for a classifier without attention (a `ResNet`): read
    from the attention layers' own settings and the strides of their outputs."""
    layers = [layer for layer in classifier.layers if isinstance(layer, AttentionAugmentation2D)]
    if not layers:
        return None
    stages = {}
    for layer in layers:
        stage = _stage(classifier, layer)
        if stage is None:
            raise ValueError(
                f"Invalid `backbone`: {classifier.name!r} has the attention layer {layer.name!r}, whose output "
                f"{tuple(layer.output.shape)} is not the size of exactly one ResNet stage (strides 4 to 32) of its "
                f"input {tuple(classifier.inputs[0].shape)}; build the classifier with `AAResNet` at an input "
                "of at least 64x64."
            )
        stages.setdefault(stage, []).append(layer)
    settings = {(layer.num_heads, layer.position_encoding, layer.depth_v) for layer in layers}
    key_depths = {layer.depth_k for layer in layers}
    fractions = {k for k in key_depths if isinstance(k, float)}
    floors = key_depths - fractions
    if len(settings) > 1 or len(fractions) > 1 or len(floors) > 1:
        raise ValueError(
            f"Invalid `backbone`: the attention layers of {classifier.name!r} do not share one setting of "
            "num_heads, position_encoding, depth_k and depth_v, as those of an AAResNet do."
        )
    (num_heads, position_encoding, depth_v), = settings
    min_keys = floors.pop() if floors else 0
    # Every layer with an int depth_k had kappa * filters below the floor; any such kappa builds the same.
    depth_k = fractions.pop() if fractions else min(1.0, 0.5 * min(min_keys / layer.filters for layer in layers))
    return dict(
        depth_k=depth_k,
        depth_v=depth_v,
        num_heads=num_heads,
        min_key_depth_per_head=min_keys // num_heads,
        position_encoding=position_encoding,
        augmented_stages=6 - min(stages),
        downsample_attention_stages=sum(any(l.downsample_attention for l in group) for group in stages.values()),
    )


def build_detector(name, input_shape=None, classes=None, backbone=None, method="linear", **kwargs):
    """Builds a registered detector by name.

    Args:
        name: one of `DETECTOR_NAMES`.
        input_shape: (H, W, C); None for (640, 640, 3).
        classes: number of object classes; None for 80 (COCO).
        backbone: None, or a classifier (`ResNet` / `AAResNet` of the detector's depth, e.g.
            trained on ImageNet at another size) whose weights the backbone starts from: the
            detector takes its attention settings (`backbone_attention`) and its weights, the
            relative tables resampled for the detector's input size with `method`; the FPN and
            heads keep their initialization.
        method: "linear" or "edge", see `aa_keras.layers.resample_relative_table`.
        **kwargs: further arguments of `RetinaNet` / `AARetinaNet`.

    Returns:
        A `keras_hub.models.RetinaNetObjectDetector`.
    """
    if name not in DETECTORS:
        raise ValueError(f"Unknown detector name {name!r}; valid names are {', '.join(DETECTOR_NAMES)}.")
    if input_shape is not None:
        kwargs["input_shape"] = input_shape
    if classes is not None:
        kwargs["classes"] = classes
    if backbone is None:
        return DETECTORS[name](**kwargs)
    attention = backbone_attention(backbone)
    if (attention is not None) != name.startswith("aa_"):
        kind = "an attention-augmented" if attention else "a plain"
        raise ValueError(f"Invalid `backbone`: {backbone.name!r} is {kind} network, and {name!r} is not.")
    given = sorted(set(kwargs) & set(attention or ()))
    if given:
        raise ValueError(f"Invalid arguments {given}: with `backbone` they come from the classifier {backbone.name!r}.")
    detector = DETECTORS[name](**kwargs, **(attention or {}))
    transfer = transfer_weights(backbone, detector.backbone.image_encoder, method)
    names = [layer.name for layer in backbone.layers]
    head = {w.path for layer in backbone.layers[names.index("C5") + 1 :] for w in layer.weights} if "C5" in names else set()
    if transfer.initialised or set(transfer.unused) - head:
        raise ValueError(
            f"Invalid `backbone`: {backbone.name!r} does not have the layers of the backbone of {name!r} (another "
            f"depth?); these weights do not fit:\n{transfer}"
        )
    return detector
