"""Mutation check: do the tests fail when the code is wrong?

Each mutant below is a one-line bug planted in the library, the trainer or the exporter (a
flipped comparison, an off-by-one, a dropped term, a wrong constant), with the tests meant to
catch it. For each mutant the files git knows (tracked, and untracked ones it does not
ignore) are copied into one work folder, the mutant's original text, which must occur exactly
once in its file, is replaced, and its tests run there with `pytest -x -q` and PYTHONPATH set
to the copy. The mutant is "killed" when they fail, "survived" when they pass, "stale" when its
original text is not found once (the code moved: update the mutant), "error" when pytest could
not run them (no test selected, a usage error). Standard library only.

    .venv/bin/python scripts/mutation_check.py              # every mutant (about 15 minutes on 2 cores)
    .venv/bin/python scripts/mutation_check.py -k parity    # mutants whose name contains "parity"
    .venv/bin/python scripts/mutation_check.py --list       # names, files and tests only

The copy always lands at the same path, so the fused attention kernel, compiled once per source
and path into ~/.cache/aa_keras (`aa_keras/ops/fused_attention.py`), is reused by every mutant;
the embedded glyph_pairs dataset is generated once into the work folder
(tests/test_resume_exact.py reads it from $AA_KERAS_TEST_DATA_DIR). Not part of the default
test run. Exit status: 0 when every mutant is killed, 1 otherwise.
"""

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    """`original` (text occurring exactly once in `path`) replaced by `replacement`; `tests`
    are the pytest arguments (files, `-k` expression) that must fail on it."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple


M = Mutant
SCHEDULE = ("tests/test_schedule_optimizer.py",)
RESUME = ("tests/test_resume_exact.py",)
CHECKS = ("tests/test_export_checks.py",)
BLOCKS = ("tests/test_block_edges.py",)
REFERENCE = ("tests/test_layer_reference.py",)

MUTANTS = (
    # training/schedules.py: the learning-rate schedule.
    M("schedule_boundary_exclusive", "training/schedules.py",
      "tf.cast(step >= tf.constant(self.boundaries", "tf.cast(step > tf.constant(self.boundaries", SCHEDULE),
    M("schedule_warmup_from_zero", "training/schedules.py",
      "warmup = self.peak * (step + 1.0) / self.warmup_steps", "warmup = self.peak * step / self.warmup_steps",
      SCHEDULE),
    M("schedule_warmup_one_step_long", "training/schedules.py",
      "tf.where(step < self.warmup_steps, warmup, rate)", "tf.where(step <= self.warmup_steps, warmup, rate)",
      SCHEDULE),
    M("schedule_cosine_span_with_warmup", "training/schedules.py",
      "/ float(self.total_steps - self.warmup_steps)", "/ float(self.total_steps)", SCHEDULE),
    # training/loop.py build_optimizer, training/recipes.py: the schedule as the optimizer gets it.
    M("optimizer_total_steps", "training/loop.py",
      "total_steps = steps_per_epoch * recipe.epochs", "total_steps = steps_per_epoch * (recipe.epochs - 1)",
      SCHEDULE),
    M("optimizer_boundaries_one_epoch_early", "training/loop.py",
      "boundaries=[epoch * steps_per_epoch for epoch", "boundaries=[(epoch - 1) * steps_per_epoch for epoch",
      SCHEDULE),
    M("optimizer_warmup_of_one_epoch", "training/loop.py",
      "warmup_steps=int(recipe.warmup_fraction * total_steps)",
      "warmup_steps=int(recipe.warmup_fraction * steps_per_epoch)", SCHEDULE),
    M("optimizer_default_decay_factor", "training/loop.py",
      "decay_factor=recipe.decay_factor,", "", SCHEDULE),
    M("optimizer_peak_not_scaled", "training/loop.py",
      "peak=recipe.peak_learning_rate,", "peak=recipe.learning_rate,", SCHEDULE),
    M("optimizer_sgd_without_momentum", "training/loop.py",
      "keras.optimizers.SGD(schedule, momentum=recipe.momentum)", "keras.optimizers.SGD(schedule)", SCHEDULE),
    M("optimizer_loss_scale_on_bfloat16", "training/loop.py",
      'if mixed_precision == "float16":\n        optimizer = keras.optimizers.LossScaleOptimizer',
      'if mixed_precision == "bfloat16":\n        optimizer = keras.optimizers.LossScaleOptimizer', SCHEDULE),
    M("recipe_learning_rate_per_128", "training/recipes.py",
      "self.learning_rate * self.global_batch_size / 256", "self.learning_rate * self.global_batch_size / 128",
      SCHEDULE),
    # aa_keras/data/classification.py: the batches a resumed run skips.
    M("skip_one_batch_short", "aa_keras/data/classification.py",
      "dataset.skip(skip_batches * batch_size * replicas_per_pipeline)",
      "dataset.skip((skip_batches - 1) * batch_size * replicas_per_pipeline)", (*RESUME, "-k", "resumed_mid_epoch")),
    M("skip_ignores_replicas", "aa_keras/data/classification.py",
      "dataset.skip(skip_batches * batch_size * replicas_per_pipeline)",
      "dataset.skip(skip_batches * batch_size)", (*RESUME, "-k", "skip_batches")),
    M("per_replica_batch_is_global", "aa_keras/data/classification.py",
      "return global_batch_size // num_replicas", "return global_batch_size",
      ("tests/test_training.py", "-k", "input_context_shards")),
    # training/artifacts.py: the run identity.
    M("identity_without_image_size", "training/artifacts.py",
      '"image_size", "optimizer"', '"optimizer"', ("tests/test_run_identity.py",)),
    # export/parity.py: metrics and bounds.
    M("parity_float32_bound_10x_looser", "export/parity.py",
      '"tflite_float32": ("max_abs_diff", 1e-4, "max")', '"tflite_float32": ("max_abs_diff", 1e-3, "max")',
      (*CHECKS, "-k", "evaluate_refuses")),
    M("parity_int8_agreement_bound", "export/parity.py",
      '"tflite_int8": ("top1_agreement", 0.95, "min")', '"tflite_int8": ("top1_agreement", 0.9, "min")',
      (*CHECKS, "-k", "evaluate_refuses")),
    M("parity_directions_swapped", "export/parity.py",
      'value <= bound if direction == "max" else', 'value <= bound if direction == "min" else',
      (*CHECKS, "-k", "evaluate_refuses")),
    M("parity_reference_against_itself", "export/parity.py",
      "diff = np.abs(outputs - reference).max()", "diff = np.abs(reference - reference).max()",
      (*CHECKS, "-k", "evaluate_refuses")),
    M("parity_relative_diff_not_divided", "export/parity.py",
      '"max_rel_diff": float(diff / scale)', '"max_rel_diff": float(diff * scale)',
      ("tests/test_export.py", "-k", "parity_metrics")),
    M("parity_last_batch_short", "export/parity.py",
      "np.repeat(piece[:1], batch - len(piece), axis=0)", "np.repeat(piece[:1], batch - len(piece) - 1, axis=0)",
      ("tests/test_export.py", "-k", "parity_metrics")),
    # export/classification.py: what evaluate compares and what fails an export.
    M("evaluate_reference_against_itself", "export/classification.py",
      "values = parity.metrics(parity.predict(runner, images, batch), reference)",
      "values = parity.metrics(reference, reference)", (*CHECKS, "-k", "evaluate_refuses")),
    M("export_fails_on_baseline_only", "export/classification.py",
      'if row["model"] == "model" and not row["check"]["passed"]]',
      'if row["model"] == "baseline" and not row["check"]["passed"]]', (*CHECKS, "-k", "export_refuses")),
    # export/tflite.py: int8 input and output.
    M("tflite_output_zero_point_dropped", "export/tflite.py",
      "outputs = (outputs.astype(np.float32) - zero_point) * scale", "outputs = outputs.astype(np.float32) * scale",
      (*CHECKS, "-k", "tflite_runner or int8")),
    M("tflite_input_zero_point_sign", "export/tflite.py",
      "np.round(images / scale + zero_point)", "np.round(images / scale - zero_point)",
      (*CHECKS, "-k", "tflite_runner")),
    M("tflite_int8_float_outputs", "export/tflite.py",
      "output_data_type=io_type,", "output_data_type=tf.float32,",
      (*CHECKS, "-k", "tflite_runner")),
    M("tflite_int8_attention_block_walked_upstream_only", "export/tflite.py",
      "return [producer[t] for t in op.inputs if t in producer] + [j for t in op.outputs for j in consumers.get(t, [])]",
      "return [producer[t] for t in op.inputs if t in producer]",
      ("tests/test_tflite_export.py", "-k", "attention_block_nodes_span")),
    M("tflite_int8_symmetric_range_sign", "export/tflite.py",
      "bound = max(128 + zero_point, 127 - zero_point) * scale",
      "bound = max(-128 - zero_point, 127 - zero_point) * scale",
      ("tests/test_tflite_export.py", "-k", "symmetric_matmul_rhs")),
    M("tflite_int8_split_axis_taken_for_data", "export/tflite.py",
      '_DATA_INPUT = {"SPLIT": 1}', '_DATA_INPUT = {"SPLIT": 0}',
      ("tests/test_tflite_export.py", "-k", "symmetric_matmul_rhs")),
    M("tflite_int8_onehot_scale_not_exact", "export/tflite.py",
      "if len(entries) == 2 and int(127 * entries[1] / bound) >= 1:",
      "if False and int(127 * entries[1] / bound) >= 1:",
      ("tests/test_tflite_export.py", "-k", "folded_logits")),
    M("tflite_int8_folded_logits_left_float", "export/tflite.py",
      "int8_nodes = set(weighted_sum_nodes(calibrated)) | set(folded_logits_nodes(calibrated))",
      "int8_nodes = set(weighted_sum_nodes(calibrated))",
      ("tests/test_tflite_export.py", "-k", "folded_logits")),
    # aa_keras/applications/augment.py: weight transfer and layer selection.
    M("augment_bias_not_transferred", "aa_keras/applications/augment.py",
      "new.conv.bias.assign(old.bias[:keep])", "pass", ("tests/test_augment_bias.py",)),
    M("augment_last_filters_transferred", "aa_keras/applications/augment.py",
      "new.conv.kernel.assign(old.kernel[..., :keep])", "new.conv.kernel.assign(old.kernel[..., -keep:])",
      ("tests/test_augment_bias.py",)),
    M("augment_activation_dropped", "aa_keras/applications/augment.py",
      "activation=conv.activation,", "activation=None,",
      ("tests/test_applications.py", "-k", "sequential_model_trains")),
    M("last_stages_one_too_many", "aa_keras/applications/augment.py",
      "- {1})[: self.num_stages]", "- {1})[: self.num_stages + 1]",
      ("tests/test_applications.py", "-k", "augment_keras_resnet50")),
    # aa_keras/applications: the paper's networks.
    M("resnet_stage3_not_strided", "aa_keras/applications/resnet.py",
      "strides = 2 if b == 0 and stage > 2 else 1", "strides = 2 if b == 0 and stage > 3 else 1",
      ("tests/test_applications.py", "-k", "feature_extractor")),
    M("resnet_downsample_one_stage_more", "aa_keras/applications/resnet.py",
      "downsample = index < first_augmented + downsample_stages",
      "downsample = index <= first_augmented + downsample_stages",
      ("tests/test_applications.py", "-k", "aa_resnet_augments_one_conv")),
    M("resnet34_one_block_short", "aa_keras/applications/resnet.py",
      '34: ("basic", (3, 4, 6, 3)),', '34: ("basic", (3, 4, 6, 2)),',
      ("tests/test_applications.py", "-k", "aa_resnet_augments_one_conv")),
    M("min_key_depth_ignored", "aa_keras/applications/_backbone.py",
      "depth_k = self.depth_k if self.depth_k * filters >= min_keys else min_keys", "depth_k = self.depth_k",
      ("tests/test_applications.py", "-k", "aa_wide_resnet_augments")),
    M("wrn_group2_not_strided", "aa_keras/applications/wide_resnet.py",
      "strides = 2 if b == 0 and g > 0 else 1", "strides = 2 if b == 0 and g > 1 else 1",
      ("tests/test_feature_strides.py",)),
    M("small_conv_baseline_widths", "aa_keras/applications/small_nets.py",
      "CONV_BLOCK_WIDTHS = (64, 114, 114)", "CONV_BLOCK_WIDTHS = (64, 128, 128)",
      ("tests/test_training.py", "-k", "small_networks_match")),
    # aa_keras/ops: the fused kernel (compiled anew for the mutated source).
    M("kernel_weights_first_not_summed", "aa_keras/ops/fused_attention.cc",
      "      sum[t] += p;\n      Store(rows[t] + j, p);", "      Store(rows[t] + j, p);",
      ("tests/test_kernel_depths.py",)),
    M("kernel_value_chunks_all_first", "aa_keras/ops/fused_attention.cc",
      "const float* b = vt + first * stride;", "const float* b = vt;", ("tests/test_kernel_depths.py",)),
    M("kernel_relative_logits_first_query_offset", "aa_keras/ops/fused_attention.cc",
      "Load(table_t + d * length_t + offset[t] + y)", "Load(table_t + d * length_t + offset[0] + y)",
      ("tests/test_kernel_depths.py",)),
    M("kernel_table_gradient_channels_packed", "aa_keras/ops/fused_attention.cc",
      "float* de = d_table_t + d * TableGradientStride(length_t) + offset;",
      "float* de = d_table_t + d * length_t + offset;", ("tests/test_kernel_depths.py",)),
    M("kernel_relative_column_sums_per_block", "aa_keras/ops/fused_attention.cc",
      "Vec column_sum = y0 == 0 ? Vec{} : Load(d_rel_w + x);", "Vec column_sum = Vec{};",
      ("tests/test_kernel_depths.py",)),
    M("kernel_row_sums_interleaved", "aa_keras/ops/fused_attention.cc",
      "__builtin_shufflevector(quads[0], quads[1], 0, 2, 8, 10, 4, 6, 12, 14)",
      "__builtin_shufflevector(quads[0], quads[1], 0, 8, 2, 10, 4, 12, 6, 14)", ("tests/test_kernel_depths.py",)),
    # Compiled for CPUs without AVX-512 only (kSplat): on an AVX-512 CPU this mutant survives.
    M("kernel_dp_splat_rows_swapped", "aa_keras/ops/fused_attention.cc",
      "Store(d_out_splat + (e * T + t) * kLanes, Splat(d_out_rows[t][e]));",
      "Store(d_out_splat + (e * T + t) * kLanes, Splat(d_out_rows[T - 1 - t][e]));", ("tests/test_kernel_depths.py",)),
    # Wrong only where the wide path's 8 rows take two tiles (16 vector registers, AVX2): on an
    # AVX-512 CPU this mutant survives.
    M("kernel_wide_tiles_first_rows", "aa_keras/ops/fused_attention.cc",
      "ProductTile<kTileRows, 2>(rows + t0, a + t0, bt, depth, stride, j);",
      "ProductTile<kTileRows, 2>(rows + t0, a, bt, depth, stride, j);", ("tests/test_kernel_depths.py",)),
    # aa_keras/layers: the layer and the TensorFlow-op attention.
    M("layer_q_not_scaled", "aa_keras/layers/attention_augmentation.py",
      "self._split_heads(ops.cast(q, self._attention_dtype), self.dkh) * (self.dkh**-0.5)",
      "self._split_heads(ops.cast(q, self._attention_dtype), self.dkh)", (*REFERENCE, "-k", "square")),
    M("layer_concat_order_swapped", "aa_keras/layers/attention_augmentation.py",
      "[self._convolve(self.conv, inputs), attn]", "[attn, self._convolve(self.conv, inputs)]",
      (*REFERENCE, "-k", "square")),
    M("layer_same_padding_rounds_down", "aa_keras/layers/attention_augmentation.py",
      "return -(-length // stride)", "return length // stride", (*REFERENCE, "-k", "stride_2")),
    M("layer_depth_rounds_down", "aa_keras/layers/attention_augmentation.py",
      "math.floor(value * filters / num_heads + 0.5)", "math.floor(value * filters / num_heads)",
      ("tests/test_layer.py", "-k", "half_up")),
    M("relative_offset_flipped", "aa_keras/layers/relative_tables.py",
      "return positions[None, :] - positions[:, None]", "return positions[:, None] - positions[None, :]",
      ("tests/test_fused_attention.py", "-k", "matches_tensorflow_ops and relative and 2x2x6x7")),
    M("sine_frequencies_growing", "aa_keras/layers/position_encoding.py",
      "-ops.arange(num_freqs, dtype=dtype) / num_freqs", "ops.arange(num_freqs, dtype=dtype) / num_freqs",
      (*REFERENCE, "-k", "sine")),
    M("attention_relative_terms_subtracted", "aa_keras/layers/attention.py",
      "logits += tf.reshape(logits_h + logits_w, dims(logits))",
      "logits += tf.reshape(logits_h - logits_w, dims(logits))", BLOCKS),
    M("softmax_gradient_row_sign", "aa_keras/layers/attention.py",
      "tf.concat([d_out, -row], axis=-1)", "tf.concat([d_out, row], axis=-1)",
      ("tests/test_blocked_attention.py", "-k", "custom_gradient")),
    M("blocked_d_v_not_accumulated", "aa_keras/layers/attention.py",
      "d_v += block_grads[2]", "d_v = block_grads[2]", BLOCKS),
    M("blocked_gradient_reads_first_block_output", "aa_keras/layers/attention.py",
      " out[:, :, start:stop],", " out[:, :, : stop - start],", BLOCKS),
    # aa_keras/applications/batch_norm.py: re-estimated BatchNormalization statistics.
    M("batch_norm_between_batch_term_dropped", "aa_keras/applications/batch_norm.py",
      "variance * count + delta**2 * (self.count * count / total)", "variance * count",
      ("tests/test_batch_norm.py", "-k", "exact_mean")),
    M("batch_norm_frozen_layers_measured", "aa_keras/applications/batch_norm.py",
      "if include_frozen or layer.trainable]", "if include_frozen or not layer.trainable]",
      ("tests/test_batch_norm.py", "-k", "frozen")),
    M("batch_norm_replicas_not_gathered", "aa_keras/applications/batch_norm.py",
      "gather = lambda value: strategy.gather(value, axis=0)", "gather = lambda value: strategy.experimental_local_results(value)[0]",
      ("tests/test_batch_norm.py", "-k", "mirrored")),
    M("trainer_re_estimates_over_one_batch", "training/trainer.py",
      "steps=-(-images // global_batch)", "steps=1", ("tests/test_batch_norm_training.py", "-k", "short_run")),
    # benchmarks/speed_targets.py: each AA round's time over its twin's, not each side sorted.
    M("speed_targets_rounds_sorted_apart", "benchmarks/speed_targets.py",
      "zip(aa_rounds or [], twin_rounds or [])", "zip(sorted(aa_rounds or []), sorted(twin_rounds or []))",
      ("tests/test_speed_targets.py",)),
    # benchmarks/targets.py: the budget counts the fused attention's own time as already spent.
    M("targets_budget_charges_the_attention", "benchmarks/targets.py",
      "allowed = target * twin_ms - (step_ms - fused_ms)", "allowed = target * twin_ms - step_ms",
      ("tests/test_targets.py",)),
)  # fmt: skip


def repository_files():
    """The files git knows in the repository: tracked, and untracked but not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return sorted(name for name in listed.split("\0") if name and os.path.isfile(os.path.join(REPO, name)))


