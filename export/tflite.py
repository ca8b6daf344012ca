"""TFLite conversion (float32, float16, dynamic range, full int8), op listing and inference.

The int8 recipe. Everything is int8 (weights per channel, activations per tensor, int8 input and
output) except each attention block, from the split of the qkv projection's output to the
softmax (`attention_block_nodes` less `weighted_sum_nodes`: the heads' reshapes and transposes,
the relative logits, q k^T, their sums, the softmax), which stays float32 between DEQUANTIZE and
one QUANTIZE of the softmax's output; the product of the weights with v runs in int8, with v
quantized symmetrically (`symmetric_matmul_rhs`). Where the logits are `mobile_attention`'s
fold (`folded_logits_nodes`: one BATCH_MATMUL of [q ; a ; b] against k extended by constant
one-hot keys), they run in int8 as well, the extended keys symmetric with their one-hot entries
exact, and only the softmax is float: the exporter's int8 file, 6% faster at AAResNet-50 224
(27.8 against 29.7 ms) and 5% on the trained aa_small (0.322 against 0.339 ms) than with those
logits float (`benchmarks.attention_graph_steps`); the rest of this paragraph measured the
layer's own graph. Measured with `benchmarks.tflite_profile`: in
a fully int8 model LiteRT's XNNPACK delegate takes neither the int8 SOFTMAX (XNNPACK's softmax
is float only) nor an int8 BATCH_MATMUL whose right-hand input has a non-zero zero point (both
attention products, with asymmetric activations), so these run on LiteRT's reference kernels (on
the trained small AA model: q k^T 0.66 ms, softmax 0.49 ms, against 0.02 and 0.05 ms in float
under XNNPACK) and the int8 model is 4.7-6.1x slower than the float32 one. Keeping only those
two op types float leaves the int8 ADDs of the relative logits between them (4 QUANTIZE and 6
DEQUANTIZE ops per block); keeping the whole block float was 13-15% faster (0.35 against 0.41 ms
on the trained aa_small, 1 thread). With v's zero point 0, XNNPACK takes the int8 product with
v, which took 0.022 ms against 0.059 ms in float for the 16x16 layer of aa_small; measured with
`benchmarks.int8_symmetric_kv`, the model is 10% faster than with the whole block float on the
trained aa_small (0.279 against 0.309 ms, 1 thread) and 4% at AAResNet-50 224 (17.57 against
18.31 ms), with a top-1 agreement with Keras of 0.990 (0.995). Quantizing k as well, so that
q k^T runs in int8 too, was slower (0.321 ms): in XNNPACK the int8 logits (q k^T, relative
logits, their sums) take longer than the float ones, and an int8 softmax runs on LiteRT's
builtin kernel (the model with it: 0.531 ms). A BATCH_MATMUL outside the attention blocks is
int8 with the same symmetric right-hand input. On the layer's own graph XNNPACK runs every op
but SPLIT_V and an AVERAGE_POOL_2D; the exporter (`classification.write_artifacts`) converts
`mobile_attention`'s graph instead (the same function, without either op), which XNNPACK takes
whole. The ops are left out of the quantization with the MLIR quantizer's
`denylisted_nodes`, the mechanism of `tf.lite.experimental.QuantizationDebugger`, applied to the
converter's own calibrated model; the rest is quantized exactly as the converter does by default
(a model without attention gives the default int8 model).
"""

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils
from tensorflow.lite.python import convert as lite_convert

MODES = ("float32", "float16", "dynamic", "int8")

# The op types that the int8 detector (`export/detection.py`) keeps in float32 everywhere; the
# classifier's recipe (`convert`) runs the attention's product with v in int8 instead.
INT8_FLOAT_OPS = ("BATCH_MATMUL", "SOFTMAX")

