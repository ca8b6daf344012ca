"""The training-speed and memory ratios that issue 26 sets targets for, in one run.

    python -m benchmarks.speed_targets                                  # everything (about 8 min)
    python -m benchmarks.speed_targets --parts=layer,memory            # only the layer rows

Rows (each ratio AA / its twin, both measured side by side in one fresh subprocess, every
function once per round, rounds interleaved, medians; graph mode, no XLA, float32):
- `networks`: the train step (training-mode forward, gradients of sum(output * fixed upstream)
  with respect to every weight) of AA-WRN-28-10 / WRN-28-10 at 32x32, batch 32 (7 rounds), and
  of AAResNet-50 / ResNet-50 at 224x224, batch 4 (9 rounds) (`aa_keras.applications.build_model`);
  wall time, and also this process's CPU time, which other load disturbs less.
- `layer`: `AttentionAugmentation2D` / `keras.layers.Conv2D` train step (gradients with respect to
  the input and every weight), batch 8, 3x3, 8 heads, dk = dv = 0.2 x filters, at bench_layer's
  shapes (256 channels at 14, 28, 56) and at the WRN's (160/320/640 channels at 32/16/8); timed by
  `benchmarks.bench_layer`'s worker (`--min_seconds` of rounds per shape).
- `memory`: peak resident set (VmHWM) of a fresh process that runs one train step of the layer,
  and of Conv2D, at bench_layer's shape (256 channels) at 56 and 112 (bench_layer's worker); the
  median of `--memory_runs` processes each (the layer's peak at 112 moved between 1.35 and 1.55
  GiB from one process to the next, Conv2D's stayed at 1.22).

Each row carries its target (issue 26) and whether the ratio of the medians meets it
(`meets_target`). Timing rows also give the quartiles of the per-round ratios (`round_ratios`):
a round times the two sides one right after the other, so where the machine's speed drifts
between rounds (on the shared VM, by up to 2x within minutes) both move. `verdict` reads them:
"met" where three rounds in four are at or below the target (q3 <= target), "not met" where
three in four are above it (q1 > target), else "within the spread": this run cannot tell.
Memory rows are "met" or "not met" by the ratio of their medians. Compare within one
run. The JSON goes to `--output`.
"""

import datetime
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

from benchmarks import machine
from benchmarks.targets import LAYER_BATCH, LAYER_SHAPES, MEMORY_SIZES, NETWORKS

PARTS = ("networks", "layer", "memory")

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", list(PARTS), "Which rows: networks, layer, memory.")
flags.DEFINE_list("networks", ["wrn28_10", "resnet50"], "Network pairs: wrn28_10, resnet50.")
flags.DEFINE_integer("network_rounds", None, "Timed rounds per network pair (default: 7 for WRN, 9 for ResNet-50).")
flags.DEFINE_float("layer_min_seconds", 6.0, "Seconds of timed rounds per layer shape (at least 5 rounds).")
flags.DEFINE_integer("memory_runs", 3, "Fresh processes per side and size for the memory rows (median).", lower_bound=1)
flags.DEFINE_string("output", "benchmarks/results/speed_targets.json", "Where to write the JSON.")
flags.DEFINE_string("worker", None, "Internal: time this network pair and print JSON.")

# Timed rounds per network pair.
NETWORK_ROUNDS = {"wrn28_10": 7, "resnet50": 9}

flags.register_validator("parts", lambda parts: set(parts) <= set(PARTS),
                         message=f"--parts takes a comma-separated list of {', '.join(PARTS)}.")
flags.register_validator("networks", lambda names: set(names) <= set(NETWORKS),
                         message=f"--networks takes a comma-separated list of {', '.join(NETWORKS)}.")


