"""Converting a detector's serving SavedModel to a TFLite flatbuffer of builtin ops: float32, or
int8 with the heads' output layers, decoding and suppression kept in float32."""

import re

import tensorflow as tf
from ai_edge_litert.tools import flatbuffer_utils

from . import tflite
from .detection_signatures import POSTPROCESS_SCOPE


def postprocess_nodes(flatbuffer):
    """Output tensor names of what the int8 detector keeps in float32: the ops of the main
    subgraph built in `POSTPROCESS_SCOPE`, every op after them (the output reshapes), and the
    heads' output convolutions with the reshapes and concatenations that lead from them to it."""
    graph, ops, names, producer, consumers = tflite.operator_graph(flatbuffer)
    operators = graph.operators
    scope = [i for i, op in enumerate(operators) if any(names[t].startswith(f"{POSTPROCESS_SCOPE}/") for t in op.outputs)]
    kept = set(scope)
    heads = list(scope)
    while heads:
        for j in (producer[t] for t in operators[heads.pop()].inputs if t in producer):
            if j not in kept and ops[j] in ("RESHAPE", "CONCATENATION", "CONV_2D"):
                kept.add(j)
                if ops[j] != "CONV_2D":
                    heads.append(j)
    stack = list(scope)
    while stack:
        for j in (j for t in operators[stack.pop()].outputs for j in consumers.get(t, [])):
            if j not in kept:
                kept.add(j)
                stack.append(j)
    return [names[t] for i in sorted(kept) for t in operators[i].outputs]


def _convert_int8(source, calibration_batches):
    """The int8 whole detector: the network int8 as the classifier's recipe (`tflite.convert`
    with "int8": each attention block float32) up to its heads' output layers; those, the
    decoding and suppression (`postprocess_nodes`) float32; float32 images in and detections
    out. Measured on a trained aa_retinanet_r18 (`benchmarks/detector_tflite.py`): with the
    heads' output layers int8 too, 13 of the SavedModel's 19 detections with score >= 0.3 were
    found again."""
    calibrated = tflite.calibrate(tf.lite.TFLiteConverter.from_saved_model(source), calibration_batches)
    postprocess = postprocess_nodes(calibrated)
    if not postprocess:
        raise ValueError(f"No op of the detector's source is in the name scope {POSTPROCESS_SCOPE!r}.")
    # The quantizer still rounds a denylisted op's output through int8 where the tensor has a
    # calibrated range and a fixed-range or same-scale op reads it (LOGISTIC, SPLIT): the
    # class scores on a 1/256 grid, the boxes on a grid of several pixels. Without a range it
    # cannot.
    model = flatbuffer_utils.read_model_from_bytearray(calibrated)
    floats = set(postprocess)
    for tensor in model.subgraphs[0].tensors:
        if tensor.name.decode() in floats:
            tensor.quantization = None
    uncalibrated = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return tflite.quantize_int8(
        uncalibrated,
        denylisted_nodes=tflite.attention_block_nodes(calibrated) + postprocess,
        denylisted_ops=list(tflite.INT8_FLOAT_OPS),
        io_type=tf.float32,
    )


def convert_builtin(source, what, calibration_batches=None):
    """A TFLite flatbuffer of `source` with builtin ops only, float32 or, given
    `calibration_batches`, int8 (`_convert_int8`), and its op names; a ValueError naming the
    offending TF ops otherwise."""
    try:
        flatbuffer = tflite.convert(source, "float32") if calibration_batches is None else _convert_int8(
            source, calibration_batches
        )
    except ValueError:
        raise
    except Exception as error:  # The converter raises its own ConverterError type.
        ops = sorted(set(re.findall(r"\btf\.[A-Z]\w*", str(error))))
        raise ValueError(
            f"The {what} cannot be converted to TFLite builtin ops: the converter rejected {ops or 'some ops'}. "
            "Export 'tflite_raw' (the network and its anchors, builtin ops) and decode on the host."
        ) from None
    ops = tflite.list_ops(flatbuffer)
    tflite.check_builtin_ops(ops, what=what)
    return flatbuffer, ops