_INT8 = schema.TensorType.INT8
# Ops whose int8 kernels copy bytes: their data input and outputs share quantization parameters.
_SAME_PARAMS = ("RESHAPE", "TRANSPOSE", "SPLIT", "SPLIT_V", "CONCATENATION")
# The data input's position where it is not the first (SPLIT's inputs are axis, then data).
_DATA_INPUT = {"SPLIT": 1}
# Ops whose int8 kernels read their inputs' and outputs' parameters, whatever they are.
_REQUANTIZING = (
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "ADD", "SUB", "MUL", "QUANTIZE", "DEQUANTIZE"
)

_BUILTIN_NAMES = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}


def operator_graph(flatbuffer):
    """The main subgraph of a TFLite flatbuffer as (graph, op names, tensor names, producer,
    consumers): `graph.operators[i]` has the op name `names[i]`; `producer[t]` is the index of
    the op writing tensor t, `consumers[t]` those reading it."""
    return _operator_maps(flatbuffer_utils.read_model_from_bytearray(flatbuffer))


def _operator_maps(model):
    """`operator_graph` of a model object (`flatbuffer_utils.read_model_from_bytearray`)."""
    graph = model.subgraphs[0]
    names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
    tensors = [t.name.decode() for t in graph.tensors]
    producer = {t: i for i, op in enumerate(graph.operators) for t in op.outputs}
    consumers = {}
    for i, op in enumerate(graph.operators):
        for t in op.inputs:
            consumers.setdefault(t, []).append(i)
    return graph, names, tensors, producer, consumers


# Where an attention block's float island ends: the qkv and output projections (the join of the
# attention output with the convolution's lies beyond the output projection; the
# CONCATENATIONs of `mobile_attention`'s folded logits lie inside the island).
_BLOCK_BOUNDARY = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def attention_block_nodes(flatbuffer):
    """Names of the output tensors of each attention block, from the split of the qkv
    projection's output to the attention output before the output projection (the heads'
    reshapes and transposes, the relative logits, the products, their sums, the softmax): every
    op connected to a SOFTMAX, in either direction, without crossing a `_BLOCK_BOUNDARY` op."""
    graph, names, tensors, producer, consumers = operator_graph(flatbuffer)

    def neighbours(i):
        op = graph.operators[i]
        return [producer[t] for t in op.inputs if t in producer] + [j for t in op.outputs for j in consumers.get(t, [])]

    kept = _reach([i for i, name in enumerate(names) if name == "SOFTMAX"], neighbours, names)
    return [tensors[t] for i in sorted(kept) for t in graph.operators[i].outputs]


def _reach(starts, neighbours, names):
    """The ops `starts` and every op reached from them through `neighbours(i)` without crossing
    a `_BLOCK_BOUNDARY` op."""
    kept, stack = set(starts), list(starts)
    while stack:
        for j in neighbours(stack.pop()):
            if j not in kept and names[j] not in _BLOCK_BOUNDARY:
                kept.add(j)
                stack.append(j)
    return kept


def weighted_sum_nodes(flatbuffer):
    """Names of the output tensors of each attention's product with the values (a BATCH_MATMUL
    reading a SOFTMAX's output), of the RESHAPEs and TRANSPOSEs that lead to its right-hand input
    v, and of those after it."""
    graph, names, tensors, producer, consumers = operator_graph(flatbuffer)
    kept = set()
    for softmax in (i for i, name in enumerate(names) if name == "SOFTMAX"):
        for product in consumers.get(graph.operators[softmax].outputs[0], []):
            kept.add(product)
            t = graph.operators[product].inputs[1]
            while t in producer and names[producer[t]] in ("RESHAPE", "TRANSPOSE"):
                kept.add(producer[t])
                t = graph.operators[producer[t]].inputs[0]
            stack = [product]
            while stack:
                for j in consumers.get(graph.operators[stack.pop()].outputs[0], []):
                    if names[j] in ("RESHAPE", "TRANSPOSE") and j not in kept:
                        kept.add(j)
                        stack.append(j)
    return [tensors[t] for i in sorted(kept) for t in graph.operators[i].outputs]


