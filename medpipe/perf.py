"""Process-level CPU performance settings that PyTorch leaves to the user.

glibc's ``malloc`` serves every block above its mmap threshold (dynamic, 128 KiB to 32 MiB) with a
fresh ``mmap`` and gives it back to the kernel on ``free``; heap memory above 128 KiB at the top is
trimmed back too. A 3D training step allocates and frees activation tensors of several MiB many times,
so every step touches fresh pages: on this project's 2-core CPU that was 24,000 page faults per
VesselMNIST3D step and 14 % of a training run's CPU time spent in the kernel. Raising the mmap
threshold to its maximum and the trim threshold far above the working set makes freed blocks stay in
the heap and be reused: the same step then takes 800 faults and is 1.16x faster
(``benchmarks/malloc_tuning.py``, docs/benchmarks.md). This is what PyTorch's CPU performance guide gets by preloading
jemalloc or tcmalloc, without a second allocator to install.

The cost is that the process keeps its peak heap instead of returning it to the system, so it is
applied to training (one long-lived process with a steady working set), not to library imports.
"""

from __future__ import annotations

import ctypes
import platform

#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def tune_malloc(trim_threshold: int = 1 << 30) -> bool:
    """Keep freed tensor memory in glibc's heap for reuse; ``False`` where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
