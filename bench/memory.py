"""Peak resident memory of this process, as the benchmarks and memory tests report it."""
from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` of /proc/self/status (Linux), else ``ru_maxrss``.

    Not ``ru_maxrss`` on Linux: the kernel carries it across ``execve``, so a worker started by a
    large parent (pytest holding torch, a Beam harness) reports the parent's RSS at fork time as its
    own peak. ``VmHWM`` belongs to the process's own address space, new at exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