def folded_logits_nodes(flatbuffer):
    """Names of the output tensors of each attention's folded logits (`mobile_attention`'s
    `fold`: a BATCH_MATMUL feeding a SOFTMAX whose right-hand input is a CONCATENATION of k with
    a constant) and of every op before them inside the attention block: the heads' reshapes and
    transposes of q and k, the relative logits' products with the tables, their
    concatenations."""
    graph, names, tensors, producer, _ = operator_graph(flatbuffer)
    folded = []
    for softmax in (i for i, name in enumerate(names) if name == "SOFTMAX"):
        logits = producer.get(graph.operators[softmax].inputs[0])
        if logits is None or names[logits] != "BATCH_MATMUL":
            continue
        keys = producer.get(graph.operators[logits].inputs[1])
        if keys is not None and names[keys] == "CONCATENATION" and any(t not in producer for t in graph.operators[keys].inputs):
            folded.append(logits)

    def inputs(i):
        return [producer[t] for t in graph.operators[i].inputs if t in producer]

    kept = _reach(folded, inputs, names)
    return [tensors[t] for i in sorted(kept) for t in graph.operators[i].outputs]


def _sharing_group(tensor, graph, names, producer, consumers):
    """`tensor` and every tensor linked to it through `_SAME_PARAMS` ops (their data inputs and
    outputs; every input of a CONCATENATION), in either direction."""

    def data_inputs(i):
        inputs = graph.operators[i].inputs
        return list(inputs) if names[i] == "CONCATENATION" else [inputs[_DATA_INPUT.get(names[i], 0)]]

    group, stack = {tensor}, [tensor]
    while stack:
        t = stack.pop()
        linked = []
        if t in producer and names[producer[t]] in _SAME_PARAMS:
            linked += [*data_inputs(producer[t]), *graph.operators[producer[t]].outputs]
        for i in consumers.get(t, []):
            if names[i] in _SAME_PARAMS and t in data_inputs(i):
                linked += [*data_inputs(i), *graph.operators[i].outputs]
        stack += [u for u in linked if u not in group]
        group.update(linked)
    return group


