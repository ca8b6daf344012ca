"""Latency, file size and the export report (printed table and `export_report.json`)."""

import json
import os
import statistics
import time


def artifact_row(model, artifact, file, runtime, parity, check, latency_ms=None, ops=None):
    """One row of an export report's `rows`, the same for classifiers and detectors.

    Args:
        model: "model", or "baseline" for the classifier exported alongside for comparison.
        artifact: the artifact kind ("saved_model", "tflite_int8", ...).
        file: its path (a file, or the SavedModel's folder); `size_bytes` is measured here.
        runtime: what ran it for the parity check ("tf.saved_model", "LiteRT", "onnxruntime").
        parity: {metric: value} of its outputs against the Keras model's.
        check: the check that decides whether it may be deployed: {metric, value, bound,
            direction ("max" or "min"), passed}.
        latency_ms: median latency of one batch; None where not measured (detectors).
        ops: the sorted op names of a TFLite or ONNX model; None for a SavedModel.
    """
    return {
        "model": model, "artifact": artifact, "file": file, "runtime": runtime, "size_bytes": size_bytes(file),
        "latency_ms": latency_ms, "parity": parity, "check": check, "ops": ops,
    }


def median_latency_ms(runner, batch, runs, warmup=3):
    """Median wall time in ms of `runner.run` on one prepared batch, after `warmup` runs."""
    prepared = runner.prepare(batch)
    for _ in range(warmup):
        runner.run(prepared)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run(prepared)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def size_bytes(path):
    """Size of a file, or the total of the files under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
    )


def add_baseline_ratios(rows):
    """Adds `size_vs_baseline` and `latency_vs_baseline` to each model row with a baseline row
    of the same artifact."""
    baseline = {row["artifact"]: row for row in rows if row["model"] == "baseline"}
    for row in rows:
        other = baseline.get(row["artifact"])
        if row["model"] == "model" and other is not None:
            row["size_vs_baseline"] = row["size_bytes"] / other["size_bytes"]
            row["latency_vs_baseline"] = row["latency_ms"] / other["latency_ms"]


def format_table(rows):
    """The rows as a fixed-width text table."""
    header = ("model", "artifact", "runtime", "size KiB", "ms/batch", "xbase size", "xbase ms",
              "parity metric", "value", "bound", "ok")
    lines = []
    for row in rows:
        check = row["check"]
        lines.append((
            row["model"],
            row["artifact"],
            row["runtime"],
            f"{row['size_bytes'] / 1024:.1f}",
            f"{row['latency_ms']:.3f}",
            f"{row['size_vs_baseline']:.2f}" if "size_vs_baseline" in row else "-",
            f"{row['latency_vs_baseline']:.2f}" if "latency_vs_baseline" in row else "-",
            check["metric"],
            f"{check['value']:.3g}",
            ("<= " if check["direction"] == "max" else ">= ") + f"{check['bound']:g}",
            "yes" if check["passed"] else "NO",
        ))
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) for line in [header, *lines]
    )


def write_json(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
