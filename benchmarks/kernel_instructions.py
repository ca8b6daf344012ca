"""Instructions, cycles and cache misses per logit of the fused attention kernel, per function (issue 26).

    python -m benchmarks.kernel_instructions                          # every shape of bench_backward_ab
    python -m benchmarks.kernel_instructions --shapes=layer28 --output=/tmp/k.json

What bounds the kernel on a machine without hardware performance counters (a VM's `perf stat`
reports cycles and instructions "not supported"). `benchmarks/kernel_harness.cc`, which includes
the kernel's source and runs its per-unit loops (`ForwardUnit`, `BackwardUnit`) on one thread
outside TensorFlow's runtime, is compiled with the kernel's own flags, then:
- run natively: the fastest of `--calls` calls of each op on `--units` (batch, head) units, in
  nanoseconds per logit (one logit: one query-key pair);
- `kernel_harness clock`: the core's cycles per second, from a chain of dependent integer
  additions (one per cycle), so cycles per logit = that rate x the time per logit;
- `kernel_harness peak`: the core's float32 multiply-add peak (independent chains of the
  kernel's vector multiply-adds), in GFLOP per CPU second: the yardstick of one core, where
  `kernel_efficiency`'s matrix product is the library's;
- run under Valgrind's cachegrind (instructions counted exactly; caches simulated with this
  machine's L1 data cache and its L2 as the last level): with one call and with two, the
  difference being one call's own counts, per function (inlined code counts in the function it
  is inlined into). From these: instructions per logit, instructions per cycle (IPC), and L1
  and L2 misses per thousand logits. (Cachegrind's counts of data reads are left out: it counts
  some vector instructions' memory operands as several reads.)

An IPC near what the core sustains for vector code says the instruction count bounds the kernel;
a low IPC with few misses says dependency chains do; many L2 misses say memory does. Needs
x86-64 (the clock), g++ and valgrind. Shapes are bench_backward_ab's (8 heads, relative logits).
The JSON goes to `--output`.
"""

import argparse
import collections
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import tempfile

import tensorflow as tf

from aa_keras.ops import fused_attention
from benchmarks import machine
from benchmarks.bench_backward_ab import SHAPES

HARNESS = pathlib.Path(__file__).with_name("kernel_harness.cc")


def compile_harness(output):
    """Compiles kernel_harness.cc into the executable `output` with the kernel library's flags."""
    command = fused_attention._compile_command(output)
    command = [part for part in command if part not in ("-shared", "-fPIC")]
    command[command.index(str(fused_attention.SOURCE))] = str(HARNESS)
    command.append(f"-Wl,-rpath,{tf.sysconfig.get_lib()}")
    subprocess.run(command, check=True)


def run_harness(command):
    """The JSON line the harness printed last."""
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _cache_bytes(level, kind):
    """Size, line and ways of this CPU's cache at `level` ("Data" or "Unified"), from sysfs, or None."""
    for index in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        read = lambda name: (index / name).read_text().strip()  # noqa: E731
        if read("level") == str(level) and read("type") == kind:
            size = read("size")
            scale = {"K": 1024, "M": 1024 * 1024}.get(size[-1], 1)
            return int(size.rstrip("KM")) * scale, int(read("coherency_line_size")), int(read("ways_of_associativity"))
    return None


def _cachegrind_counts(command, workdir):
    """{function: Counter of cachegrind events} of one run of `command` under cachegrind."""
    out = os.path.join(workdir, "cachegrind.out")
    caches = []
    for flag, level, kind in (("--D1", 1, "Data"), ("--LL", 2, "Unified")):
        found = _cache_bytes(level, kind)
        if found:
            caches.append(f"{flag}={found[0]},{found[2]},{found[1]}")
    subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=yes", *caches, f"--cachegrind-out-file={out}",
                    *command], check=True, capture_output=True, text=True)
    return parse_cachegrind(pathlib.Path(out).read_text())


def parse_cachegrind(text):
    """{function: Counter of events} from a cachegrind output file's text (its "events:" line,
    "fn=" lines and "line count count ..." lines)."""
    events, counts, function = [], collections.defaultdict(collections.Counter), None
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("fn="):
            function = line[3:]
        elif function and line[:1].isdigit():
            values = line.split()[1:]
            counts[function].update({e: int(v) for e, v in zip(events, values)})
    return counts


def _short_name(function):
    """A kernel function's name without its namespaces and arguments: 'SoftmaxTimesValues<2>'."""
    name = re.sub(r"\(.*", "", function.replace("(anonymous namespace)::", ""))
    return name.split("::")[-1] or function


