"""The CPU a benchmark ran on, for its JSON record (no flags, no TensorFlow: any benchmark may
import it)."""

import os
import platform


def cpu():
    """(model name, the vector extensions the fused kernel's build depends on: avx512f, avx2)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return names[0] if names else platform.machine(), [f for f in ("avx512f", "avx2") if f in flags]


def record():
    """{"cpus", "processor", "vector_extensions"}: the "machine" entry of a benchmark's JSON."""
    processor, vector_extensions = cpu()
    return {"cpus": os.cpu_count(), "processor": processor, "vector_extensions": vector_extensions}
