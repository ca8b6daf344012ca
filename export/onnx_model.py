"""ONNX export with tf2onnx, run with onnxruntime."""

import onnx
import onnxruntime
import tensorflow as tf
import tf2onnx

from aa_keras.layers import use_attention_implementation

from .saved_model import INPUT_NAME, OUTPUT_NAME

OPSET = 17


def write_onnx(model, path, image_shape, batch=None):
    """Writes `model` as ONNX mapping `images` (B, H, W, C) float32 to `predictions` (B, classes).

    Args:
        model: Keras model from float32 images in [0, 1] to scores.
        path: the `.onnx` file to write.
        image_shape: (H, W, C).
        batch: static batch size, or None for any batch.
    """
    serve = tf.function(lambda images: {OUTPUT_NAME: model(images, training=False)})
    spec = [tf.TensorSpec((batch, *image_shape), tf.float32, name=INPUT_NAME)]
    with use_attention_implementation(model, "tf_ops"):  # standard ops only, as in saved_model.write_signature
        tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET, output_path=path)


def list_ops(path):
    """The ONNX operator types a model file uses, sorted."""
    return sorted({node.op_type for node in onnx.load(path).graph.node})


class OnnxRunner:
    """Runs an ONNX model with onnxruntime on the CPU."""

    runtime = "onnxruntime"

    def __init__(self, path, num_threads=1):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def prepare(self, images):
        return {INPUT_NAME: images.astype("float32")}

    def run(self, prepared):
        return self._session.run([OUTPUT_NAME], prepared)[0]

    def __call__(self, images):
        return self.run(self.prepare(images))