def symmetric_matmul_rhs(quantized, calibrated):
    """`quantized`, an int8 model of `calibrated`, with zero point 0 on the right-hand input of
    every int8 BATCH_MATMUL, which LiteRT's XNNPACK delegate needs to take it. A computed input
    gets the scale max(|min|, |max|) / 127 of its calibrated range, together with the tensors
    that share its parameters (through `_SAME_PARAMS` ops, back to the op that computes it); the
    constants among those (the one-hot keys that a CONCATENATION appends to k in
    `mobile_attention`'s fold) are quantized again from their float values in `calibrated`, and
    where their non-zero entries are all +-v, the scale is v / n with n = floor(127 v / range)
    instead (when n >= 1): v exact, the range still covered. A constant input alone is quantized
    again from its float values, scale max|x| / 127. An input that cannot be rewritten stays as
    it is (correct, on LiteRT's reference kernel): one whose group holds a model input or output
    or is written or read by an op outside `_SAME_PARAMS` and `_REQUANTIZING`, or a constant
    without a float source."""
    model = flatbuffer_utils.read_model_from_bytearray(quantized)
    graph, names, _, producer, consumers = _operator_maps(model)
    float_model = flatbuffer_utils.read_model_from_bytearray(calibrated)
    float_graph, *_ = _operator_maps(float_model)
    float_ops = {float_graph.tensors[op.outputs[0]].name: op for op in float_graph.operators}

    def float_constant(t):
        """The float values in `calibrated` of constant t of `quantized` (found through an op
        reading it), or None."""
        for i in consumers.get(t, []):
            source = float_ops.get(graph.tensors[graph.operators[i].outputs[0]].name)
            if source is not None:
                tensor = float_graph.tensors[source.inputs[list(graph.operators[i].inputs).index(t)]]
                data = float_model.buffers[tensor.buffer].data
                if tensor.type == schema.TensorType.FLOAT32 and data is not None:
                    return np.frombuffer(bytes(data), np.float32)
        return None

    def requantize(tensor, values, scale):
        buffer = schema.BufferT()
        buffer.data = np.clip(np.round(values / scale), -127, 127).astype(np.int8).view(np.uint8)
        model.buffers.append(buffer)
        tensor.buffer = len(model.buffers) - 1

    fixed = set(graph.inputs) | set(graph.outputs)
    rewritten = False
    for op in (op for op, name in zip(graph.operators, names) if name == "BATCH_MATMUL"):
        tensor = graph.tensors[op.inputs[1]]
        if tensor.type != _INT8 or int(tensor.quantization.zeroPoint[0]) == 0:
            continue
        if op.inputs[1] in producer:
            group = _sharing_group(op.inputs[1], graph, names, producer, consumers)
            ops = {producer[t] for t in group if t in producer} | {i for t in group for i in consumers.get(t, [])}
            if group & fixed or any(names[i] not in (*_SAME_PARAMS, *_REQUANTIZING) for i in ops):
                continue
            constants = {t: float_constant(t) for t in group if t not in producer}
            if any(values is None for values in constants.values()):
                continue
            scale, zero_point = float(tensor.quantization.scale[0]), int(tensor.quantization.zeroPoint[0])
            bound = max(128 + zero_point, 127 - zero_point) * scale
            scale = bound / 127
            entries = np.unique(np.abs(np.concatenate([np.zeros(1, np.float32), *constants.values()])))
            if len(entries) == 2 and int(127 * entries[1] / bound) >= 1:
                scale = float(entries[1]) / int(127 * entries[1] / bound)
            for t, values in constants.items():
                requantize(graph.tensors[t], values, scale)
            quantized_tensors = [graph.tensors[t] for t in group]
        else:
            values = None if op.inputs[1] in fixed else float_constant(op.inputs[1])
            if values is None:
                continue
            scale = max(float(np.abs(values).max()), np.finfo(np.float32).tiny) / 127
            requantize(tensor, values, scale)
            quantized_tensors = [tensor]
        for t in quantized_tensors:
            t.quantization.scale = np.array([scale], np.float32)
            t.quantization.zeroPoint = np.array([0], np.int64)
        rewritten = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if rewritten else quantized


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
        calibrated = calibrate(converter, representative_batches)
        int8_nodes = set(weighted_sum_nodes(calibrated)) | set(folded_logits_nodes(calibrated))
        floats = [name for name in attention_block_nodes(calibrated) if name not in int8_nodes]
        return symmetric_matmul_rhs(quantize_int8(calibrated, denylisted_nodes=floats), calibrated)
    return converter.convert()


def calibrate(converter, representative_batches):
    """The float TFLite model of `converter` (a SavedModel converter) with the activation
    ranges recorded on `representative_batches`: the input of `quantize_int8`."""
    if not representative_batches:
        raise ValueError("TFLite mode 'int8' needs `representative_batches` for calibration.")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([batch] for batch in representative_batches)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_calibrate_only = True
    return converter.convert()


def quantize_int8(calibrated, denylisted_nodes=None, denylisted_ops=None, io_type=tf.int8):
    """The converter's own int8 quantization of a `calibrate`d model (inputs and outputs of
    `io_type`: int8, or float32 with QUANTIZE and DEQUANTIZE inside), except the ops named by
    their output tensors in `denylisted_nodes` or by their op names in `denylisted_ops`, which
    stay float32 between DEQUANTIZE and QUANTIZE ops."""
    return lite_convert.mlir_quantize(
        calibrated,
        input_data_type=io_type,
        output_data_type=io_type,
        denylisted_nodes=denylisted_nodes,
        denylisted_ops=denylisted_ops,
    )


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
        self.image_shape = tuple(int(size) for size in self._input["shape"][1:])

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
