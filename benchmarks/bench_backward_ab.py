"""A/B timing of the fused kernel's gradient op: two sources of fused_attention.cc in one process.

Each source is compiled (same flags as aa_keras.ops.fused_attention) into a library of its own
with its ops renamed (AaFusedAttention -> Aa<Tag>FusedAttention), so both load side by side.
The gradient op alone is timed (forward outputs computed once), or with `--op forward` the
forward op, old and new alternately in interleaved rounds; medians reported, with the ratio
old / new (> 1: new is faster) and the max abs difference of each output.

    python benchmarks/bench_backward_ab.py --old-rev HEAD~1 [--batch 8] [--rounds 15] [--op forward]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from aa_keras.ops import fused_attention as fa

SHAPES = [  # name, batch, H, W, heads, dkh, dvh
    ("wrn32", None, 32, 32, 8, 20, 2),
    ("wrn16", None, 16, 16, 8, 20, 4),
    ("wrn8", None, 8, 8, 8, 20, 8),
    ("layer14", None, 14, 14, 8, 6, 6),
    ("layer28", None, 28, 28, 8, 6, 6),
    ("layer56", None, 56, 56, 8, 6, 6),
    ("wrnlayer32", None, 32, 32, 8, 4, 4),  # speed_targets' 160-channel layer: dk = dv = 0.2 F
    ("wrnlayer16", None, 16, 16, 8, 8, 8),  # its 320-channel layer
    ("resnet14", None, 14, 14, 8, 20, 3),  # AAResNet-50's stage-4 layers (stage 3's: dvh 2)
]


def build(source_text, tag, workdir):
    src = os.path.join(workdir, f"{tag}.cc")
    text = source_text.replace('REGISTER_OP("AaFusedAttention', f'REGISTER_OP("Aa{tag}FusedAttention')
    text = text.replace('Name("AaFusedAttention', f'Name("Aa{tag}FusedAttention')
    open(src, "w").write(text)
    out = os.path.join(workdir, f"{tag}.so")
    cmd = fa._compile_command(out)
    cmd[cmd.index(str(fa.SOURCE))] = src
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return tf.load_op_library(out), tag.lower()


def op(lib, tag, name):
    return getattr(lib, f"aa_{tag}_fused_attention{name}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-rev", default="HEAD")
    parser.add_argument("--old-file", default="", help="instead of --old-rev")
    parser.add_argument("--new-file", default=str(fa.SOURCE))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", default="")
    parser.add_argument("--json", default="")
    parser.add_argument("--op", choices=["gradient", "forward"], default="gradient")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    old_src = subprocess.run(["git", "show", f"{args.old_rev}:aa_keras/ops/fused_attention.cc"], cwd=root,
                             check=True, capture_output=True, text=True).stdout
    if args.old_file:
        old_src = open(args.old_file).read()
    new_src = open(args.new_file).read()
    workdir = tempfile.mkdtemp()
    libs = {"old": build(old_src, "Old", workdir), "new": build(new_src, "New", workdir)}
    rng = np.random.default_rng(0)
    results = {}
    for name, _, h, w, nh, dk, dv in SHAPES:
        if args.only and name not in args.only.split(","):
            continue
        b = args.batch
        q = tf.constant(rng.standard_normal((b, h, w, nh, dk)).astype(np.float32) * dk**-0.5)
        k = tf.constant(rng.standard_normal((b, h, w, nh, dk)).astype(np.float32))
        v = tf.constant(rng.standard_normal((b, h, w, nh, dv)).astype(np.float32))
        rh = tf.constant(rng.standard_normal((2 * h - 1, dk)).astype(np.float32) * 0.1)
        rw = tf.constant(rng.standard_normal((2 * w - 1, dk)).astype(np.float32) * 0.1)
        d_out = tf.constant(rng.standard_normal((b, h, w, nh, dv)).astype(np.float32))
        fns, grads = {}, {}
        for key, (lib, tag) in libs.items():
            out, stats = op(lib, tag, "")(q, k, v, rh, rw, relative=True)
            if args.op == "forward":
                f = tf.function(lambda lib=lib, tag=tag: op(lib, tag, "")(q, k, v, rh, rw, relative=True))
            else:
                f = tf.function(lambda out=out, stats=stats, lib=lib, tag=tag: op(lib, tag, "_grad")(
                    q, k, v, rh, rw, out, stats, d_out, relative=True))
            grads[key] = [g.numpy() for g in f()]
            fns[key] = f
        diffs = [float(np.max(np.abs(a - c))) for a, c in zip(grads["old"], grads["new"])]
        scale = [float(np.max(np.abs(a))) for a in grads["old"]]
        times = {"old": [], "new": []}
        cpu = {"old": [], "new": []}  # this process's CPU time: less sensitive to other load
        reps = max(1, int(0.3 / max(1e-4, _time(fns["old"]))))
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for key in order:
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    fns[key]()
                times[key].append((time.perf_counter() - t0) / reps)
                cpu[key].append((time.process_time() - c0) / reps)
        med = {key: float(np.median(t)) for key, t in times.items()}
        med_cpu = {key: float(np.median(t)) for key, t in cpu.items()}
        results[name] = {"op": args.op, "batch": b, "old_ms": med["old"] * 1e3, "new_ms": med["new"] * 1e3,
                         "ratio_old_over_new": med["old"] / med["new"],
                         "old_cpu_ms": med_cpu["old"] * 1e3, "new_cpu_ms": med_cpu["new"] * 1e3,
                         "cpu_ratio_old_over_new": med_cpu["old"] / med_cpu["new"],
                         "max_abs_diff": diffs, "max_abs": scale}
        print(f"{name:8s} b={b} old {med['old']*1e3:8.2f} ms  new {med['new']*1e3:8.2f} ms  "
              f"old/new {med['old']/med['new']:.2f} (CPU time {med_cpu['old']/med_cpu['new']:.2f})  "
              f"maxdiff {max(diffs):.2e} (scale {max(scale):.2e})", flush=True)
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)


def _time(f):
    f()
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