# Installed packages that live outside aa_keras/ in the repository (setup.py's package_dir).
PACKAGE_DIRS = {"aa_keras/training": "training", "aa_keras/export": "export"}


def fresh_copy(files, copy):
    """`files` of the repository copied into the folder `copy`, which is emptied first, with
    aa_keras/training and aa_keras/export linked to the copy's training/ and export/: the
    editable install maps those names to the repository's own folders, and the tests must
    import the copy's (mutated) files."""
    shutil.rmtree(copy, ignore_errors=True)
    for name in files:
        target = os.path.join(copy, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(REPO, name), target)
    for link, folder in PACKAGE_DIRS.items():
        os.symlink(os.path.join("..", folder), os.path.join(copy, link))


def original_count(mutant, root):
    """How many times `mutant`'s original text occurs in its file under `root` (0 without the
    file): a mutant applies where it is 1, and is "stale" elsewhere."""
    path = os.path.join(root, mutant.path)
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return f.read().count(mutant.original)


def apply(mutant, copy):
    """Plants `mutant` in `copy`; False (and nothing changed) when its original text does not
    occur exactly once."""
    if original_count(mutant, copy) != 1:
        return False
    path = os.path.join(copy, mutant.path)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(mutant.original, mutant.replacement))
    return True


def environment(copy, data_dir):
    env = dict(os.environ, PYTHONPATH=copy, AA_KERAS_TEST_DATA_DIR=data_dir, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def prepare_data(python, copy, data_dir):
    """Generates glyph_pairs into `data_dir` (once; later runs find it) from the unmutated copy."""
    code = (
        "import tensorflow_datasets as tfds, aa_keras.datasets\n"
        f"tfds.builder('glyph_pairs', data_dir={data_dir!r}).download_and_prepare()\n"
        "import aa_keras, aa_keras.training, aa_keras.export\n"
        "print(aa_keras.__file__, aa_keras.training.__file__, aa_keras.export.__file__)\n"
    )
    result = subprocess.run(
        [python, "-c", code], cwd=copy, env=environment(copy, data_dir), capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"mutation_check: preparing glyph_pairs failed:\n{result.stderr[-3000:]}")
    imported = (result.stdout.strip().splitlines() or [""])[-1].split()
    if not imported or not all(path.startswith(copy + os.sep) for path in imported):
        sys.exit(f"mutation_check: the copy's packages are not the ones imported ({imported}); check PYTHONPATH.")


def run_tests(python, mutant, copy, data_dir, timeout):
    """(status, seconds, detail) of the mutant's tests in `copy`."""
    command = [python, "-m", "pytest", "-x", "-q", *mutant.tests]
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=copy, env=environment(copy, data_dir), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "killed", time.perf_counter() - start, f"timed out after {timeout} s"
    seconds = time.perf_counter() - start
    lines = result.stdout.splitlines()
    failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in lines if line.startswith("FAILED ")]
    if result.returncode == 1:
        return "killed", seconds, failed[0] if failed else "tests failed"
    if result.returncode == 0:
        return "survived", seconds, lines[-1] if lines else ""
    # 2: interrupted (a collection error), 3: internal error, 4: usage error, 5: no test selected.
    errors = [line for line in lines if line.startswith("ERROR")]
    return "error", seconds, f"pytest exit {result.returncode}: {(errors or lines or [''])[-1]}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", default="", help="only mutants whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--python", default=sys.executable, help="interpreter with pytest and the requirements")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutant's tests")
    parser.add_argument(
        "--baseline", action="store_true",
        help="first run each distinct test selection on the unmutated copy: all must pass",
    )  # fmt: skip
    parser.add_argument(
        "--work_dir", default=os.path.join(tempfile.gettempdir(), f"aa_keras_mutation-{os.getuid()}"),
        help="work folder: the copy and the generated dataset (kept between runs)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.select in m.name]
    if not mutants:
        sys.exit(f"mutation_check: no mutant name contains {args.select!r}.")
    if args.list:
        for m in mutants:
            with open(os.path.join(REPO, m.path)) as f:
                found = "ok" if f.read().count(m.original) == 1 else "STALE"
            print(f"{found:5} {m.name:42} {m.path:38} {' '.join(m.tests)}")
        return 0

    files = repository_files()
    copy, data_dir = os.path.join(args.work_dir, "repo"), os.path.join(args.work_dir, "tfds")
    start = time.perf_counter()
    fresh_copy(files, copy)
    prepare_data(args.python, copy, data_dir)
    if args.baseline:
        selections = list(dict.fromkeys(m.tests for m in mutants))
        for index, tests in enumerate(selections, 1):
            unmutated = Mutant("baseline", "", "", "", tests)
            status, seconds, detail = run_tests(args.python, unmutated, copy, data_dir, args.timeout)
            passed = status == "survived"
            print(f"[baseline {index}/{len(selections)}] {'passes' if passed else 'FAILS':6} {seconds:6.1f}s  "
                  f"{' '.join(tests)}  {detail}", flush=True)
            if not passed:
                sys.exit("mutation_check: the tests fail without a mutant; fix them first.")
    rows = []
    for index, mutant in enumerate(mutants, 1):
        fresh_copy(files, copy)
        if apply(mutant, copy):
            status, seconds, detail = run_tests(args.python, mutant, copy, data_dir, args.timeout)
        else:
            status, seconds, detail = "stale", 0.0, f"original text not found once in {mutant.path}"
        rows.append((mutant, status, seconds, detail))
        print(f"[{index}/{len(mutants)}] {status:8} {seconds:6.1f}s  {mutant.name}  {detail}", flush=True)
    shutil.rmtree(copy, ignore_errors=True)
    total = time.perf_counter() - start

    print("\n| mutant | file | tests | result | seconds |\n|---|---|---|---|---|")
    for mutant, status, seconds, _ in rows:
        print(f"| {mutant.name} | {mutant.path} | {' '.join(mutant.tests)} | {status} | {seconds:.0f} |")
    counts = {s: sum(1 for row in rows if row[1] == s) for s in ("killed", "survived", "stale", "error")}
    print(
        f"\n{counts['killed']}/{len(rows)} killed, {counts['survived']} survived, {counts['stale']} stale, "
        f"{counts['error']} errors; total time {total / 60:.1f} min"
    )
    return 0 if counts["killed"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