def one_call_counts(binary, op, shape_args, workdir):
    """{function: Counter} of one call of `op`: the counts of two calls minus those of one."""
    one = _cachegrind_counts([binary, op, *shape_args, "1"], workdir)
    two = _cachegrind_counts([binary, op, *shape_args, "2"], workdir)
    return {f: counts for f in two if (counts := two[f] - one.get(f, collections.Counter()))}


def measure(binary, name, op, units, calls, cycles_per_second, workdir):
    """One row: the op at shape `name`, natively and under cachegrind."""
    _, _, size, _, heads, dkh, dvh = next(s for s in SHAPES if s[0] == name)
    timed = run_harness([binary, op, str(size), str(dkh), str(dvh), str(units), str(calls)])
    counted = one_call_counts(binary, op, [str(size), str(dkh), str(dvh), str(units)], workdir)
    logits = units * (size * size) ** 2
    total = sum(counted.values(), collections.Counter())
    ns = timed["seconds"] / timed["logits"] * 1e9
    cycles = ns * 1e-9 * cycles_per_second
    per_logit = lambda event: total[event] / logits  # noqa: E731
    functions = collections.Counter()
    for function, c in counted.items():
        functions[_short_name(function)] += c["Ir"] / logits
    return {
        "shape": name, "op": op, "size": size, "heads": heads, "dkh": dkh, "dvh": dvh,
        "ns_per_logit": ns, "cycles_per_logit": cycles,
        "instructions_per_logit": per_logit("Ir"), "ipc": per_logit("Ir") / cycles,
        "l1_misses_per_1000_logits": 1000 * (per_logit("D1mr") + per_logit("D1mw")),
        "l2_misses_per_1000_logits": 1000 * (per_logit("DLmr") + per_logit("DLmw")),
        "instructions_per_logit_by_function": {f: round(v, 3) for f, v in functions.most_common() if v >= 0.05},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(s[0] for s in SHAPES), help="names from bench_backward_ab.SHAPES")
    parser.add_argument("--units", type=int, default=1, help="(batch, head) units per call")
    parser.add_argument("--calls", type=int, default=7, help="native calls timed (the fastest kept)")
    parser.add_argument("--output", default="benchmarks/results/kernel_instructions.json")
    args = parser.parse_args()
    if args.units < 1 or args.calls < 1:
        parser.error("--units and --calls must be at least 1")
    missing = [tool for tool in ("valgrind", os.environ.get("CXX", "g++")) if shutil.which(tool) is None]
    if missing or platform.machine() != "x86_64":
        parser.error(f"needs x86-64 (this is {platform.machine()}), g++ (or $CXX) and valgrind; missing: {missing}")
    names = args.shapes.split(",")
    unknown = sorted(set(names) - {s[0] for s in SHAPES})
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {[s[0] for s in SHAPES]}")
    with tempfile.TemporaryDirectory() as workdir:
        binary = os.path.join(workdir, "kernel_harness")
        compile_harness(binary)
        cycles_per_second = run_harness([binary, "clock"])["cycles_per_second"]
        peak = run_harness([binary, "peak"])["gflop_per_second"]
        print(f"clock: {cycles_per_second / 1e9:.2f} GHz; multiply-add peak: {peak:.1f} GFLOP per CPU second",
              flush=True)
        rows = []
        for name in names:
            for op in ("forward", "gradient"):
                row = measure(binary, name, op, args.units, args.calls, cycles_per_second, workdir)
                rows.append(row)
                top = ", ".join(f"{f} {v:.2f}" for f, v in list(row["instructions_per_logit_by_function"].items())[:4])
                print(f"{name:10s} {op:8s} {row['ns_per_logit']:6.3f} ns {row['cycles_per_logit']:6.2f} cycles "
                      f"{row['instructions_per_logit']:6.2f} instructions (IPC {row['ipc']:.2f}) per logit; misses per 1000: "
                      f"L1 {row['l1_misses_per_1000_logits']:.1f}, L2 {row['l2_misses_per_1000_logits']:.2f}; {top}",
                      flush=True)
    results = {
        "benchmark": "kernel_instructions",
        "command": f"python -m benchmarks.kernel_instructions --shapes={args.shapes} --units={args.units} "
                   f"--calls={args.calls}",
        "machine": machine.record(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cycles_per_second": cycles_per_second,
        "multiply_add_peak_gflop_per_cpu_second": peak,
        "rows": rows,
    }
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
