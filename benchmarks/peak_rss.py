"""Peak resident memory of a stretch of code in this process (Linux), for the memory benchmarks.

``reset_peak()`` right before the code, then ``peak_mib() - rss_mib()`` read before it is that code's
own peak: writing 5 to ``/proc/self/clear_refs`` (Linux >= 4.0) resets VmHWM to the current RSS, so
earlier peaks (importing torch, building a model) do not count.
"""

from __future__ import annotations

import resource


def rss_mib() -> float:
    """This process's resident memory now, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak() -> bool:
    """Reset the peak RSS to the current RSS; False where the kernel does not allow it (the peak
    read afterwards then also counts the process's earlier peaks)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    """Peak RSS since the process started or the last :func:`reset_peak`, MiB."""
    with open("/proc/self/status") as f:
        hwm = next((line for line in f if line.startswith("VmHWM:")), None)
    return int(hwm.split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
