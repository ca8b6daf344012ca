"""The serving functions of a RetinaNet detector's exports: the whole detector with keras-hub's
decoding and suppression (the SavedModel), the same rebuilt from TFLite builtin ops (model.tflite,
model_int8.tflite), and the raw network with its anchors (model_raw.tflite)."""

import keras
import tensorflow as tf

from aa_keras.applications.retinanet import detections

DETECTION_OUTPUTS = ("boxes", "scores", "classes", "num_detections")
RAW_OUTPUTS = ("bbox_regression", "cls_logits", "anchors")
# Name scope of the whole detector's decoding and suppression, which its int8 model keeps in float32.
POSTPROCESS_SCOPE = "decode_and_suppress"


def serve_detections(model):
    """images -> the `DETECTION_OUTPUTS` of keras-hub's decoding and suppression."""

    def serve(images):
        found = detections(model, images)
        return {name: tf.cast(found[name], tf.int32) if name in ("classes", "num_detections") else found[name]
                for name in DETECTION_OUTPUTS}

    return serve


def serve_builtin_detections(model, batch):
    """Like `serve_detections`, with decoding and suppression from TFLite builtin ops (see the
    module docstring); `batch` is the static batch, one suppression per image. The decoding and
    suppression are built in the name scope `POSTPROCESS_SCOPE`."""

    def serve(images):
        raw = model(images, training=False)
        with tf.name_scope(POSTPROCESS_SCOPE):
            return _decode_and_suppress(model, images, raw, batch)

    return serve


def _decode_and_suppress(model, images, raw, batch):
    """The detections of `serve_builtin_detections` from the network's raw outputs."""
    decoder = model.prediction_decoder
    count = decoder.max_detections
    anchors = tf.concat(list(model.anchor_generator(images).values()), axis=0)
    boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=anchors,
        boxes_delta=tf.cast(raw["bbox_regression"], tf.float32),
        encoded_format="center_xywh",
        anchor_format=model.anchor_generator.bounding_box_format,
        box_format="yxyx",
        image_shape=tuple(images.shape[1:]),
    )
    probabilities = tf.cast(raw["cls_logits"], tf.float32)
    if decoder.from_logits:
        probabilities = tf.sigmoid(probabilities)
    scores = tf.reduce_max(probabilities, axis=-1)
    classes = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    found = {name: [] for name in DETECTION_OUTPUTS}
    for i in range(batch):
        indices, valid = tf.image.non_max_suppression_padded(
            boxes[i], scores[i], count, decoder.iou_threshold, decoder.confidence_threshold,
            pad_to_max_output_size=True,
        )
        keep = tf.range(count) < valid
        found["boxes"].append(tf.where(keep[:, None], tf.gather(boxes[i], indices), 0.0))
        found["scores"].append(tf.where(keep, tf.gather(scores[i], indices), 0.0))
        found["classes"].append(tf.where(keep, tf.gather(classes[i], indices), 0))
        found["num_detections"].append(tf.cast(valid, tf.int32))
    return {name: tf.stack(values) for name, values in found.items()}


def serve_raw(model):
    """images -> the `RAW_OUTPUTS`: the network's heads in float32 and its anchors."""

    def serve(images):
        outputs = model(images, training=False)
        anchors = model.anchor_generator(images)
        return {
            "bbox_regression": tf.cast(outputs["bbox_regression"], tf.float32),
            "cls_logits": tf.cast(outputs["cls_logits"], tf.float32),
            "anchors": tf.concat(list(anchors.values()), axis=0),
        }

    return serve
