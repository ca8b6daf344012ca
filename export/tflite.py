"""TFLite conversion (float32, float16, dynamic range, full int8), op listing and inference."""

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

MODES = ("float32", "float16", "dynamic", "int8")

_BUILTIN_NAMES = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}


def convert(saved_model_dir, mode, representative_batches=None):
    """Converts a SavedModel to a TFLite flatbuffer restricted to builtin ops.

    Args:
        saved_model_dir: a SavedModel with a float32 `serving_default` signature.
        mode: one of `MODES`: `"float32"`; `"float16"` weights; `"dynamic"` range (int8
            weights, float activations); `"int8"` weights and activations with int8 inputs and
            outputs, calibrated on `representative_batches`.
        representative_batches: for `"int8"`, a list of float32 image batches shaped like the
            signature's input, to calibrate the activation ranges.

    Returns:
        The flatbuffer as bytes.
    """
    if mode not in MODES:
        raise ValueError(f"Invalid TFLite `mode`: received {mode!r}, expected one of {MODES}.")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        if not representative_batches:
            raise ValueError("TFLite mode 'int8' needs `representative_batches` for calibration.")
        converter.representative_dataset = lambda: ([batch] for batch in representative_batches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def list_ops(flatbuffer):
    """Names of the operators a TFLite flatbuffer uses, sorted; custom ops (Flex included) as
    `"CUSTOM:<name>"`."""
    model = schema.Model.GetRootAs(flatbuffer, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            names.add(_BUILTIN_NAMES.get(builtin, f"UNKNOWN:{builtin}"))
    return sorted(names)


def check_builtin_ops(ops, what="model"):
    """Raises a ValueError if `ops` (from `list_ops`) has a non-builtin operator."""
    foreign = [op for op in ops if op.startswith(("CUSTOM:", "UNKNOWN:"))]
    if foreign:
        raise ValueError(
            f"The TFLite {what} uses non-builtin ops {foreign}; only TFLite builtin ops are allowed "
            "(no Flex / SELECT_TF_OPS). Rewrite the layer producing them with builtin-convertible ops."
        )


class TFLiteRunner:
    """Runs a TFLite model with the LiteRT interpreter; quantizes int8 inputs and dequantizes
    int8 outputs so that it maps float32 images to float32 scores."""

    runtime = "LiteRT"

    def __init__(self, path, num_threads=1):
        self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.batch = int(self._input["shape"][0])

    def prepare(self, images):
        """(batch, H, W, C) float32 images in [0, 1] -> the interpreter's input array."""
        dtype = self._input["dtype"]
        if dtype == np.int8:
            scale, zero_point = self._input["quantization"]
            info = np.iinfo(dtype)
            images = np.clip(np.round(images / scale + zero_point), info.min, info.max)
        return np.ascontiguousarray(images, dtype=dtype)

    def run(self, prepared):
        self._interpreter.set_tensor(self._input["index"], prepared)
        self._interpreter.invoke()
        outputs = self._interpreter.get_tensor(self._output["index"])
        if self._output["dtype"] == np.int8:
            scale, zero_point = self._output["quantization"]
            outputs = (outputs.astype(np.float32) - zero_point) * scale
        return outputs

    def __call__(self, images):
        return self.run(self.prepare(images))
