"""benchmarks/kernel_instructions.py: its harness builds against the kernel's source and runs both
ops' unit loops, and its counts are one call's (two calls' minus one's), not the program's."""

import collections
import math
import shutil
import subprocess

import pytest

from benchmarks import kernel_instructions


def test_parse_cachegrind_sums_each_functions_lines_across_files():
    text = "events: Ir D1mr\nfl=a.cc\nfn=f\n1 10 1\n2 5\nfn=g\n3 7 2\nfl=b.cc\nfn=f\n4 1 0\n"
    counts = kernel_instructions.parse_cachegrind(text)
    assert counts == {"f": collections.Counter(Ir=16, D1mr=1), "g": collections.Counter(Ir=7, D1mr=2)}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    binary = str(tmp_path_factory.mktemp("harness") / "kernel_harness")
    kernel_instructions.compile_harness(binary)
    return binary


def test_harness_runs_both_ops_on_the_units_asked(harness):
    for op in ("forward", "gradient"):
        result = kernel_instructions.run_harness([harness, op, "6", "5", "3", "2", "2"])
        assert result["op"] == op and result["logits"] == 2 * 36**2
        assert result["seconds"] > 0 and math.isfinite(result["checksum"])
    peak = kernel_instructions.run_harness([harness, "peak"])
    assert peak["gflop_per_second"] > 0 and math.isfinite(peak["check"])
    wrong = subprocess.run([harness, "forward", "6"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "usage" in wrong.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="no valgrind")
def test_one_call_counts_are_the_kernels_not_the_start_up(harness, tmp_path):
    counts = kernel_instructions.one_call_counts(harness, "forward", ["8", "6", "6", "1"], str(tmp_path))
    names = {kernel_instructions._short_name(function) for function in counts}
    assert any(name.startswith("SoftmaxTimesValues") for name in names), names
    instructions = sum(c["Ir"] for c in counts.values())
    # At least one per logit, and far below the dynamic linker's start-up (about 10^8 here).
    assert 64**2 < instructions < 200 * 64**2