def _network_pair(name):
    """Median train-step wall and CPU (this process, all threads) seconds of a network pair,
    rounds interleaved: {aa_s, twin_s, aa_cpu_s, twin_cpu_s}, and each round's wall seconds
    (aa_rounds_s, twin_rounds_s). On a loaded machine CPU time varies less than wall time (a
    process waiting for a core spends none)."""
    import tensorflow as tf

    from aa_keras.applications import build_model

    aa_name, twin_name, size, batch, _ = NETWORKS[name]
    x = tf.random.normal((batch, size, size, 3), seed=1)
    steps = {}
    for key, model_name in (("aa", aa_name), ("twin", twin_name)):
        model = build_model(model_name)
        upstream = tf.random.normal((batch, *model.output.shape[1:]), seed=2)

        def step(model=model, upstream=upstream):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True) * upstream)
            return tape.gradient(loss, model.trainable_variables)

        steps[key] = tf.function(step, autograph=False)
    times = {f"{key}{kind}": [] for key in steps for kind in ("_s", "_cpu_s")}
    rounds = FLAGS.network_rounds or NETWORK_ROUNDS[name]
    for round_ in range(1 + rounds):  # the first round traces and warms up
        for key, step in steps.items():
            start, cpu = time.perf_counter(), time.process_time()
            step()
            if round_:
                times[f"{key}_s"].append(time.perf_counter() - start)
                times[f"{key}_cpu_s"].append(time.process_time() - cpu)
        logging.info("%s: round %d done", name, round_)
    medians = {key: sorted(values)[len(values) // 2] for key, values in times.items()}
    return {**medians, "aa_rounds_s": times["aa_s"], "twin_rounds_s": times["twin_s"]}


def _run(command):
    """Runs a worker subprocess; returns its last stdout line as JSON, or {"error": ...}."""
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        return {"error": f"exit code {result.returncode}: {tail[0][:200]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _layer_flags(filters):
    return [f"--filters={filters}", f"--batch={LAYER_BATCH}", "--kernel_size=3", "--num_heads=8", "--depth=0.2"]


def _row(kind, shape, aa, twin, unit, target, command):
    ratio = aa / twin if aa and twin else None
    return {
        "kind": kind, **shape, f"aa_{unit}": aa, f"twin_{unit}": twin, "ratio": ratio,
        "target_max": target, "meets_target": None if ratio is None else ratio <= target, "command": command,
    }


def _round_ratios(aa_rounds, twin_rounds):
    """{q1, median, q3} of the ratios aa / twin of rounds timed together; {} without two rounds."""
    ratios = [a / t for a, t in zip(aa_rounds or [], twin_rounds or [])]
    if len(ratios) < 2:
        return {}
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"round_ratios": {"q1": q1, "median": median, "q3": q3}}


def _verdict(row):
    """"met", "not met" or "within the spread" (see the module docstring); None without a ratio."""
    target, quartiles = row["target_max"], row.get("round_ratios")
    if quartiles:
        if quartiles["q3"] <= target:
            return "met"
        return "not met" if quartiles["q1"] > target else "within the spread"
    return None if row["ratio"] is None else "met" if row["ratio"] <= target else "not met"


def _network_rows():
    rows = []
    for name in FLAGS.networks:
        aa_name, twin_name, size, batch, target = NETWORKS[name]
        rounds = FLAGS.network_rounds or NETWORK_ROUNDS[name]
        logging.info("network pair %s", name)
        command = ["benchmarks.speed_targets", f"--worker={name}", f"--network_rounds={rounds}"]
        result = _run(command)
        shape = {"aa": aa_name, "twin": twin_name, "size": size, "batch": batch, "rounds": rounds}
        row = _row("network train step", shape, result.get("aa_s"), result.get("twin_s"), "s", target,
                   "python -m " + " ".join(command))
        aa_cpu, twin_cpu = result.get("aa_cpu_s"), result.get("twin_cpu_s")
        row.update(aa_cpu_s=aa_cpu, twin_cpu_s=twin_cpu, cpu_ratio=aa_cpu / twin_cpu if aa_cpu and twin_cpu else None)
        row.update(_round_ratios(result.get("aa_rounds_s"), result.get("twin_rounds_s")))
        rows.append({**row, **({"error": result["error"]} if "error" in result else {})})
    return rows


def _layer_rows():
    rows = []
    for filters, size, target in LAYER_SHAPES:
        logging.info("layer %d channels at %d", filters, size)
        args = ["benchmarks.bench_layer", "--worker=time", f"--size={size}", "--impls=aa,conv",
                *_layer_flags(filters), "--repeats=5", f"--min_seconds={FLAGS.layer_min_seconds}"]
        result = _run(args)
        shape = {"aa": "AttentionAugmentation2D", "twin": "Conv2D", "filters": filters, "size": size,
                 "batch": LAYER_BATCH, "heads": 8, "depth_k": round(0.2 * filters), "depth_v": round(0.2 * filters)}
        aa, conv = (result.get(i, {}).get("train_step_s") for i in ("aa", "conv"))
        row = _row("layer train step", shape, aa, conv, "s", target, "python -m " + " ".join(args))
        row.update(_round_ratios(*(result.get(i, {}).get("train_step_rounds_s") for i in ("aa", "conv"))))
        rows.append({**row, **({"error": result["error"]} if "error" in result else {})})
    return rows


def _memory_rows():
    rows = []
    for size, target in MEMORY_SIZES:
        peaks, runs, commands = {}, {}, []
        for impl in ("aa", "conv"):
            logging.info("memory %s at %d (%d processes)", impl, size, FLAGS.memory_runs)
            args = ["benchmarks.bench_layer", "--worker=memory", f"--size={size}", f"--impl={impl}",
                    "--pass_=train_step", *_layer_flags(256)]
            runs[impl] = [_run(args).get("peak_rss_gib") for _ in range(FLAGS.memory_runs)]
            peaks[impl] = None if None in runs[impl] else statistics.median(runs[impl])
            commands.append("python -m " + " ".join(args))
        shape = {"aa": "AttentionAugmentation2D", "twin": "Conv2D", "filters": 256, "size": size,
                 "batch": LAYER_BATCH, "heads": 8}
        row = _row("layer train step peak memory (VmHWM)", shape, peaks["aa"], peaks["conv"], "gib", target,
                   "; ".join(commands))
        rows.append({**row, "aa_gib_runs": runs["aa"], "twin_gib_runs": runs["conv"]})
    return rows


def _table(rows):
    lines = ["| row | shape | AA | twin | AA / twin | (CPU time) | per round: quartiles | target | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        unit = "gib" if "aa_gib" in row else "s"
        scale, label = (1.0, "GiB") if unit == "gib" else (1e3, "ms")
        shape = f"{row.get('filters', '')} ch " if "filters" in row else f"{row['aa']} / {row['twin']} "
        shape += f"{row['size']}x{row['size']}, batch {row['batch']}"
        values = [row[f"aa_{unit}"], row[f"twin_{unit}"]]
        cells = [f"{v * scale:.2f} {label}" if v else "-" for v in values]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else row.get("error", "-")
        cpu = f"{row['cpu_ratio']:.2f}" if row.get("cpu_ratio") else "-"
        rounds = " / ".join(f"{v:.2f}" for v in row["round_ratios"].values()) if "round_ratios" in row else "-"
        lines.append(f"| {row['kind']} | {shape} | {cells[0]} | {cells[1]} | {ratio} | {cpu} | {rounds} | "
                     f"<= {row['target_max']} | {row['verdict'] or '-'} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.worker:
        print(json.dumps(_network_pair(FLAGS.worker)))
        return
    rows = []
    for part, make in zip(PARTS, (_network_rows, _layer_rows, _memory_rows)):
        if part in FLAGS.parts:
            rows += make()
    for row in rows:
        row["verdict"] = _verdict(row)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    revision = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout
    results = {
        "benchmark": "speed_targets",
        "revision": revision.strip(),
        "description": "Issue 26's targets: AA / twin train-step time and peak memory ratios, side by side.",
        "command": "python -m benchmarks.speed_targets " + " ".join(filter(None, (
            FLAGS[n].serialize() for n in ("parts", "networks", "network_rounds", "layer_min_seconds",
                                           "memory_runs")))),
        "machine": {**machine.record(), "load_average_at_end": [float(x) for x in load]},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    results["table"] = _table(rows)
    print(results["table"])
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(FLAGS.output + ".tmp", FLAGS.output)
    logging.info("wrote %s", FLAGS.output)


if __name__ == "__main__":
    app.run(main)
